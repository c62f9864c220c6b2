#!/usr/bin/env python
"""Fastest packing factor for VGVAPG (73 atoms, amber14 + OBC2) on the CPU platform.

For each replica count M, builds one packed Context (:func:`pack_replicas`, M copies of the
bundled conformations), warms it up and times plain Langevin stepping. Prints one line per M:
aggregate replica-steps/s, steps/s per replica and ns/day summed over the replicas (2 fs
steps), then the fastest M. All M are measured in the same run, so they share the machine's
load; the equilibrium ensemble of the ``science`` preset uses the fastest M measured here.

    python benchmarks/vgvapg_packing.py [--replicas 1 2 4 8 16] [--steps 400] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import openmm  # noqa: E402

from amore_openmm.sampling.packing import pack_replicas  # noqa: E402
from amore_openmm.systems import load_system  # noqa: E402


def replica_steps_per_s(ms, copies: int, steps: int, platform: str, threads: int) -> float:
    """Aggregate replica-steps per second of one packed Context with ``copies`` copies."""
    psys = pack_replicas(ms, copies)
    x0 = np.stack([ms.positions[c % len(ms.positions)] for c in range(copies)])
    packed, _ = psys.pack_positions(x0)
    integ = ms.make_integrator(seed=1)
    props = {"Threads": str(threads)} if platform == "CPU" else {}
    ctx = openmm.Context(psys.system, integ, openmm.Platform.getPlatformByName(platform),
                         props)
    ctx.setPositions(packed)
    ctx.setVelocitiesToTemperature(ms.temperature, 1)
    integ.step(max(steps // 4, 20))  # warm-up (neighbour lists, kernels)
    t0 = time.perf_counter()
    integ.step(steps)
    ctx.getState(getPositions=True)
    dt = time.perf_counter() - t0
    del ctx, integ
    return copies * steps / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--steps", type=int, default=400, help="timed steps per replica count")
    ap.add_argument("--platform", default="CPU")
    ap.add_argument("--threads", type=int, default=2, help="CPU platform threads")
    args = ap.parse_args(argv)
    ms = load_system("vgvapg")
    dt_ps = float(ms.timestep)
    rates = {}
    print(f"# vgvapg ({ms.n_atoms} atoms), platform {args.platform}, "
          f"{args.threads} threads, {args.steps} timed steps per M")
    print("replicas  replica-steps/s  steps/s/replica  ns/day(all)")
    for m in args.replicas:
        r = replica_steps_per_s(ms, m, args.steps, args.platform, args.threads)
        rates[m] = r
        print(f"{m:8d}  {r:15.0f}  {r / m:15.0f}  {r * dt_ps * 86400 / 1000:11.1f}",
              flush=True)
    best = max(rates, key=rates.get)
    print(f"fastest: {best} replicas ({rates[best]:.0f} replica-steps/s, "
          f"{rates[best] / rates[min(rates)]:.2f}× the throughput of {min(rates)} "
          "replica(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
