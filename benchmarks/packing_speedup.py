#!/usr/bin/env python
"""Replica packing speed-up: Koopman bursts of alanine dipeptide, M copies per Context.

For each platform and M, runs packed bursts (``PackedEngine``, one Context, lag-step bursts)
and prints one JSON line: bursts/s, aggregate ns/day (bursts/s × lag time), and the speed-up
over *bare OpenMM stepping* on the same platform and cores: one plain Context of the unpacked
System with the same integrator stepping the same number of bursts × steps in one
``integrator.step`` call (no re-seeding, no velocities, no position transfers: the fastest
the unpacked System can go). One Context, one thread: the numbers are per core/per GPU. The
package's own unpacked sampler is printed too, for reference, without a ratio.
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

import openmm  # noqa: E402

from amore_openmm.sampling import (BurstSampler, ContextPool, PackedEngine,  # noqa: E402
                                   available_platforms, default_platform_properties)
from amore_openmm.systems import load_system  # noqa: E402


def ns_per_day(bursts_per_s: float, lag_steps: int, dt_ps: float) -> float:
    return bursts_per_s * lag_steps * dt_ps * 86400.0 / 1000.0


def bare_rate(ms, platform: str, bursts: int, lag: int) -> float:
    """Bursts/s equivalent of bare stepping: one Context, ``bursts × lag`` steps in one call."""
    integ = ms.make_integrator(seed=1)
    ctx = openmm.Context(ms.system, integ, openmm.Platform.getPlatformByName(platform),
                         default_platform_properties(platform))
    ctx.setPositions(ms.positions[0])
    ctx.setVelocitiesToTemperature(ms.temperature, 1)
    integ.step(10)  # warm-up (kernels)
    ctx.getState(getPositions=True)
    t0 = time.perf_counter()
    integ.step(bursts * lag)
    ctx.getState(getPositions=True)  # sync (GPU platforms queue work)
    return bursts / (time.perf_counter() - t0)


def unpacked_rate(ms, platform: str, bursts: int, lag: int) -> float:
    starts = np.repeat(ms.positions[0][None], bursts, axis=0)
    with ContextPool(ms, size=1, platform=platform) as pool:
        BurstSampler(pool).run(starts[:2], 1, lag, seed=99, progress=False)  # warm-up
        t0 = time.perf_counter()
        BurstSampler(pool).run(starts, 1, lag, seed=0, progress=False)
        return bursts / (time.perf_counter() - t0)


def packed_rate(ms, platform: str, M: int, bursts: int, lag: int) -> float:
    eng = PackedEngine(ms, copies=M, platform=platform)
    starts = np.repeat(ms.positions[0][None], bursts, axis=0)
    task = {"chunk": 0, "x": starts[:M], "start_index": np.arange(M), "n_koopman": 1,
            "lag_steps": lag, "seed": 99, "max_retries": 0, "max_displacement": 100.0}
    eng.run_chunk(task)  # warm-up (kernel compilation on GPUs)
    task.update(x=starts, start_index=np.arange(bursts), seed=0)
    t0 = time.perf_counter()
    out = eng.run_chunk(task)
    dt = time.perf_counter() - t0
    if not out["ok"].all():
        raise RuntimeError(f"packed bursts failed on {platform} M={M}: {out['events'][:3]}")
    return bursts / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="M = 1, 8, 64 and fewer bursts")
    ap.add_argument("--platforms", nargs="*", default=["Reference", "CPU"])
    ap.add_argument("--copies", nargs="*", type=int, default=None)
    ap.add_argument("--system", default="alanine_dipeptide")
    ap.add_argument("--bursts", type=int, default=None,
                    help="bursts of the baselines (default 16 with --quick, else 64)")
    args = ap.parse_args()
    ms = load_system(args.system)
    lag = ms.lag_steps
    Ms = args.copies or ([1, 8, 64] if args.quick else [1, 8, 64, 512])
    for plat in args.platforms:
        if plat not in available_platforms():
            print(json.dumps({"benchmark": "packing", "platform": plat,
                              "skipped": "platform not available"}))
            continue
        base_n = args.bursts or (16 if args.quick else 64)
        base = bare_rate(ms, plat, base_n, lag)
        sampler = unpacked_rate(ms, plat, base_n, lag)
        print(json.dumps({"benchmark": "packing_bare_stepping", "platform": plat,
                          "system": ms.name, "bursts_per_s": round(base, 2),
                          "ns_per_day": round(ns_per_day(base, lag, ms.timestep), 3),
                          "unpacked_sampler_bursts_per_s": round(sampler, 2)}), flush=True)
        for M in Ms:
            n = M * (1 if args.quick or M >= 64 else 4)
            rate = packed_rate(ms, plat, M, max(n, 8 if M == 1 else n), lag)
            print(json.dumps({"benchmark": f"packing_M{M}", "platform": plat,
                              "system": ms.name, "copies": M,
                              "bursts_per_s": round(rate, 2),
                              "ns_per_day": round(ns_per_day(rate, lag, ms.timestep), 3),
                              "speedup_vs_bare_stepping": round(rate / base, 3)}), flush=True)


if __name__ == "__main__":
    main()
