"""What can go wrong, sorted once into kinds that decide what happens next.

- input: a document's or a file's fault. One line naming the file (and line); exit 2; in a
  corpus run the document is recorded as failed and the run goes on.
- refusal: the machine refuses (a folder that cannot be written, a full disk, a cache that
  cannot be opened). One line naming the path; exit 1.
- transient: the LLM service failed (a server down, a timeout, an engine that died). The
  backends retry with backoff first; then the run stops, exit 1, and the same command
  continues once the service is back. Never recorded as a document's failure.
- interrupted: Ctrl-C. Exit 130; the same command continues.
- bug: anything else. The traceback, and a line asking to report it.

Only ``kind_of`` decides the kind of an exception; the CLI maps kinds to exit codes and
messages (``EXIT_CODES``, ``message``), and corpus runs ask ``is_document_fault``.
"""

from __future__ import annotations

import enum
import errno
import sqlite3
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


class ErrorKind(enum.Enum):
    INPUT = "input"
    REFUSAL = "refusal"
    TRANSIENT = "transient"
    INTERRUPTED = "interrupted"
    BUG = "bug"


EXIT_CODES = {ErrorKind.INPUT: 2, ErrorKind.REFUSAL: 1, ErrorKind.TRANSIENT: 1,
              ErrorKind.INTERRUPTED: 130, ErrorKind.BUG: 1}

# What the machine refuses rather than what the code gets wrong.
REFUSED_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                  errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.EIO,
                  errno.EMFILE, errno.ENFILE, errno.EXDEV}


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` (see the module's doc)."""
    from stage2_rerank.errors import ServiceError

    if isinstance(exc, KeyboardInterrupt):
        return ErrorKind.INTERRUPTED
    if isinstance(exc, (ServiceError, TimeoutError, ConnectionError)):
        return ErrorKind.TRANSIENT
    if isinstance(exc, (PipelineError, FileNotFoundError, ValueError)):
        return ErrorKind.INPUT  # ValueError holds broken JSON, undecodable text, bad configs
    if isinstance(exc, sqlite3.Error) or (isinstance(exc, OSError)
                                          and exc.errno in REFUSED_ERRNOS):
        return ErrorKind.REFUSAL
    if type(exc).__name__ == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and
                                                    "out of memory" in str(exc).lower()):
        return ErrorKind.REFUSAL  # the device, not the document: never a failed document
    return ErrorKind.BUG


def is_document_fault(exc: BaseException) -> bool:
    """May ``exc``, raised while processing some documents, be those documents' own fault
    (so that processing them one by one finds the culprit and the others go on)? Bad input
    and the errors the models raise on an input they cannot take; never a transient fault,
    a refusal of the machine or an interruption."""
    kind = kind_of(exc)
    return kind is ErrorKind.INPUT or (kind is ErrorKind.BUG and isinstance(exc, RuntimeError))


TRANSIENT_HINT = ("the LLM service or the machine failed, not the input; once it is back, "
                  "the same command continues where it stopped")
BUG_HINT = ("this is a bug in pipeline, not a problem with your input: please report it with "
            "the traceback above and the command that was run")


def message(exc: BaseException, kind: ErrorKind) -> str:
    """The line(s) the user reads for ``exc`` of ``kind`` (the CLI prints them on stderr)."""
    if kind is ErrorKind.INTERRUPTED:
        return "interrupted; rerun the same command to continue where it stopped"
    if kind is ErrorKind.BUG:
        return BUG_HINT
    text = f"error: {exc}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"  # "No space left on device" says where
    if isinstance(exc, sqlite3.Error):
        text += (" (a cache that cannot be read may be deleted: it only saves work; "
                 "--cache-dir puts the caches in another folder)")
    if kind is ErrorKind.TRANSIENT:
        text += f"\n{TRANSIENT_HINT}"
    return text
