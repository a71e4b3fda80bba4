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

import hashlib
import json
import logging
import os
import pickle
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.documents import Document
from pipeline.errors import PipelineError
from pipeline.run import CORPUS_CHANGED, RunSummary
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
         largest: dict[str, float] | None = None, llm_on_gpu: bool = True) -> Pools:
    """The pools of a run on a cluster with ``resources`` (``ray.cluster_resources()``),
    whose largest node has ``largest`` (default: all of it): what ``settings`` gives, and
    sensible defaults for the rest. ``llm_on_gpu``: the LLM runs in its actors (vllm, hf),
    not on servers (openai), whose actors need no GPU.

    With GPUs, each stage-1 actor and each LLM actor gets one (both half of it on a
    machine of one GPU). Without, a tenth of the CPUs (at least half a CPU) is left to the
    readers and the driver's writes, and the rest is split between the two stages, in
    actors of at most 4 CPUs (threads) each. Fractions are allowed throughout. Pools that
    could never all be placed are refused here, not found by a run that waits for ever."""
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    if cpus <= 0:
        raise PipelineError("the Ray cluster has no CPUs (ray.cluster_resources() lists none)")
    spare = max(0.5, 0.1 * cpus)
    pools = 2 if llm else 1
    budget = max(cpus - spare, 0.25 * pools) / pools  # CPUs a stage may claim in all
    llm_gpu_default = 0.0
    if gpus >= 1:
        share = 0.5 if (gpus < 2 and llm and llm_on_gpu) else 1.0
        llm_gpu_default = share if (llm and llm_on_gpu) else 0.0
    llm_gpus = settings.llm_gpus if settings.llm_gpus is not None else llm_gpu_default
    stage1_gpus = settings.stage1_gpus if settings.stage1_gpus is not None else \
        (share if gpus >= 1 else 0.0)
    if gpus >= 1:
        llm_actors = settings.llm_actors or (max(1, int(gpus * 0.5 / llm_gpus)) if llm and
                                             llm_gpus else 1)
        left = gpus - (llm_actors * llm_gpus if llm else 0)
        stage1_actors = settings.stage1_actors or (max(1, int(left / stage1_gpus))
                                                   if stage1_gpus else 1)
    else:
        stage1_actors = settings.stage1_actors or max(1, int(budget // 4))
        llm_actors = settings.llm_actors or max(1, int(budget // 4))
    largest = largest or resources
    node_cpus = float(largest.get("CPU", cpus))
    most = min(4.0, max(node_cpus - READ_CPUS, 0.1))  # what one actor may claim
    stage1_cpus = settings.stage1_cpus or round(min(most, budget / stage1_actors), 2)
    llm_cpus = settings.llm_cpus or round(min(most, budget / llm_actors), 2)
    if not llm:
        llm_actors, llm_cpus, llm_gpus = 0, 0.0, 0.0
    for name, each in (("stage1", stage1_cpus), ("llm", llm_cpus)):
        if each > node_cpus + 1e-9:
            raise PipelineError(f"each {name} actor asks for {each:g} CPUs and the largest "
                                f"node of the cluster has {node_cpus:g}: it could never be "
                                f"placed; claim less (ray.{name}_cpus)")
    what = (f"{stage1_actors} stage-1 actor(s) × {{}}" +
            (f", {llm_actors} LLM actor(s) × {{}}" if llm else ""))
    need = stage1_actors * stage1_cpus + llm_actors * llm_cpus + READ_CPUS
    if need > cpus + 1e-9:
        raise PipelineError(
            f"the Ray pools ask for {need:g} CPUs ({what.format(f'{stage1_cpus:g}', f'{llm_cpus:g}')}"
            f", and the readers) and the cluster has {cpus:g}: claim fractions "
            "(ray.stage1_cpus, ray.llm_cpus) or fewer actors, or it would wait forever")
    need = stage1_actors * stage1_gpus + llm_actors * llm_gpus
    if need > gpus + 1e-9:
        raise PipelineError(
            f"the Ray pools ask for {need:g} GPUs ({what.format(f'{stage1_gpus:g}', f'{llm_gpus:g}')}"
            f") and the cluster has {gpus:g}: fewer actors, fractions, or 0 to run a pool on "
            "CPUs (ray.stage1_gpus, ray.llm_gpus)")
    return Pools(stage1_actors, stage1_cpus, stage1_gpus, llm_actors, llm_cpus, llm_gpus)


def threads_for(cpus: float) -> int:
    return max(1, round(cpus))


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


def probe(address: str, seconds: float = 10.0) -> None:
    """A ConnectionError unless something listens at ``address`` (``host:port`` or
    ``ray://host:port``; ``auto`` is Ray's own to find): ``ray.init`` waits for an absent
    cluster for minutes, saying only that it retries."""
    import socket

    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc}); is it started "
                              "(`ray start --head`), and is that its address?") from None


def start_ray(address: str | None, **options) -> bool:
    """Connect to the cluster at ``address``, or start a Ray of this machine (None).
    False if this process is already connected (then it is not ours to shut down)."""
    ray = import_ray()

    if ray.is_initialized():
        return False
    if address:
        probe(address)
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False,
                 log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a Ray of this machine"
        raise ConnectionError(f"could not start or reach {where}: {exc}") from None
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


class Rows:
    """The rows of a dataset, pulled by a thread of their own (Ray's iterator has no time
    limit), so that the driver waits for each with one. ``close`` stops the pulling at the
    next row, which ends the dataset's execution (its actors with it)."""

    END = object()

    def __init__(self, ds) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        threading.Thread(target=self._pull, args=(ds,), name="ray-rows", daemon=True).start()

    def _pull(self, ds) -> None:
        try:
            for row in ds.iter_rows():
                self._hand(row)
                if self.stop.is_set():
                    return  # leaving the loop closes Ray's iterator
            self._hand(self.END)
        except BaseException as exc:  # handed to the driver's thread
            self._hand(exc)

    def _hand(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def next(self, seconds: float, stalled: Callable[[], str]):
        """The next row, or END; what a stage raised, raised here (as in a local run);
        a TimeoutError saying ``stalled()`` after ``seconds`` without one."""
        try:
            row = self.queue.get(timeout=seconds)
        except queue.Empty:  # the run stops as after a service fault, and says why
            raise TimeoutError(stalled()) from None
        if isinstance(row, BaseException):
            raise plain_error(row)
        if row is not self.END and row["error"]:
            from pipeline.ray_workers import raise_payload

            raise_payload(row["error"])
        return row

    def close(self) -> None:
        self.stop.set()


class RayEngine:
    """Runs the chunks still to do on Ray (see the module's doc); the driver keeps no
    model. ``ensemble``: the ensemble's manifest, loaded without its models, for the
    settings the workers must share; ``reopen``: a picklable callable that reads the
    corpus again, as the driver reads it (``functools.partial(open_corpus, ...)``)."""

    name = "ray"

    def __init__(self, config: RunConfig, *, thresholds, ensemble,
                 reopen: Callable[[], Iterable[Document]], shard: tuple[int, int] = (0, 1),
                 init_options: dict | None = None) -> None:
        from pipeline.recognizer import resolve_backend
        from pipeline.settings import anchored

        # the workers' working folders are not this one: paths go to them absolute
        self.config = RunConfig.model_validate(
            anchored(config.model_dump(mode="json"), Path.cwd().resolve()))
        self.thresholds, self.ensemble = thresholds, ensemble
        self.reopen, self.shard = reopen, shard
        self.init_options = init_options or {}
        self.llm = config.llm.model is not None
        self.llm_on_gpu = resolve_backend(config.llm.model, config.llm.backend,
                                          config.llm.urls or None) != "openai"
        self.resources: dict[str, float] = {}
        self.pools: Pools | None = None
        # (start, end) wall-clock times of each chunk's work in each stage
        self.busy: dict[str, list[tuple[float, float]]] = {"stage1": [], "stage2": []}

    def process(self, chunks: Iterable[tuple[int, list[Document]]],
                summary: RunSummary) -> Iterator[tuple[int, list[dict]]]:
        # the driver's own read of the corpus: a digest of each chunk's documents (no text),
        # against which what comes back is checked
        digests = {k: ids_digest(d.id for d in chunk) for k, chunk in chunks}
        if not digests:
            return
        started = start_ray(self.config.ray.address, **self.init_options)
        try:
            yield from self._run(digests, summary)
        finally:
            if started:
                import ray

                ray.shutdown()

    def _dataset(self, ks: list[int]):
        from pipeline.ray_workers import (
            CorpusFeeder,
            Stage1Worker,
            Stage2Worker,
            finish_without_llm,
            read_chunks,
        )

        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.resources = {k: v for k, v in ray.cluster_resources().items()
                          if k in ("CPU", "GPU", "memory", "object_store_memory")}
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.resources["nodes"] = len(nodes)
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default=None)
        pools = self.pools = plan(self.config.ray, self.resources, self.llm, largest,
                                  self.llm_on_gpu)
        here = ray.get_runtime_context().get_node_id()  # the input is on this machine
        feeder = ray.remote(CorpusFeeder).options(
            num_cpus=0, max_restarts=-1, max_task_retries=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(self.reopen, self.shard, self.config.output.chunk_size, ks)
        config = self.config.model_dump_json()
        thresholds = self.thresholds.model_dump_json()
        ds = ray.data.from_items([{"k": k} for k in ks], override_num_blocks=min(len(ks), 10_000))
        light = min(2, len(ks))
        # Light tasks claim little CPU, so that they always find room, and run few at a
        # time: each new worker process costs seconds to start, and the feeder serves one
        # chunk at a time anyway
        ds = ds.map_batches(read_chunks, batch_size=1, num_cpus=READ_CPUS,
                            compute=ray.data.TaskPoolStrategy(size=light),
                            fn_kwargs={"feeder": feeder})
        ds = ds.map_batches(Stage1Worker, batch_size=1,
                            fn_constructor_kwargs={"config": config, "thresholds": thresholds,
                                                   "threads": self.threads(pools.stage1_cpus)},
                            compute=ray.data.ActorPoolStrategy(size=pools.stage1_actors),
                            num_cpus=pools.stage1_cpus, num_gpus=pools.stage1_gpus)
        if self.llm:
            ds = ds.map_batches(Stage2Worker, batch_size=1,
                                fn_constructor_kwargs={"config": config,
                                                       "thresholds": thresholds,
                                                       "threads": self.threads(pools.llm_cpus),
                                                       "gpu_share": pools.llm_gpus},
                                compute=ray.data.ActorPoolStrategy(size=pools.llm_actors),
                                num_cpus=pools.llm_cpus, num_gpus=pools.llm_gpus)
        else:
            ds = ds.map_batches(finish_without_llm, batch_size=1, num_cpus=READ_CPUS,
                                compute=ray.data.TaskPoolStrategy(size=light),
                                fn_kwargs={"thresholds": thresholds})
        return ds

    def threads(self, cpus: float) -> int:
        """torch threads of an actor claiming ``cpus``: the run's setting, else its CPUs."""
        return self.config.threads or threads_for(cpus)

    def _run(self, digests: dict[int, bytes], summary: RunSummary
             ) -> Iterator[tuple[int, list[dict]]]:
        context = import_ray().data.DataContext.get_current()
        context.enable_progress_bars = False  # the run's own progress says it
        context.print_on_execution_start = False
        context.raise_original_map_exception = True  # what a worker raised, not a wrapper
        context.issue_detectors_config.detectors = []  # its advice is for other workloads
        ds = self._dataset(sorted(digests))
        expected = json.dumps(self.ensemble.output_settings, sort_keys=True)
        rows = Rows(ds)
        left = set(digests)
        try:
            while left:
                row = rows.next(self.config.ray.stall_seconds, lambda: self._stalled(len(left)))
                if row is Rows.END:
                    raise PipelineError(f"the Ray pipeline ended with {len(left)} chunk(s) not "
                                        f"done (the first: part {min(left)}); run it again")
                if row["settings"] != expected:
                    raise PipelineError(
                        f"the stage-1 workers compute with {row['settings']} where this "
                        f"machine would use {expected} (the outputs would differ from a local "
                        "run's): set ensemble.inference.bf16 (and device) in the run "
                        "configuration")
                k = int(row["k"])
                if k not in left:  # (a retried task's second answer)
                    continue
                records = pickle.loads(row["records"])
                if ids_digest(r["id"] for r in records) != digests[k]:
                    raise PipelineError(f"part {k} came back with other documents than this "
                                        f"run read for it: {CORPUS_CHANGED}")
                for stage in ("stage1", "stage2"):
                    took, at = float(row[f"{stage}_seconds"]), float(row[f"{stage}_at"])
                    summary.seconds[stage] += took
                    self.busy[stage].append((at, at + took))
                left.discard(k)
                yield k, records
        finally:
            rows.close()

    def _stalled(self, left: int) -> str:
        pools = self.pools.as_dict() if self.pools else {}
        return (f"no chunk finished in {self.config.ray.stall_seconds:g} s ({left} left); the "
                f"cluster has {self.resources} and the stages ask for {pools}. If the actors "
                "cannot all be placed (see `ray status`), claim fewer CPUs or GPUs; a slow "
                "LLM may need a longer ray.stall_seconds. The parts written so far are kept.")

    def describe(self) -> dict:
        """For summary.json: the engine, the cluster, the pools, and for how many seconds
        both stages were at work at once (the LLM's pool not waiting on stage 1, or the
        other way round; 0 for a run without an LLM, whose stage 2 is bookkeeping)."""
        both = overlap(self.busy["stage1"], self.busy["stage2"]) if self.llm else 0.0
        return {"engine": self.name, "cluster": self.resources,
                "pools": self.pools.as_dict() if self.pools else {},
                "stages_overlap_seconds": round(both, 3)}


def ids_digest(ids: Iterable[str]) -> bytes:
    return hashlib.sha1("\n".join(ids).encode("utf-8", "surrogatepass")).digest()


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds during which some span of ``a`` and some span of ``b`` both run."""
    total, x, y = 0.0, union(a), union(b)
    i = j = 0
    while i < len(x) and j < len(y):
        total += max(0.0, min(x[i][1], y[j][1]) - max(x[i][0], y[j][0]))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


def check_installed() -> None:
    """A clear error where Ray is not installed (before any model loads)."""
    from importlib.util import find_spec

    ray = find_spec("ray")  # (a submodule's spec would import ray, and its logging setup)
    if ray is None or not any((Path(p) / "data").is_dir() for p in ray.submodule_search_locations or ()):
        raise PipelineError("--engine ray needs Ray Data: pip install 'clinner-2stage[ray]' "
                            "(or the ray[data] package)")
