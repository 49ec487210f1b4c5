"""A warning logged at most once, whichever of several threads (prefetching shards) gets there first."""

from __future__ import annotations

import logging
import threading


class WarnOnce:
    def __init__(self, logger: logging.Logger):
        self._logger = logger
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, message: str, *args) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        self._logger.warning(message, *args)
