"""Worker threads that have finished their native teardown before the caller goes on.

Why. PyTorch keeps per-thread autograd state whose C++ destructors run when the operating-system
thread ends, *after* Python's ``Thread.join`` (or ``ThreadPoolExecutor.shutdown``) has already
returned. A script whose last step used worker threads for χ gradients (the pool of χ-MEP
tracers, the batched paths' path threads) could then exit while those destructors still ran,
and the process aborted with "terminate called without an active exception" (exit code 134)
after all its work was done and written. Measured with torch 2.12 on Linux: two
``ThreadPoolExecutor`` threads calling ``torch.autograd.grad``, then exit: 13 of 30 runs
aborted; 4 of 24 runs of a 2-thread ``trace_chi_meps`` script. Waiting until the threads'
``/proc/self/task`` entries are gone: 0 of 30.

:class:`JoinedThreadPool` is a ``ThreadPoolExecutor`` whose ``shutdown(wait=True)`` also
waits for that; :func:`wait_threads_gone` does it for threads started by hand (record
``threading.get_native_id()`` in each).
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

__all__ = ["JoinedThreadPool", "wait_threads_gone"]

_TASKS = "/proc/self/task"
#: seconds to wait at most for joined threads to leave the process (a reused thread id,
#: or a thread that never ends, costs this once)
GONE_TIMEOUT = 2.0


def wait_threads_gone(native_ids: Iterable[int], timeout: float = GONE_TIMEOUT) -> bool:
    """Wait until none of the threads ``native_ids`` (``threading.get_native_id()``) exists
    in this process any more, at most ``timeout`` seconds. Returns True when they are gone
    (or the platform has no ``/proc/self/task`` to ask, e.g. macOS), False on timeout."""
    ids = [int(i) for i in native_ids if int(i) != threading.get_native_id()]
    if not ids or not os.path.isdir(_TASKS):
        return True
    deadline = time.monotonic() + float(timeout)
    while True:
        ids = [i for i in ids if os.path.exists(f"{_TASKS}/{i}")]
        if not ids:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


class JoinedThreadPool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose ``shutdown(wait=True)`` (and ``with`` exit) returns only
    when its worker threads have left the process (see the module docstring)."""

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        self.native_ids: set[int] = set()
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix,
                         initializer=self._record)

    def _record(self) -> None:
        self.native_ids.add(threading.get_native_id())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            wait_threads_gone(self.native_ids)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        # leaving on an exception (a failed task, a requested stop): tasks not yet started
        # are cancelled; the running ones finish or stop at their next safe point
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False
