#!/usr/bin/env python
"""χ overhead on alanine dipeptide: ISOKANN training throughput, one χ evaluation through
OpenMM vs torch directly, and MD steps/s with and without the χ CV attached (per backend).

Prints one JSON line per measurement (see benchmarks/run_all.py). ``--quick`` shrinks sizes,
``--tiny`` only checks that everything runs (numbers meaningless). χ evaluation is timed for
the symmetry-aware ("pairwise_sym", the default) and the labelled ("pairwise_all") distances.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openmm  # noqa: E402

from amore_openmm.chi import ChiModel, make_featurizer  # noqa: E402
from amore_openmm.data import KoopmanData  # noqa: E402
from amore_openmm.forces import BACKENDS, ChiRestraintForce, resolve_backend  # noqa: E402
from amore_openmm.forces.backend import torchforce_problem  # noqa: E402
from amore_openmm.isokann import Isokann  # noqa: E402
from amore_openmm.sampling import sample_trajectory  # noqa: E402
from amore_openmm.systems import load_system  # noqa: E402

ALA = "alanine_dipeptide"  # the bundled system (systems/alanine_dipeptide)


def _frames(ms, n, stride, seed=1):
    return sample_trajectory(ms, n, stride, seed=seed, platform="Reference", progress=False)


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
    iso = Isokann(iterations=iterations, minibatch=1000, seed=0, device="cpu",
                  featurizer="pairwise_sym")
    iso.fit(data, system=ms)
    s = iso.summary_
    return {"bench": "chi_training", "system": ms.name, "n_pairs": n_pairs,
            "featurizer": "pairwise_sym", "n_train": s["n_train"],
            "val_loss": s["val_loss"], "train_loss": s["train_loss"],
            "iterations": iterations, "torch_threads": threads,
            "wall_s": round(s["wall_s"], 3), "featurize_s": round(s["featurize_s"], 3),
            "samples_per_s": round(s["samples_per_s"], 1),
            "iterations_per_s": round(iterations / max(s["wall_s"] - s["featurize_s"], 1e-9), 2)}


def bench_eval(ms, model, platform, repeat=5, number=200):
    x = ms.positions[0]
    scripted = model.scripted()
    xt = torch.tensor(x)
    with torch.no_grad():
        t_torch = _best(lambda: scripted(xt), repeat, number)
    xg = xt.clone().requires_grad_(True)

    def torch_grad():
        c = scripted(xg)
        torch.autograd.grad(c, xg)
    t_torch_grad = _best(torch_grad, repeat, number)
    system = openmm.System()
    for i in range(ms.n_atoms):
        system.addParticle(ms.system.getParticleMass(i))
    out = {"bench": "chi_eval", "platform": platform, "featurizer": model.featurizer_kind,
           "torch_chi_ms": round(1e3 * t_torch, 4),
           "torch_chi_grad_ms": round(1e3 * t_torch_grad, 4)}
    # the default backend, then each backend that runs here (PythonForce: numpy passes)
    for suffix, backend in [("", "auto")] + [(f"_{name}", name) for name in BACKENDS
                                             if name != "torchforce"
                                             or torchforce_problem() is None]:
        omm = openmm.XmlSerializer.clone(system)
        force = ChiRestraintForce(model, z=0.5, kappa=1e3, backend=backend)
        omm.addForce(force)
        ctx = openmm.Context(omm, openmm.VerletIntegrator(1e-3),
                             openmm.Platform.getPlatformByName(platform),
                             {"Threads": "1"} if platform == "CPU" else {})
        ctx.setPositions(x)
        t_forces = _best(lambda: ctx.getState(getForces=True), repeat, number)
        out[f"openmm_forces{suffix}_ms"] = round(1e3 * t_forces, 4)
        if backend == "auto":
            t_cv = _best(lambda: force.chi(ctx), repeat, number)
            out["openmm_cv_value_ms"] = round(1e3 * t_cv, 4)
            out["openmm_vs_torch_ratio"] = round(t_cv / t_torch, 3)
            out["openmm_forces_vs_torch_grad_ratio"] = round(t_forces / t_torch_grad, 3)
    return out


def bench_md(ms, model, platform, steps):
    """MD steps/s without χ, with the χ restraint of the default backend ("with_chi") and
    of each backend that runs here (PythonForce: numpy passes for this model)."""
    out = {"bench": "md_with_chi", "platform": platform, "steps": steps,
           "backend_auto": resolve_backend("auto")[0]}
    props = {"Threads": "1"} if platform == "CPU" else {}
    runs = [("without_chi", None), ("with_chi", "auto")] + [
        (f"with_chi_{name}", name) for name in BACKENDS
        if name != "torchforce" or torchforce_problem() is None]
    for label, backend in runs:
        system = openmm.XmlSerializer.clone(ms.system)
        if backend is not None:
            system.addForce(ChiRestraintForce(model, z=0.5, kappa=10.0, backend=backend))
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
    if "steps_per_s_with_chi_torchforce" in out:
        out["pythonforce_vs_torchforce_speed"] = round(
            out["steps_per_s_with_chi_pythonforce"] / out["steps_per_s_with_chi_torchforce"], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="smoke test: everything runs once")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    ms = load_system(ALA)
    n_pairs, iters, md_steps = ((2000, 50, 2000) if args.quick else (200, 3, 100) if args.tiny
                                else (20000, 200, 20000))
    timing = (1, 5) if args.tiny else (5, 200)
    print(json.dumps(bench_training(ms, n_pairs, iters, threads)), flush=True)
    models = [ChiModel(make_featurizer(ms, kind), seed=0)
              for kind in ("pairwise_sym", "pairwise_all")]
    for platform in ("Reference", "CPU"):
        for model in models:
            print(json.dumps(bench_eval(ms, model, platform, *timing)), flush=True)
        model = models[0]
        steps = md_steps if platform == "Reference" else max(100 if args.tiny else 500,
                                                              md_steps // 10)
        print(json.dumps(bench_md(ms, model, platform, steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
