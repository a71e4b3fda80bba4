"""The ``pipeline`` command: one typer app, one small module per command.

Commands parse their options and call plain functions; only this layer prints, sets up
logging and chooses exit codes. Bad input ends with one line naming the file and line.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import sys

import typer

from pipeline.errors import PipelineError

# What the machine refuses rather than what the code gets wrong: a folder that cannot be
# written, a full disk. One line, as for bad input; anything else keeps its traceback.
REFUSALS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOTDIR,
            errno.EISDIR, errno.ENAMETOOLONG}

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Two-stage clinical NER: DISEASE, SYMPTOM and PROCEDURE spans.")


def _register() -> None:
    from pipeline.cli import convert, evaluate  # noqa: F401  (each module adds its command)

    try:
        from pipeline.cli import train  # noqa: F401
    except ImportError:  # pragma: no cover - stage 1 not installed
        pass
    for name in ("run", "tune", "judge"):
        try:
            __import__(f"pipeline.cli.{name}")
        except ImportError:
            pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _register()
    try:
        # without standalone mode, typer returns what a command exits with instead of
        # exiting: 130 for Ctrl-C, which must not end the process as a success
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:
                typer.echo("interrupted; the same command continues where it stopped", err=True)
            sys.exit(code)
    except (PipelineError, FileNotFoundError, ValueError) as exc:
        # bad input, a missing file, a config that does not validate: one line, no traceback
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in REFUSALS:
            raise
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except sqlite3.Error as exc:  # a cache that cannot be opened or written (the file is named)
        typer.secho(f"error: {exc} (--cache-dir puts the caches in another folder)", fg="red",
                    err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not _shows_itself(exc):
            raise
        exc.show()  # a usage error or a bad option value: click's own message
        sys.exit(exc.exit_code)


def _shows_itself(exc: Exception) -> bool:
    """Is this one of click's exceptions (usage errors, option values out of range)? Newer
    typer releases carry their own copy of click, whose classes are not click's."""
    kinds = [getattr(typer, "TyperException", None)]
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return isinstance(exc, tuple(k for k in kinds if k)) and callable(getattr(exc, "show", None))
