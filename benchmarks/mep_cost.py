#!/usr/bin/env python
"""Cost of χ-MEP tracing (OpenMM LocalEnergyMinimizer + χ restraint), per certified node.

Prints JSON lines:
  * ``mep_force_cost``: seconds per energy+force evaluation of the tracer's Context with the
    χ restraint (physical System + TorchForce inside a CustomCVForce) and without it (the
    physical force groups of the same Context), and their ratio: what χ adds to each
    evaluation.
  * ``mep_path``: one path: nodes, certified nodes, force evaluations per node (median, mean,
    max; the minimiser's evaluations over all κ and retries), seconds per node and per
    certified node, stop reasons.
  * ``mep_parallel``: several paths in parallel threads: seconds per certified node.

χ: ``--model file.pt`` (a saved ChiModel) or, by default, a quick χ trained here from a short
Reference-platform trajectory (sampler + ISOKANN). ``--quick`` shrinks everything to a smoke
run (seconds to a minute on one core).
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


def quick_chi(ms, frames: int, iterations: int, seed: int = 0):
    from amore_openmm.isokann import Isokann
    from amore_openmm.sampling import BurstSampler, ContextPool, sample_trajectory
    traj = sample_trajectory(ms, frames, ms.lag_steps, seed=seed, platform="Reference",
                             progress=False)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        data = BurstSampler(pool).run(traj, n_koopman=1, seed=seed, progress=False)
    model = Isokann(iterations=iterations, minibatch=500, seed=seed).fit(data, system=ms)
    return model, data.x


def force_cost(tracer, x: np.ndarray, repeats: int) -> dict:
    """Seconds per energy+force evaluation with and without the χ restraint's group."""
    from amore_openmm.forces import ChiRestraintForce
    tracer.set_positions(x)
    ctx = tracer.context
    ChiRestraintForce.set(ctx, z=0.5, kappa=1e5)
    out = {}
    for name, groups in (("with_chi", -1), ("without_chi", tracer.physical_groups)):
        ctx.getState(getEnergy=True, getForces=True, groups=groups)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            ctx.getState(getEnergy=True, getForces=True, groups=groups)
        out[name] = (time.perf_counter() - t0) / repeats
    return {"benchmark": "mep_force_cost", "seconds_per_eval_with_chi":
            round(out["with_chi"], 7), "seconds_per_eval_without_chi":
            round(out["without_chi"], 7), "ratio_with_over_without":
            round(out["with_chi"] / out["without_chi"], 2), "evaluations": repeats}


def path_cost(path, seconds: float) -> dict:
    ev = np.asarray(path.iterations)
    nc = path.n_certified
    return {"benchmark": "mep_path", "nodes": len(path), "certified": nc,
            "force_evals_per_node_median": float(np.median(ev)),
            "force_evals_per_node_mean": round(float(ev.mean()), 1),
            "force_evals_per_node_max": int(ev.max()),
            "seconds": round(seconds, 3), "seconds_per_node": round(seconds / len(path), 4),
            "seconds_per_certified_node": round(seconds / nc, 4) if nc else None,
            "max_orth_force_kJ_mol_nm_rms": round(float(np.nanmax(path.orth_force)), 3),
            "max_level_error": float(path.level_error.max()),
            "stop_reasons": path.stop_reasons}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--model", help="saved ChiModel (ChiModel.load)")
    ap.add_argument("--system", default="alanine_dipeptide")
    ap.add_argument("--paths", type=int, default=34)
    ap.add_argument("--max-nodes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--platform", default="Reference")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from amore_openmm.mep import LevelSetTracer, trace_chi_mep, trace_chi_meps, \
        transition_states
    from amore_openmm.systems import load_system

    ms = load_system(args.system)
    frames, iters = (1000, 150) if args.quick else (20000, 1000)
    t0 = time.perf_counter()
    if args.model:
        from amore_openmm.chi import ChiModel
        from amore_openmm.sampling import sample_trajectory
        model = ChiModel.load(args.model)
        pool_x = sample_trajectory(ms, frames, ms.lag_steps, seed=0, progress=False)
    else:
        model, pool_x = quick_chi(ms, frames, iters)
    t_train = time.perf_counter() - t0
    n_paths = 2 if args.quick else args.paths
    max_nodes = 20 if args.quick else args.max_nodes
    starts = transition_states(model, pool_x, ms, window=(0.45, 0.55), n=n_paths)
    kw = dict(step=0.01, tolerance=1.0, max_iterations=250, max_node_rmsd=0.05,
              max_nodes=max_nodes)

    timer = LevelSetTracer(ms, model, args.platform, count_evaluations=False)
    print(json.dumps(dict(force_cost(timer, starts[0], 50 if args.quick else 500),
                          system=ms.name, platform=args.platform)))

    tracer = LevelSetTracer(ms, model, args.platform)
    t0 = time.perf_counter()
    path = trace_chi_mep(ms, model, starts[0], tracer=tracer, **kw)
    print(json.dumps(dict(path_cost(path, time.perf_counter() - t0), system=ms.name,
                          train_seconds=round(t_train, 1))))

    for threads in sorted({1, args.threads}) if args.quick else [args.threads]:
        t0 = time.perf_counter()
        paths = trace_chi_meps(ms, model, starts, pool_size=threads, platform=args.platform,
                               **kw)
        t_all = time.perf_counter() - t0
        nc = sum(p.n_certified for p in paths)
        print(json.dumps({"benchmark": "mep_parallel", "system": ms.name,
                          "paths": len(paths), "threads": threads,
                          "seconds": round(t_all, 2),
                          "nodes": int(sum(len(p) for p in paths)), "certified": nc,
                          "seconds_per_certified_node": round(t_all / nc, 4) if nc else None}))


if __name__ == "__main__":
    main()
