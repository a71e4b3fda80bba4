"""``pipeline ensemble add|remove|show``: an ensemble's members, beyond those `train` made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import LenientOption, say_read

ensemble_app = typer.Typer(no_args_is_help=True, help="Add members of other kinds to an "
                           "ensemble, remove members, show what it holds.")
app.add_typer(ensemble_app, name="ensemble")

EnsembleFolder = Annotated[Path, typer.Option(
    "--ensemble", exists=True, file_okay=False, help="Ensemble folder (from `pipeline train`).")]


@ensemble_app.command("add")
def add_command(
    ensemble: EnsembleFolder,
    kind: Annotated[str, typer.Option(help="The member's kind: gazetteer or "
                                           "token-classifier.")],
    entity_class: Annotated[str | None, typer.Option(
        "--class", help="gazetteer: the class it proposes.")] = None,
    model: Annotated[Path | None, typer.Option(
        exists=True, file_okay=False,
        help="token-classifier: a Hugging Face token-classification model folder (copied "
             "into the ensemble).")] = None,
    labels: Annotated[str | None, typer.Option(
        help="token-classifier: its labels of one class and the class, e.g. "
             "B-DISEASE,I-DISEASE=DISEASE (BIO, BIOES or IO: list every label of the "
             "class); the member's probability is their summed probability.")] = None,
    from_corpus: Annotated[Path | None, typer.Option(
        help="gazetteer: a gold corpus whose mentions of the class are its terms (unless "
             "--terms gives them), and on which each term's precision is measured.")] = None,
    terms: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="gazetteer: a term file, one term a line (UTF-8); precision 1.0 unless "
             "--from-corpus measures it.")] = None,
    weight: Annotated[float, typer.Option(help="Its weight in its class's mean (more "
                                               "than 0).")] = 1.0,
    name: Annotated[str | None, typer.Option(help="The member's name (default: "
                                                  "CLASS-gazetteer).")] = None,
    lenient: LenientOption = False,
) -> None:
    """Add a member that needs no training. Its identity changes the ensemble's, so
    caches and tuned thresholds of the ensemble before it do not apply to it."""
    from pipeline.documents import class_named
    from pipeline.errors import PipelineError, ReadReport
    from pipeline.members import (
        add_gazetteer,
        add_token_classifier,
        parse_label_map,
        read_terms,
    )
    from pipeline.readers import open_corpus
    from stage1_ensemble.kinds import KINDS

    if kind == "token-classifier":
        if model is None or labels is None:
            raise PipelineError("a token-classifier member needs --model and --labels")
        names, cls = parse_label_map(labels)
        member = add_token_classifier(ensemble, model, names, cls, weight=weight, name=name)
        typer.echo(f"added {member.name} ({member.kind}, {cls}, weight {member.weight}): "
                   f"labels {', '.join(names)}")
        return
    if kind != "gazetteer":
        raise PipelineError(f"--kind {kind}: this command adds gazetteer and token-classifier "
                            f"members (kinds known: {', '.join(KINDS)}; binary members come "
                            "from `pipeline train`)")
    if entity_class is None:
        raise PipelineError("a gazetteer member needs --class")
    cls = class_named(entity_class, "--class")
    if from_corpus is None and terms is None:
        raise PipelineError("a gazetteer needs --from-corpus GOLD, --terms FILE, or both")
    words = read_terms(terms) if terms is not None else []
    docs = []
    if from_corpus is not None:
        report = ReadReport()
        docs = list(open_corpus(from_corpus, lenient=lenient, report=report, classes=(cls,)))
        say_read(from_corpus, report)
    member = add_gazetteer(ensemble, cls, docs=docs, terms=words, weight=weight, name=name,
                           source=str(from_corpus or ""))
    typer.echo(f"added {member.name} ({member.kind}, {cls}, weight {member.weight}): "
               f"{json.dumps(member.validation)}")


@ensemble_app.command("remove")
def remove_command(
    ensemble: EnsembleFolder,
    member: Annotated[str, typer.Option(help="The member's name (see `pipeline ensemble "
                                             "show`).")],
) -> None:
    """Remove a member (and its folder)."""
    from pipeline.members import remove_member

    gone = remove_member(ensemble, member)
    typer.echo(f"removed {gone.name} ({gone.kind}, {gone.entity_class})")


@ensemble_app.command("show")
def show_command(
    ensemble: EnsembleFolder,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False,
) -> None:
    """The members: name, kind, class, weight, fold and validation figures."""
    from pipeline.members import describe
    from stage1_ensemble.ensemble import read_manifest

    rows = describe(ensemble)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    weighing = read_manifest(ensemble).weighing
    if weighing:
        typer.echo(f"weights chosen on {weighing['gold']} ({weighing['subset']}, "
                   f"{weighing['objective']}): {json.dumps(weighing['classes'])}")
    for r in rows:
        typer.echo(f"{r['name']}\t{r['kind']}\t{r['class']}\tweight {r['weight']}\t"
                   f"fold {r['fold']}\t{json.dumps(r['validation'])}")


@ensemble_app.command("weigh")
def weigh_command(
    ensemble: EnsembleFolder,
    gold: Annotated[Path, typer.Option(help="Gold documents to choose the weights on: the "
                                            "ensemble's training corpus (each document is "
                                            "seen by the members that did not train on it) "
                                            "or a held-out corpus (every member sees every "
                                            "document); told apart by the manifest's data "
                                            "hash.")],
    subset: Annotated[str, typer.Option(help="i/n: only this share of the gold documents "
                                             "(by document group).")] = "0/1",
    objective: Annotated[str, typer.Option(help="char_f1 or strict_f1.")] = "char_f1",
    step: Annotated[float, typer.Option(help="The grid's step on each weight.")] = 0.1,
    group_pattern: Annotated[str | None, typer.Option(
        help="The --group-pattern the ensemble was trained with, if any.")] = None,
    lenient: LenientOption = False,
) -> None:
    """Choose each class's member weights (by family: one encoder's fold members count as
    one) to maximise char F1 (or strict F1) on gold, by an exhaustive grid on the simplex
    at every stage-1 threshold; write them into the manifest (its identity, and so its
    caches' keys, change), with the figures they reached."""
    from pipeline.errors import PipelineError, ReadReport
    from pipeline.readers import open_corpus
    from pipeline.recognizer import load_ensemble
    from pipeline.run import parse_shard
    from pipeline.training import corpus_data_hash, group_pattern_option, in_subset
    from pipeline.weigh import apply, weigh_class
    from pipeline.writers import folder_lock
    from stage1_ensemble.ensemble import read_manifest, write_manifest

    if objective not in ("char_f1", "strict_f1"):
        raise PipelineError(f"--objective must be char_f1 or strict_f1, not {objective!r}")
    part, pattern = parse_shard(subset, "--subset"), group_pattern_option(group_pattern)
    with folder_lock(ensemble, "pipeline ensemble weigh"):
        ens = load_ensemble(ensemble)
        report = ReadReport()
        read = list(open_corpus(gold, lenient=lenient, report=report,
                                classes=tuple(ens.classes)))
        if report.skipped:
            say_read(gold, report)
        held_out = corpus_data_hash(read) != ens.manifest.data_hash
        docs = [d for d in read if in_subset(d.id, part)]
        if not docs:
            raise PipelineError(f"{gold}: no gold documents" +
                                (f" in --subset {subset}" if subset != "0/1" else ""))
        typer.echo(f"{gold}: " + ("held out (not the ensemble's training corpus): every "
                                  "member proposes on every document" if held_out else
                                  "the ensemble's training corpus: out-of-fold members only"),
                   err=True)
        found = [weigh_class(docs, ens, cls, objective=objective, step=step, pattern=pattern,
                             held_out=held_out)
                 for cls in ens.classes]
        record = {"gold": str(gold), "subset": subset, "objective": objective, "step": step,
                  "documents": len(docs), "held_out": held_out,
                  "search": "exhaustive simplex grid",
                  "classes": {w.cls: w.as_dict() for w in found}}
        write_manifest(ensemble, apply(read_manifest(ensemble), found, record))
    for w in found:
        weights = ", ".join(f"{n} {v:.2f}" for n, v in w.weights.items())
        note = f" ({', '.join(w.in_sample)} trained on these documents)" if w.in_sample else ""
        typer.echo(f"{w.cls}: {weights}; {objective} {w.before:.4f} -> {w.value:.4f} at "
                   f"stage-1 threshold {w.threshold}{note}")
