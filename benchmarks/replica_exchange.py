#!/usr/bin/env python
"""Temperature replica exchange on VGVAPG: swap acceptance and ns/day, with and without HMR.

Runs :class:`~amore_openmm.sampling.replica_exchange.TemperatureReplicaExchange` on one
system for each of three settings:

* ``2fs``: the bundled system as it is (no constraints, 1 amu hydrogens, 2 fs);
* ``4fs_hbonds``: HBond constraints, 1 amu hydrogens, 4 fs (the step HMR is meant to make safe);
* ``4fs_hmr``: HBond constraints, 3 amu hydrogens (:func:`~amore_openmm.systems.hmr.hmr_system`),
  4 fs.

For each it prints one JSON line: neighbour acceptance rates, round trips, whether every
frame stayed finite, and the throughput in ns/day per replica and summed over replicas
(Context creation excluded; replicas stepped one after the other unless ``--threads``), and
the energy conservation of the setting's step: after 2 ps of Langevin dynamics at the base
temperature, ``--nve-ps`` ps of Verlet (NVE) dynamics, the total energy's standard deviation
over the kinetic energy's (small for an accurate step) and its drift (kJ/mol/ps).

Example::

    OMP_NUM_THREADS=1 python benchmarks/replica_exchange.py --exchanges 20 --platform CPU
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import openmm
from openmm import unit

from amore_openmm.sampling.replica_exchange import (TemperatureReplicaExchange,
                                                    geometric_temperatures)
from amore_openmm.systems import load_system
from amore_openmm.systems.hmr import constrain_hbonds, hmr_system


def nve_check(ms, platform: str, props, ps: float, seed: int) -> dict:
    """Energy conservation of ``ms``'s step in NVE (see the module docstring)."""
    plat = openmm.Platform.getPlatformByName(platform)
    dt = ms.timestep
    lang = openmm.LangevinMiddleIntegrator(ms.temperature, 1.0, dt)
    lang.setRandomNumberSeed(seed + 1)
    ctx = openmm.Context(ms.system, lang, plat, props or {})
    ctx.setPositions(ms.positions[0])
    ctx.applyConstraints(1e-8)
    ctx.setVelocitiesToTemperature(ms.temperature, seed + 1)
    lang.step(int(round(2.0 / dt)))
    st = ctx.getState(getPositions=True, getVelocities=True)
    verlet = openmm.VerletIntegrator(dt)
    verlet.setConstraintTolerance(1e-8)
    nve = openmm.Context(ms.system, verlet, plat, props or {})
    nve.setPositions(st.getPositions())
    nve.setVelocities(st.getVelocities())
    every = max(1, int(round(0.04 / dt)))
    total, kinetic = [], []
    for _ in range(max(2, int(ps / (every * dt)))):
        verlet.step(every)
        s = nve.getState(getEnergy=True)
        ke = s.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        kinetic.append(ke)
        total.append(ke + s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    total = np.array(total)
    if not np.all(np.isfinite(total)):
        return {"nve_finite": False}
    t = np.arange(total.size) * every * dt
    return {"nve_finite": True,
            "nve_std_total_over_std_kinetic": round(float(np.std(total) / np.std(kinetic)), 3),
            "nve_drift_kJmol_per_ps": round(float(np.polyfit(t, total, 1)[0]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default="vgvapg")
    ap.add_argument("--platform", default="CPU")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--t-max", type=float, default=400.0, help="top temperature (K)")
    ap.add_argument("--exchanges", type=int, default=20)
    ap.add_argument("--ps-per-exchange", type=float, default=1.0)
    ap.add_argument("--settings", default="2fs,4fs_hbonds,4fs_hmr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nve-ps", type=float, default=10.0, help="NVE check length (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="replicas stepped concurrently")
    ap.add_argument("--quick", action="store_true",
                    help="a short smoke run (5 exchanges of 0.2 ps, 2 ps NVE)")
    args = ap.parse_args()
    if args.quick:
        args.exchanges, args.ps_per_exchange, args.nve_ps = 5, 0.2, 2.0

    base = load_system(args.system)
    props = {"Threads": "1"} if args.platform == "CPU" else None
    temps = geometric_temperatures(base.temperature, args.t_max, args.replicas)
    for name in args.settings.split(","):
        if name == "2fs":
            ms = base
        elif name == "4fs_hbonds":
            ms = base.with_overrides(timestep=0.004)
            ms.system = constrain_hbonds(base.system, base.topology)
        elif name == "4fs_hmr":
            ms = hmr_system(base, 3.0, 0.004)
        else:
            raise SystemExit(f"unknown setting {name!r}; use 2fs, 4fs_hbonds, 4fs_hmr")
        steps = max(1, int(round(args.ps_per_exchange / ms.timestep)))
        remd = TemperatureReplicaExchange(ms, temps, steps, platform=args.platform,
                                          properties=props, seed=args.seed,
                                          threads=args.threads)
        t0 = time.perf_counter()
        res = remd.run(args.exchanges)
        wall = time.perf_counter() - t0
        ns = res.simulated_time_ps * 1e-3
        nve = nve_check(ms, args.platform, props, args.nve_ps, args.seed) if args.nve_ps > 0 \
            else {}
        print(json.dumps({
            "benchmark": f"replica_exchange_{name}", "system": args.system, "setting": name, "platform": args.platform,
            "timestep_ps": ms.timestep, "temperatures_K": [round(t, 1) for t in temps],
            "exchanges": res.n_exchanges, "steps_per_exchange": steps,
            "acceptance": [round(float(a), 3) for a in res.acceptance],
            "round_trips": res.round_trips,
            "finite": bool(np.all(np.isfinite(res.frames)) and
                           np.all(np.isfinite(res.frame_energies))),
            "mean_base_energy_kJmol": round(float(np.mean(res.frame_energies)), 2),
            "ns_per_day_per_replica": round(ns / wall * 86400, 2),
            "ns_per_day_all_replicas": round(ns * args.replicas / wall * 86400, 2),
            "threads": args.threads, "wall_s": round(wall, 2),
            "loadavg": round(os.getloadavg()[0], 2), **nve}),
              flush=True)


if __name__ == "__main__":
    main()
