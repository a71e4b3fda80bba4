"""Corpus writers: the task TSV, brat and JSONL (with both stage scores)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from pipeline.documents import Document, Span
from pipeline.errors import PipelineError
from pipeline.readers import TSV_COLUMNS, file_stem, fold_breaks


def clean_tsv_text(mention: str) -> str:
    """The mention as the TSV text column shows it: one line, no tabs, no double quotes.

    Tabs and line breaks would split a row; a quote character makes pandas' reader (the
    official scorer's) swallow the following rows as one quoted field.
    """
    return fold_breaks(mention).replace('"', "'")


def sort_spans(spans: Iterable[Span]) -> list[Span]:
    return sorted(spans, key=lambda s: (s.start, s.end, s.label))


def tsv_rows(doc: Document) -> Iterable[str]:
    for span in sort_spans(doc.spans):
        if span.end <= span.start:
            raise ValueError(f"{doc.id}: empty span {span.start}-{span.end} cannot be written")
        yield (f"{doc.id}\t{span.label}\t{span.start}\t{span.end}\t"
               f"{clean_tsv_text(doc.mention(span))}\n")


def write_tsv_header(handle: IO[str]) -> None:
    handle.write("\t".join(TSV_COLUMNS) + "\n")


def jsonl_record(doc: Document) -> str:
    spans = [{"label": s.label, "start": s.start, "end": s.end, "text": doc.mention(s),
              "stage1_score": s.stage1_score, "stage2_score": s.stage2_score}
             for s in sort_spans(doc.spans)]
    record = {"id": doc.id, "text": doc.text, "lang": doc.lang,
              "entity_class": doc.entity_class, "spans": spans}
    return json.dumps(record, ensure_ascii=False) + "\n"


def brat_ann(doc: Document) -> str:
    # A brat mention cannot hold a line break; the offsets stay exact, only the shown text folds.
    return "".join(f"T{i}\t{s.label} {s.start} {s.end}\t{fold_breaks(doc.mention(s))}\n"
                   for i, s in enumerate(sort_spans(doc.spans), start=1))


def atomic_write(path: Path, content: str) -> None:
    """Write ``content`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: leave no half file taking up what space is left
        tmp.unlink(missing_ok=True)
        raise


LOCK_NAME = ".lock"
_HELD: set[Path] = set()  # folders this process holds (a lock taken twice is held once)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder`` for this process (``what`` names the job in the error another gets)
    while the block runs; a second process that wants it (a job started again while the
    first still runs) is refused with a clear error instead of writing into the same files.
    The operating system releases the lock when the process ends, however it ends, so a
    crash leaves nothing to clean up."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        yield
        return
    path = folder / LOCK_NAME
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            pid, _, job = handle.read().strip().partition(" ")
            holder = f"{job or 'another process'} (process {pid})" if pid else "another process"
            raise PipelineError(f"{folder} is in use by {holder}; wait for it to finish or "
                                "choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {what}")
        handle.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_tsv(docs: Iterable[Document], path: Path) -> int:
    """The task TSV; returns the number of rows."""
    rows = 0
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        write_tsv_header(handle)
        for doc in docs:
            for row in tsv_rows(doc):
                handle.write(row)
                rows += 1
    os.replace(tmp, path)
    return rows


def write_jsonl(docs: Iterable[Document], path: Path) -> int:
    count = 0
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        for doc in docs:
            handle.write(jsonl_record(doc))
            count += 1
    os.replace(tmp, path)
    return count


def write_brat(docs: Iterable[Document], folder: Path, *, with_text: bool = True) -> int:
    """One ``.ann`` (and ``.txt``) a document; documents whose text belongs to one class
    (MultiClinNER ships one text per class under the same name) go in a folder per class."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    for doc in docs:
        folder = root / doc.entity_class if doc.entity_class else root
        folder.mkdir(exist_ok=True)
        name = file_stem(doc.id)  # an id such as "en/case1" stays one file in the folder
        if with_text:
            atomic_write(folder / f"{name}.txt", doc.text)
        atomic_write(folder / f"{name}.ann", brat_ann(doc))
        count += 1
    return count


def write_corpus(docs: Iterable[Document], path: Path, fmt: str) -> int:
    writers = {"tsv": write_tsv, "jsonl": write_jsonl, "brat": write_brat}
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(writers)}")
    return writers[fmt](docs, path)
