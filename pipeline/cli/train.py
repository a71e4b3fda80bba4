"""``pipeline train``: every member of an ensemble, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import LenientOption, say_read
from pipeline.documents import CLASSES, class_named
from pipeline.errors import PipelineError


@app.command("train")
def train_command(
    corpus: Annotated[Path, typer.Option(help="Gold training corpus (any supported layout).")],
    out: Annotated[Path, typer.Option(help="Ensemble folder (manifest + one folder a member).")],
    encoder: Annotated[list[str], typer.Option(help="Encoder checkpoint; repeat for several.")],
    classes: Annotated[str, typer.Option(help="Comma-separated classes.")] = ",".join(CLASSES),
    folds: Annotated[int, typer.Option(min=1, help="Cross-validation folds (members per "
                                                   "encoder and class).")] = 1,
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON (unknown keys fail).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
    group_pattern: Annotated[str | None, typer.Option(
        help="Regex whose group 1 names a document's group (translations of one case).")] = None,
    lenient: LenientOption = False,
) -> None:
    """Fine-tune one binary token classifier per class × encoder × fold.

    Finished members are kept, so the same command resumes after a crash."""
    from pipeline.errors import ReadReport
    from pipeline.readers import open_corpus
    from pipeline.training import group_pattern_option, train_ensemble
    from stage1_ensemble.config import TrainConfig, load_config

    pattern = group_pattern_option(group_pattern)
    cfg = load_config(config) if config else TrainConfig()
    if max_steps is not None:
        cfg = cfg.model_copy(update={"max_steps": max_steps})
    wanted = tuple(dict.fromkeys(class_named(c.strip(), "--classes")
                                 for c in classes.split(",") if c.strip()))
    if not wanted:
        raise PipelineError(f"--classes {classes!r} names no class")
    report = ReadReport()
    docs = list(open_corpus(corpus, lenient=lenient, report=report, classes=wanted))
    say_read(corpus, report)

    def show(name: str, what: str) -> None:
        typer.echo(f"[member] {name}: {what}", err=True)

    manifest = train_ensemble(docs, out=out, encoders=encoder, classes=wanted, n_folds=folds,
                              config=cfg, group_pattern=pattern,
                              on_member=show)
    for m in manifest.members:
        typer.echo(f"{m.name}: validation {m.validation or '(no held-out fold)'}")
    typer.echo(f"wrote {out / 'ensemble.json'} ({len(manifest.members)} members)")
