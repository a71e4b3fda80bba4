"""Stage 1: binary token classifiers per class, combined at the character level.

A library of strings, arrays and (start, end) pairs; it knows nothing of corpora or files
beyond its own ensemble folder.
"""

from stage1_ensemble.decode import decode_batch, decode_spans
from stage1_ensemble.project import project, project_batch, weighted_mean

__all__ = ["decode_batch", "decode_spans", "project", "project_batch", "weighted_mean"]
