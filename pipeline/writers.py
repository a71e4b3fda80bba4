"""Corpus writers: the task TSV, brat and JSONL (with both stage scores)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


def temporary_name(path: Path) -> Path:
    """The hidden name beside ``path`` that a file (or folder) is written under first."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_temporaries(folder: Path) -> int:
    """Delete the temporary files (`temporary_name`) left in ``folder`` by a process killed
    while writing (SIGKILL runs no cleanup). Only under the folder's lock: no live writer
    may own one. Returns how many went."""
    gone = 0
    for path in Path(folder).glob(".*.tmp*"):
        if path.is_file() and path.name.rpartition(".tmp")[2].isdigit():
            path.unlink(missing_ok=True)
            gone += 1
    return gone


@contextlib.contextmanager
def naming(path: Path, instead_of: Path | None = None) -> Iterator[None]:
    """An ``OSError`` raised in the block that names no file (a write on a full disk says
    only "No space left on device"), or names ``instead_of`` (a temporary name), names
    ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or exc.filename not in (None, str(instead_of)):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[str]]:
    """A text handle whose content replaces ``path`` when the block ends: a crash, a full
    disk or bad input in the block leaves either the old file or none, and no temporary
    file taking up what space is left. An error names ``path``."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path} is a folder; give the name of a file to write")
    tmp = temporary_name(path)
    try:
        with naming(path, instead_of=tmp):
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, content: str) -> None:
    """Write ``content`` so that a crash leaves either the old file or the new one."""
    with atomic_file(path) as handle:
        handle.write(content)


def check_writable(path: Path, *, folder: bool = False) -> None:
    """Fail now, not after hours of work, where ``path`` (a file, or a ``folder`` to write
    into) cannot be written: a file where a folder is meant or the reverse, a read-only
    parent. Leaves nothing behind."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise PipelineError(f"{path} is a file; give the name of a folder to write into")
    if not folder and path.is_dir():
        raise PipelineError(f"{path} is a folder; give the name of a file to write")
    where = path if folder else path.parent
    while not where.exists():  # made when written: its nearest existing folder must take it
        where = where.parent
    if not where.is_dir():
        raise PipelineError(f"{where} is a file; it cannot hold {path}")
    probe = temporary_name(where / ".probe")
    with naming(where, instead_of=probe):
        probe.touch()
    probe.unlink()


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
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"{folder} is a file; give the name of a folder to write into")
    new = not folder.exists()
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
        with naming(path):
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {what}")
            handle.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            if new and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                path.unlink()  # a job refused before it wrote anything leaves no folder
                folder.rmdir()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_tsv(docs: Iterable[Document], path: Path) -> int:
    """The task TSV; returns the number of rows."""
    rows = 0
    with atomic_file(path) as handle:
        write_tsv_header(handle)
        for doc in docs:
            for row in tsv_rows(doc):
                handle.write(row)
                rows += 1
    return rows


def write_jsonl(docs: Iterable[Document], path: Path) -> int:
    count = 0
    with atomic_file(path) as handle:
        for doc in docs:
            handle.write(jsonl_record(doc))
            count += 1
    return count


def write_brat(docs: Iterable[Document], folder: Path, *, with_text: bool = True) -> int:
    """One ``.ann`` (and ``.txt``) a document; documents whose text belongs to one class
    (MultiClinNER ships one text per class under the same name) go in a folder per class.
    The files are written in a hidden folder beside ``folder`` first and moved in once all
    are: a failure part-way leaves ``folder`` as it was."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise PipelineError(f"{root} is a file; brat output needs a folder")
    stage = temporary_name(root)
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(parents=True)
        count = 0
        for doc in docs:
            sub = Path(doc.entity_class) if doc.entity_class else Path()
            (stage / sub).mkdir(exist_ok=True)
            name = file_stem(doc.id)  # an id such as "en/case1" stays one file in the folder
            files = [(".txt", doc.text)] if with_text else []
            for suffix, content in files + [(".ann", brat_ann(doc))]:
                with naming(root / sub / f"{name}{suffix}"):
                    (stage / sub / f"{name}{suffix}").write_text(content, encoding="utf-8",
                                                                 newline="")
            count += 1
        move_into(stage, root)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return count


def move_into(stage: Path, root: Path) -> None:
    """The files of folder ``stage`` into ``root`` (made if missing), each replacing its
    namesake: one rename for a new folder, one a file for an existing one."""
    if not root.exists():
        os.replace(stage, root)
        return
    for path in sorted(stage.rglob("*")):
        target = root / path.relative_to(stage)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.replace(path, target)


def write_corpus(docs: Iterable[Document], path: Path, fmt: str) -> int:
    writers = {"tsv": write_tsv, "jsonl": write_jsonl, "brat": write_brat}
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(writers)}")
    return writers[fmt](docs, path)
