"""The ``pipeline`` command run in the test's own process (faster than a subprocess where
a real process proves nothing more)."""

from __future__ import annotations

import sys


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    """The ``pipeline`` command in this process, as the shell would run it."""
    from pipeline.cli import main

    old = sys.argv
    sys.argv = ["pipeline", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err
