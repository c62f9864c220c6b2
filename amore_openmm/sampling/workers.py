"""Burst worker processes (the pool's slots on the Reference platform).

Workers are plain subprocesses speaking pickle over stdin/stdout (not multiprocessing): they
do not re-import the user's __main__ script, so pools work from scripts without a
``if __name__ == "__main__"`` guard, and a worker that dies is detected (EOF), not waited on.
Workers ignore SIGINT: a Ctrl-C stops the parent's run, not the pool.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from .engine import BurstSpec, Engine

WORKER_CMD = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
              "from amore_openmm.sampling.workers import worker_main; worker_main()")


def _start_worker() -> subprocess.Popen:
    """A worker process (one OpenMP thread: the parent shares the cores among workers)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-c", WORKER_CMD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


def worker_main() -> None:
    """Entry point of a burst worker process: one Context, chunks in, results out."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by libraries goes to stderr, not into the protocol
    engine: Engine | None = None
    while True:
        try:
            msg = pickle.load(proto_in)
        except EOFError:  # parent gone
            return
        try:
            if msg[0] == "init":
                engine = Engine(msg[1])
                reply: tuple = ("ok", os.getpid(), engine.fast_reseed)
            elif msg[0] == "chunk":
                assert engine is not None, "worker got a chunk before init"
                reply = ("ok", engine.run_chunk(msg[1]))
            elif msg[0] == "call":  # a chunk for another engine (e.g. packed replicas)
                reply = ("ok", msg[1](msg[2]))
            elif msg[0] == "stop":
                return
            else:
                reply = ("error", f"unknown worker message {msg[0]!r}")
        except Exception:  # noqa: BLE001 - reported to the parent, worker stays usable
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, proto_out, protocol=pickle.HIGHEST_PROTOCOL)
        proto_out.flush()


class ProcessSlot:
    """Parent-side handle of one worker process holding one Context."""

    def __init__(self, spec: BurstSpec, on_create: Callable[[], None]) -> None:
        self.spec = spec
        self._on_create = on_create
        self.proc: subprocess.Popen | None = None
        self.fast_reseed = False
        self._launch()

    def _launch(self) -> None:
        self.proc = _start_worker()
        self._init_sent = False
        self._initialised = False

    def send_init(self) -> None:
        """Ask the worker to build its Context (without waiting: workers start in parallel)."""
        if not self._init_sent:
            self._send(("init", self.spec))
            self._init_sent = True

    def finish_init(self) -> None:
        if self._initialised:
            return
        self.send_init()
        reply = self._recv()
        if reply[0] != "ok":
            raise RuntimeError(f"burst worker could not create its Context:\n{reply[1]}")
        self.fast_reseed = bool(reply[2])
        self._initialised = True
        self._on_create()

    def _send(self, msg: tuple) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def _recv(self) -> tuple:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            return pickle.load(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(f"burst worker process {self.proc.pid} died (exit code {code}); "
                               "see its messages on stderr. The pool restarts it for the "
                               "next chunk.") from None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def run_chunk(self, task: Any,
                  runner: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:  # died earlier: restart
            self._launch()
        try:
            self.finish_init()
            self._send(("chunk", task) if runner is None else ("call", runner, task))
            reply = self._recv()
        except (BrokenPipeError, RuntimeError):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            raise
        if reply[0] != "ok":
            chunk = task.get("chunk") if isinstance(task, dict) else None
            raise RuntimeError(f"burst worker failed on chunk {chunk}:\n{reply[1]}")
        return reply[1]

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self._send(("stop",))
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for fh in (self.proc.stdin, self.proc.stdout):
                try:
                    fh.close()
                except OSError:
                    pass
            self.proc = None


def call_in_processes(fn: Callable[[Any], Any], tasks: list[Any], here: bool = False
                      ) -> list[Any]:
    """``[fn(t) for t in tasks]``, each call in its own worker process, all in parallel.

    ``fn`` must be importable by the workers (a module-level function of this package) and
    ``fn``, the tasks and the results picklable. A worker that fails raises here with its
    traceback; an interrupt (or any error) stops every worker. ``here``: the first task runs
    in this process while the workers run the others (one process fewer to start and import:
    ~2 s each on a loaded 2-core machine).
    """
    slots: list[subprocess.Popen] = []
    finished = False
    try:
        for task in tasks[1:] if here else tasks:
            proc = _start_worker()
            slots.append(proc)
            pickle.dump(("call", fn, task), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
        results = [fn(tasks[0])] if here and tasks else []
        for proc in slots:
            try:
                reply = pickle.load(proc.stdout)
            except EOFError:
                raise RuntimeError(f"worker process {proc.pid} died (exit code "
                                   f"{proc.wait()}); see its messages on stderr") from None
            if reply[0] != "ok":
                raise RuntimeError(f"worker process {proc.pid} failed:\n{reply[1]}")
            results.append(reply[1])
        finished = True
        return results
    finally:
        for proc in slots:
            if proc.poll() is None and not finished:     # busy: it would not read "stop"
                proc.kill()
                proc.wait()
            elif proc.poll() is None:
                try:
                    pickle.dump(("stop",), proc.stdin)
                    proc.stdin.close()
                    proc.wait(timeout=10)
                except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()
            for fh in (proc.stdin, proc.stdout):
                try:
                    fh.close()
                except OSError:
                    pass
