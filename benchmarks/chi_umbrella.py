#!/usr/bin/env python
"""χ umbrella sampling + MBAR on Müller–Brown against the exact F(χ) by grid integration.

Runs :class:`~amore_openmm.biased.UmbrellaSampler` (restraint 0.5·κ·(χ − z)² inside OpenMM,
the system's overdamped Brownian dynamics, kT = 12.5 kJ/mol) with the fixed projection χ
(:func:`~amore_openmm.biased.projection_chi`, 0 at minimum A, 1 at minimum B), reweights
with :func:`~amore_openmm.biased.fit_mbar`, and prints one JSON line per timestep with: the
maximal deviation of F(χ) from F(χ) = −kT ln ∫ δ(χ(x, y) − s) e^{−V/kT} dx dy on
χ ∈ [0.05, 0.95] (both aligned by their mean over that range), ΔF‡ with its bootstrap
error against the exact one (on that range, and from the basin minima over χ ∈ [−0.1, 1.1]),
the effective sample size, and wall seconds (MD and MBAR).

``--chi trained`` replaces the projection by a quick ISOKANN χ (bursts + 300 iterations,
as in tests/test_mep.py); the exact F(χ) is then that χ's.

``--timestep`` runs each given timestep (ps; default: the system's 1e-4) with the same
physical time per frame, which separates the integrator's own sampling bias from MBAR's.

Example::

    OMP_NUM_THREADS=1 python benchmarks/chi_umbrella.py --windows 21 --frames 1000
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from amore_openmm.biased import (UmbrellaSampler, barrier_height, fit_mbar, grid_free_energy,
                                 projection_chi, reweighted_sensitivity)
from amore_openmm.systems import muller_brown_energy, muller_brown_system

MIN_A, MIN_B = (-0.558, 1.442), (0.623, 0.028)


def trained_chi(ms, seed: int):
    """A quick ISOKANN χ (as in tests/test_mep.py): K = 10 bursts of lag 1e-3 from 3000
    starts over the low-energy region, 300 iterations."""
    from amore_openmm.isokann import Isokann
    from amore_openmm.orientation import orient
    from amore_openmm.sampling import BurstSampler, ContextPool
    rng = np.random.default_rng(seed)
    xy = rng.uniform([-1.5, -0.4], [1.1, 2.0], size=(20000, 2))
    xy = xy[muller_brown_energy(xy) < 0][:3000]
    x = np.zeros((len(xy), 1, 3))
    x[:, 0, :2] = xy
    with ContextPool(ms, size=1, platform="Reference") as pool:
        data = BurstSampler(pool).run(x, n_koopman=10, seed=seed, progress=False)
    model = Isokann(iterations=300, minibatch=500, lr=1e-2, seed=seed).fit(data, system=ms)
    return orient(model, np.array([[MIN_A[0], MIN_A[1], 0.0]]), target=0.0)


def run(args: argparse.Namespace, dt: float | None) -> dict:
    base = muller_brown_system()
    ms = base if dt is None else base.with_overrides(timestep=dt)
    scale = 1 if dt is None else max(1, int(round(base.timestep / dt)))
    chi = projection_chi(MIN_A, MIN_B) if args.chi == "projection" else \
        trained_chi(base, args.seed)
    t0 = time.perf_counter()
    samples = UmbrellaSampler(ms, chi, np.linspace(0, 1, args.windows),
                              kappa=args.kappa if args.kappa else "auto").run(
        frames=args.frames, stride=args.stride * scale,
        equilibration=args.equilibration, seed=args.seed)
    t_md = time.perf_counter() - t0
    fes = fit_mbar(samples, bootstrap=args.bootstrap, seed=args.seed)
    t_all = time.perf_counter() - t0
    edges = np.linspace(0.05, 0.95, args.bins + 1)
    _, f, err = fes.profile(edges)
    _, exact = grid_free_energy(chi, muller_brown_energy, ms.kT, edges, n=1200)
    dev = (f - f.mean()) - (exact - exact.mean())
    bar = fes.barrier(edges)
    # ΔF‡ from the basin minima themselves: χ over [-0.1, 1.1] (the basins reach below 0)
    full = np.linspace(-0.1, 1.1, 49)
    bar_full = fes.barrier(full)
    _, exact_full = grid_free_energy(chi, muller_brown_energy, ms.kT, full, n=1200)
    sens, ess = reweighted_sensitivity(fes, chi, bootstrap=20, bins=10)
    if args.plot:
        fes.plot(args.plot, edges, reference=(0.5 * (edges[1:] + edges[:-1]),
                                              exact - exact.min()))
    return {"system": "muller_brown", "chi": args.chi, "timestep_ps": ms.timestep,
            "windows": args.windows, "frames_per_window": args.frames,
            "stride_steps": samples.stride, "kappa_kJ_mol": float(samples.kappa[0]),
            "bootstrap_block": fes.block,
            "max_dev_kT": float(np.abs(dev).max()), "rms_dev_kT": float(np.sqrt(np.mean(dev**2))),
            "median_F_err_kT": float(np.median(err)),
            **{k: round(v, 4) for k, v in bar.items()},
            "exact_barrier_kT": barrier_height(0.5 * (edges[1:] + edges[:-1]), exact),
            "full_range_barrier_kT": round(bar_full["barrier_kT"], 4),
            "full_range_barrier_err_kT": round(bar_full["barrier_err_kT"], 4),
            "full_range_exact_barrier_kT": barrier_height(0.5 * (full[1:] + full[:-1]),
                                                          exact_full),
            "effective_sample_size": fes.effective_sample_size, "n_samples": samples.n_samples,
            "grad_sq_reweighted_nm-2": float(sens.per_atom[0]),
            "md_seconds": round(t_md, 2), "wall_seconds": round(t_all, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=21)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--stride", type=int, default=10, help="steps per frame at dt = 1e-4")
    ap.add_argument("--equilibration", type=int, default=100)
    ap.add_argument("--kappa", type=float, default=0.0, help="kJ/mol; 0: auto")
    ap.add_argument("--bins", type=int, default=18)
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--timestep", type=float, nargs="*", default=[],
                    help="timesteps (ps) to run besides the system's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chi", choices=("projection", "trained"), default="projection",
                    help="fixed projection A->B, or a quick ISOKANN χ (about a minute)")
    ap.add_argument("--plot", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for dt in [None, *args.timestep]:
        print(json.dumps(run(args, dt)), flush=True)


if __name__ == "__main__":
    main()
