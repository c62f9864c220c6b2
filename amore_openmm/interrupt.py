"""Ctrl-C and SIGTERM that stop a run at a safe point.

Why. Python's own SIGINT handling raises ``KeyboardInterrupt`` in the main thread wherever it
happens to be. Inside OpenMM that may be a χ callback (``openmm.PythonForce``), which OpenMM
turns into an ``OpenMMException: <NULL>`` that reads like a crash; and worker threads
(χ-MEP tracers, burst slots) were still inside OpenMM or PyTorch when the process exited,
which aborted it ("terminate called without an active exception").

Here a signal only *requests* a stop. The long loops of the package (path nodes, burst
chunks, ISOKANN iterations, trajectory frames, pipeline stages) call :func:`check_interrupt`
between steps; it raises :class:`Interrupted` once a stop is requested, in whichever thread
sees it first, and the usual cleanup runs: checkpoints are written, worker threads finish
their current step and leave. A second signal quits at once (``os._exit``), for when the
safe point is far away; files are written atomically, so nothing half-written is left.

:func:`stop_on_signals` installs the handlers (``amore`` does it for every command); use it
in your own script around a call to the library to get the same behaviour.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

__all__ = ["Interrupted", "check_interrupt", "request_stop", "stop_requested",
           "clear_stop", "stop_on_signals", "exit_code"]

_STOP = threading.Event()
_SIGNUM: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A stop requested by a signal (``signum``), raised at the next safe point."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


def exit_code(exc: BaseException) -> int:
    """The shell's exit status for an interrupt: 128 + the signal number (130 for Ctrl-C,
    143 for SIGTERM)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask every loop of the package to stop at its next safe point."""
    if not _SIGNUM:
        _SIGNUM.append(int(signum))
    _STOP.set()


def stop_requested() -> bool:
    """True once a stop was requested (and not cleared)."""
    return _STOP.is_set()


def clear_stop() -> None:
    """Forget a requested stop (e.g. before the next run in the same process)."""
    _STOP.clear()
    _SIGNUM.clear()


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a stop was requested; otherwise return at once."""
    if _STOP.is_set():
        raise Interrupted(_SIGNUM[0] if _SIGNUM else signal.SIGINT)


def _handler(signum: int, frame: Any) -> None:
    if _STOP.is_set():  # the second signal: the user does not want to wait
        print(f"amore: {signal.Signals(signum).name} again: quitting now (a resume continues "
              "from the last checkpoint)", file=sys.stderr, flush=True)
        os._exit(128 + int(signum))
    request_stop(signum)
    print(f"amore: {signal.Signals(signum).name}: stopping at the next safe point (send it "
          "again to quit at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
                    ) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM request a stop (see the module docstring) instead
    of raising ``KeyboardInterrupt`` wherever the main thread is. Only the main thread can
    install signal handlers; elsewhere this does nothing. The previous handlers and a clear
    stop flag are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear_stop()
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        clear_stop()
