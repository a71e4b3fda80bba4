"""One configuration tree for what ``run``, ``tune`` and ``ablate`` share: the ensemble and
how it runs, the LLM and its backend, the thresholds, the outputs.

Every level refuses unknown keys and every default is written here once. A file
(``--config run.toml`` or ``.json``) gives any part of the tree; command-line options
override it; ``--print-config`` shows the result. ``run.json``, the resume guard of a run's
output folder, records the tree, so a changed setting is named by its path
(``llm.template``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from pipeline.errors import PipelineError
from stage1_ensemble.config import InferenceConfig, Strict, problems_of
from stage2_rerank.config import LlmConfig

FORMATS = ("tsv", "jsonl", "brat")


class EnsembleSettings(Strict):
    path: Path | None = None  # the ensemble folder (from `pipeline train`)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    cache_dir: Path | None = None  # None: ENSEMBLE/cache


class LlmSettings(LlmConfig):
    """The LLM (none: the ensemble alone), where it runs, and its prompt and backend
    settings (``LlmConfig``)."""

    model: Path | None = None  # a model folder; with urls, the model the servers serve
    backend: Literal["vllm", "openai", "hf"] | None = None  # None: openai with urls, else
    urls: list[str] = Field(default_factory=list)  # vllm where installed, else hf

    def prompt_and_backend(self) -> LlmConfig:
        return LlmConfig.model_validate(self.model_dump(include=set(LlmConfig.model_fields)))


class ThresholdSettings(Strict):
    file: Path | None = None  # per-class thresholds from `pipeline tune` (override these)
    stage1: float = Field(0.6, ge=0.0, le=1.0)  # ensemble probability a candidate needs
    stage2: float = Field(0.5, ge=0.0, le=1.0)  # LLM P(yes) a candidate needs to be kept


class OutputSettings(Strict):
    formats: list[Literal["tsv", "jsonl", "brat"]] = Field(["tsv", "jsonl"], min_length=1)
    chunk_size: int = Field(16, ge=1)  # documents per part file
    shard: str = "0/1"  # i/n: this machine's share of the corpus

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str) -> str:
        from pipeline.run import parse_shard

        try:
            parse_shard(value, "")
        except PipelineError as exc:
            raise ValueError(str(exc).strip()) from None
        return value


class RaySettings(Strict):
    """Where and with what a run on Ray goes (``engine = "ray"``). Pool sizes and resources
    left unset come from the cluster's resources (``pipeline.ray_engine.plan``)."""

    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None:
    # a Ray of this machine, started for the run and shut down after it
    stage1_actors: int | None = Field(None, ge=1)  # actors holding the ensemble
    stage1_cpus: float | None = Field(None, gt=0)  # CPUs each claims (fractions allowed)
    stage1_gpus: float | None = Field(None, ge=0)  # GPUs each claims (0.5: two a GPU)
    llm_actors: int | None = Field(None, ge=1)  # actors holding an LLM scorer
    llm_cpus: float | None = Field(None, gt=0)
    llm_gpus: float | None = Field(None, ge=0)
    # a run in which no part is finished for this long stops and says why, not hangs
    stall_seconds: float = Field(1800.0, gt=0)


class RunConfig(Strict):
    ensemble: EnsembleSettings = Field(default_factory=EnsembleSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    thresholds: ThresholdSettings = Field(default_factory=ThresholdSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    engine: Literal["local", "ray"] = "local"  # what runs the stages (the outputs are the same)
    ray: RaySettings = Field(default_factory=RaySettings)
    # torch threads of each process that runs a model on the CPU (None: torch's default,
    # the machine's cores, in a local run; the actor's CPUs on Ray). Some models' results
    # move in their last bits with the number of threads: runs to compare byte for byte
    # (local vs Ray, one machine vs another) give the same number.
    threads: int | None = Field(None, ge=1)


# Settings that change how a run goes, not what it writes: a resumed run (or a shard to
# merge) may differ in them. Everything else must be the same.
HOW_ONLY = ("output.formats", "output.chunk_size", "output.shard", "ensemble.path",
            "ensemble.cache_dir", "ensemble.inference.batch_size", "ensemble.inference.device",
            "ensemble.inference.compile", "ensemble.inference.width_multiple", "llm.urls",
            "llm.server", "engine", "ray")


def default_of(path: str) -> Any:
    """The default of the setting at dotted ``path`` (for the options' help)."""
    model: Any = RunConfig
    *parents, name = path.split(".")
    for part in parents:
        model = model.model_fields[part].default_factory
    return model.model_fields[name].default


def read_file(path: Path) -> dict:
    """A run configuration file: TOML (``.toml``) or JSON, as a plain tree."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise PipelineError(f"{path}: reading TOML needs Python 3.11 or later; give "
                                    "the configuration as JSON") from None
            return tomllib.loads(raw.decode("utf-8"))
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError is one
        raise PipelineError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a run configuration is an object, not "
                            f"{type(data).__name__}")
    return data


def merged(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` laid over it, level by level."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def nested(dotted: Mapping[str, Any]) -> dict:
    """``{"llm.template": x}`` -> ``{"llm": {"template": x}}``; None values are left out
    (an option not given)."""
    tree: dict = {}
    for path, value in dotted.items():
        if value is None:
            continue
        *parents, name = path.split(".")
        level = tree
        for part in parents:
            level = level.setdefault(part, {})
        level[name] = value
    return tree


# The settings that name files or folders: in a configuration file, relative to the file
PATHS = ("ensemble.path", "ensemble.cache_dir", "llm.model", "thresholds.file")


def anchored(tree: dict, folder: Path) -> dict:
    """``tree`` with its relative paths made relative to ``folder`` (the file's own), so
    that a configuration means the same from whatever folder it is used."""
    out = flat(tree)
    for key in PATHS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            out[key] = str(folder / value)
    return merged(tree, nested({k: out[k] for k in PATHS if k in out}))


def load_run_config(path: Path | None, *layers: Mapping) -> RunConfig:
    """The tree of file ``path`` (None: the defaults) with ``layers`` (trees, such as the
    command line's options, each laid over the ones before). A problem names the file and
    the key."""
    tree = anchored(read_file(path), Path(path).parent) if path is not None else {}
    for layer in layers:
        tree = merged(tree, layer)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        source = f"{path} with the command line's options" if path else "the command line"
        raise PipelineError(f"not a valid run configuration ({source}): "
                            f"{problems_of(exc, plain=True)}") from None


def flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"llm": {"template": x}}`` -> ``{"llm.template": x}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat(value, f"{path}."))
        else:
            out[path] = value
    return out


def what_changed(old: Mapping, new: Mapping, allowed: tuple[str, ...] = HOW_ONLY) -> list[str]:
    """The dotted paths at which two recorded settings differ in what a run writes."""
    a, b = flat(old), flat(new)
    return sorted(path for path in a.keys() | b.keys() if a.get(path) != b.get(path) and
                  not any(path == p or path.startswith(f"{p}.") for p in allowed))


def run_record(config: RunConfig, *, ensemble, scorer, thresholds, input: Path) -> dict:
    """What ``run.json`` records: the configuration tree, and what it resolved to (the
    members' and the LLM's identities, the inference settings that change probabilities,
    the thresholds in force, the input), which a resumed run or a shard to merge must
    share. ``scorer``: the LLM's scorer, or its identity (None: no LLM)."""
    llm = scorer if scorer is None or isinstance(scorer, str) else scorer.identity
    th = thresholds.model_dump(mode="json")
    for t in (th["default"], *th["classes"].values()):
        if not t["floor"]:  # no floor: recorded as before floors existed, so such runs resume
            del t["floor"]
    return {"config": config.model_dump(mode="json"),
            "resolved": {"ensemble": ensemble.identity, "inference": ensemble.output_settings,
                         "llm": llm, "thresholds": th,
                         "input": str(Path(input).resolve())}}


def record_changes(old: Mapping, new: Mapping) -> list[str]:
    """How two ``run.json`` records differ in what their runs write, as dotted paths
    (``config.llm.template``, ``resolved.input``); settings of ``HOW_ONLY`` may differ."""
    return what_changed(old, new, tuple(f"config.{path}" for path in HOW_ONLY))
