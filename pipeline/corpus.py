"""Helpers that turn any corpus (or a bare task TSV) into spans for scoring."""

from __future__ import annotations

from pathlib import Path

from pipeline.documents import Span
from pipeline.errors import ReadReport
from pipeline.readers import corpus_path, detect_format, open_corpus, read_tsv_spans


def load_spans(path: Path, *, lenient: bool = False,
               report: ReadReport | None = None) -> tuple[list[Span], dict[str, str | None]]:
    """All spans of a corpus and each document's language (a TSV needs no texts here)."""
    report = report if report is not None else ReadReport()
    path = corpus_path(path)
    if detect_format(path) == "tsv":
        return read_tsv_spans(path, lenient=lenient, report=report), {}
    spans: list[Span] = []
    lang_of: dict[str, str | None] = {}
    for doc in open_corpus(path, lenient=lenient, report=report):
        spans.extend(doc.spans)
        lang_of[doc.id] = doc.lang
    return spans, lang_of
