#!/usr/bin/env python
"""Cost of χ-MEP tracing on alanine dipeptide (OpenMM LocalEnergyMinimizer + χ restraint).

Prints JSON lines:
  * node cost: mean time per path node, and its ratio to one plain
    ``LocalEnergyMinimizer.minimize`` (physical System only, same tolerance/iterations) from the
    same positions (the Euler-stepped start of each node). Target ratio ≤ 0.6.
  * one path of up to 100 nodes: wall time, nodes, stop reasons.
  * 34 paths from the 34 lowest-energy transition states traced in parallel threads.

χ: ``--model file.pt`` (a saved ChiModel) or, by default, a quick χ trained here from a short
Reference-platform trajectory (sampler + ISOKANN). ``--quick`` shrinks everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import openmm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def quick_chi(ms, frames: int, iterations: int, seed: int = 0):
    from amore_openmm.isokann import Isokann
    from amore_openmm.sampling import BurstSampler, ContextPool, sample_trajectory
    traj = sample_trajectory(ms, frames, ms.lag_steps, seed=seed, platform="Reference",
                             progress=False)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        data = BurstSampler(pool).run(traj, n_koopman=1, seed=seed, progress=False)
    model = Isokann(iterations=iterations, minibatch=500, seed=seed).fit(data, system=ms)
    return model, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", help="saved ChiModel (ChiModel.load)")
    ap.add_argument("--system", default="alanine_dipeptide")
    ap.add_argument("--paths", type=int, default=34)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--platform", default="Reference")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from amore_openmm.mep import _Tracer, trace_chi_mep, trace_chi_meps, transition_states
    from amore_openmm.sensitivity import chi_gradients
    from amore_openmm.systems import load_system

    try:
        ms = load_system(args.system)
    except Exception:  # bundled systems may not be built: fall back to the shared PDB
        ms = load_system("alanine_dipeptide", temperature=310.0)
    frames, iters = (2000, 300) if args.quick else (20000, 1000)
    t0 = time.perf_counter()
    if args.model:
        from amore_openmm.chi import ChiModel
        model = ChiModel.load(args.model)
        from amore_openmm.sampling import sample_trajectory
        pool_x = sample_trajectory(ms, frames, ms.lag_steps, seed=0, progress=False)
    else:
        model, data = quick_chi(ms, frames, iters)
        pool_x = data.x
    t_train = time.perf_counter() - t0
    n_paths = 4 if args.quick else args.paths
    starts = transition_states(model, pool_x, ms, window=(0.45, 0.55), n=n_paths)
    tol, max_it = 1.0, 250
    kw = dict(step=0.01, tolerance=tol, max_iterations=max_it, platform=args.platform,
              max_node_rmsd=0.05)

    # one path of up to 100 nodes
    tr = _Tracer(ms, model, args.platform, None)
    t0 = time.perf_counter()
    path = trace_chi_mep(ms, model, starts[0], max_nodes=100, _tracer=tr, **kw)
    t_path = time.perf_counter() - t0
    per_node = t_path / len(path)
    print(json.dumps({"benchmark": "mep_path_100", "system": ms.name, "nodes": len(path),
                      "seconds": round(t_path, 3), "seconds_per_node": round(per_node, 5),
                      "chi_min": float(path.chi.min()), "chi_max": float(path.chi.max()),
                      "max_level_error": float(path.level_error.max()),
                      "stop_reasons": path.stop_reasons, "train_seconds": round(t_train, 1)}))

    # plain minimisation from the node start positions (Euler-stepped from each node)
    _, g = chi_gradients(model, path.positions[:-1])
    g2 = (g ** 2).sum(axis=(1, 2))[:, None, None]
    x_start = path.positions[:-1] + 0.01 * g / g2
    plain = openmm.Context(ms.system, openmm.VerletIntegrator(0.001),
                           openmm.Platform.getPlatformByName(args.platform))
    n_cmp = min(len(x_start), 30)
    t0 = time.perf_counter()
    for x in x_start[:n_cmp]:
        plain.setPositions(x)
        openmm.LocalEnergyMinimizer.minimize(plain, tol, max_it)
    t_plain = (time.perf_counter() - t0) / n_cmp
    # node cost measured the same way: relax each start on its level set
    from amore_openmm.mep import _relax
    opts = dict(chi_tolerance=1e-3, kappa_min=1e3, kappa_max=1e10, tolerance=tol,
                max_iterations=max_it)
    chi_start, _ = chi_gradients(model, x_start[:n_cmp])
    t0 = time.perf_counter()
    for x, z in zip(x_start[:n_cmp], chi_start):
        _relax(tr, x, float(z), None, opts)
    t_node = (time.perf_counter() - t0) / n_cmp
    print(json.dumps({"benchmark": "mep_node_cost", "system": ms.name,
                      "node_seconds": round(t_node, 5), "plain_minimize_seconds":
                      round(t_plain, 5), "node_to_plain_ratio": round(t_node / t_plain, 3),
                      "target_ratio": 0.6, "nodes_compared": n_cmp}))

    # many paths in parallel
    for threads in sorted({1, args.threads}) if args.quick else [args.threads]:
        t0 = time.perf_counter()
        paths = trace_chi_meps(ms, model, starts, pool_size=threads, max_nodes=100, **kw)
        t_all = time.perf_counter() - t0
        print(json.dumps({"benchmark": "mep_parallel", "system": ms.name,
                          "paths": len(paths), "threads": threads,
                          "seconds": round(t_all, 2),
                          "nodes": int(sum(len(p) for p in paths)),
                          "seconds_per_node": round(t_all / sum(len(p) for p in paths), 5)}))


if __name__ == "__main__":
    main()
