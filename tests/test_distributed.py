"""Dask executor (issue 7): same KoopmanData as the local pool, Contexts built once per worker,
a killed worker costs only its in-flight chunks."""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from amore_openmm.distributed import DaskExecutor, worker_engine_ids  # noqa: E402
from amore_openmm.sampling import (BurstSampler, ContextPool, PackedSpec,  # noqa: E402
                                   cached_chunk)
from amore_openmm.systems import load_system  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40,
                                       env={"OMP_NUM_THREADS": "1"})
    cl = distributed.Client(cluster)
    cl.wait_for_workers(2, timeout=120)
    yield cl
    cl.close()
    cluster.close()


def _assert_same(a, b) -> None:
    assert a.n_starts == b.n_starts and a.n_koopman == b.n_koopman
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.seed, b.seed)
    np.testing.assert_array_equal(a.extra["start_index"], b.extra["start_index"])


def test_dask_equals_local_pool_and_reuses_contexts(client) -> None:
    ms = load_system("muller_brown")
    rng = np.random.default_rng(0)
    starts = np.zeros((40, 1, 3))
    starts[:, 0, :2] = np.array([-0.558, 1.442]) + rng.normal(0, 0.05, (40, 2))
    with ContextPool(ms, size=1, platform="Reference") as pool:
        local = BurstSampler(pool).run(starts, 3, seed=11, progress=False, chunk_size=4)
        ex = DaskExecutor(client)
        remote = BurstSampler(pool, executor=ex).run(starts, 3, seed=11, progress=False,
                                                     chunk_size=4)
        _assert_same(local, remote)
        assert ex.submitted == 10
        assert np.abs(remote.y - remote.x[:, None]).max() > 1e-3  # the bursts moved
        ids = client.run(worker_engine_ids)
        BurstSampler(pool, executor=ex).run(starts[:8], 1, seed=1, progress=False,
                                            chunk_size=1)
        ids2 = client.run(worker_engine_ids)
    # one engine (Context) per worker for this system, the same objects in the second run
    for addr, engines in ids2.items():
        assert len(engines) == 1
        if ids.get(addr):
            assert engines == ids[addr]


def test_packed_chunks_on_dask_equal_local(client) -> None:
    ms = load_system("alanine_dipeptide")
    spec = PackedSpec.from_system(ms, copies=4, platform="Reference")
    starts = np.repeat(ms.positions[0][None], 6, axis=0)
    tasks = [{"chunk": c, "x": starts[3 * c:3 * c + 3], "start_index": np.arange(3 * c, 3 * c + 3),
              "n_koopman": 2, "lag_steps": 20, "seed": 5, "max_retries": 1,
              "max_displacement": 100.0} for c in range(2)]
    ex = DaskExecutor(client)
    remote = [f.result(timeout=120) for f in [ex.submit(cached_chunk, spec, t) for t in tasks]]
    for t, r in zip(tasks, remote):
        np.testing.assert_array_equal(cached_chunk(spec, t)["y"], r["y"])


def test_killed_worker_costs_only_its_chunks(client) -> None:
    ms = load_system("alanine_dipeptide")
    starts = np.repeat(ms.positions[0][None], 24, axis=0)
    kw = dict(seed=2, progress=False, chunk_size=3, lag_steps=1000)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        local = BurstSampler(pool).run(starts, 1, **kw)
        before = client.run(os.getpid)
        victim = sorted(before.values())[0]
        killed = threading.Event()

        def kill_once(_chunk) -> None:
            if not killed.is_set():  # after the first finished chunk, mid-run
                killed.set()
                os.kill(victim, signal.SIGKILL)

        remote = BurstSampler(pool, executor=DaskExecutor(client)).run(
            starts, 1, checkpoint=kill_once, **kw)
    assert killed.is_set()
    _assert_same(local, remote)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted the killed worker
    assert victim not in client.run(os.getpid).values()


def test_amore_run_on_a_scheduler_gives_the_local_data(client, tmp_path) -> None:
    """`amore run --scheduler ADDRESS`: the initial bursts of a run on Dask workers equal those
    of the same run on this machine."""
    from amore_openmm.pipeline import AmoreRun

    settings = {"n_starts": 200, "stride_steps": 200, "n_koopman": 2, "workers": 1,
                "platform": "Reference", "seed": 5}
    data = []
    for name, extra in (("local", {}), ("dask", {"scheduler": client.scheduler.address})):
        with AmoreRun(tmp_path / name, "muller_brown", preset="quick",
                      overrides={**settings, **extra}, quiet=True) as run:
            run.run(until="initial_bursts")
            data.append(run.load_data())
    assert data[0].n_starts == 200 and data[0].n_koopman == 2
    for field in ("x", "y", "seed"):
        np.testing.assert_array_equal(getattr(data[0], field), getattr(data[1], field))
