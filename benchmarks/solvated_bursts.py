#!/usr/bin/env python
"""Bursts of a solvated system (alanine dipeptide in TIP3P, PME): speed, layout and memory.

Prints one JSON object with:

* ``bare_steps_per_s``: one bare OpenMM Context on the CPU platform with ``--threads``
  (default 2) threads stepping ``integrator.step`` (no burst machinery);
* ``pool``: ``BurstSampler.run`` on CPU ContextPools of every layout
  (``"<Contexts>x<threads>"``, e.g. 2x1 and 1x2 on 2 cores), steps/s over the run (pool
  start-up excluded) and bursts/s, with ``--reseed`` (default "burst": one
  ``Context.reinitialize`` per burst costs about one PME step here, and the CPU default
  "auto" = block re-seeding of 8 consecutive starts puts a run of ≤ 8 starts into one task,
  i.e. one slot); ``pool_default_reseed`` repeats the chosen layout with ``reseed="auto"``;
* ``layout``: what ``ContextPool(platform="CPU")`` chose by measuring
  (:func:`~amore_openmm.sampling.choose_cpu_layout`), with its probe numbers;
* ``data_bytes``: the KoopmanData coordinates (x + y) with y of the selection (the solute,
  the default) and with y of every atom (``store_atoms="all"``), and the estimate the memory
  guard uses;
* ``peak_rss_mb``: peak resident memory of this process (``resource.getrusage``).

Example (small; the numbers of the report)::

    python benchmarks/solvated_bursts.py --starts 8 --k 2 --lag 50

``--box-nm 3.85`` first builds alanine dipeptide in a larger TIP3P box (5,497 atoms,
:func:`~amore_openmm.systems.build_solvated_alanine`, into a temporary folder) and runs the
same measurements on it: the y of the data, and the guard's estimate, stay those of the 22
solute atoms, while the starts (full coordinates, needed for restarts) grow with the water.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openmm  # noqa: E402

from amore_openmm.sampling import (BurstSampler, ContextPool, choose_cpu_layout,  # noqa: E402
                                   estimate_run_bytes, sample_trajectory, usable_cpus)
from amore_openmm.systems import build_solvated_alanine, load_system  # noqa: E402


def bare_rate(ms, threads: int, steps: int) -> float:
    """Steps/s of one bare CPU Context with ``threads`` threads."""
    ctx = openmm.Context(ms.system, ms.make_integrator(seed=1),
                         openmm.Platform.getPlatformByName("CPU"), {"Threads": str(threads)})
    ctx.setPositions(ms.positions[0])
    ctx.setVelocitiesToTemperature(ms.temperature, 1)
    integ = ctx.getIntegrator()
    integ.step(5)
    t0 = time.perf_counter()
    integ.step(steps)
    ctx.getState(getPositions=True)
    return steps / (time.perf_counter() - t0)


def pool_rate(ms, starts: np.ndarray, k: int, lag: int, slots: int, threads: int,
              store_atoms=None, reseed: str = "burst") -> tuple[dict, object]:
    """Run the bursts on a CPU pool of ``slots`` Contexts × ``threads``; rates and data."""
    t0 = time.perf_counter()
    with ContextPool(ms, size=slots, platform="CPU",
                     properties={"Threads": str(threads)}) as pool:
        startup = time.perf_counter() - t0
        sampler = BurstSampler(pool)
        data = sampler.run(starts, k, lag_steps=lag, seed=1, progress=False,
                           store_atoms=store_atoms, reseed=reseed)
        st = sampler.last_stats
    return {"steps_per_s": round(st["steps"] / st["wall_s"], 1),
            "bursts_per_s": round(st["bursts"] / st["wall_s"], 2),
            "startup_s": round(startup, 2), "wall_s": round(st["wall_s"], 2),
            "dropped": len(data.extra["dropped"])}, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", default="alanine_dipeptide_tip3p")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--k", type=int, default=4, help="bursts per start")
    ap.add_argument("--lag", type=int, default=50, help="steps per burst")
    ap.add_argument("--threads", type=int, default=2, help="threads of the bare Context")
    ap.add_argument("--bare-steps", type=int, default=400)
    ap.add_argument("--probe-s", type=float, default=0.3, help="layout probe per layout (s)")
    ap.add_argument("--reseed", default="burst", choices=("burst", "block", "auto"))
    ap.add_argument("--box-nm", type=float, help="build alanine dipeptide in a TIP3P box of "
                    "this edge (nm) and use it instead of --system")
    args = ap.parse_args()

    build_s = None
    if args.box_nm:
        folder = Path(tempfile.mkdtemp(prefix="amore_box_")) / "alanine_dipeptide_box"
        t0 = time.perf_counter()
        build_solvated_alanine(folder, args.box_nm)
        build_s = round(time.perf_counter() - t0, 1)
        ms = load_system(folder)
    else:
        ms = load_system(args.system)
    cpus = usable_cpus()
    starts = sample_trajectory(ms, args.starts, 50, seed=0, platform="CPU", progress=False)
    out = {"system": ms.name, "n_atoms": ms.n_atoms, "n_selected": ms.n_selected,
           "cpus": cpus, "starts": args.starts, "k": args.k, "lag": args.lag,
           "load_avg": os.getloadavg()[0], "box_nm": args.box_nm, "build_s": build_s}
    out["bare_steps_per_s"] = {f"1x{args.threads}": round(bare_rate(ms, args.threads,
                                                                     args.bare_steps), 1)}
    layout = choose_cpu_layout(ms, cpus, budget_s=args.probe_s)
    out["layout"] = {k: layout[k] for k in ("chosen", "layouts", "probe_seconds")}
    pools, data = {}, None
    for name in layout["layouts"]:
        slots, threads = (int(v) for v in name.split("x"))
        pools[name], d = pool_rate(ms, starts, args.k, args.lag, slots, threads,
                                   reseed=args.reseed)
        data = data or d
    out["pool"] = pools
    out["pool_default_reseed"] = {layout["chosen"]: pool_rate(
        ms, starts, args.k, args.lag, layout["slots"], layout["threads"], reseed="auto")[0]}
    _, full = pool_rate(ms, starts[:1], 1, 1, 1, 1, store_atoms="all")
    n, k = data.n_starts, data.n_koopman
    full_bytes = data.x.nbytes + n * k * ms.n_atoms * 3 * 4
    out["data_bytes"] = {"selection": data.nbytes, "all_atoms": int(full_bytes),
                         "y_selection": data.y.nbytes, "y_all_atoms": n * k * ms.n_atoms * 12,
                         "guard_estimate_selection": estimate_run_bytes(n, k, ms.n_atoms,
                                                                        ms.n_selected),
                         "guard_estimate_all": estimate_run_bytes(n, k, ms.n_atoms, ms.n_atoms)}
    assert full.all_atoms
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
