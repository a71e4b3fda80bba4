"""``pipeline report``: one self-contained HTML page for error analysis."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import LenientOption, say_read


@app.command("report")
def report_command(
    gold: Annotated[Path, typer.Option(help="Gold corpus (any supported layout).")],
    pred: Annotated[Path, typer.Option(help="Predictions: a `pipeline run` output folder "
                                            "(with the stage scores), a task TSV or a corpus.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")],
    ablation: Annotated[Path | None, typer.Option(
        help="A `pipeline ablate` output folder: its table and precision-recall curves.")] = None,
    thresholds: Annotated[Path | None, typer.Option(
        help="thresholds.json from `pipeline tune`: the thresholds, what they reached, and "
             "the heat map written beside it.")] = None,
    title: Annotated[str, typer.Option(help="The page's title.")] = "Error analysis",
    subset: Annotated[str, typer.Option(
        help="i/n: only this share of the gold documents (by document group, as tune and "
             "ablate take it), e.g. the share the run was on.")] = "0/1",
    lenient: LenientOption = False,
) -> None:
    """One HTML page, to open in any browser offline: the official figures, the errors by
    type, the most frequent ones, and every document with gold and predicted spans
    highlighted, with filters by class, language, error type and text."""
    from pipeline.corpus import load_spans
    from pipeline.errors import ReadReport
    from pipeline.readers import open_corpus
    from pipeline.report import build_report, dropped_candidates
    from pipeline.run import parse_shard
    from pipeline.training import in_subset
    from pipeline.writers import atomic_write, check_writable

    check_writable(out)
    start = time.perf_counter()
    reports = {gold: ReadReport(), pred: ReadReport()}
    part = parse_shard(subset, "--subset")
    docs = [d for d in open_corpus(gold, lenient=lenient, report=reports[gold])
            if in_subset(d.id, part)]
    spans, _ = load_spans(pred, lenient=lenient, report=reports[pred])
    for source, report in reports.items():
        if report.skipped:
            say_read(source, report)
    abl = json.loads((ablation / "ablation.json").read_text(encoding="utf-8")) \
        if ablation else None
    th = json.loads(thresholds.read_text(encoding="utf-8")) if thresholds else None
    dropped = dropped_candidates(pred) if (pred / "parts").is_dir() else []
    page = build_report(docs, spans, dropped=dropped, ablation=abl, thresholds=th, title=title,
                        heatmap=thresholds.with_suffix(".png") if thresholds else None)
    atomic_write(out, page)
    typer.echo(f"wrote {out}: {len(docs)} documents, {len(spans)} predicted spans, "
               f"{len(dropped)} candidates the judge dropped, "
               f"{len(page.encode()) / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s")
