"""The ``pipeline`` command run in the test's own process: as the shell would run it (its
exit code, stdout and stderr, log lines included), without a new interpreter importing
torch each time. Real processes stay for what needs one (signals, kills, servers, spawn,
a stdout that is a full device)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys


def run_cli(*args: object) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``pipeline ARGS...`` run in this process."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # what main's logging would print on stderr
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_argv, old_level, old_env = sys.argv, root.level, dict(os.environ)
    from pipeline.cli import CHATTY

    old_levels = {name: logging.getLogger(name).level for name in CHATTY}
    sys.argv = ["pipeline", *map(str, args)]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:  # what the command set for its own process, undone for the next test
        sys.argv = old_argv
        root.removeHandler(handler)
        root.setLevel(old_level)
        os.environ.clear()
        os.environ.update(old_env)
        for name, level in old_levels.items():
            logging.getLogger(name).setLevel(level)
    return code, out.getvalue(), err.getvalue()
