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

``--chi isokann`` (alias ``trained``) replaces the projection by a quick ISOKANN χ
(bursts + 300 iterations, as in tests/test_mep.py; ``--model PATH`` loads a saved one
instead, and trains and saves it there when the file does not exist); the exact F(χ) is
then that χ's. Such a χ is flat in the basins and steep at the saddle: ``--windows auto``
(the default) places windows and per-window κ by pilot rounds
(:func:`~amore_openmm.biased.plan_windows`) and refines the step where the restraint is
stiff; ``--windows 21`` gives equally spaced windows with one κ (which fail on it). The
line also carries the certificate (:func:`~amore_openmm.biased.certify`).

``--timestep`` runs each given timestep (ps; default: the system's 1e-4) with the same
physical time per frame, which separates the integrator's own sampling bias from MBAR's.

Example::

    OMP_NUM_THREADS=1 python benchmarks/chi_umbrella.py --windows 21 --frames 1000
    OMP_NUM_THREADS=1 python benchmarks/chi_umbrella.py --chi isokann --model /tmp/mb_chi.pt
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from amore_openmm.biased import (UmbrellaSampler, barrier_height, certify, fit_mbar,
                                 grid_free_energy, plan_windows, projection_chi,
                                 reweighted_sensitivity)
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


def isokann_chi(ms, args: argparse.Namespace):
    """The quick ISOKANN χ: loaded from ``--model`` when that file exists, else trained
    (and saved there when a path is given)."""
    from pathlib import Path

    from amore_openmm.chi import ChiModel
    if args.model and Path(args.model).is_file():
        return ChiModel.load(args.model)
    model = trained_chi(ms, args.seed)
    if args.model:
        model.save(args.model)
    return model


def run(args: argparse.Namespace, dt: float | None) -> dict:
    base = muller_brown_system()
    ms = base if dt is None else base.with_overrides(timestep=dt)
    scale = 1 if dt is None else max(1, int(round(base.timestep / dt)))
    chi = projection_chi(MIN_A, MIN_B) if args.chi == "projection" else \
        isokann_chi(base, args)
    t0, c0 = time.perf_counter(), time.process_time()
    kappa = args.kappa if args.kappa else "auto"
    plan = None
    if args.windows == "auto":
        plan = plan_windows(ms, chi, initial=args.initial, kappa=kappa,
                            max_windows=args.max_windows, rounds=args.rounds,
                            pilot_frames=args.pilot_frames, stride=args.stride * scale,
                            seed=args.seed, max_substeps=args.max_substeps,
                            width=args.width or None,
                            log=None if args.quiet else lambda m: print(m, file=sys.stderr))
        z, kappa = plan.z, plan.kappa
    else:
        z = np.linspace(0, 1, int(args.windows))
    t_plan = time.perf_counter() - t0
    t_cpu = time.process_time()
    samples = UmbrellaSampler(ms, chi, z, kappa=kappa, substeps=args.substeps,
                              max_substeps=args.max_substeps,
                              min_substeps=1 if plan is None else plan.substeps).run(
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
    cert = certify(samples, fes, 50)
    return {"system": "muller_brown", "chi": args.chi, "timestep_ps": ms.timestep,
            "windows": args.windows, "n_windows": samples.n_windows,
            "frames_per_window": args.frames, "stride_steps": samples.stride,
            "kappa_kJ_mol_range": [float(samples.kappa.min()), float(samples.kappa.max())],
            "substeps_max": int(np.max(samples.substeps)),
            "certified": cert["certified"], "note": cert["note"],
            "window_overlap_min": round(cert["window_overlap_min"], 4),
            "stiffness_max": round(cert["stiffness_max"], 4),
            "plan_converged": None if plan is None else plan.converged,
            "plan_rounds": None if plan is None else plan.rounds,
            "plan_seconds": round(t_plan, 2),
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
            "plan_history": None if plan is None else plan.history,
            "plan_cpu_seconds": round(t_cpu - c0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
            "md_seconds": round(t_md, 2), "wall_seconds": round(t_all, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="auto", help="auto or a count (equally spaced)")
    ap.add_argument("--max-windows", type=int, default=64)
    ap.add_argument("--initial", type=int, default=11, help="scout windows of the plan")
    ap.add_argument("--width", type=float, default=0.0,
                    help="design χ spread of a window (0: half the scout spacing)")
    ap.add_argument("--rounds", type=int, default=8, help="most pilot rounds")
    ap.add_argument("--max-substeps", type=int, default=64)
    ap.add_argument("--pilot-frames", type=int, default=100)
    ap.add_argument("--substeps", default="auto", help="auto or an integer")
    ap.add_argument("--model", default="", help="saved ISOKANN χ (.pt) for --chi isokann")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--stride", type=int, default=10, help="steps per frame at dt = 1e-4")
    ap.add_argument("--equilibration", type=int, default=100)
    ap.add_argument("--kappa", type=float, default=0.0, help="kJ/mol; 0: auto")
    ap.add_argument("--bins", type=int, default=18)
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--timestep", type=float, nargs="*", default=[],
                    help="timesteps (ps) to run besides the system's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chi", choices=("projection", "isokann", "trained"), default="projection",
                    help="fixed projection A->B, or a quick ISOKANN χ (about a minute)")
    ap.add_argument("--plot", default="")
    args = ap.parse_args()
    args.chi = "isokann" if args.chi == "trained" else args.chi
    args.substeps = args.substeps if args.substeps == "auto" else int(args.substeps)
    torch.set_num_threads(1)
    for dt in [None, *args.timestep]:
        print(json.dumps(run(args, dt)), flush=True)


if __name__ == "__main__":
    main()
