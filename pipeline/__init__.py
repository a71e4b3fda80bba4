"""The product: documents, corpus I/O, metrics, and the run / tune / ablate workflows."""

from pipeline.documents import CLASSES, Document, Span

__all__ = ["CLASSES", "Document", "Span"]
