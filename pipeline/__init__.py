"""The product: documents, corpus I/O, metrics, and the run / tune / ablate workflows."""

from pipeline.documents import CLASSES, Document, Span
from pipeline.recognizer import Recognizer
from pipeline.report import render
from pipeline.thresholds import ClassThresholds, Thresholds

__all__ = ["CLASSES", "ClassThresholds", "Document", "Recognizer", "Span", "Thresholds",
           "render"]
