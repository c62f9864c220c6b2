"""Run Koopman burst chunks on Dask workers.

:class:`DaskExecutor` is a ``concurrent.futures.Executor`` over a ``distributed.Client``;
pass it to :class:`~amore_openmm.sampling.BurstSampler` (``BurstSampler(pool,
executor=DaskExecutor(client))``). Each chunk task runs the sampler's chunk function on a
worker; the worker builds its Context for the run's system once (cached per worker process and
thread, keyed by a hash of the serialised System, integrator, platform and properties) and
reuses it for every later chunk. Because a burst's random stream depends only on the seed,
its start index and k (and, with block re-seeding, the default off Reference, on its block of
starts), the data equal those of the local pool for the same seed and platform, whichever
worker runs which chunk. If a worker dies, Dask reschedules its in-flight
chunks on the remaining workers (``retries`` more attempts for tasks that raise): a lost worker
costs only the chunks it was running.

Use process workers with one thread each on the Reference platform (its random generator is
per process; the sampler serialises Reference bursts inside a process).

SLURM with dask-jobqueue, one GPU per worker::

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    from amore_openmm import load_system
    from amore_openmm.sampling import BurstSampler, ContextPool
    from amore_openmm.distributed import DaskExecutor

    cluster = SLURMCluster(cores=4, processes=1, memory="16GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"],
                           python="/path/to/repo/.venv/bin/python")
    cluster.scale(jobs=8)                    # 8 SLURM jobs = 8 workers = 8 GPUs
    client = Client(cluster)
    ms = load_system("alanine_dipeptide")
    starts = ms.positions[0][None].repeat(1000, axis=0)     # (N, n_atoms, 3) nm
    # local=False: the pool is only the Context recipe (system + platform); it builds no
    # Context on this machine, so a login node without a GPU can submit CUDA bursts
    pool = ContextPool(ms, size=8, platform="CUDA", local=False)
    data = BurstSampler(pool, executor=DaskExecutor(client)).run(starts, n_koopman=1, seed=0)

The bursts run on the workers. ``amore run --scheduler ADDRESS`` connects a
``Client(ADDRESS)`` and does the same.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from typing import Any, Callable

__all__ = ["DaskExecutor", "worker_engine_ids"]


def worker_engine_ids() -> dict[str, int]:
    """On a worker: ``{"kind:spec digest": id(engine)}`` of the burst engines this process
    keeps (plain "burst" and "packed" engines). Run with ``client.run(worker_engine_ids)`` to
    check that Contexts are reused across tasks."""
    from amore_openmm.sampling import engine_cache

    return {f"{kind}:{digest}": id(eng) for (kind, digest, _tid), eng in engine_cache().items()}


class DaskExecutor(cf.Executor):
    """A ``concurrent.futures`` executor that runs tasks on a Dask cluster.

    Args:
        client: a ``distributed.Client`` (``LocalCluster``, SLURM via dask-jobqueue, or
            ``Client("tcp://scheduler:8786")``).
        retries: extra attempts for a task that raises (a task whose worker dies is
            rescheduled by Dask independently of this; see Dask's
            ``distributed.scheduler.allowed-failures``).
        resources: optional Dask worker resources per task, e.g. ``{"GPU": 1}``.

    ``submit`` returns ``concurrent.futures.Future`` objects (what the sampler waits on).
    Tasks are impure (``pure=False``): resubmitting the same chunk runs it again.
    """

    def __init__(self, client: Any, retries: int = 2, resources: dict[str, float] | None = None
                 ) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise ImportError("DaskExecutor needs dask.distributed: pip install "
                              "'amore_openmm[distributed]'") from exc
        if not isinstance(client, Client):
            raise TypeError("DaskExecutor(client=...) needs a distributed.Client, e.g. "
                            "Client(LocalCluster()) or Client('tcp://scheduler:8786')")
        if retries < 0:
            raise ValueError(f"DaskExecutor(retries={retries}): must be >= 0")
        self.client = client
        self.retries = int(retries)
        self.resources = dict(resources) if resources else None
        self._futures: set[Any] = set()
        self._lock = threading.Lock()
        self._shutdown = False
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``."""
        if self._shutdown:
            raise RuntimeError("this DaskExecutor is shut down; create a new one")
        dfut = self.client.submit(fn, *args, pure=False, retries=self.retries,
                                  resources=self.resources, **kwargs)
        cfut: cf.Future = cf.Future()
        cfut.set_running_or_notify_cancel()
        with self._lock:
            self._futures.add(dfut)
            self.submitted += 1

        def done(f: Any) -> None:
            with self._lock:
                self._futures.discard(f)
            try:
                if f.status == "finished":
                    cfut.set_result(f.result())
                elif f.status == "cancelled":
                    cfut.set_exception(cf.CancelledError(f"Dask task {f.key} was cancelled"))
                else:
                    cfut.set_exception(f.exception())
            except BaseException as exc:  # noqa: BLE001 - delivered through the future
                if not cfut.done():
                    cfut.set_exception(exc)

        dfut.add_done_callback(done)
        return cfut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; optionally cancel the ones not finished (the client stays
        open: it belongs to the caller)."""
        self._shutdown = True
        if cancel_futures:
            with self._lock:
                pending = list(self._futures)
            if pending:
                self.client.cancel(pending)

    def worker_pids(self) -> dict[str, int]:
        """``{worker address: process id}`` of the cluster's workers."""
        return self.client.run(os.getpid)
