"""``pipeline evaluate``: the task's official metrics on a gold and a predicted corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli import app
from pipeline.cli.common import LenientOption, say_read
from pipeline.corpus import load_spans
from pipeline.documents import class_named
from pipeline.errors import ReadReport
from pipeline.metrics import evaluate


@app.command("evaluate")
def evaluate_command(
    gold: Annotated[Path, typer.Option(help="Gold: a task TSV or a corpus folder.")],
    pred: Annotated[Path, typer.Option(help="Predictions: a task TSV, a corpus folder or a "
                                            "`pipeline run` output folder.")],
    entity: Annotated[str | None, typer.Option(
        help="Score one class only: DISEASE, SYMPTOM or PROCEDURE (or its corpus label, "
             "e.g. ENFERMEDAD).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    lenient: LenientOption = False,
) -> None:
    """Strict and character-overlap P/R/F1 with counts, per class, per language and pooled."""
    if entity is not None:  # the readers keep these classes only
        entity = class_named(entity, "--entity")
    reports = {gold: ReadReport(), pred: ReadReport()}
    gold_spans, lang_of = load_spans(gold, lenient=lenient, report=reports[gold])
    pred_spans, _ = load_spans(pred, lenient=lenient, report=reports[pred])
    for source, report in reports.items():
        if report.skipped:  # under --lenient: what the figures leave out
            say_read(source, report)
    gold_ids, pred_ids = {s.doc_id for s in gold_spans}, {s.doc_id for s in pred_spans}
    if gold_ids and pred_ids and not gold_ids & pred_ids:  # every span would count as wrong
        typer.secho(f"warning: no document of {pred} is in {gold} (gold ids like "
                    f"{min(gold_ids)!r}, predicted like {min(pred_ids)!r}); every prediction "
                    "counts as a false positive", fg="yellow", err=True)
    result = evaluate(gold_spans, pred_spans, entity=entity, lang_of=lang_of)
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    print_table(result.as_dict())


TABLE_WIDTH = 130


def print_table(result: dict) -> None:
    table = Table(title="Evaluation")
    for col in ("slice", "strict P", "strict R", "strict F1", "tp", "fp", "fn",
                "char P", "char R", "char F1", "gold", "pred"):
        table.add_column(col, justify="left" if col == "slice" else "right")
    rows = [("pooled", result)] + [(f"{s['slice']}={s['value']}", s)
                                   for s in result.get("slices", [])]
    for name, r in rows:
        st, ch = r["strict"], r["char_f1"]
        table.add_row(name, *(f"{st[k]:.4f}" for k in ("precision", "recall", "f1")),
                      *(str(st[k]) for k in ("tp", "fp", "fn")),
                      *(f"{ch[k]:.4f}" for k in ("precision", "recall", "f1")),
                      str(ch["n_gold"]), str(ch["n_pred"]))
    console = Console()
    if console.width < TABLE_WIDTH:  # piped, or a narrow terminal: never cut the figures
        console = Console(width=TABLE_WIDTH)
    console.print(table)
