#!/usr/bin/env python
"""Dask scaling: burst throughput with 2 local worker processes vs 1.

Alanine dipeptide bursts through ``BurstSampler(pool, executor=DaskExecutor(client))`` on a
``LocalCluster`` (processes, one thread each). Prints one JSON line with bursts/s for 1 and 2
workers and the efficiency = throughput(2) / (2 × throughput(1)). Needs ≥ 2 free cores to
mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def rate(ms, n_workers: int, starts: np.ndarray, platform: str, chunk: int) -> float:
    import distributed

    from amore_openmm.distributed import DaskExecutor
    from amore_openmm.sampling import BurstSampler, ContextPool

    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40,
                                  env={"OMP_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as client, \
            ContextPool(ms, size=1, platform=platform) as pool:
        client.wait_for_workers(n_workers, timeout=120)
        sampler = BurstSampler(pool, executor=DaskExecutor(client))
        sampler.run(starts[:4 * n_workers], 1, seed=99, progress=False, chunk_size=1)  # warm
        t0 = time.perf_counter()
        sampler.run(starts, 1, seed=0, progress=False, chunk_size=chunk)
        return len(starts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--platform", default="Reference")
    ap.add_argument("--starts", type=int, default=None)
    args = ap.parse_args()
    from amore_openmm.systems import load_system

    ms = load_system("alanine_dipeptide")
    n = args.starts or (400 if args.quick else 2000)
    starts = np.repeat(ms.positions[0][None], n, axis=0)
    chunk = 20
    r1 = rate(ms, 1, starts, args.platform, chunk)
    r2 = rate(ms, 2, starts, args.platform, chunk)
    print(json.dumps({"benchmark": "dask_2_workers", "platform": args.platform,
                      "system": ms.name, "bursts": n, "bursts_per_s_1_worker": round(r1, 2),
                      "bursts_per_s_2_workers": round(r2, 2),
                      "efficiency": round(r2 / (2 * r1), 3), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
