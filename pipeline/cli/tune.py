"""``pipeline tune`` and ``pipeline ablate``: thresholds from gold data, and the table that
says whether the re-ranker helps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import (
    CacheDirOption,
    EnsembleOption,
    InferenceConfigOption,
    LlmBackendOption,
    LlmOption,
    LlmUrlOption,
    llm_progress,
)
from pipeline.errors import PipelineError
from pipeline.writers import atomic_write

Subset = Annotated[str, typer.Option(help="i/n: use only this share of the gold documents, "
                                          "split by document group as the folds are, so that "
                                          "translations of a case stay together (e.g. tune "
                                          "on 0/2, ablate on 1/2).")]


def check_gold(gold: Path, subset: str) -> None:
    """What ``gold_documents`` would refuse, found without reading: before the models load."""
    from pipeline.readers import corpus_layout
    from pipeline.run import parse_shard

    corpus_layout(gold)
    parse_shard(subset, "--subset")


def gold_documents(gold: Path, subset: str, classes):
    from pipeline.readers import open_corpus
    from pipeline.run import parse_shard
    from pipeline.training import in_subset

    part = parse_shard(subset, "--subset")
    docs = [d for d in open_corpus(gold, classes=tuple(classes)) if in_subset(d.id, part)]
    if not docs:
        raise PipelineError(f"{gold}: no gold documents" +
                            (f" in --subset {subset}" if subset != "0/1" else ""))
    return docs


def parse_grid(text: str) -> tuple[float, ...]:
    try:
        grid = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise PipelineError(f"--t1-grid must be numbers separated by commas, not {text!r}") \
            from None
    if not grid or not all(0.0 <= t <= 1.0 for t in grid):
        raise PipelineError(f"--t1-grid {text}: give thresholds between 0 and 1")
    return grid


@app.command("tune")
def tune_command(
    ensemble: EnsembleOption,
    gold: Annotated[Path, typer.Option(help="Gold corpus to tune on.")],
    out: Annotated[Path, typer.Option(help="thresholds.json to write (a heat map PNG beside).")],
    llm: LlmOption = None,
    llm_backend: LlmBackendOption = None,
    llm_url: LlmUrlOption = None,
    objective: Annotated[str, typer.Option(help="char_f1 or strict_f1.")] = "char_f1",
    route_tolerance: Annotated[float, typer.Option(help="Objective that routing may lose.")] = 0.0,
    subset: Subset = "0/1",
    t1_grid: Annotated[str | None, typer.Option(
        help="Stage-1 thresholds to try, comma-separated (default 0.30 to 0.95 by 0.05).")] = None,
    cache_dir: CacheDirOption = None,
    inference_config: InferenceConfigOption = None,
) -> None:
    """Sweep both thresholds jointly per class; write thresholds.json with the figures."""
    from pipeline.recognizer import char_cache, load_ensemble, load_llm, resolve_backend
    from pipeline.tune import T1_GRID, collect, heatmaps, thresholds_from, tune_class

    if objective not in ("char_f1", "strict_f1"):
        raise PipelineError(f"--objective must be char_f1 or strict_f1, not {objective!r}")
    grid = parse_grid(t1_grid) if t1_grid else T1_GRID
    resolve_backend(llm, llm_backend, llm_url)
    check_gold(gold, subset)
    ens = load_ensemble(ensemble, inference_config)
    docs = gold_documents(gold, subset, ens.classes)  # before the (slow) LLM loads
    cache = cache_dir or ensemble / "cache"
    scorer = load_llm(llm, llm_backend, llm_url, cache)
    typer.echo(f"tuning on {len(docs)} documents", err=True)
    with llm_progress(scorer):
        sets = collect(docs, ens, scorer, t1_grid=grid, char_cache=char_cache(cache, ens),
                       on_step=lambda t: typer.echo(f"  candidates at stage-1 threshold {t}",
                                                    err=True))
    results = {cls: tune_class(s, objective=objective, with_llm=scorer is not None,
                               route_tolerance=route_tolerance) for cls, s in sets.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tuned = thresholds_from(results, objective, ensemble=ens.identity,
                            llm=scorer.identity if scorer is not None else None)
    atomic_write(out, tuned.model_dump_json(indent=2))  # hours of tuning: never half a file
    heatmaps(results, objective, out.with_suffix(".png"))
    for cls, r in results.items():
        if "untuned" in r:
            typer.secho(f"warning: {cls} not tuned: {r['untuned']}; the default thresholds "
                        f"apply (stage 1 {tuned.default.stage1}, stage 2 "
                        f"{tuned.default.stage2})", fg="yellow", err=True)
            continue
        line = f"{cls}: ensemble alone t1={r['stage1_only']['stage1']} {objective}=" \
               f"{r['stage1_only'][objective]:.4f}"
        if "reranked" in r:
            rr = r["reranked"]
            line += (f"; re-ranked t1={rr['stage1']} t2={rr['stage2']} {objective}="
                     f"{rr[objective]:.4f}; routing at {rr['route']} saves "
                     f"{rr['llm_calls_without_routing'] - rr['llm_calls']} of "
                     f"{rr['llm_calls_without_routing']} LLM calls")
        typer.echo(line)
    typer.echo(f"wrote {out}")


@app.command("ablate")
def ablate_command(
    ensemble: EnsembleOption,
    gold: Annotated[Path, typer.Option(help="Gold corpus to report on.")],
    thresholds: Annotated[Path, typer.Option(help="thresholds.json from `pipeline tune`.")],
    out: Annotated[Path, typer.Option(help="Folder for ablation.md, ablation.json, pr.png.")],
    llm: LlmOption = None,
    llm_backend: LlmBackendOption = None,
    llm_url: LlmUrlOption = None,
    subset: Subset = "0/1",
    cache_dir: CacheDirOption = None,
    inference_config: InferenceConfigOption = None,
) -> None:
    """Ensemble alone (paper's 0.8, tuned) vs re-ranked, per language × class, with counts."""
    from pipeline.ablate import ablate, markdown, pr_curves
    from pipeline.recognizer import char_cache, load_ensemble, load_llm, resolve_backend, warn_unfit
    from pipeline.thresholds import Thresholds

    tuned = Thresholds.load(thresholds)  # before the (slow) model loads: fail fast
    resolve_backend(llm, llm_backend, llm_url)
    check_gold(gold, subset)
    ens = load_ensemble(ensemble, inference_config)
    docs = gold_documents(gold, subset, ens.classes)
    cache = cache_dir or ensemble / "cache"
    scorer = load_llm(llm, llm_backend, llm_url, cache)
    warn_unfit(tuned, ens, scorer, str(thresholds))
    cc = char_cache(cache, ens)
    with llm_progress(scorer):
        report = ablate(docs, ens, scorer, tuned, char_cache=cc)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "ablation.md").write_text(text)
    with llm_progress(scorer):
        pr_curves(docs, ens, scorer, tuned, out / "pr.png", char_cache=cc)
    typer.echo(text)
