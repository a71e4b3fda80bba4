"""``pipeline run --engine ray``: the same run on a Ray cluster, with the same outputs.

The driver (the ``pipeline run`` process) does what a local run does around the models: it
reads the corpus, keeps the part files already written, and writes each new part as it
comes back. The chunks still to do (the very chunks of a local run, so the parts, and the
outputs made from them, are byte for byte a local run's) flow through a Ray Data pipeline:

    chunk numbers -> read (tasks: a chunk's documents, from the corpus feeder)
                  -> stage 1 (an actor pool, each actor holding the ensemble)
                  -> stage 2 (an actor pool, each actor holding an LLM scorer;
                              plain tasks without an LLM)
                  -> the driver, which writes part k

The stages are the project's own functions (``stage_one``, ``chunk_records``), and so is
the reader: the corpus feeder is an actor on the driver's machine that reads the corpus in
order with ``open_corpus`` and hands out chunks by number. Stage 1 and stage 2 run at the
same time on different actors, so the ensemble's GPUs do not wait on the LLM.

Ray's own retries restart a lost actor and rerun a lost task (a worker node gone); a part
is written once, atomically, so a driver killed at any moment loses at most the chunks in
flight, and its rerun ends with the same bytes. An exception of the stages' own (the LLM
service down) stops the run as it does a local one. Each wait has a limit
(``ray.stall_seconds``): a run that finishes no part for that long stops and says why.

Traps designed around (ray#44687): actors that each claim a whole CPU on a small cluster
leave none to the read tasks and the run hangs without a word, so the pools claim
fractions and a share of the CPUs is left to the readers; an LLM stage on a cluster
without GPUs asks for CPUs. Usage statistics stay off (``RAY_USAGE_STATS_ENABLED=0``)
unless the environment says otherwise: clinical sites must not phone home.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pipeline.documents import Document
from pipeline.errors import PipelineError
from pipeline.run import RunSummary, chunk_records, chunked, guarded, in_shard
from pipeline.settings import RaySettings, RunConfig

logger = logging.getLogger(__name__)

READ_CPUS = 0.05  # a read task or a stage-2 task without an LLM: little work, many at once


@dataclass(frozen=True)
class Pools:
    """How many actors each stage gets, and what each claims."""

    stage1_actors: int
    stage1_cpus: float
    stage1_gpus: float
    llm_actors: int
    llm_cpus: float
    llm_gpus: float

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plan(settings: RaySettings, resources: dict[str, float], llm: bool,
         largest: dict[str, float] | None = None) -> Pools:
    """The pools of a run on a cluster with ``resources`` (``ray.cluster_resources()``),
    whose largest node has ``largest`` (default: all of it): what ``settings`` gives, and
    sensible defaults for the rest.

    With GPUs, each stage-1 actor and each LLM actor gets one (both half of it on a
    machine of one GPU). Without, a tenth of the CPUs (at least half a CPU) is left to the
    readers and the driver's writes, and the rest is split between the two stages, in
    actors of at most 4 CPUs (threads) each. Fractions are allowed throughout."""
    cpus, gpus = float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
    spare = max(0.5, 0.1 * cpus)
    pools = 2 if llm else 1
    budget = max(cpus - spare, 0.25 * pools) / pools  # CPUs a stage may claim in all
    if gpus >= 1:
        share = 0.5 if (gpus < 2 and llm) else 1.0
        llm_gpus = settings.llm_gpus if settings.llm_gpus is not None else (share if llm else 0)
        stage1_gpus = settings.stage1_gpus if settings.stage1_gpus is not None else share
        llm_actors = settings.llm_actors or (max(1, int(gpus * 0.5 / llm_gpus)) if llm and
                                             llm_gpus else 1)
        left = gpus - (llm_actors * llm_gpus if llm else 0)
        stage1_actors = settings.stage1_actors or (max(1, int(left / stage1_gpus))
                                                   if stage1_gpus else 1)
    else:
        llm_gpus = settings.llm_gpus or 0.0
        stage1_gpus = settings.stage1_gpus or 0.0
        stage1_actors = settings.stage1_actors or max(1, int(budget // 4))
        llm_actors = settings.llm_actors or max(1, int(budget // 4))
    largest = largest or resources
    node_cpus = float(largest.get("CPU", cpus))
    most = min(4.0, max(node_cpus - READ_CPUS, 0.1))  # what one actor may claim
    stage1_cpus = settings.stage1_cpus or round(min(most, budget / stage1_actors), 2)
    llm_cpus = settings.llm_cpus or round(min(most, budget / llm_actors), 2)
    for name, each in (("stage1", stage1_cpus), ("llm", llm_cpus if llm else 0)):
        if each > node_cpus + 1e-9:
            raise PipelineError(f"each {name} actor asks for {each:g} CPUs and the largest "
                                f"node of the cluster has {node_cpus:g}: it could never be "
                                f"placed; claim less (ray.{name}_cpus)")
    need = stage1_actors * stage1_cpus + (llm_actors * llm_cpus if llm else 0) + READ_CPUS
    if need > cpus + 1e-9:
        raise PipelineError(
            f"the Ray pools ask for {need:g} CPUs ({stage1_actors} stage-1 actor(s) × "
            f"{stage1_cpus:g}" + (f", {llm_actors} LLM actor(s) × {llm_cpus:g}" if llm else "")
            + f", and the readers) and the cluster has {cpus:g}: claim fractions "
            "(ray.stage1_cpus, ray.llm_cpus) or fewer actors, or it would wait forever")
    for name, each, count in (("stage1", stage1_gpus, stage1_actors),
                              ("llm", llm_gpus, llm_actors if llm else 0)):
        if each * count > gpus + 1e-9:
            raise PipelineError(f"the {name} pool asks for {each * count:g} GPUs and the "
                                f"cluster has {gpus:g}: ray.{name}_gpus 0 runs it on CPUs")
    return Pools(stage1_actors, stage1_cpus, stage1_gpus, llm_actors, llm_cpus, llm_gpus)


def threads_for(cpus: float) -> int:
    return max(1, round(cpus))


# ---- what runs on the cluster -------------------------------------------------------------

class CorpusFeeder:
    """The chunks of the corpus by number, read in order by the project's own reader.

    Lives on the driver's machine (where the input is). A chunk asked for ahead of its turn
    is read up to, and the ones passed on the way are kept until asked for; one asked for
    again (a read task retried after a lost node) is read again from the start."""

    def __init__(self, reopen: Callable[[], Iterable[Document]], shard: tuple[int, int],
                 chunk_size: int) -> None:
        self.reopen, self.shard, self.chunk_size = reopen, shard, chunk_size
        self._start()

    def _start(self) -> None:
        mine = (d for d in self.reopen() if in_shard(d.id, self.shard))
        self.chunks = enumerate(chunked(mine, self.chunk_size))
        self.next = 0
        self.waiting: dict[int, list[Document]] = {}

    def chunk(self, k: int) -> bytes:
        if k in self.waiting:
            return pickle.dumps(self.waiting.pop(k))
        if k < self.next:
            self._start()
        for i, docs in self.chunks:
            self.next = i + 1
            if i == k:
                return pickle.dumps(docs)
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
STAGE1_COLUMNS = ("docs", "found", "stage1_seconds", "settings")
STAGE2_COLUMNS = ("records", "stage1_seconds", "stage2_seconds", "settings")


def carried(stage: Callable[[dict], dict], batch: dict, columns: tuple[str, ...]) -> dict:
    """``stage(batch)``; a batch that carries an error, or whose stage raises, goes on as
    its error (the stage's other output ``columns`` empty)."""
    n = len(batch["k"])
    error = next((e for e in batch["error"] if e), b"")
    if not error:
        try:
            return stage(batch)
        except Exception as exc:
            exc.add_note(f"(in a Ray worker of the stage {stage.__name__}):\n"
                         + "".join(traceback.format_exception(exc)))
            try:
                error = pickle.dumps(exc)
            except Exception:  # an exception that does not pickle: its words, at least
                error = pickle.dumps(PipelineError(f"{type(exc).__name__}: {exc}"))
    empty = {"stage1_seconds": 0.0, "stage2_seconds": 0.0, "settings": ""}
    return {"k": list(batch["k"]), "error": [error] * n,
            **{c: [empty.get(c, b"")] * n for c in columns}}


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Stage1Worker:
    """An actor holding the ensemble: documents -> stage-1 candidates (or, for a document
    at fault, its failure record)."""

    def __init__(self, config: str, thresholds: str, threads: int) -> None:
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
        return carried(self.stage_one, batch, STAGE1_COLUMNS)

    def stage_one(self, batch: dict) -> dict:
        from pipeline.predict import stage_one

        found, seconds = [], []
        for blob in batch["docs"]:
            docs = pickle.loads(blob)
            spent = {"stage1": 0.0}
            results = guarded(docs, lambda idx, docs=docs, spent=spent: stage_one(
                [docs[i] for i in idx], ensemble=self.ensemble, thresholds=self.thresholds,
                char_cache=self.cache, seconds=spent))
            found.append(pickle.dumps(results))
            seconds.append(spent["stage1"])
        return {"k": list(batch["k"]), "docs": list(batch["docs"]), "found": found,
                "stage1_seconds": seconds, "settings": [self.settings] * len(found),
                "error": list(batch["error"])}


class Stage2Worker:
    """An actor holding an LLM scorer (none: plain tasks make it without one): stage-1
    candidates -> scores -> kept spans -> the chunk's part-file records."""

    def __init__(self, config: str, thresholds: str, threads: int, llm: bool = True) -> None:
        from pipeline.recognizer import load_llm
        from pipeline.thresholds import Thresholds

        self.scorer = None
        if llm:
            _torch_threads(threads)
            cfg = RunConfig.model_validate_json(config)
            self.scorer = load_llm(cfg.llm.model, cfg.llm.backend, cfg.llm.urls or None,
                                   cfg.ensemble.cache_dir or cfg.ensemble.path / "cache",
                                   cfg.llm.prompt_and_backend())
        self.thresholds = Thresholds.model_validate_json(thresholds)

    def records(self, docs: list[Document], found: list, spent: dict) -> list[dict]:
        """The records of one chunk (stage 1's failure records kept as they are)."""
        live = [i for i, f in enumerate(found) if not isinstance(f, dict)]

        def work(idx: list[int]) -> list[dict]:
            return chunk_records([docs[live[j]] for j in idx], [found[live[j]] for j in idx],
                                 scorer=self.scorer, thresholds=self.thresholds, seconds=spent)

        done = iter(guarded([docs[i] for i in live], work))
        return [f if isinstance(f, dict) else next(done) for f in found]

    def __call__(self, batch: dict) -> dict:
        return carried(self.stage_two, batch, STAGE2_COLUMNS)

    def stage_two(self, batch: dict) -> dict:
        parts, seconds = [], []
        for blob, found in zip(batch["docs"], batch["found"]):
            spent = {"stage2": 0.0}
            parts.append(pickle.dumps(self.records(pickle.loads(blob), pickle.loads(found),
                                                   spent)))
            seconds.append(spent["stage2"])
        return {"k": list(batch["k"]), "records": parts,
                "stage1_seconds": list(batch["stage1_seconds"]), "stage2_seconds": seconds,
                "settings": list(batch["settings"]), "error": list(batch["error"])}


def finish_without_llm(batch: dict, thresholds: str) -> dict:
    """Stage 2 of a run without an LLM: the records, in a plain task."""
    return Stage2Worker("", thresholds, 1, llm=False)(batch)


# ---- the driver's side --------------------------------------------------------------------

def import_ray():
    """``ray`` with Ray Data, imported keeping the log levels set before (Ray sets its
    loggers to INFO when imported; the CLI has them at WARNING, DEBUG with --verbose)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    levels = {name: logging.getLogger(name).level for name in ("ray", "ray.data")}
    import ray
    import ray.data  # noqa: F401

    for name, level in levels.items():
        if level:
            logging.getLogger(name).setLevel(level)
    # the run shows its own progress; Ray Data's bars are off, and need not say so
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return ray


def start_ray(address: str | None, **options) -> bool:
    """Connect to the cluster at ``address``, or start a Ray of this machine (None).
    False if this process is already connected (then it is not ours to shut down)."""
    ray = import_ray()

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a Ray of this machine"
        raise PipelineError(f"could not start or reach {where}: {exc}") from None
    return True


def plain_error(exc: BaseException) -> BaseException:
    """The stages' own exception inside Ray's wrappers (a ``RayTaskError`` carries it as
    ``cause``), so that the CLI sorts it as a local run would (``pipeline.errors``)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or not type(exc).__module__.startswith("ray"):
            break
        exc = inner
    return exc


class RayEngine:
    """Runs the chunks still to do on Ray (see the module's doc); the driver keeps no
    model. ``ensemble``: the ensemble's manifest, loaded without its models, for the
    settings the workers must share; ``reopen``: a picklable callable that reads the
    corpus again, as the driver reads it (``functools.partial(open_corpus, ...)``)."""

    name = "ray"

    def __init__(self, config: RunConfig, *, thresholds, ensemble,
                 reopen: Callable[[], Iterable[Document]], shard: tuple[int, int] = (0, 1),
                 init_options: dict | None = None) -> None:
        self.config, self.thresholds, self.ensemble = config, thresholds, ensemble
        self.reopen, self.shard = reopen, shard
        self.init_options = init_options or {}
        self.llm = config.llm.model is not None
        self.resources: dict[str, float] = {}
        self.pools: Pools | None = None

    def process(self, chunks: Iterable[tuple[int, list[Document]]],
                summary: RunSummary) -> Iterator[tuple[int, list[dict]]]:
        sizes = {k: len(chunk) for k, chunk in chunks}  # reads the corpus; keeps no text
        if not sizes:
            return
        started = start_ray(self.config.ray.address, **self.init_options)
        try:
            yield from self._run(sizes, summary)
        finally:
            if started:
                import ray

                ray.shutdown()

    def _dataset(self, ks: list[int]):
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.resources = {k: v for k, v in ray.cluster_resources().items()
                          if k in ("CPU", "GPU", "memory", "object_store_memory")}
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.resources["nodes"] = len(nodes)
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default=None)
        pools = self.pools = plan(self.config.ray, self.resources, self.llm, largest)
        here = ray.get_runtime_context().get_node_id()  # the input is on this machine
        feeder = ray.remote(CorpusFeeder).options(
            num_cpus=0, max_restarts=-1, max_task_retries=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(self.reopen, self.shard, self.config.output.chunk_size)
        config = self.config.model_dump_json()
        thresholds = self.thresholds.model_dump_json()
        ds = ray.data.from_items([{"k": k} for k in ks], override_num_blocks=min(len(ks), 10_000))
        # Light tasks claim little CPU, so that they always find room, and run few at a
        # time: each new worker process costs seconds to start, and the feeder serves one
        # chunk at a time anyway
        ds = ds.map_batches(read_chunks, batch_size=1, num_cpus=READ_CPUS,
                            compute=ray.data.TaskPoolStrategy(size=2),
                            fn_kwargs={"feeder": feeder})
        ds = ds.map_batches(Stage1Worker, batch_size=1,
                            fn_constructor_kwargs={"config": config, "thresholds": thresholds,
                                                   "threads": threads_for(pools.stage1_cpus)},
                            compute=ray.data.ActorPoolStrategy(size=pools.stage1_actors),
                            num_cpus=pools.stage1_cpus, num_gpus=pools.stage1_gpus)
        if self.llm:
            ds = ds.map_batches(Stage2Worker, batch_size=1,
                                fn_constructor_kwargs={"config": config,
                                                       "thresholds": thresholds,
                                                       "threads": threads_for(pools.llm_cpus)},
                                compute=ray.data.ActorPoolStrategy(size=pools.llm_actors),
                                num_cpus=pools.llm_cpus, num_gpus=pools.llm_gpus)
        else:
            ds = ds.map_batches(finish_without_llm, batch_size=1, num_cpus=READ_CPUS,
                                compute=ray.data.TaskPoolStrategy(size=2),
                                fn_kwargs={"thresholds": thresholds})
        return ds

    def _run(self, sizes: dict[int, int], summary: RunSummary
             ) -> Iterator[tuple[int, list[dict]]]:
        context = import_ray().data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own progress says it
        context.print_on_execution_start = False
        context.raise_original_map_exception = True  # what a worker raised, not a wrapper
        context.issue_detectors_config.detectors = []  # its advice is for other workloads
        ds = self._dataset(sorted(sizes))
        expected = json.dumps(self.ensemble.output_settings, sort_keys=True)
        rows: queue.Queue = queue.Queue(maxsize=4)
        done = object()

        def pull() -> None:  # Ray's iterator has no timeout: it runs beside the wait
            try:
                for row in ds.iter_rows():
                    rows.put(row)
                rows.put(done)
            except BaseException as exc:  # handed to the driver's thread
                rows.put(exc)

        threading.Thread(target=pull, name="ray-rows", daemon=True).start()
        left = set(sizes)
        while left:
            try:
                row = rows.get(timeout=self.config.ray.stall_seconds)
            except queue.Empty:
                raise PipelineError(self._stalled(len(left))) from None
            if row is done:
                raise PipelineError(f"the Ray pipeline ended with {len(left)} chunk(s) not "
                                    f"done (the first: part {min(left)}); run it again")
            if isinstance(row, BaseException):
                raise plain_error(row)
            if row["error"]:
                raise pickle.loads(row["error"])
            if row["settings"] != expected:
                raise PipelineError(
                    f"the stage-1 workers compute with {row['settings']} where this machine "
                    f"would use {expected} (the outputs would differ from a local run's): set "
                    "ensemble.inference.bf16 (and device) in the run configuration")
            k = int(row["k"])
            summary.seconds["stage1"] += float(row["stage1_seconds"])
            summary.seconds["stage2"] += float(row["stage2_seconds"])
            left.discard(k)
            yield k, pickle.loads(row["records"])

    def _stalled(self, left: int) -> str:
        pools = self.pools.as_dict() if self.pools else {}
        return (f"no chunk finished in {self.config.ray.stall_seconds:g} s ({left} left); the "
                f"cluster has {self.resources} and the stages ask for {pools}. If the actors "
                "cannot all be placed (see `ray status`), claim fewer CPUs or GPUs; a slow "
                "LLM may need a longer ray.stall_seconds. The parts written so far are kept.")

    def describe(self) -> dict:
        return {"engine": self.name, "cluster": self.resources,
                "pools": self.pools.as_dict() if self.pools else {}}


def check_installed() -> None:
    """A clear error where Ray is not installed (before any model loads)."""
    from importlib.util import find_spec

    if find_spec("ray") is None or find_spec("ray.data") is None:
        raise PipelineError("--engine ray needs Ray Data: pip install 'clinner-2stage[ray]' "
                            "(or the ray[data] package)")
