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
    ConfigOption,
    EnsemblePathOption,
    InferenceConfigOption,
    LenientOption,
    LlmBackendOption,
    LlmConfigOption,
    LlmLoraOption,
    LlmOption,
    LlmTemplateOption,
    LlmUrlOption,
    MaxContextOption,
    PrintConfigOption,
    follow_llm,
    llm_progress,
    progress_display,
    run_config,
    say_read,
)
from pipeline.errors import PipelineError
from pipeline.writers import atomic_write, check_writable

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


def gold_documents(gold: Path, subset: str, classes, lenient: bool = False):
    from pipeline.errors import ReadReport
    from pipeline.readers import open_corpus
    from pipeline.run import parse_shard
    from pipeline.training import in_subset

    part = parse_shard(subset, "--subset")
    report = ReadReport()
    docs = [d for d in open_corpus(gold, classes=tuple(classes), lenient=lenient, report=report)
            if in_subset(d.id, part)]
    if report.skipped:
        say_read(gold, report)
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
    gold: Annotated[Path, typer.Option(help="Gold corpus to tune on.")],
    out: Annotated[Path, typer.Option(help="thresholds.json to write (a heat map PNG beside).")],
    ensemble: EnsemblePathOption = None,
    llm: LlmOption = None,
    llm_backend: LlmBackendOption = None,
    llm_url: LlmUrlOption = None,
    objective: Annotated[str, typer.Option(help="char_f1 or strict_f1.")] = "char_f1",
    route_tolerance: Annotated[float, typer.Option(
        help="Objective the re-ranked thresholds may lose to ask the LLM less: among the "
             "(t1, t2, route) within it of the best, the fewest LLM calls win.")] = 0.0,
    min_confidence: Annotated[float, typer.Option(
        min=0.0, max=1.0,
        help="With --llm: use the LLM for a class only if its best thresholds beat the "
             "ensemble's own in at least this share of bootstrap resamples of the tuning "
             "documents (say 0.9); 0: whenever they score higher there. The share is "
             "printed wherever they do. It is a filter against luck, not a guarantee: the "
             "thresholds were chosen on the same documents.")
    ] = 0.0,
    subset: Subset = "0/1",
    t1_grid: Annotated[str | None, typer.Option(
        help="Stage-1 thresholds to try, comma-separated (default 0.30 to 0.95 by 0.05).")] = None,
    max_route: Annotated[float | None, typer.Option(
        min=0.0, max=1.0,
        help="Ask the LLM only about candidates of stage-1 score below this: routing "
             "thresholds above it are not tried, and only those candidates are scored (the "
             "slow part). Default: a judge's max_stage1_score (it learnt on nothing above "
             "it), else no limit.")] = None,
    cache_dir: CacheDirOption = None,
    inference_config: InferenceConfigOption = None,
    llm_config: LlmConfigOption = None,
    llm_template: LlmTemplateOption = None,
    max_context_tokens: MaxContextOption = None,
    llm_lora: LlmLoraOption = None,
    config: ConfigOption = None,
    print_config: PrintConfigOption = False,
    lenient: LenientOption = False,
) -> None:
    """Sweep both thresholds jointly per class, with the routing threshold (a candidate of
    stage-1 score at or above it is kept without asking the LLM); write thresholds.json
    with the figures."""
    from pipeline.recognizer import char_cache, load_ensemble, load_llm
    from pipeline.tune import T1_GRID, collect, heatmaps, thresholds_from, tune_class

    if objective not in ("char_f1", "strict_f1"):
        raise PipelineError(f"--objective must be char_f1 or strict_f1, not {objective!r}")
    grid = parse_grid(t1_grid) if t1_grid else T1_GRID
    cfg = run_config(config, print_config, inference_config=inference_config,
                     llm_config=llm_config, ensemble__path=ensemble,
                     ensemble__cache_dir=cache_dir, llm__model=llm, llm__backend=llm_backend,
                     llm__urls=llm_url, llm__template=llm_template,
                     llm__max_context_tokens=max_context_tokens, llm__lora=llm_lora)
    check_gold(gold, subset)
    check_writable(out)  # before hours of tuning, not after
    ens = load_ensemble(cfg.ensemble.path, cfg.ensemble.inference)
    docs = gold_documents(gold, subset, ens.classes, lenient)  # before the (slow) LLM loads
    cache = cfg.ensemble.cache_dir or cfg.ensemble.path / "cache"
    scorer = load_llm(cfg.llm.model, cfg.llm.backend, cfg.llm.urls or None, cache,
                      cfg.llm.prompt_and_backend())
    typer.echo(f"tuning on {len(docs)} documents", err=True)
    if scorer is not None:
        from stage2_rerank.scorer import judge_band

        band = judge_band(cfg.llm.model) if cfg.llm.model is not None else None
        if max_route is None:
            max_route = band
        elif band is not None and max_route > band:
            typer.secho(f"warning: --max-route {max_route} asks the judge about candidates "
                        f"above {band}, the stage-1 score it learnt below", fg="yellow",
                        err=True)
    if scorer is not None and max_route is not None:
        typer.echo(f"asking the LLM only about candidates of stage-1 score below {max_route}",
                   err=True)
    with llm_progress(scorer):
        sets = collect(docs, ens, scorer, t1_grid=grid, char_cache=char_cache(cache, ens),
                       on_step=lambda t: typer.echo(f"  candidates at stage-1 threshold {t}",
                                                    err=True), max_route=max_route)
    results = {cls: tune_class(s, objective=objective, with_llm=scorer is not None,
                               route_tolerance=route_tolerance, max_route=max_route,
                               min_confidence=min_confidence)
               for cls, s in sets.items()}
    tuned = thresholds_from(results, objective, ensemble=ens.identity,
                            llm=scorer.identity if scorer is not None else None,
                            max_route=max_route if scorer is not None else None)
    atomic_write(out, tuned.model_dump_json(indent=2))  # hours of tuning: never half a file
    heatmaps(results, objective, out.with_suffix(".png"))
    for cls, r in results.items():
        if "untuned" in r:
            typer.secho(f"warning: {cls} not tuned: {r['untuned']}; the default thresholds "
                        f"apply (stage 1 {tuned.default.stage1}, stage 2 "
                        f"{tuned.default.stage2})", fg="yellow", err=True)
            continue
        own = r["stage1_only"]
        line = f"{cls}: ensemble alone t1={own['stage1']} floor={own['floor']} {objective}=" \
               f"{own[objective]:.4f}"
        if "reranked" in r:
            rr = r["reranked"]
            line += (f"; re-ranked t1={rr['stage1']} floor={rr['floor']} t2={rr['stage2']} "
                     f"route={rr['route']} "
                     f"{objective}={rr[objective]:.4f}; the LLM asked about {rr['llm_calls']} "
                     f"of {rr['llm_calls_without_routing']} candidates")
            share = rr.get("confidence")
            if share is not None and rr["llm_calls"]:
                line += (f" (they beat the ensemble alone in {share:.1%} of bootstrap resamples "
                         "of the documents)")
            elif share is not None:
                line += (f" (the LLM's best thresholds beat the ensemble alone in only {share:.1%} "
                         f"of bootstrap resamples of the documents, below --min-confidence "
                         f"{min_confidence:g}: not used)")
        typer.echo(line)
    typer.echo(f"wrote {out}")


@app.command("ablate")
def ablate_command(
    gold: Annotated[Path, typer.Option(help="Gold corpus to report on.")],
    out: Annotated[Path, typer.Option(help="Folder for ablation.md, ablation.json, pr.png.")],
    ensemble: EnsemblePathOption = None,
    thresholds: Annotated[list[Path] | None, typer.Option(
        help="thresholds.json from `pipeline tune`; with several --llm, one for each, in "
             "the same order (or thresholds.file in --config).")] = None,
    llm: Annotated[list[Path] | None, typer.Option(
        exists=True, file_okay=False,
        help="Re-ranker model folder; repeat to compare several (say, the zero-shot base "
             "and a judge from `pipeline train-judge`): a re-ranked row for each.")] = None,
    llm_backend: LlmBackendOption = None,
    llm_url: LlmUrlOption = None,
    subset: Subset = "0/1",
    cache_dir: CacheDirOption = None,
    inference_config: InferenceConfigOption = None,
    llm_config: LlmConfigOption = None,
    llm_template: LlmTemplateOption = None,
    max_context_tokens: MaxContextOption = None,
    llm_lora: LlmLoraOption = None,
    config: ConfigOption = None,
    print_config: PrintConfigOption = False,
    lenient: LenientOption = False,
) -> None:
    """Ensemble alone (paper's 0.8, tuned) vs re-ranked, per language × class, with counts."""
    from functools import partial

    from pipeline.ablate import Judge, ablate, markdown, plot
    from pipeline.recognizer import char_cache, load_ensemble, load_llm, resolve_backend, warn_unfit
    from pipeline.thresholds import Thresholds

    cfg = run_config(config, print_config, inference_config=inference_config,
                     llm_config=llm_config, ensemble__path=ensemble,
                     ensemble__cache_dir=cache_dir, llm__model=llm[0] if llm else None,
                     llm__backend=llm_backend, llm__urls=llm_url, llm__template=llm_template,
                     llm__max_context_tokens=max_context_tokens, llm__lora=llm_lora,
                     thresholds__file=thresholds[0] if thresholds else None)
    llms = list(llm or ([cfg.llm.model] if cfg.llm.model else []))
    thresholds = list(thresholds or ([cfg.thresholds.file] if cfg.thresholds.file else []))
    if not thresholds:
        raise PipelineError("no thresholds: give --thresholds (from `pipeline tune`), or "
                            "thresholds.file in --config")
    if len(llms) > 1 and len(thresholds) != len(llms) or len(thresholds) > max(1, len(llms)):
        raise PipelineError(f"{len(llms)} --llm and {len(thresholds)} --thresholds: give one "
                            "thresholds file for each LLM, in the same order")
    tuned = [Thresholds.load(t) for t in thresholds]  # before the (slow) models load
    for other in llms[1:]:  # each LLM on the same backend with the same settings
        resolve_backend(other, cfg.llm.backend, cfg.llm.urls or None)
    check_gold(gold, subset)
    check_writable(out, folder=True)
    ens = load_ensemble(cfg.ensemble.path, cfg.ensemble.inference)
    for th, source in zip(tuned, thresholds):
        th.check_classes(ens.classes, str(source))
    docs = gold_documents(gold, subset, ens.classes, lenient)
    cache = cfg.ensemble.cache_dir or cfg.ensemble.path / "cache"
    names = judge_names(llms)

    def loader(model: Path, th: Thresholds, source: Path):
        scorer = load_llm(model, cfg.llm.backend, cfg.llm.urls or None, cache,
                          cfg.llm.prompt_and_backend())
        warn_unfit(th, ens, scorer, str(source), model)
        follow_llm(progress, scorer)
        return scorer

    judges = [Judge(name, partial(loader, m, th, src), th)
              for name, m, th, src in zip(names, llms, tuned, thresholds)]
    if not llms:
        warn_unfit(tuned[0], ens, None, str(thresholds[0]))
    cc = char_cache(cache, ens)
    with progress_display() as progress:  # each LLM's bar as it loads
        report = ablate(docs, ens, judges, tuned[0], char_cache=cc, curves=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ablation.json", json.dumps(report, indent=2))
    text = markdown(report)
    atomic_write(out / "ablation.md", text)
    plot(report, out / "pr.png")
    typer.echo(text)


def judge_names(llms: list[Path]) -> list[str]:
    """Row names of the re-ranked systems: as before with one LLM, each folder's name with
    several."""
    if len(llms) == 1:
        return ["reranked@tuned"]
    names = [f"reranked[{m.name}]@tuned" for m in llms]
    return names if len(set(names)) == len(names) else \
        [f"reranked[{k}:{m.name}]@tuned" for k, m in enumerate(llms)]
