#!/usr/bin/env python
"""χ overhead on alanine dipeptide: ISOKANN training throughput, one χ evaluation through
OpenMM vs torch directly, and MD steps/s with and without the χ CV attached.

Prints one JSON line per measurement (see benchmarks/run_all.py). ``--quick`` shrinks sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openmm  # noqa: E402

from amore_openmm.chi import ChiModel, make_featurizer  # noqa: E402
from amore_openmm.data import KoopmanData  # noqa: E402
from amore_openmm.forces import ChiRestraintForce  # noqa: E402
from amore_openmm.isokann import Isokann  # noqa: E402
from amore_openmm.systems import load_system  # noqa: E402

ALA = "alanine_dipeptide"
ALA_PDB = "alanine_dipeptide"  # the bundled system (systems/alanine_dipeptide)


def _system():
    try:
        return load_system(ALA)
    except Exception:
        return load_system(ALA_PDB)


def _frames(ms, n, stride, seed=1):
    ctx = ms.make_context("Reference", seed=seed)
    ctx.setVelocitiesToTemperature(ms.temperature, seed)
    out = np.empty((n, ms.n_atoms, 3))
    for i in range(n):
        ctx.getIntegrator().step(stride)
        out[i] = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
    return out


def _best(fn, repeat, number):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def bench_training(ms, n_pairs, iterations, threads):
    x = _frames(ms, n_pairs + 1, 20)
    data = KoopmanData(x[:-1], x[1:, None], lag_steps=20, timestep=ms.timestep,
                       system_name=ms.name)
    iso = Isokann(iterations=iterations, minibatch=1000, seed=0, device="cpu")
    iso.fit(data, system=ms)
    s = iso.summary_
    return {"bench": "chi_training", "system": ms.name, "n_pairs": n_pairs,
            "iterations": iterations, "torch_threads": threads,
            "wall_s": round(s["wall_s"], 3), "featurize_s": round(s["featurize_s"], 3),
            "samples_per_s": round(s["samples_per_s"], 1),
            "iterations_per_s": round(iterations / max(s["wall_s"] - s["featurize_s"], 1e-9), 2)}


def bench_eval(ms, model, platform):
    x = ms.positions[0]
    scripted = model.scripted()
    xt = torch.tensor(x)
    with torch.no_grad():
        t_torch = _best(lambda: scripted(xt), 5, 200)
    xg = xt.clone().requires_grad_(True)

    def torch_grad():
        c = scripted(xg)
        torch.autograd.grad(c, xg)
    t_torch_grad = _best(torch_grad, 5, 200)
    system = openmm.System()
    for i in range(ms.n_atoms):
        system.addParticle(ms.system.getParticleMass(i))
    force = ChiRestraintForce(model, z=0.5, kappa=1e3)
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                         openmm.Platform.getPlatformByName(platform),
                         {"Threads": "1"} if platform == "CPU" else {})
    ctx.setPositions(x)
    t_cv = _best(lambda: force.getCollectiveVariableValues(ctx), 5, 200)
    t_forces = _best(lambda: ctx.getState(getForces=True), 5, 200)
    return {"bench": "chi_eval", "platform": platform,
            "torch_chi_ms": round(1e3 * t_torch, 4),
            "torch_chi_grad_ms": round(1e3 * t_torch_grad, 4),
            "openmm_cv_value_ms": round(1e3 * t_cv, 4),
            "openmm_forces_ms": round(1e3 * t_forces, 4),
            "openmm_vs_torch_ratio": round(t_cv / t_torch, 3),
            "openmm_forces_vs_torch_grad_ratio": round(t_forces / t_torch_grad, 3)}


def bench_md(ms, model, platform, steps):
    out = {"bench": "md_with_chi", "platform": platform, "steps": steps}
    props = {"Threads": "1"} if platform == "CPU" else {}
    for label, attach in (("without_chi", False), ("with_chi", True)):
        system = openmm.XmlSerializer.clone(ms.system)
        if attach:
            system.addForce(ChiRestraintForce(model, z=0.5, kappa=10.0))
        ctx = openmm.Context(system, ms.make_integrator(seed=1),
                             openmm.Platform.getPlatformByName(platform), props)
        ctx.setPositions(ms.positions[0])
        ctx.setVelocitiesToTemperature(ms.temperature, 1)
        ctx.getIntegrator().step(10)
        t0 = time.perf_counter()
        ctx.getIntegrator().step(steps)
        ctx.getState(getEnergy=True)
        out[f"steps_per_s_{label}"] = round(steps / (time.perf_counter() - t0), 1)
    out["with_vs_without_ratio"] = round(out["steps_per_s_with_chi"] /
                                         out["steps_per_s_without_chi"], 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    ms = _system()
    n_pairs, iters, md_steps = (2000, 50, 2000) if args.quick else (20000, 200, 20000)
    print(json.dumps(bench_training(ms, n_pairs, iters, threads)), flush=True)
    model = ChiModel(make_featurizer(ms), seed=0)
    for platform in ("Reference", "CPU"):
        print(json.dumps(bench_eval(ms, model, platform)), flush=True)
        steps = md_steps if platform == "Reference" else max(500, md_steps // 10)
        print(json.dumps(bench_md(ms, model, platform, steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
