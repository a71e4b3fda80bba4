"""``pipeline train-judge``: the stage-2 LLM learns the task from out-of-fold candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import (
    CacheDirOption,
    EnsemblePathOption,
    InferenceConfigOption,
    LenientOption,
    say_read,
)


@app.command("train-judge")
def train_judge_command(
    base: Annotated[Path, typer.Option(exists=True, file_okay=False,
                                       help="The instruction LLM to fine-tune (a model folder).")],
    out: Annotated[Path, typer.Option(help="Judge folder to write: merged weights, tokenizer, "
                                           "adapter/, judge.json, candidates.jsonl.")],
    ensemble: EnsemblePathOption = None,
    corpus: Annotated[Path | None, typer.Option(
        help="The ensemble's training corpus: each document is proposed on by the members "
             "of its own fold only (needs an ensemble trained with --folds 2 or more).")] = None,
    candidates_from: Annotated[Path | None, typer.Option(
        help="A held-out gold corpus, proposed on by the whole ensemble (instead of, or "
             "beside, --corpus).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="JudgeConfig JSON: prompt (template, max_context_tokens), data (stage1_threshold, "
             "label overlap|exact, validation_share, max_stage1_score: only the uncertain "
             "candidates), LoRA or full fine-tuning, steps, "
             "learning rate... Unknown keys fail.")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Override the config's "
                                                              "max_steps.")] = None,
    template: Annotated[str | None, typer.Option(
        help="Prompt template (a shipped name or a .json file); overrides the config's.")] = None,
    max_context_tokens: Annotated[int | None, typer.Option(
        min=16, help="Tokens of the note shown around a candidate; overrides the "
                     "config's.")] = None,
    group_pattern: Annotated[str | None, typer.Option(
        help="The --group-pattern the ensemble was trained with, if any.")] = None,
    subset: Annotated[str, typer.Option(
        help="i/n: draw candidates from this share of the documents only, split by document "
             "group as --subset of tune and ablate is (e.g. learn on 0/2 of a held-out corpus "
             "while tune and ablate use shares of 1/2).")] = "0/1",
    cache_dir: CacheDirOption = None,
    inference_config: InferenceConfigOption = None,
    lenient: LenientOption = False,
    run_config: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="The run configuration (TOML or JSON) that run, tune and ablate read: its "
             "ensemble section, and its llm prompt settings (template, max_context_tokens, "
             "use_chat_template), so that the judge learns on the prompt it will be served; "
             "--config and the options override them.")] = None,
) -> None:
    """Fine-tune the stage-2 LLM on stage-1 candidates labelled by their overlap with gold.

    The prompt is the one run, tune and ablate send; after training P(yes)/(P(yes)+P(no))
    estimates a candidate's character overlap with a gold span. The result is a plain model
    folder that every backend serves (--llm JUDGE); the same command resumes after a crash."""
    from pipeline.errors import PipelineError, ReadReport
    from pipeline.judge import (
        describe,
        ensemble_candidates,
        label_candidates,
        out_of_fold_candidates,
        train_judge,
        uncertain,
    )
    from pipeline.readers import corpus_layout, open_corpus
    from pipeline.recognizer import char_cache, load_ensemble
    from pipeline.run import parse_shard
    from pipeline.settings import RunConfig, load_run_config
    from pipeline.training import corpus_data_hash, group_pattern_option, in_subset
    from stage1_ensemble.config import load_config
    from stage2_rerank.training import JudgeConfig, check_causal_lm

    if corpus is None and candidates_from is None:
        raise PipelineError("give the ensemble's training corpus (--corpus), a held-out gold "
                            "corpus (--candidates-from), or both")
    shared = load_run_config(run_config) if run_config else RunConfig()
    ensemble = ensemble or shared.ensemble.path
    if ensemble is None:
        raise PipelineError("no ensemble: give --ensemble, or ensemble.path in --run-config")
    inference_config = inference_config or shared.ensemble.inference
    cache_dir = cache_dir or shared.ensemble.cache_dir
    prompt = shared.llm.model_dump(include={"template", "max_context_tokens",
                                            "use_chat_template"}, exclude_none=True)
    own = load_config(config, JudgeConfig).model_dump(exclude_unset=True) if config else {}
    updates = {k: v for k, v in (("max_steps", max_steps), ("template", template),
                                 ("max_context_tokens", max_context_tokens)) if v is not None}
    cfg = JudgeConfig.model_validate({**prompt, **own, **updates})
    pattern = group_pattern_option(group_pattern)
    part = parse_shard(subset, "--subset")

    def share(found: list) -> list:
        return [d for d in found if in_subset(d.id, part, pattern)]

    for source in (corpus, candidates_from):  # before any model loads: fail fast
        if source is not None:
            corpus_layout(source)
    try:
        check_causal_lm(base)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    ens = load_ensemble(ensemble, inference_config)
    cache = char_cache(cache_dir or ensemble / "cache", ens)
    docs, candidates = [], []
    if corpus is not None:
        report = ReadReport()
        train_docs = list(open_corpus(corpus, lenient=lenient, report=report,
                                      classes=tuple(ens.classes)))
        say_read(corpus, report)
        trained_on = corpus_data_hash(train_docs)
        if trained_on != ens.manifest.data_hash:
            raise PipelineError(
                f"{corpus} is not the corpus the ensemble was trained on (data hash "
                f"{trained_on}, the ensemble's {ens.manifest.data_hash}): its folds say "
                "nothing of these documents. Give a held-out corpus with --candidates-from")
        typer.echo(f"out-of-fold candidates at stage-1 threshold {cfg.stage1_threshold}",
                   err=True)
        train_docs = share(train_docs)  # after the data hash, which covers the whole corpus
        docs += train_docs
        candidates += out_of_fold_candidates(train_docs, ens, threshold=cfg.stage1_threshold,
                                             group_pattern=pattern, char_cache=cache)
    if candidates_from is not None:
        report = ReadReport()
        held = share(list(open_corpus(candidates_from, lenient=lenient, report=report,
                                      classes=tuple(ens.classes))))
        say_read(candidates_from, report)
        docs += held
        candidates += ensemble_candidates(held, ens, threshold=cfg.stage1_threshold,
                                          char_cache=cache)
    if not docs:
        raise PipelineError(f"no documents in --subset {subset}")
    items = label_candidates(docs, candidates, exact=cfg.label == "exact",
                             validation_share=cfg.validation_share, group_pattern=pattern)
    if cfg.max_stage1_score is not None:
        n = len(items)
        items = uncertain(items, cfg.max_stage1_score)
        typer.echo(f"{len(items)} of {n} candidates have a stage-1 score below "
                   f"max_stage1_score {cfg.max_stage1_score}", err=True)
    if cfg.validation_share and items:
        held_out = sum(i.validation for i in items)
        if held_out == len(items):
            raise PipelineError(f"validation_share {cfg.validation_share}: every candidate is "
                                "held out for validation, none is left to train on; give a "
                                "larger validation_share (1/N of the document groups is held "
                                "out), or 0 for no validation")
        if not held_out:
            typer.secho(f"warning: validation_share {cfg.validation_share} holds no candidate "
                        "out (too few document groups): no validation figures", fg="yellow",
                        err=True)
    for cls, d in describe(items).items():
        typer.echo(f"{cls}: {d['candidates']} candidates ({d['train']} train, "
                   f"{d['validation']} validation), {d['exact']} exact, mean label "
                   f"{d['mean_label']}, labels {d['labels']}", err=True)

    def show(log: dict) -> None:
        if "loss" in log:
            typer.echo(f"  step {log['step']}/{log['max_steps']}: loss {log['loss']:.4f}",
                       err=True)

    record = train_judge(items, base=base, out=out, config=cfg, ensemble_identity=ens.identity,
                         on_log=show, on_step=lambda msg: typer.echo(msg, err=True))
    for cls, v in record["validation"].items():
        typer.echo(f"{cls}: validation on {v['candidates']} candidates ({v['positives']} with "
                   f"overlap >= 0.5): judge AUC {v['judge_auc']}, Brier {v['judge_brier']}; "
                   f"stage 1 AUC {v['stage1_auc']}, Brier {v['stage1_brier']}")
    typer.echo(f"wrote {out} (serve it with --llm {out})")
