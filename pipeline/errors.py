"""Errors for bad input: each names the file, the line and what is wrong."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class PipelineError(Exception):
    """An error a user can fix; the CLI prints it as one line, without a traceback."""


class CorpusError(PipelineError):
    """Bad corpus input, located by file and (where there is one) line."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass
class ReadReport:
    """What a reader skipped or changed, so that nothing is dropped silently."""

    documents: int = 0
    spans: int = 0
    bom_stripped: list[str] = field(default_factory=list)
    dropped_labels: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # lenient mode: one message per bad item
    failed_documents: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)

    def skip(self, error: CorpusError, lenient: bool) -> None:
        """Raise ``error``, or under ``lenient`` count it and go on."""
        if not lenient:
            raise error
        self.skipped.append(str(error))

    def summary(self) -> str:
        parts = [f"{self.documents} documents, {self.spans} spans"]
        if self.bom_stripped:
            parts.append(f"BOM stripped from {len(self.bom_stripped)} files")
        if self.dropped_labels:
            dropped = ", ".join(f"{k}×{v}" for k, v in sorted(self.dropped_labels.items()))
            parts.append(f"labels dropped: {dropped}")
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad annotations skipped")
        return "; ".join(parts)
