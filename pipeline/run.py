"""``pipeline run`` over large corpora: chunked, resumable, crash-safe, shardable.

Documents stream in chunks; each finished chunk is written atomically as one part file, so a
killed run continues at the first missing part, and the final outputs (assembled from the
parts in order) are byte for byte those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, zip_longest
from pathlib import Path

from pipeline.documents import Document, Span
from pipeline.errors import PipelineError, is_document_fault
from pipeline.thresholds import Thresholds
from pipeline.writers import (
    atomic_write,
    folder_lock,
    jsonl_record,
    remove_temporaries,
    write_corpus,
)

logger = logging.getLogger(__name__)
FORMATS = ("tsv", "jsonl", "brat")


@dataclass
class RunSummary:
    written: int = 0
    empty: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    candidates: int = 0
    llm_calls: int = 0
    too_long: int = 0  # candidates dropped unasked: their prompt does not fit the LLM
    kept: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"stage1": 0.0, "stage2": 0.0,
                                                               "other": 0.0})
    engine: dict = field(default_factory=dict)  # what ran the stages (and where)

    def add(self, record: dict) -> None:
        status = record["status"]
        if status == "written":
            self.written += 1
        elif status == "empty":
            self.empty += 1
        else:
            self.failed.append((record["id"], record.get("reason", "")))
        self.kept += len(record.get("spans", []))
        self.candidates += record.get("candidates", 0)
        self.llm_calls += record.get("llm_asked", 0)
        self.too_long += record.get("too_long", 0)

    def as_dict(self) -> dict:
        return {"written": self.written, "empty": self.empty, "failed": len(self.failed),
                "failures": [{"id": i, "reason": r} for i, r in sorted(self.failed)],
                "candidates": self.candidates, "llm_calls": self.llm_calls,
                "too_long": self.too_long, "kept_spans": self.kept, "seconds": {k: round(v, 3)
                                                     for k, v in self.seconds.items()},
                **self.engine}


def in_shard(doc_id: str, shard: tuple[int, int]) -> bool:
    index, count = shard
    return count == 1 or int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % count == index


def parse_shard(shard: str, option: str = "--shard") -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``, checked."""
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise PipelineError(f"{option} must look like 0/4, not {shard!r}") from None
    if n < 1:
        raise PipelineError(f"{option} {shard}: the number of parts must be at least 1")
    if not 0 <= i < n:
        raise PipelineError(f"{option} {shard}: the index must be in 0..{n - 1}")
    return i, n


def check_formats(formats: Sequence[str]) -> None:
    if not formats:
        raise PipelineError(f"no output format given; choose from {FORMATS}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise PipelineError(f"unknown output format {fmt!r}; choose from {FORMATS}")


def chunked(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while chunk := list(islice(it, size)):
        yield chunk


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix a run into an output folder made with other settings (``settings``:
    the record of ``pipeline.settings.run_record``); a change that only decides how the run
    goes (more formats, another cache folder, a batch size) is taken, and recorded."""
    from pipeline.settings import record_changes

    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if "config" not in old:
            raise PipelineError(f"{out} holds a run made by an earlier version of pipeline, "
                                "whose settings this one cannot compare; use another --output")
        changed = record_changes(old, settings)
        if changed:
            raise PipelineError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                                "use another --output or delete it")
        if old == settings:
            return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(settings, indent=2, sort_keys=True))


def chunk_records(docs: Sequence[Document], found: Sequence[Sequence[Span]], *, scorer,
                  thresholds: Thresholds, seconds: dict[str, float]) -> list[dict]:
    """Stage-1 candidates ``found`` of each document -> scores -> kept spans -> the
    document's record in a part file."""
    from pipeline.predict import needs_llm, stage_two
    too_long = [0] * len(docs)
    candidates, kept = stage_two(docs, found, scorer=scorer, thresholds=thresholds,
                                 seconds=seconds, too_long=too_long)
    records = []
    for d, found, spans, n in zip(docs, candidates, kept, too_long):
        if not d.text.strip():
            records.append({"id": d.id, "status": "empty", "text": d.text,
                            "entity_class": d.entity_class, "spans": []})
            continue
        out = Document(d.id, d.text, d.lang, d.entity_class, spans)
        record = json.loads(jsonl_record(out))
        record["status"] = "written"
        # per document, so that a resumed run's totals equal an uninterrupted run's
        record["candidates"] = len(found)
        record["llm_asked"] = 0 if scorer is None else sum(needs_llm(s, thresholds) for s in found)
        if n:
            record["too_long"] = n
        kept_keys = {s.key for s in spans}
        dropped = [s for s in found if s.key not in kept_keys]
        if dropped:  # what the judge turned down, for error analysis (pipeline report)
            record["dropped"] = [{"label": s.label, "start": s.start, "end": s.end,
                                  "stage1_score": s.stage1_score,
                                  "stage2_score": s.stage2_score} for s in dropped]
        records.append(record)
    return records


def process_chunk(docs: Sequence[Document], *, ensemble, scorer, thresholds: Thresholds,
                  char_cache, summary: RunSummary) -> list[dict]:
    """documents -> character probabilities -> candidates -> scores -> kept spans."""
    from pipeline.predict import stage_one  # (imports torch: not for a reader of parts)
    found = stage_one(docs, ensemble=ensemble, thresholds=thresholds, char_cache=char_cache,
                      seconds=summary.seconds)
    return chunk_records(docs, found, scorer=scorer, thresholds=thresholds,
                         seconds=summary.seconds)


def failure_record(doc: Document, exc: BaseException) -> dict:
    return {"id": doc.id, "status": "failed", "reason": str(exc), "text": doc.text,
            "entity_class": doc.entity_class, "spans": []}


def guarded(docs: Sequence[Document], work: Callable[[list[int]], list]) -> list:
    """``work`` over the documents of ``docs`` at the given positions, one result each.
    Where the whole batch raises a document's fault, each document goes alone, and one that
    fails alone gets its failure record as its result: one bad document must not sink the
    batch. Anything else (the LLM service down, a full disk) propagates: the run stops,
    and its rerun does these documents; they are not failures (see ``pipeline.errors``)."""
    try:
        return work(list(range(len(docs))))
    except Exception as exc:
        if not is_document_fault(exc):
            raise
        logger.warning("a batch of %d documents failed (%s); retrying them one by one",
                       len(docs), exc)
    out = []
    for i, doc in enumerate(docs):
        try:
            out += work([i])
        except Exception as exc:
            if not is_document_fault(exc):
                raise
            out.append(failure_record(doc, exc))
    return out


class LocalEngine:
    """Both stages in this process, one chunk after the other (the default engine)."""

    name = "local"

    def __init__(self, *, ensemble, scorer, thresholds: Thresholds, char_cache=None) -> None:
        self.stages = {"ensemble": ensemble, "scorer": scorer, "thresholds": thresholds,
                       "char_cache": char_cache}

    def process(self, chunks: Iterable[tuple[int, list[Document]]],
                summary: RunSummary) -> Iterator[tuple[int, list[dict]]]:
        """(part number, records) of each chunk of ``chunks``, in turn."""
        for k, chunk in chunks:
            yield k, guarded(chunk, lambda idx, chunk=chunk: process_chunk(
                [chunk[i] for i in idx], summary=summary, **self.stages))

    def describe(self) -> dict:
        return {"engine": self.name}


CORPUS_CHANGED = ("the corpus has changed since this run began. Use another --output or "
                  "delete this one")


def check_part(part: Path, chunk: Sequence[Document], records: Sequence[dict]) -> None:
    """Refuse a part written before a crash for other documents than ``chunk``: a corpus
    that changed in between (a document added, removed, renamed or edited) no longer lines
    up with the parts, and resuming would drop some documents and write others twice."""
    for i, (doc, record) in enumerate(zip_longest(chunk, records)):
        if record is None:
            n = len(records)
            what = f"it holds {n} document{'' if n == 1 else 's'}, and the corpus now has " \
                   f"{doc.id!r} next"
        elif doc is None:
            what = f"it holds {record['id']!r} past the corpus's documents here"
        elif record["id"] != doc.id:
            what = f"its document {i + 1} is {record['id']!r}, and the corpus's is now {doc.id!r}"
        elif record["text"] != doc.text or \
                record.get("entity_class", doc.entity_class) != doc.entity_class:
            what = f"document {doc.id!r} reads otherwise now (its text or class)"
        else:
            continue
        raise PipelineError(f"{part}: {what}: {CORPUS_CHANGED} (cached probabilities and LLM "
                            "scores make the rerun quick)")


def run_pipeline(docs: Iterable[Document], *, out: Path, ensemble=None, scorer=None,
                 thresholds: Thresholds, settings: dict, formats: Sequence[str] = ("tsv",),
                 shard: tuple[int, int] = (0, 1), chunk_size: int = 16, char_cache=None,
                 on_chunk: Callable[[RunSummary, int], None] | None = None,
                 unreadable: Sequence[tuple[str, str]] = (), engine=None) -> RunSummary:
    """Run both stages over ``docs``, resuming from the parts already in ``out``.

    ``engine`` turns the chunks still to do into records (default: a ``LocalEngine`` of
    ``ensemble``, ``scorer`` and ``char_cache``); whatever it is, the parts, and so the
    outputs, are the same."""
    out = Path(out)
    engine = engine or LocalEngine(ensemble=ensemble, scorer=scorer, thresholds=thresholds,
                                   char_cache=char_cache)
    check_formats(formats)
    with folder_lock(out, "pipeline run"):
        check_settings(out, settings)
        parts = out / "parts"
        parts.mkdir(exist_ok=True)
        for folder in (out, parts):  # what a killed run was writing when it died
            remove_temporaries(folder)
        summary = RunSummary()
        mine = (d for d in docs if in_shard(d.id, shard))
        n_parts = 0

        def to_do() -> Iterator[tuple[int, list[Document]]]:
            nonlocal n_parts
            for k, chunk in enumerate(chunked(mine, chunk_size)):
                n_parts = k + 1
                part = parts / f"{k:06d}.jsonl"
                if part.exists():  # done before a crash: keep it, if made of these documents
                    records = list(part_records(part))
                    check_part(part, chunk, records)
                    for record in records:
                        summary.add(record)
                    if on_chunk:
                        on_chunk(summary, len(chunk))
                    continue
                yield k, chunk

        for k, records in engine.process(to_do(), summary):
            atomic_write(parts / f"{k:06d}.jsonl",
                         "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            for r in records:
                summary.add(r)
            if on_chunk:
                on_chunk(summary, len(records))
        beyond = sorted(p for p in parts.glob("*.jsonl") if p.stem.isdigit() and
                        int(p.stem) >= n_parts)
        if beyond:  # the final outputs would hold documents that the corpus no longer has
            raise PipelineError(
                f"{beyond[0]}: the corpus now ends before this part ({n_parts} part"
                f"{'' if n_parts == 1 else 's'} of {chunk_size} documents): {CORPUS_CHANGED}")
        for doc_id, reason in unreadable:  # each shard reports its own
            if in_shard(doc_id, shard):
                summary.failed.append((doc_id, reason))
        t = time.perf_counter()
        assemble(out, [out], formats)
        summary.seconds["other"] += time.perf_counter() - t
        summary.engine = engine.describe()
        atomic_write(out / "summary.json", json.dumps(summary.as_dict(), indent=2))
        return summary


def merge_shards(out: Path, folders: Sequence[Path], formats: Sequence[str]) -> dict:
    """Join the outputs of the finished ``--shard i/n`` runs ``folders`` (all n of them, made
    with the same ensemble, LLM and thresholds) into ``out``, sorted by document id, with
    one summary of them all. Returns that summary."""
    check_formats(formats)
    if not folders:
        raise PipelineError("no shard folders to merge")
    runs, summaries = [], []
    for folder in map(Path, folders):
        for name in ("run.json", "summary.json"):
            if not (folder / name).exists():
                raise PipelineError(
                    f"{folder}: no {name}: " + ("not the output of `pipeline run`"
                                                if name == "run.json" else
                                                "that run has not finished; run its command "
                                                "again to finish it"))
        runs.append(json.loads((folder / "run.json").read_text(encoding="utf-8")))
        summaries.append(json.loads((folder / "summary.json").read_text(encoding="utf-8")))
    from pipeline.settings import record_changes

    for folder, run in zip(folders, runs):
        if "config" not in run:
            raise PipelineError(f"{folder}: a run made by an earlier version of pipeline, "
                                "whose settings this one cannot compare; run it again")
    for folder, run in zip(folders[1:], runs[1:]):
        changed = record_changes(runs[0], run)
        if changed:
            raise PipelineError(f"{folder} was run with other settings than {folders[0]} "
                                f"({', '.join(changed)}); shards to merge must share them")
    target = Path(out).resolve()
    for folder in map(Path, folders):
        if target == folder.resolve() or folder.resolve() in target.parents:
            raise PipelineError(f"{out} is {'inside ' if target != folder.resolve() else ''}"
                                f"the shard folder {folder}; merge into a folder of its own")
    shards = [parse_shard(run["config"]["output"]["shard"]) for run in runs]
    counts = {n for _, n in shards}
    if len(counts) != 1:
        raise PipelineError(f"the shard folders split the corpus in different ways: "
                            f"{', '.join(run['config']['output']['shard'] for run in runs)}")
    n = counts.pop()
    seen = [i for i, _ in shards]
    doubled = sorted({i for i in seen if seen.count(i) > 1})
    missing = sorted(set(range(n)) - set(seen))
    if doubled or missing:
        raise PipelineError(f"shards of /{n}: " + "; ".join(
            ([f"given twice: {', '.join(map(str, doubled))}"] if doubled else []) +
            ([f"missing: {', '.join(map(str, missing))}"] if missing else [])))
    with folder_lock(out, "pipeline merge"):
        assemble(out, folders, formats, sort=True)
        total = {key: sum(s.get(key, 0) for s in summaries)
                 for key in ("written", "empty", "failed", "candidates", "llm_calls", "too_long",
                             "kept_spans")}
        total["failures"] = sorted((f for s in summaries for f in s["failures"]),
                                   key=lambda f: f["id"])
        total["seconds"] = {k: round(sum(s["seconds"].get(k, 0.0) for s in summaries), 3)
                            for k in summaries[0]["seconds"]}
        total["shards"] = n
        atomic_write(out / "summary.json", json.dumps(total, indent=2))
        return total


def part_files(folders: Sequence[Path]) -> list[Path]:
    return [part for folder in folders for part in sorted((Path(folder) / "parts").glob("*.jsonl"))]


def part_lines(part: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of each record of a part file. Lines end at "\n" only: texts are
    written unescaped, and U+2028, U+2029 or U+0085 inside one (text pasted from word
    processors and PDFs has them) would end a line for ``str.splitlines``."""
    offset = 0
    with open(part, "rb") as handle:
        for line in handle:
            if line.strip():
                yield offset, line
            offset += len(line)


def part_records(part: Path) -> Iterator[dict]:
    for _, line in part_lines(part):
        yield json.loads(line)


def iter_records(folders: Sequence[Path]) -> Iterator[dict]:
    for part in part_files(folders):
        yield from part_records(part)


def sorted_records(folders: Sequence[Path]) -> Callable[[], Iterator[dict]]:
    """The written records of ``folders``, sorted by document id (and class), as many times
    as called. Only an index (id, class, file, byte offset) is held, not the records with
    their texts: each is read again when its turn comes."""
    parts = part_files(folders)
    index = []
    for k, part in enumerate(parts):
        for offset, line in part_lines(part):
            r = json.loads(line)
            if r["status"] == "written":
                index.append((r["id"], r.get("entity_class") or "", k, offset))
    index.sort()

    def records() -> Iterator[dict]:
        for _, _, k, offset in index:
            with open(parts[k], "rb") as handle:
                handle.seek(offset)
                yield json.loads(handle.readline())

    return records


def record_document(r: dict) -> Document:
    spans = [Span(r["id"], s["label"], s["start"], s["end"], s.get("stage1_score"),
                  s.get("stage2_score")) for s in r.get("spans", [])]
    return Document(r["id"], r["text"], r.get("lang"), r.get("entity_class"), spans)


def assemble(out: Path, folders: Sequence[Path], formats: Sequence[str],
             sort: bool = False) -> None:
    """The final outputs from the part files of one or more runs (shards).

    Documents stream from the parts into the writers, so memory does not grow with the
    corpus (``sort``, for merging shards, orders them by id holding an index of them only).
    """
    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted_records(folders) if sort else None

    def docs() -> Iterator[Document]:
        records = ordered() if ordered else \
            (r for r in iter_records(folders) if r["status"] == "written")
        return (record_document(r) for r in records)

    targets = {"tsv": out / "predictions.tsv", "jsonl": out / "predictions.jsonl",
               "brat": out / "brat"}
    for fmt in formats:
        write_corpus(docs(), targets[fmt], fmt)
