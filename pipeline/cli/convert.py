"""``pipeline convert``: between brat, the task TSV, JSONL and the release layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app
from pipeline.cli.common import LenientOption, say_read
from pipeline.errors import ReadReport
from pipeline.readers import open_corpus
from pipeline.writers import check_writable, write_corpus


@app.command("convert")
def convert_command(
    input: Annotated[Path, typer.Option(help="A corpus: brat or .txt folder, release folder, "
                                             ".jsonl, or a task .tsv (with --texts).")],
    output: Annotated[Path, typer.Option(help="Output file (tsv, jsonl) or folder (brat).")],
    format: Annotated[str, typer.Option(help="tsv, brat or jsonl.")] = "tsv",
    texts: Annotated[Path | None, typer.Option(help="Text folder of a TSV input.")] = None,
    lenient: LenientOption = False,
) -> None:
    """Convert a corpus to another format, checking every span against its text."""
    check_writable(output, folder=format == "brat")  # before reading a large corpus
    report = ReadReport()
    docs = open_corpus(input, texts=texts, lenient=lenient, report=report)
    write_corpus(docs, output, format)
    say_read(input, report)
