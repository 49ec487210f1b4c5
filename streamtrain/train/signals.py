"""Preemption: SIGTERM / SIGINT ask the trainer to finish its step, checkpoint and exit 0.

Schedulers (Slurm, Kubernetes) signal every process of the job. The handler is
installed as the command starts, before anything heavy is imported, so a signal
during start-up is a clean, announced stop too. DataLoader workers ignore the
signals (``streamtrain.loader.worker.worker_init``): the main process decides when
they stop.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("streamtrain.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A flag raised by SIGTERM / SIGINT while installed (a context manager)."""

    def __init__(self):
        self.requested: str | None = None  # the signal's name, once received
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        log.warning("received %s: finishing this step, then checkpointing", self.requested)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
