"""``pipeline run``: both stages over a corpus, resumable, with progress."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import (
    CacheDirOption,
    ConfigOption,
    EnsemblePathOption,
    InferenceConfigOption,
    LlmBackendOption,
    LlmConfigOption,
    LlmLoraOption,
    LlmOption,
    LlmTemplateOption,
    LlmUrlOption,
    MaxContextOption,
    PrintConfigOption,
    follow_llm,
    progress_display,
    run_config,
)
from pipeline.errors import PipelineError
from pipeline.settings import FORMATS, default_of


@app.command("run")
def run_command(
    input: Annotated[Path, typer.Option(help="Corpus to annotate (any supported layout).")],
    output: Annotated[Path, typer.Option(help="Output folder (parts, predictions, summary).")],
    ensemble: EnsemblePathOption = None,
    llm: LlmOption = None,
    llm_backend: LlmBackendOption = None,
    llm_url: LlmUrlOption = None,
    stage1_threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Ensemble probability a candidate needs (lower: more recall; "
                               f"default {default_of('thresholds.stage1')}).")] = None,
    stage2_threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="LLM P(yes) a candidate needs to be kept (default "
                               f"{default_of('thresholds.stage2')}).")] = None,
    thresholds: Annotated[Path | None, typer.Option(help="Per-class thresholds from `pipeline "
                                                         "tune` (override the two above).")] = None,
    format: Annotated[str | None, typer.Option(
        help="Comma-separated: tsv, jsonl, brat (default "
             f"{','.join(default_of('output.formats'))}).")] = None,
    shard: Annotated[str | None, typer.Option(
        help="i/n: this machine's share of the corpus (default all: 0/1).")] = None,
    chunk_size: Annotated[int | None, typer.Option(
        min=1, help=f"Documents per batch (default {default_of('output.chunk_size')}).")] = None,
    cache_dir: CacheDirOption = None,
    texts: Annotated[Path | None, typer.Option(help="Text folder of a TSV input.")] = None,
    inference_config: InferenceConfigOption = None,
    llm_config: LlmConfigOption = None,
    llm_template: LlmTemplateOption = None,
    max_context_tokens: MaxContextOption = None,
    llm_lora: LlmLoraOption = None,
    engine: Annotated[str | None, typer.Option(
        help="local (this process, the default) or ray (a Ray cluster: the same outputs; "
             "needs the ray extra).", rich_help_panel="Ray")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to run on (e.g. auto, ray://head:10001); none: a Ray of this "
             "machine for the run.", rich_help_panel="Ray")] = None,
    stage1_actors: Annotated[int | None, typer.Option(
        min=1, help="Ray actors holding the ensemble (default: from the cluster's resources).",
        rich_help_panel="Ray")] = None,
    stage1_gpus: Annotated[float | None, typer.Option(
        min=0.0, help="GPUs each stage-1 actor claims (0.5: two a GPU; 0: CPUs only).",
        rich_help_panel="Ray")] = None,
    llm_actors: Annotated[int | None, typer.Option(
        min=1, help="Ray actors holding an LLM scorer.", rich_help_panel="Ray")] = None,
    llm_gpus: Annotated[float | None, typer.Option(
        min=0.0, help="GPUs each LLM actor claims (0: CPUs only).", rich_help_panel="Ray")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch threads of each process that runs a model on the CPU (default: "
                    "the machine's cores; on Ray, each actor's CPUs). Runs to compare byte "
                    "for byte use the same number.")] = None,
    config: ConfigOption = None,
    print_config: PrintConfigOption = False,
) -> None:
    """Propose spans with the ensemble, judge them with the LLM, write what is kept.

    Killed at any moment, the same command continues where it stopped. With --engine ray
    the work goes to a Ray cluster (more settings in the ray section of --config: CPUs per
    actor, stall_seconds)."""
    from pipeline.errors import ReadReport
    from pipeline.readers import brat_stems, corpus_layout, open_corpus, stem_id
    from pipeline.recognizer import char_cache, llm_identity, load_ensemble, load_llm, warn_unfit
    from pipeline.run import in_shard, parse_shard, run_pipeline
    from pipeline.settings import run_record
    from pipeline.thresholds import Thresholds
    from pipeline.writers import folder_lock

    formats = [f.strip() for f in format.split(",") if f.strip()] if format is not None else None
    if formats == []:
        raise PipelineError(f"no output format given; choose from {FORMATS}")
    cfg = run_config(config, print_config, inference_config=inference_config,
                     llm_config=llm_config, ensemble__path=ensemble, llm__model=llm,
                     llm__backend=llm_backend, llm__urls=llm_url, llm__template=llm_template,
                     llm__max_context_tokens=max_context_tokens, llm__lora=llm_lora,
                     thresholds__stage1=stage1_threshold, thresholds__stage2=stage2_threshold,
                     thresholds__file=thresholds, output__formats=formats, output__shard=shard,
                     output__chunk_size=chunk_size, ensemble__cache_dir=cache_dir,
                     engine=engine, ray__address=ray_address, ray__stage1_actors=stage1_actors,
                     ray__stage1_gpus=stage1_gpus, ray__llm_actors=llm_actors,
                     ray__llm_gpus=llm_gpus, threads=threads)
    share = parse_shard(cfg.output.shard)
    layout = corpus_layout(input, texts)  # a missing or unknown input: say so now
    th_source = cfg.thresholds.file
    th = Thresholds.load(th_source) if th_source else Thresholds.uniform(
        cfg.thresholds.stage1, cfg.thresholds.stage2)
    with folder_lock(output, "pipeline run"):  # before the slow loads: a second one stops now
        cache = cfg.ensemble.cache_dir or cfg.ensemble.path / "cache"

        def reader(root: Path, texts: Path | None):
            return partial(open_corpus, root, texts=texts, lenient=True,
                           classes=tuple(ens.classes), annotations=False)

        engine_ = None
        if cfg.engine == "ray":  # the workers load the models; this process reads and writes
            from pipeline.ray_engine import RayEngine, check_installed

            check_installed()
            ens = load_ensemble(cfg.ensemble.path, cfg.ensemble.inference, models=False)
            th.check_classes(ens.classes, str(th_source))
            scorer = llm_identity(cfg.llm.model, cfg.llm.backend, cfg.llm.urls or None,
                                  cfg.llm.prompt_and_backend())
            # the corpus reader on the cluster: its working folder is not this one
            again = reader(Path(input).resolve(), Path(texts).resolve() if texts else None)
            engine_ = RayEngine(cfg, thresholds=th, ensemble=ens, reopen=again, shard=share)
        else:
            if cfg.threads:
                import torch

                torch.set_num_threads(cfg.threads)
            ens = load_ensemble(cfg.ensemble.path, cfg.ensemble.inference)
            th.check_classes(ens.classes, str(th_source))  # before the LLM loads
            scorer = load_llm(cfg.llm.model, cfg.llm.backend, cfg.llm.urls or None, cache,
                              cfg.llm.prompt_and_backend())
        warn_unfit(th, ens, scorer, str(th_source) if th_source else "thresholds",
                   cfg.llm.model)
        report = ReadReport()
        docs = reader(input, texts)(report=report)
        total = sum(in_shard(stem_id(stem), share) for stem in brat_stems(input)) \
            if layout in ("brat", "txt") else None  # this shard's documents
        record = run_record(cfg, ensemble=ens, scorer=scorer, thresholds=th, input=input)
        start = time.perf_counter()
        with progress_display() as progress:
            task = progress.add_task("pipeline run", total=total, unit="docs", rate="")
            if engine_ is None:
                follow_llm(progress, scorer)

            def on_chunk(summary, n: int) -> None:
                elapsed = max(time.perf_counter() - start, 1e-9)
                done = summary.written + summary.empty + len(summary.failed)
                progress.update(task, advance=n, rate=f"{done / elapsed:.2f} docs/s, "
                                                      f"{summary.candidates / elapsed:.1f} cand/s")

            summary = run_pipeline(docs, out=output, ensemble=ens, scorer=scorer, thresholds=th,
                                   settings=record, formats=cfg.output.formats, shard=share,
                                   chunk_size=cfg.output.chunk_size,
                                   char_cache=None if engine_ else char_cache(cache, ens),
                                   on_chunk=on_chunk, unreadable=report.failed_documents,
                                   engine=engine_)
            # the unreadable documents, accounted for at the end: the bar ends full
            progress.update(task, completed=summary.written + summary.empty + len(summary.failed))
        s = summary.as_dict()
        typer.echo(f"{output}: {s['written']} documents written, {s['empty']} empty, "
                   f"{s['failed']} failed; {s['candidates']} candidates, {s['llm_calls']} LLM calls, "
                   f"{s['kept_spans']} spans kept; seconds {s['seconds']}")
        for item in s["failures"]:
            typer.echo(f"failed: {item['id']}: {item['reason']}", err=True)
        if s["too_long"]:
            typer.echo(f"{s['too_long']} candidate(s) were dropped without asking the LLM: their "
                       "prompt is longer than it takes (see the warnings for the first of each "
                       "batch)", err=True)


@app.command("merge")
def merge_command(
    output: Annotated[Path, typer.Option(help="Folder for the merged outputs.")],
    shards: Annotated[list[Path], typer.Argument(help="Output folders of the shard runs.")],
    format: Annotated[str, typer.Option(help="Comma-separated: tsv, jsonl, brat.")] = "tsv,jsonl",
) -> None:
    """Join the outputs of `pipeline run --shard i/n` runs (sorted by document id).

    All n shards must be there and finished, made with the same ensemble, LLM and
    thresholds; their summaries are added up into one."""
    from pipeline.run import merge_shards

    s = merge_shards(output, shards, [f.strip() for f in format.split(",") if f.strip()])
    typer.echo(f"merged {s['shards']} shards into {output}: {s['written']} documents written, "
               f"{s['empty']} empty, {s['failed']} failed; {s['kept_spans']} spans kept")
