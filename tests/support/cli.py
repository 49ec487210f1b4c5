"""``streamtrain ARGS`` run in this process: its exit code and what it printed.

A subprocess pays the trainer's imports again (4.4 s on a quiet 2-core machine, about 9 s under load); in
process, the test session pays them once. Tests about processes (signals, launchers, the exit status of a
killed or crashed process) start real ones instead.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import redirect_stderr, redirect_stdout
from typing import NamedTuple
from unittest import mock

from streamtrain.cli import main


class CliRun(NamedTuple):
    code: int  # the exit code main() returned, or argparse's through SystemExit
    out: str
    err: str  # stderr, with the log records the command wrote at INFO and above


def run_cli(*args: str, env: dict[str, str] | None = None, threads: int | None = None, check: bool = True) -> CliRun:
    """Run ``streamtrain ARGS`` through ``streamtrain.cli.main``; ``env`` is added to ``os.environ`` for the
    call. ``threads`` sets torch's threads for the call: 1 gives the float results of a process started with
    OMP_NUM_THREADS=1, for a run compared bit for bit with one. With ``check``, an exit code other than 0
    fails with what the command printed."""
    out, err = io.StringIO(), io.StringIO()
    # The command's logging.basicConfig is a no-op under pytest (the root logger has pytest's handlers):
    # this handler puts the records where a user would see them, on stderr.
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    threads_before = _set_threads(threads)
    try:
        with mock.patch.dict(os.environ, env or {}), redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse: usage errors (2) and --help (0)
                code = int(stop.code or 0)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        _set_threads(threads_before)
    result = CliRun(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"streamtrain {' '.join(args)} exited {code}:\n{result.out}\n{result.err}")
    return result


def _set_threads(threads: int | None) -> int | None:
    """Set torch's intra-op threads (None: leave them); returns the number before."""
    if threads is None:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before
