"""Progress for a person at a terminal, and for a log file: one rule for ``train.run`` and ``train.prepare``.

On a terminal (stderr is one), a loop shows a tqdm bar on stderr and log lines are written above it.
Anywhere else (output redirected to a file or a pipe, CI, a job scheduler) a bar's frames, one per update
with a carriage return, would fill the log, so a loop prints a plain line instead, at most every
$ALEXNET_PROGRESS_INTERVAL seconds (30; none for a loop that ends sooner, whose summary line follows):

    epoch 3/9: 120/157 (76%), 00:30 elapsed, 00:09 left, 4.0 step/s, loss=1.6023, img_s=128

Those lines and the log lines go to stdout, each flushed, so a log holds them in the order they happened.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

from train.data import DataError

INTERVAL_VAR = "ALEXNET_PROGRESS_INTERVAL"


def on_terminal(stream=None) -> bool:
    """Whether progress is shown as bars: ``stream`` (default stderr, where the bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed file
        return False


def interval() -> float:
    """Seconds between two progress lines without a terminal: $ALEXNET_PROGRESS_INTERVAL, or 30."""
    text = os.environ.get(INTERVAL_VAR, "30")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise DataError(f"{INTERVAL_VAR} must be a number of seconds (>= 0), got {text!r}")
    return seconds


def write(msg: str) -> None:
    """A log line on stdout, flushed: above the bars on a terminal."""
    if on_terminal():
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(msg, flush=True)


def bar(total: int, desc: str = "", *, unit: str = "it", initial: int = 0, enabled: bool = True, **options):
    """A tqdm bar on a terminal, else ``Lines`` with the same methods (update, set_postfix, write, close).
    ``enabled`` False shows nothing (``--no-progress``, or a process other than the one that talks);
    ``options`` are tqdm's own, for the bar."""
    if on_terminal():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                    dynamic_ncols=True, **options)
    return Lines(total, desc, unit, initial, interval() if enabled else float("inf"))


class Lines:
    """A bar for a log: ``update`` prints a line when ``every`` seconds have passed since the last one."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, every: float):
        self.total, self.desc, self.unit, self.n, self.every = total, desc, unit, initial, every
        self.initial, self.postfix = initial, ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            write(self.line(now - self.start))

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def line(self, elapsed: float) -> str:
        rate = (self.n - self.initial) / max(elapsed, 1e-9)
        left = tqdm.format_interval((self.total - self.n) / rate) if rate > 0 else "?"
        text = (f"{self.desc}: " if self.desc else "") + f"{self.n}/{self.total}"
        text += f" ({self.n / self.total:.0%})" if self.total else ""
        text += f", {tqdm.format_interval(elapsed)} elapsed, {left} left, {rate:.1f} {self.unit}/s"
        return text + (f", {self.postfix}" if self.postfix else "")

    @staticmethod
    def write(msg: str) -> None:
        write(msg)

    def close(self) -> None:
        pass
