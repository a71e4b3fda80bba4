"""The ``pipeline`` command: one typer app, one small module per command.

Commands parse their options and call plain functions; only this layer prints, sets up
logging and chooses exit codes. Bad input ends with one line naming the file and line.
"""

from __future__ import annotations

import logging
import sys
import traceback

import typer

from pipeline.errors import EXIT_CODES, ErrorKind, kind_of, message

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Two-stage clinical NER: DISEASE, SYMPTOM and PROCEDURE spans.")

# Libraries whose INFO lines would bury the results: WARNING and above unless --verbose.
CHATTY = ("vllm", "transformers", "datasets", "torch", "peft", "accelerate", "urllib3",
          "filelock", "httpx", "ray", "ray.data")


def quiet_libraries(verbose: bool) -> None:
    """Third-party logs at WARNING (all of them with ``verbose``), on stderr: stdout carries
    only results. vLLM configures its own logging, from the environment, when imported (and
    in its engine process), so it is told there."""
    import os

    level = logging.DEBUG if verbose else logging.WARNING
    os.environ.setdefault("VLLM_LOGGING_LEVEL", logging.getLevelName(level))
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if not verbose:  # datasets' "Map: 100%" bars, read when it is first imported
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in CHATTY:
        logging.getLogger(name).setLevel(level)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("clinner-2stage")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown (not installed)"


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"pipeline {version()}")
        raise typer.Exit()


@app.callback()
def options(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show the libraries' log lines (vLLM, transformers, ...) "
                                      "too, not only warnings."),
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print the version and exit."),
) -> None:
    """Two-stage clinical NER: DISEASE, SYMPTOM and PROCEDURE spans."""
    quiet_libraries(verbose)


def _register() -> None:
    from pipeline.cli import convert, evaluate  # noqa: F401  (each module adds its command)

    try:
        from pipeline.cli import train  # noqa: F401
    except ImportError:  # pragma: no cover - stage 1 not installed
        pass
    for name in ("run", "tune", "judge", "report", "ensemble"):
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
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every kind is decided in pipeline.errors
        if _shows_itself(exc):
            exc.show()  # a usage error or a bad option value: click's own message
            sys.exit(exc.exit_code)
        kind = ErrorKind.INTERRUPTED if type(exc).__name__ == "Abort" else kind_of(exc)
        if kind is ErrorKind.BUG:
            traceback.print_exc()
        typer.secho(message(exc, kind), fg=None if kind is ErrorKind.INTERRUPTED else "red",
                    err=True)
        sys.exit(EXIT_CODES[kind])
    if isinstance(code, int) and code:
        if code == EXIT_CODES[ErrorKind.INTERRUPTED]:
            typer.echo(message(KeyboardInterrupt(), ErrorKind.INTERRUPTED), err=True)
        sys.exit(code)


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
