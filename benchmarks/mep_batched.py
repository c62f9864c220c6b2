#!/usr/bin/env python
"""χ-MEPs one at a time vs all in one packed Context (``trace_chi_meps_batched``).

Prints JSON lines, in one run:
  * ``mep_one``: one path alone (``trace_chi_mep`` on its own LevelSetTracer), from the
    transition state whose pool path has the median node count among certified paths;
  * ``mep_pool``: the S transition-state paths traced one at a time on the pool's threads
    (``trace_chi_meps``, ``--threads`` threads);
  * ``mep_batched``: the same S paths in packed Contexts of copies, one per worker process
    (``trace_chi_meps_batched``, ``--workers``, default one per core; ``--minimizer copies``,
    the default: per-copy L-BFGS, a copy's node returns to its path as soon as it has
    converged; ``fire``: per-copy FIRE, streamed likewise; ``joint``: one
    LocalEnergyMinimizer of the packed System per lockstep round), one batched χ evaluation
    per force call;
  * ``mep_one_again``: the one path once more after the batched paths (a shared machine's
    speed drifts; the faster of the two runs is the reference of the ratios);
  * ``mep_minima_check`` (``--check-minima K``): OpenMM's minimiser from K random certified
    nodes of the pool's and of the batched paths, at each node's z and κ: how much their
    restrained energy drops (how far the nodes are from level-set minima);
  * ``mep_batched_summary``: times relative to one path alone (the issue's goal: batched
    ≤ 3× one path on 2 cores), and how far the batched paths are from the pool's (node
    counts; energies at matching χ over nodes certified in both, over all χ and inside
    χ ∈ [0.1, 0.9]; median barriers);
  * ``mep_pool_reproducibility`` (``--reproducibility``): the same comparison between the
    pool's paths and the pool's paths from starts moved by 1e-5 nm: how reproducible a
    χ-MEP is at all.
  * ``mep_batched_repeat`` (``--repeat``): the batched paths traced again on one worker
    from the starts in reverse order: how many come out the same to the bit (all of them
    with ``--evaluator serial``, the default; see ``trace_chi_meps_batched``).

Measured (2 shared cores, ``--minimizer copies --workers 2 --check-minima 60``, four runs):
one path 12–14 s; batched 2.40, 2.44, 2.47 and 2.51× it (2.6–3.5× with the bond metric's
floor at 0.3, 5.6× before the per-copy L-BFGS got its preconditioner and nonsmooth
stationarity test), the pool 16–17×; inside χ ∈ [0.1, 0.9] batched against pool max ΔE per
path median 1.78, max 2.34 kJ/mol, median difference +0.003, and the pool against itself
(1e-5 nm, ``--reproducibility``) median 1.72, max 2.05; OpenMM lowers the batched nodes by at
most 0.046 kJ/mol, the pool's by at most 0.003. ``--repeat``: 34 of 34 paths identical.

Each line carries seconds, nodes, certified nodes, seconds per certified node, force
evaluations and the machine's load average (``os.getloadavg``) before and after: the timings
are wall-clock times on a possibly shared machine.

χ: ``--model file.pt`` (a saved ChiModel) or, by default, a quick χ trained here (as in
``mep_cost.py``); ``--cache DIR`` keeps that χ and its transition-state pool (DIR/chi.pt,
DIR/pool_x.npy) and reuses them on the next run (training takes minutes).
``--quick``: a smoke run (4 paths of 12 nodes, a small χ).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def summary(name: str, paths: list, seconds: float, before: list[float], **extra) -> dict:
    nodes = int(sum(len(p) for p in paths))
    cert = int(sum(p.n_certified for p in paths))
    evals = int(sum(int(np.asarray(p.iterations).clip(0).sum()) for p in paths))
    return dict({"benchmark": name, "paths": len(paths), "seconds": round(seconds, 2),
                 "nodes": nodes, "certified": cert,
                 "seconds_per_certified_node": round(seconds / cert, 5) if cert else None,
                 "force_evaluations_per_node": round(evals / nodes, 1) if nodes else None,
                 "loadavg_before": before, "loadavg_after": load()}, **extra)


#: χ window of the energy comparison "inner": away from the saturated ends, where ‖∇χ‖ → 0
#: and a level set holds several minima far apart in energy (measured: the pool's own paths
#: from starts moved by 1e-5 nm have barriers up to 25 kJ/mol apart when the end nodes
#: count, energies at matching χ ≤ 2.1 kJ/mol apart inside)
INNER = (0.1, 0.9)


def _de(a, b, lo: float = 0.0, hi: float = 1.0) -> np.ndarray | None:
    """E_b − E_a (kJ/mol) at b's certified nodes in [lo, hi] inside a's χ range (a's
    energies interpolated along its χ)."""
    ca = a.certified & (a.chi >= lo - 0.02) & (a.chi <= hi + 0.02)
    if ca.sum() < 2:
        return None
    xa, ea = a.chi[ca], a.energy[ca]
    inside = b.certified & (b.chi >= max(xa.min(), lo)) & (b.chi <= min(xa.max(), hi))
    if not inside.any():
        return None
    return b.energy[inside] - np.interp(b.chi[inside], xa, ea)


def _barrier(p, lo: float, hi: float) -> float:
    m = p.certified & (p.chi >= lo) & (p.chi <= hi)
    return float(p.energy[m].max() - p.energy[p.certified].min()) if m.any() else np.nan


def agreement(reference: list, batched: list) -> dict:
    """Node-count differences, max |ΔE| (kJ/mol) at matching χ per path and the median of
    E_batched − E_reference over all matching nodes (all χ, and inside :data:`INNER`), and
    the median barrier (highest certified node inside INNER above the
    lowest) of each set."""
    dn = [abs(len(a) - len(b)) for a, b in zip(reference, batched)]
    out = {"node_count_diff_max": int(max(dn)),
           "paths_node_count_within_1": int(sum(d <= 1 for d in dn))}
    for tag, (lo, hi) in (("", (0.0, 1.0)), ("_inner", INNER)):
        diffs = [d for d in (_de(a, b, lo, hi) for a, b in zip(reference, batched))
                 if d is not None]
        de = [float(np.abs(d).max()) for d in diffs]
        arr = np.array(de) if de else np.array([np.nan])
        # a bias (one set's nodes higher) shows here; max |ΔE| also counts valley switches
        signed = np.concatenate(diffs) if diffs else np.array([np.nan])
        out[f"dE{tag}_signed_median_kJ_mol"] = round(float(np.median(signed)), 3)
        out.update({f"dE{tag}_at_matching_chi_median_kJ_mol": round(float(np.median(arr)), 3),
                    f"dE{tag}_at_matching_chi_max_kJ_mol": round(float(np.max(arr)), 3),
                    f"paths_dE{tag}_below_2kJ_mol": int(sum(d <= 2.0 for d in de))})
    out["inner_chi"] = list(INNER)
    out["barrier_inner_median_kJ_mol"] = [
        round(float(np.nanmedian([_barrier(p, *INNER) for p in ps])), 2)
        for ps in (reference, batched)]
    return out


def restrained_drops(system, model, paths: list, count: int, seed: int = 0) -> dict:
    """How far ``count`` random certified nodes of ``paths`` are from level-set minima: OpenMM's
    minimiser (tolerance 0.05 kJ/mol/nm, up to 5,000 iterations) from each node, at the node's
    own z and κ, on a single-copy Reference tracer; the drop of E + ½κ(χ − z)² (kJ/mol)."""
    from amore_openmm.mep import LevelSetTracer
    tracer = LevelSetTracer(system, model, "Reference")
    nodes = [(p, i) for p in paths for i in np.flatnonzero(p.certified)]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(nodes), size=min(count, len(nodes)), replace=False)

    def restrained(x, z, kappa):
        energy, _ = tracer.physical()
        chi, _ = tracer.chi_grad(x)
        return energy + 0.5 * kappa * (chi - z) ** 2

    drops, moves = [], []
    for k in pick:
        path, i = nodes[int(k)]
        z, kappa = float(path.z[i]), float(path.kappa[i])
        x0 = tracer.set_positions(path.positions[i])
        before = restrained(x0, z, kappa)
        tracer.minimize(z, kappa, 0.05, 5000)
        x1 = tracer.positions().copy()
        drops.append(before - restrained(x1, z, kappa))
        moves.append(float(np.abs(x1 - x0).max()))
    d = np.array(drops)
    return {"nodes": len(d), "drop_median_kJ_mol": round(float(np.median(d)), 4),
            "drop_p90_kJ_mol": round(float(np.percentile(d, 90)), 4),
            "drop_max_kJ_mol": round(float(d.max()), 4),
            "move_max_nm": round(float(max(moves)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--model", help="saved ChiModel (ChiModel.load)")
    ap.add_argument("--cache", help="folder for the trained χ and its data (reused if there)")
    ap.add_argument("--paths", type=int, default=34)
    ap.add_argument("--max-nodes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="pool threads (trace_chi_meps)")
    ap.add_argument("--platform", default="Reference", help="platform of the one-at-a-time "
                    "tracers")
    ap.add_argument("--batched-platform", default="CPU",
                    help="platform of the packed Context (CPU: compiled custom forces)")
    ap.add_argument("--batched-threads", type=int, default=1,
                    help="CPU-platform threads of the packed Context (1: on a loaded 2-core "
                    "machine Threads=2 made each force call ~5x slower, 1.65 vs 0.34 ms)")
    ap.add_argument("--minimizer", default="copies", choices=("joint", "copies", "fire"),
                    help="minimiser of the batched paths")
    ap.add_argument("--reproducibility", action="store_true",
                    help="also trace the pool from starts moved by 1e-5 nm and print how far "
                    "those paths are from the pool's (the floor of any agreement)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes sharing the batched paths (trace_chi_meps_batched "
                    "workers=; one per core)")
    ap.add_argument("--check-minima", type=int, default=0, metavar="K",
                    help="re-minimise K random certified nodes of the pool's and of the "
                    "batched paths with OpenMM's minimiser and print the energy drops")
    ap.add_argument("--evaluator", default="serial", choices=("auto", "packed", "serial"),
                    help="physical forces of the moving copies (trace_chi_meps_batched)")
    ap.add_argument("--repeat", action="store_true",
                    help="trace the batched paths again on one worker, starts reversed, and "
                    "print how many come out the same to the bit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from amore_openmm.mep import (LevelSetTracer, trace_chi_mep, trace_chi_meps,
                                  trace_chi_meps_batched, transition_states)
    from amore_openmm.sampling import sample_trajectory
    from amore_openmm.systems import load_system
    from mep_cost import quick_chi

    ms = load_system("alanine_dipeptide")
    frames, iters = (1000, 150) if args.quick else (20000, 1000)
    t0 = time.perf_counter()
    cache = Path(args.cache) / ("quick" if args.quick else "full") if args.cache else None
    if args.model:
        from amore_openmm.chi import ChiModel
        model = ChiModel.load(args.model)
        pool_x = sample_trajectory(ms, frames, ms.lag_steps, seed=0, progress=False)
    elif cache is not None and (cache / "chi.pt").exists():
        from amore_openmm.chi import ChiModel
        model, pool_x = ChiModel.load(cache / "chi.pt"), np.load(cache / "pool_x.npy")
    else:
        model, pool_x = quick_chi(ms, frames, iters)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            model.save(cache / "chi.pt")
            np.save(cache / "pool_x.npy", np.asarray(pool_x))
    t_train = time.perf_counter() - t0
    n_paths = 4 if args.quick else args.paths
    max_nodes = 12 if args.quick else args.max_nodes
    starts = transition_states(model, pool_x, ms, window=(0.45, 0.55), n=n_paths)
    kw = dict(step=0.01, tolerance=1.0, max_iterations=250, max_node_rmsd=0.05,
              max_nodes=max_nodes)
    common = {"system": ms.name, "max_nodes": max_nodes, "train_seconds": round(t_train, 1),
              "cpu_count": os.cpu_count()}

    before = load()
    t0 = time.perf_counter()
    pool = trace_chi_meps(ms, model, starts, pool_size=args.threads, platform=args.platform,
                          **kw)
    t_pool = time.perf_counter() - t0
    # "one path alone": the transition state whose path has the median node count among the
    # certified pool paths (the lowest-energy start can be one whose start node fails)
    good = [i for i, p in enumerate(pool) if p.n_certified > 1] or list(range(len(pool)))
    pick = sorted(good, key=lambda i: len(pool[i]))[len(good) // 2]
    before_one = load()
    tracer = LevelSetTracer(ms, model, args.platform)
    t0 = time.perf_counter()
    one = trace_chi_mep(ms, model, starts[pick], tracer=tracer, **kw)
    t_one = time.perf_counter() - t0
    print(json.dumps(summary("mep_one", [one], t_one, before_one, platform=args.platform,
                             start=int(pick), **common)), flush=True)
    print(json.dumps(summary("mep_pool", pool, t_pool, before, threads=args.threads,
                             platform=args.platform, **common)), flush=True)

    if args.reproducibility:
        moved = starts + 1e-5 * np.random.default_rng(1).standard_normal(starts.shape)
        again = trace_chi_meps(ms, model, moved, pool_size=args.threads, platform=args.platform,
                               **kw)
        print(json.dumps(dict({"benchmark": "mep_pool_reproducibility", "start_noise_nm": 1e-5},
                              **agreement(pool, again))), flush=True)

    props = {"Threads": str(args.batched_threads)} if args.batched_platform == "CPU" else None
    before = load()
    t0 = time.perf_counter()
    batched = trace_chi_meps_batched(ms, model, starts, platform=args.batched_platform,
                                     properties=props, minimizer=args.minimizer,
                                     evaluator=args.evaluator, workers=args.workers, **kw)
    t_bat = time.perf_counter() - t0
    print(json.dumps(summary("mep_batched", batched, t_bat, before,
                             platform=args.batched_platform, properties=props,
                             minimizer=args.minimizer, evaluator=args.evaluator,
                             workers=args.workers, **common)),
          flush=True)

    if args.repeat:
        t0 = time.perf_counter()
        again = trace_chi_meps_batched(ms, model, starts[::-1], platform=args.batched_platform,
                                       properties=props, minimizer=args.minimizer,
                                       evaluator=args.evaluator, workers=1, **kw)[::-1]
        same = sum(len(a) == len(b) and np.array_equal(a.positions, b.positions) and
                   np.array_equal(a.energy, b.energy) for a, b in zip(batched, again))
        print(json.dumps({"benchmark": "mep_batched_repeat", "workers": 1, "reversed": True,
                          "paths": len(starts), "identical_paths": int(same),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)

    # the one path again: the machine's speed may have changed; the faster run is the
    # reference (the ratios are then the larger ones)
    before_again = load()
    t0 = time.perf_counter()
    again = trace_chi_mep(ms, model, starts[pick], tracer=tracer, **kw)
    t_again = time.perf_counter() - t0
    print(json.dumps(summary("mep_one_again", [again], t_again, before_again,
                             platform=args.platform, start=int(pick), **common)), flush=True)
    t_one = min(t_one, t_again)

    if args.check_minima:
        for name, paths in (("pool", pool), ("batched", batched)):
            print(json.dumps(dict({"benchmark": "mep_minima_check", "paths_of": name},
                                  **restrained_drops(ms, model, paths, args.check_minima))),
                  flush=True)

    print(json.dumps(dict({"benchmark": "mep_batched_summary", "paths": len(starts),
                           "one_seconds": round(t_one, 2),
                           "pool_over_one": round(t_pool / t_one, 2),
                           "batched_over_one": round(t_bat / t_one, 2),
                           "goal_batched_over_one": 3.0,
                           "pool_over_batched": round(t_pool / t_bat, 2)},
                          **agreement(pool, batched))), flush=True)


if __name__ == "__main__":
    main()
