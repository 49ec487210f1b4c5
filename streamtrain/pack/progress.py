"""Progress of a long job (pack, label, featurize, eval, train), for a terminal and for a log alike.

On a terminal it is a tqdm bar on stderr, and messages logged while the bar is
drawn go above it on lines of their own (tqdm's logging redirect). Anywhere
else (a scheduler's log, ``| tee``, ``> log 2>&1``) a bar's frames would be
carriage returns and half lines, so the report is plain lines on stdout: one
each time the count passes a multiple of ``every`` and one at the end, each
with the count, the figures last given to ``show``, the rate and the time left::

    pack: 1200/12000 samples (10%) hours=1.367 | 402 samples/s, eta 0:00:27

This module lives in ``pack``, the lowest layer with a long job; the layers
above use it too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal() -> bool:
    """A bar only when both streams are terminals: with ``| tee log`` the plain lines reach the log."""
    return all(stream.isatty() for stream in (sys.stdout, sys.stderr) if stream is not None)


def message(text: str) -> None:
    """A line on stdout that a bar being drawn moves below it, not into it."""
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


class ProgressReport:
    """Counts ``unit``s of a job of ``total`` (None: unknown), from ``initial``.

    ``enabled=False`` reports nothing. ``bar`` forces the choice between a bar
    and plain lines (default: a bar only on a terminal, ``on_terminal``).
    ``every``: units between plain lines (default: a tenth of ``total``).
    """

    def __init__(self, desc: str, total: int | None, unit: str, *, initial: int = 0, every: int | None = None,
                 enabled: bool = True, bar: bool | None = None, stream: TextIO | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.count = self._start = self._reported = initial
        self.every = max(1, every if every is not None else (total or 0) // 10)
        self.enabled = enabled
        self.figures: dict[str, str] = {}
        self._started = time.perf_counter()
        self._stream = stream
        self._bar = None
        self._redirect = None
        if enabled and (on_terminal() if bar is None else bar):
            self._bar = tqdm(total=total, initial=initial, unit=f" {unit}", desc=desc, dynamic_ncols=True,
                             file=stream)
            self._redirect = logging_redirect_tqdm([logging.getLogger()])
            self._redirect.__enter__()

    def __enter__(self) -> "ProgressReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def show(self, **figures) -> None:
        """Figures for the bar's end and the next plain line (e.g. ``loss="2.113"``)."""
        self.figures = {name: str(value) for name, value in figures.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.figures, refresh=False)

    def update(self, n: int = 1) -> None:
        before, self.count = self.count, self.count + n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and (self.count // self.every > before // self.every or self.count == self.total):
            self._line()

    def close(self) -> None:
        """Ends the bar, or writes the last plain line if the count moved since the one before."""
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)
            self._bar = self._redirect = None
        elif self.enabled and self.count != self._reported:
            self._line()
        self.enabled = False

    def line(self) -> str:
        """The plain line for the count now."""
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        percent = f" ({100 * self.count // self.total}%)" if self.total else ""
        figures = "".join(f" {name}={value}" for name, value in self.figures.items())
        elapsed = time.perf_counter() - self._started
        rate = (self.count - self._start) / elapsed if elapsed > 0 else 0.0
        pace = f" | {rate:.3g} {self.unit}/s" if rate else ""
        if rate and self.total and self.count < self.total:
            pace += f", eta {_clock((self.total - self.count) / rate)}"
        return f"{self.desc}: {done} {self.unit}{percent}{figures}{pace}"

    def _line(self) -> None:
        print(self.line(), file=self._stream or sys.stdout, flush=True)
        self._reported = self.count


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
