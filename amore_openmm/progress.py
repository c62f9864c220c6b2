"""Progress of long steps: a tqdm bar on a terminal, a few plain lines anywhere else.

A tqdm bar redraws itself with carriage returns; written to a log file (``amore run ... 2>
run.log``, a batch queue's output file) every redraw becomes part of one enormous line.
:func:`progress_bar` gives the bar only when the stream is a terminal; otherwise a
:class:`LineProgress` that prints one line when it starts, at most one every
``interval`` seconds while it runs, and one when it ends.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["progress_bar", "LineProgress", "LINE_INTERVAL_S"]

#: seconds between two progress lines when the output is not a terminal
LINE_INTERVAL_S = 30.0


class LineProgress:
    """The part of tqdm's interface the package uses (``update``, ``set_postfix``, ``close``),
    written as whole lines: ``desc: n/total unit (p%), t s[, postfix]``."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, interval: float = LINE_INTERVAL_S) -> None:
        self.total = None if total is None else int(total)
        self.n = int(initial)
        self.desc, self.unit = desc, unit
        self.file = file if file is not None else sys.stderr
        self.interval = float(interval)
        self.postfix = ""
        self._t0 = time.monotonic()
        self._last = self._t0
        self._closed = False
        self._write("started")

    def _write(self, note: str = "") -> None:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        tail += f", {note}" if note else ""
        unit = self.unit if (self.total or self.n) == 1 else self.unit + "s"
        print(f"{self.desc}: {count} {unit}{pct}, {time.monotonic() - self._t0:.0f} s"
              f"{tail}", file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write("done" if self.total is None or self.n >= self.total else "stopped")

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, leave: bool = True) -> Any:
    """A progress display on ``file`` (default stderr): a tqdm bar when it is a terminal, a
    :class:`LineProgress` otherwise. Both have ``update(n)``, ``set_postfix(**kw)``,
    ``close()``."""
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream,
                    dynamic_ncols=True, leave=leave)
    return LineProgress(total, desc, unit, initial, stream)
