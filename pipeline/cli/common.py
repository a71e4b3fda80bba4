"""Options and progress display shared by run, tune and ablate (their loaders live in
pipeline.recognizer)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

InferenceConfigOption = Annotated[Path | None, typer.Option(
    help="InferenceConfig JSON for the ensemble (batch_size, device, bf16, compile, "
         "width_multiple, max_length, stride; unknown keys fail).")]
EnsemblePathOption = Annotated[Path | None, typer.Option(
    "--ensemble", exists=True, file_okay=False,
    help="Ensemble folder (from `pipeline train`); or ensemble.path in --config.")]
ConfigOption = Annotated[Path | None, typer.Option(
    "--config", exists=True, dir_okay=False,
    help="Run configuration, TOML or JSON: sections ensemble (path, inference, cache_dir), "
         "llm (model, backend, urls, and the --llm-config settings), thresholds (file, "
         "stage1, stage2), output (formats, chunk_size, shard), engine (local, ray), ray "
         "(address, pool sizes, stall_seconds: run only), threads. Unknown keys fail; "
         "options given on the command line override it.")]
PrintConfigOption = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved configuration (JSON) and exit.")]
LlmOption = Annotated[Path | None, typer.Option(
    exists=True, file_okay=False,
    help="Re-ranker model folder (its tokenizer builds the prompts; with --llm-url, the "
         "model the servers serve); none: the ensemble alone.")]
LlmBackendOption = Annotated[str | None, typer.Option(
    help="vllm (in-process), openai (servers by --llm-url) or hf. Default: openai with "
         "--llm-url, else vllm where installed, else hf.")]
LlmUrlOption = Annotated[list[str] | None, typer.Option(
    help="vLLM server URL; repeat for replicas.")]
LlmConfigOption = Annotated[Path | None, typer.Option(
    help="LlmConfig JSON: template, max_context_tokens, use_chat_template, dtype, "
         "max_model_len, lora, engine (more vLLM engine options), server (openai: timeout, "
         "retries, backoff, batch_size, concurrency); unknown keys fail. A judge "
         "from `pipeline train-judge` brings its own prompt settings.")]
LlmTemplateOption = Annotated[str | None, typer.Option(
    help="Prompt template of the LLM: a shipped name or a .json file (overrides "
         "--llm-config).")]
MaxContextOption = Annotated[int | None, typer.Option(
    min=16, help="Tokens of the note the LLM is shown around a candidate (overrides "
                 "--llm-config; default 1024, or a judge's own).")]
LlmLoraOption = Annotated[bool | None, typer.Option(
    "--llm-lora", help="vllm backend: serve a judge as its LoRA adapter on its base model, "
                       "so that several judges share one base.")]
LenientOption = Annotated[bool, typer.Option(
    help="Skip bad annotations (and unreadable documents), count and list them, instead of "
         "stopping at the first.")]
CacheDirOption = Annotated[Path | None, typer.Option(
    help="Character-probability and LLM-score cache (default: ENSEMBLE/cache).")]


def say_read(source, report, shown: int = 20) -> None:
    """What reading ``source`` found, on stderr: counts, and each item skipped or changed
    (the first ``shown`` of them, then how many more), so nothing is dropped silently."""
    typer.echo(f"{source}: {report.summary()}", err=True)
    for line in report.skipped[:shown]:
        typer.echo(f"skipped: {line}", err=True)
    if len(report.skipped) > shown:
        typer.echo(f"skipped: ... and {len(report.skipped) - shown} more", err=True)


# Seconds between progress lines where stderr is no terminal (a log file, a batch job).
PROGRESS_EVERY = float(os.environ.get("PIPELINE_PROGRESS_SECONDS", "30"))


def progress_display():
    """The commands' progress (on stderr): bars on a terminal (what, bar, how many, rate,
    time); elsewhere a line per task every ``PROGRESS_EVERY`` seconds and at the end."""
    if not sys.stderr.isatty():
        return LineProgress(PROGRESS_EVERY)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed} {task.fields[unit]}"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True))


class LineProgress:
    """rich's ``Progress`` as plain lines, for logs: the calls the commands make."""

    def __init__(self, every: float) -> None:
        self.every, self.tasks = every, []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for task in range(len(self.tasks)):
                self._say(task)

    def add_task(self, description: str, total=None, **fields) -> int:
        self.tasks.append({"description": description, "total": total, "completed": 0,
                           "start": time.monotonic(), "said": time.monotonic(), **fields})
        return len(self.tasks) - 1

    def update(self, task: int, advance: float = 0, completed=None, **fields) -> None:
        t = self.tasks[task]
        t.update(fields)
        t["completed"] = (t["completed"] if completed is None else completed) + advance
        if time.monotonic() - t["said"] >= self.every:
            self._say(task)

    def _say(self, task: int) -> None:
        t = self.tasks[task]
        t["said"] = time.monotonic()
        of = f"/{t['total']}" if t["total"] else ""
        rate = f", {t['rate']}" if t.get("rate") else ""
        typer.echo(f"{t['description']}: {t['completed']}{of} {t.get('unit', '')}{rate}, "
                   f"{t['said'] - t['start']:.0f} s", err=True)


def follow_llm(progress, scorer) -> None:
    """A bar for the LLM's prompts in ``progress`` (nothing without an LLM): scoring a batch
    can take minutes on a CPU. Each batch of candidates starts the bar again."""
    if scorer is None:
        return
    task = progress.add_task("stage 2 (LLM)", total=None, unit="prompts", rate="")

    def show(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    scorer.on_progress = show


@contextmanager
def llm_progress(scorer) -> Iterator[None]:
    """The LLM's progress bar while the block runs (tune, ablate)."""
    if scorer is None:
        yield
        return
    with progress_display() as progress:
        follow_llm(progress, scorer)
        try:
            yield
        finally:
            scorer.on_progress = None


def run_config(config: Path | None, print_config: bool, *, inference_config: Path | None = None,
               llm_config: Path | None = None, **options):
    """The ``RunConfig`` of ``--config`` with ``--inference-config``, ``--llm-config`` and
    the other options (keyword names are dotted paths with "__" for ".", e.g.
    ``llm__template``; None: not given) laid over it, checked against the LLM's backend
    before any model loads. ``--print-config`` prints it and ends the command."""
    import json

    from pipeline.errors import PipelineError
    from pipeline.recognizer import resolve_backend
    from pipeline.settings import load_run_config, nested
    from stage1_ensemble.config import InferenceConfig, load_config
    from stage2_rerank.config import LlmConfig

    layers = []
    if inference_config is not None:
        layers.append({"ensemble": {"inference": load_config(
            inference_config, InferenceConfig).model_dump(exclude_unset=True)}})
    if llm_config is not None:
        layers.append({"llm": load_config(llm_config, LlmConfig).model_dump(exclude_unset=True)})
    layers.append(nested({k.replace("__", "."): v for k, v in options.items()}))
    cfg = load_run_config(config, *layers)
    if print_config:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
        raise typer.Exit()
    if cfg.ensemble.path is None:
        raise PipelineError("no ensemble: give --ensemble, or ensemble.path in --config")
    llm = cfg.llm
    chosen = resolve_backend(llm.model, llm.backend, llm.urls or None)
    if chosen is not None:
        try:
            llm.prompt_and_backend().scorer_options(chosen)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
    return cfg
