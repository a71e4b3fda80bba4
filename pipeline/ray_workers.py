"""What runs on the Ray cluster for ``pipeline run --engine ray`` (``pipeline.ray_engine``
drives it): the corpus feeder, the read tasks and the two stages' actors. The stages are
the project's own functions; this module only moves chunks in and records out.

Imports stay light at the top (no torch): read tasks run in many small worker processes.
"""

from __future__ import annotations

import json
import pickle
import time
import traceback
from collections.abc import Callable, Iterable

from pipeline.documents import Document
from pipeline.errors import PipelineError
from pipeline.run import chunk_records, chunked, guarded, in_shard
from pipeline.settings import RunConfig


class CorpusFeeder:
    """The chunks of the corpus by number, read in order by the project's own reader.

    Lives on the driver's machine (where the input is) and serves the chunks ``wanted``
    (those without a part yet). A chunk asked for ahead of its turn is read up to; the
    wanted ones passed on the way wait until asked for, the others are dropped, so what it
    holds stays within the read-ahead of the run. A chunk asked for again (a read task
    retried after a lost node) is read again from the start."""

    def __init__(self, reopen: Callable[[], Iterable[Document]], shard: tuple[int, int],
                 chunk_size: int, wanted: Iterable[int]) -> None:
        self.reopen, self.shard, self.chunk_size = reopen, shard, chunk_size
        self.wanted, self.served = set(wanted), set()
        self.waiting: dict[int, list[Document]] = {}
        self._start()

    def _start(self) -> None:
        mine = (d for d in self.reopen() if in_shard(d.id, self.shard))
        self.chunks = enumerate(chunked(mine, self.chunk_size))
        self.next = 0

    def chunk(self, k: int) -> bytes:
        self.served.add(k)
        if k in self.waiting:
            return pickle.dumps(self.waiting.pop(k))
        if k < self.next:
            self._start()
        for i, docs in self.chunks:
            self.next = i + 1
            if i == k:
                return pickle.dumps(docs)
            if i in self.wanted and i not in self.served and i not in self.waiting:
                self.waiting[i] = docs
        raise PipelineError(f"the corpus has no chunk {k} any more: it changed during the run")


def read_chunks(batch: dict, feeder) -> dict:
    import ray

    ks = [int(k) for k in batch["k"]]
    return {"k": ks, "docs": [ray.get(feeder.chunk.remote(k)) for k in ks],
            "error": [b""] * len(ks)}


# What a stage raises is carried to the driver as data, not raised inside Ray: Ray Data
# wraps a raised exception into its own and loses the original's type (which decides, as in
# a local run, whether the run stops as transient, refused or a bug: pipeline.errors).
# Batches are of one chunk (batch_size=1), so an error belongs to that chunk.
STAGE1_COLUMNS = ("docs", "found", "stage1_seconds", "stage1_at", "settings")
STAGE2_COLUMNS = ("records", "stage1_seconds", "stage1_at", "stage2_seconds", "stage2_at",
                  "settings")


def error_payload(exc: BaseException, where: str) -> bytes:
    """What the driver needs of ``exc``: the exception itself where it pickles, and in any
    case its kind (``pipeline.errors``), type and words, to raise one of the same kind
    where the exception cannot be rebuilt there (a class the driver lacks)."""
    from pipeline.errors import kind_of

    exc.add_note(f"(in a Ray worker, {where}):\n" + "".join(traceback.format_exception(exc)))
    try:
        whole = pickle.dumps(exc)
        pickle.loads(whole)  # some exceptions pickle but do not unpickle
    except Exception:
        whole = None
    return pickle.dumps({"exception": whole, "kind": kind_of(exc).value,
                         "words": f"{type(exc).__name__}: {exc}"})


def raise_payload(payload: bytes) -> None:
    """Raise what ``error_payload`` carried, as the worker raised it or, where that cannot
    be rebuilt here, as an exception of its kind."""
    import errno

    from pipeline.errors import ErrorKind
    from stage2_rerank.errors import ServiceError

    found = pickle.loads(payload)
    if found["exception"] is not None:
        try:
            raise pickle.loads(found["exception"])
        except (ImportError, AttributeError, TypeError, pickle.UnpicklingError):
            pass
    words, kind = found["words"], ErrorKind(found["kind"])
    if kind is ErrorKind.TRANSIENT:
        raise ServiceError(words)
    if kind is ErrorKind.REFUSAL:
        raise OSError(errno.EIO, words)
    if kind is ErrorKind.INPUT:
        raise PipelineError(words)
    if kind is ErrorKind.INTERRUPTED:
        raise KeyboardInterrupt(words)
    raise RuntimeError(words)


def carried(worker, stage: Callable[[dict], dict], batch: dict,
            columns: tuple[str, ...]) -> dict:
    """``stage(batch)``; a batch that carries an error, or whose ``worker`` failed to load
    its model, or whose stage raises, goes on as that error (``error_payload``; the stage's
    other output ``columns`` empty)."""
    n = len(batch["k"])
    error = next((e for e in batch["error"] if e), b"")
    if not error and worker.failed is not None:
        error = error_payload(worker.failed, f"{type(worker).__name__} loading its model")
    if not error:
        try:
            return stage(batch)
        except Exception as exc:
            error = error_payload(exc, f"stage {stage.__name__}")
    empty = {"stage1_seconds": 0.0, "stage2_seconds": 0.0, "stage1_at": 0.0, "stage2_at": 0.0,
             "settings": ""}
    return {"k": list(batch["k"]), "error": [error] * n,
            **{c: [empty.get(c, b"")] * n for c in columns}}


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Stage1Worker:
    """An actor holding the ensemble: documents -> stage-1 candidates (or, for a document
    at fault, its failure record)."""

    def __init__(self, config: str, thresholds: str, threads: int) -> None:
        # What fails here (a model folder this node lacks, a GPU out of memory) would kill
        # the actor, and Ray reports a dead actor without its cause: it is kept, and each
        # batch carries it to the driver instead, which stops the run with it.
        self.failed: BaseException | None = None
        try:
            self._load(config, thresholds, threads)
        except Exception as exc:
            self.failed = exc

    def _load(self, config: str, thresholds: str, threads: int) -> None:
        from pipeline.recognizer import char_cache, load_ensemble
        from pipeline.thresholds import Thresholds

        _torch_threads(threads)
        cfg = RunConfig.model_validate_json(config)
        self.ensemble = load_ensemble(cfg.ensemble.path, cfg.ensemble.inference)
        self.cache = char_cache(cfg.ensemble.cache_dir or cfg.ensemble.path / "cache",
                                self.ensemble)
        self.thresholds = Thresholds.model_validate_json(thresholds)
        self.settings = json.dumps(self.ensemble.output_settings, sort_keys=True)

    def __call__(self, batch: dict) -> dict:
        return carried(self, self.stage_one, batch, STAGE1_COLUMNS)

    def stage_one(self, batch: dict) -> dict:
        from pipeline.predict import stage_one

        found, seconds, at = [], [], []
        for blob in batch["docs"]:
            docs = pickle.loads(blob)
            spent = {"stage1": 0.0}
            at.append(time.time())  # (when, for the stages' overlap: see RayEngine)
            results = guarded(docs, lambda idx, docs=docs, spent=spent: stage_one(
                [docs[i] for i in idx], ensemble=self.ensemble, thresholds=self.thresholds,
                char_cache=self.cache, seconds=spent))
            found.append(pickle.dumps(results))
            seconds.append(spent["stage1"])
        return {"k": list(batch["k"]), "docs": list(batch["docs"]), "found": found,
                "stage1_seconds": seconds, "stage1_at": at,
                "settings": [self.settings] * len(found), "error": list(batch["error"])}


class Stage2Worker:
    """An actor holding an LLM scorer (none: plain tasks make it without one): stage-1
    candidates -> scores -> kept spans -> the chunk's part-file records."""

    def __init__(self, config: str, thresholds: str, threads: int, llm: bool = True,
                 gpu_share: float = 0.0) -> None:
        self.failed: BaseException | None = None  # as in Stage1Worker
        self.scorer = None
        try:
            self._load(config, thresholds, threads, llm, gpu_share)
        except Exception as exc:
            self.failed = exc

    def _load(self, config: str, thresholds: str, threads: int, llm: bool,
              gpu_share: float) -> None:
        from pipeline.recognizer import load_llm
        from pipeline.thresholds import Thresholds

        if llm:
            _torch_threads(threads)
            cfg = RunConfig.model_validate_json(config)
            if cfg.llm.backend == "vllm" and 0 < gpu_share < 1:
                # vLLM takes 90% of a GPU's memory by default; this actor has a share of it
                cfg.llm.engine.setdefault("gpu_memory_utilization", round(0.85 * gpu_share, 2))
            self.scorer = load_llm(cfg.llm.model, cfg.llm.backend, cfg.llm.urls or None,
                                   cfg.ensemble.cache_dir or cfg.ensemble.path / "cache",
                                   cfg.llm.prompt_and_backend())
        self.thresholds = Thresholds.model_validate_json(thresholds)

    def records(self, docs: list[Document], found: list, spent: dict) -> list[dict]:
        """The records of one chunk (stage 1's failure records kept as they are). Where a
        document failed in stage 1, a local run has taken the chunk's documents one by one
        through both stages; so are they here through stage 2 (the LLM's batches, and so
        its scores to the last bit, are those of a local run)."""
        live = [i for i, f in enumerate(found) if not isinstance(f, dict)]

        def work(idx: list[int]) -> list[dict]:
            return chunk_records([docs[live[j]] for j in idx], [found[live[j]] for j in idx],
                                 scorer=self.scorer, thresholds=self.thresholds, seconds=spent)

        if len(live) < len(found):
            done = iter(r for j in range(len(live))
                        for r in guarded([docs[live[j]]], lambda _, j=j: work([j])))
        else:
            done = iter(guarded([docs[i] for i in live], work))
        return [f if isinstance(f, dict) else next(done) for f in found]

    def __call__(self, batch: dict) -> dict:
        return carried(self, self.stage_two, batch, STAGE2_COLUMNS)

    def stage_two(self, batch: dict) -> dict:
        parts, seconds, at = [], [], []
        for blob, found in zip(batch["docs"], batch["found"]):
            spent = {"stage2": 0.0}
            at.append(time.time())
            parts.append(pickle.dumps(self.records(pickle.loads(blob), pickle.loads(found),
                                                   spent)))
            seconds.append(spent["stage2"])
        return {"k": list(batch["k"]), "records": parts,
                "stage1_seconds": list(batch["stage1_seconds"]),
                "stage1_at": list(batch["stage1_at"]), "stage2_seconds": seconds,
                "stage2_at": at, "settings": list(batch["settings"]),
                "error": list(batch["error"])}


def finish_without_llm(batch: dict, thresholds: str) -> dict:
    """Stage 2 of a run without an LLM: the records, in a plain task."""
    return Stage2Worker("", thresholds, 1, llm=False)(batch)
