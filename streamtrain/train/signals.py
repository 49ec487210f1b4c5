"""Preemption: SIGTERM / SIGINT ask the trainer to finish its step, checkpoint and exit 0.

The same happens to a rank whose launcher dies (``_stop_with_launcher``).

Schedulers (Slurm, Kubernetes) signal every process of the job. The handler is
installed as the command starts, before anything heavy is imported, so a signal
during start-up is a clean, announced stop too. DataLoader workers ignore the
signals (``streamtrain.loader.worker.worker_init``): the main process decides when
they stop.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger("streamtrain.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT = os.getppid()  # as this module is imported, early in the command's start-up


class StopRequest:
    """A flag raised by SIGTERM / SIGINT while installed (a context manager)."""

    def __init__(self):
        self.requested: str | None = None  # the signal's name, once received
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        _stop_with_launcher()
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        log.warning("received %s: finishing this step, then checkpointing", self.requested)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _stop_with_launcher() -> None:
    """A rank started by a launcher (torchrun, accelerate launch: ``LOCAL_RANK`` is set) is sent SIGTERM
    by the kernel when its launcher dies (Linux's PR_SET_PDEATHSIG), so that a launcher killed alone
    does not leave its ranks training on as orphans that hold the run lock: they checkpoint and stop
    as when preempted. A launcher already gone by now is noticed by the parent having changed."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("cannot ask to be stopped with the launcher: %s", os.strerror(ctypes.get_errno()))
    elif os.getppid() != _PARENT:
        os.kill(os.getpid(), signal.SIGTERM)
