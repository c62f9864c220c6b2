#!/usr/bin/env python
"""k memberships (amore_openmm.multichi): timings and the k = 2 vs k = 1 check.

* Müller–Brown (σ = 2.5, 3000 uniform starts, K = 10, lag 150 steps): ISOKANN k = 1 vs
  k = 3 training time (same iterations; ratio), the rate matrix and the per-pair
  transitions (3 χ-MEPs, sensitivities, figures), and the memberships at the three minima.
* Alanine dipeptide: k = 1 (``train_chi``) and k = 2 (``Isokann(n_chi=2)``) on the same data;
  the top-5 atoms of ⟨‖∇χ‖²⟩ for χ and for the pair view χ_01 = (χ_0 − χ_1 + 1)/2, their
  overlap and |corr(χ, χ_01)|; then the same over ``--fits`` training seeds per k
  (:func:`~amore_openmm.sensitivity.chi_sensitivity_over_fits`). For k = 2 the inner-simplex
  transform is the min–max shift-scale of k = 1 (two vertices = the extremes of Kχ), the
  affine head makes χ_0 the scalar network and the minibatch order is the same, so k = 2 of
  seed s is k = 1 of seed s up to float rounding (``max_abs_chi_k1_minus_k2``).

Prints one JSON line per measurement. ``--quick`` shrinks the alanine data.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amore_openmm.isokann import Isokann  # noqa: E402
from amore_openmm.multichi import memberships, pair_model, rate_matrix, transitions  # noqa: E402
from amore_openmm.systems import load_system, muller_brown_energy, muller_brown_system  # noqa: E402,E501

MINIMA = np.array([[-0.558, 1.442], [-0.050, 0.467], [0.623, 0.028]])


def emit(**row) -> None:
    print(json.dumps(row, default=float), flush=True)


def muller_brown() -> None:
    from amore_openmm.sampling import BurstSampler, ContextPool
    mb = muller_brown_system(sigma=2.5)
    rng = np.random.default_rng(0)
    xy = rng.uniform([-1.5, -0.4], [1.1, 2.0], size=(20000, 2))
    xy = xy[muller_brown_energy(xy) < 0][:3000]
    x = np.zeros((len(xy), 1, 3))
    x[:, 0, :2] = xy
    t0 = time.perf_counter()
    with ContextPool(mb, size=1, platform="Reference") as pool:
        data = BurstSampler(pool).run(x, n_koopman=10, lag_steps=150, seed=0, progress=False)
    emit(name="mb_sample", seconds=time.perf_counter() - t0, n_starts=len(data))
    times = {}
    for k in (1, 3):
        t0 = time.perf_counter()
        model = Isokann(iterations=500, minibatch=500, lr=1e-2, seed=0, n_chi=k,
                        shift_scale="quantile").fit(data, system=mb)
        times[k] = time.perf_counter() - t0
    emit(name="mb_train", seconds_k1=times[1], seconds_k3=times[3],
         ratio_k3_over_k1=times[3] / times[1], iterations=500)
    pos = np.zeros((3, 1, 3))
    pos[:, 0, :2] = MINIMA
    chi = memberships(model, pos)
    emit(name="mb_minima", memberships=chi.round(3).tolist(),
         distinct=len(set(np.argmax(chi, 1))) == 3, min_max_membership=chi.max(1).min())
    t0 = time.perf_counter()
    r = rate_matrix(model, data, n_boot=200)
    emit(name="mb_rates", seconds=time.perf_counter() - t0, rates=r["rates"].round(2).tolist(),
         rates_err=r["rates_err"].round(2).tolist(), valid=r["valid"], notes=r["notes"],
         timescales_ps=r["timescales_ps"])
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summ = transitions(model, data, mb, out, n_paths=1, step=0.01, n_boot=20, bins=20)
        emit(name="mb_transitions", seconds=time.perf_counter() - t0,
             pairs={k: {"starts": v["starts"], "nodes": v["nodes"],
                        "barrier_kj_mol": v["barrier_kj_mol"]} for k, v in summ["pairs"].items()})


def alanine(quick: bool, n_fits: int = 4, iterations: int | None = None,
            restore_best: bool = False) -> None:
    from amore_openmm.pipeline import sample_data
    from amore_openmm.sensitivity import (chi_sensitivity, chi_sensitivity_over_fits,
                                          ranking_agreement)
    ms = load_system("alanine_dipeptide")
    n = 500 if quick else 2000
    iters = iterations or (300 if quick else 600)
    train = dict(iterations=iters, minibatch=100, lr=1e-3, restore_best=restore_best)
    t0 = time.perf_counter()
    data = sample_data(ms, n_starts=n, n_koopman=2, seed=0, workers=1, progress=False)
    emit(name="ala_sample", seconds=time.perf_counter() - t0, n_starts=len(data))
    data.save(Path(tempfile.gettempdir()) / "multichi_ala_data.npz")
    fits, secs = {}, {}
    # the same estimator settings (the pipeline's: minibatch 100, lr 1e-3); k = 1 twice
    # (seeds 0 and 1) for the seed-to-seed baseline
    for name, k, seed in (("k1", 1, 0), ("k1_seed1", 1, 1), ("k2", 2, 0)):
        t0 = time.perf_counter()
        fits[name] = Isokann(seed=seed, n_chi=k, **train).fit(data, system=ms)
        secs[name] = time.perf_counter() - t0
    emit(name="ala_train", seconds=secs, ratio_k2_over_k1=secs["k2"] / secs["k1"],
         iterations=iters, restore_best=restore_best,
         # the validation loss of each fit and, with --restore-best, where it was lowest
         val_loss={n: m.metadata["training"].get("best_val_loss",
                                                  m.metadata["training"].get("val_loss"))
                   for n, m in fits.items()},
         best_iteration={n: m.metadata["training"].get("best_iteration")
                         for n, m in fits.items()})
    scalar = {"k1": fits["k1"], "k1_seed1": fits["k1_seed1"], "k2": pair_model(fits["k2"], 0, 1)}
    chis = {n: m.chi(data.x) for n, m in scalar.items()}
    tops, p_top5 = {}, {}
    for n, m in scalar.items():
        sens = chi_sensitivity(m, data.x, bins=20, labels=ms, bootstrap=100, seed=0)
        tops[n] = [int(i) for i, _, _ in sens.top(5)]
        # how often each atom is in the top 5 over bootstrap resamples of the frames
        boot = np.nan_to_num(sens.boot_per_atom, nan=-np.inf)
        ranks = np.argsort(-boot, axis=1)[:, :5]
        p_top5[n] = np.bincount(ranks.ravel(), minlength=boot.shape[1]) / len(boot)
    differ = sorted(set(tops["k1"]) ^ set(tops["k2"]))

    def corr(a: str, b: str) -> float:
        return abs(float(np.corrcoef(chis[a], chis[b])[0, 1]))

    emit(name="ala_k2_vs_k1", abs_corr_k1_k2=corr("k1", "k2"),
         # k = 2 is the scalar ISOKANN (multichi.estimator): equal up to float rounding
         max_abs_chi_k1_minus_k2=float(np.max(np.abs(np.asarray(chis["k1"]) -
                                                      np.asarray(chis["k2"])))),
         abs_corr_k1_k1seed1=corr("k1", "k1_seed1"), top5=tops,
         same_top5_set_k1_k2=set(tops["k1"]) == set(tops["k2"]),
         overlap_k1_k2=len(set(tops["k1"]) & set(tops["k2"])),
         overlap_k1_k1seed1=len(set(tops["k1"]) & set(tops["k1_seed1"])),
         # the atoms in one top 5 but not the other, with their bootstrap probability of
         # being in the top 5 under k = 1, k = 1 (seed 1) and k = 2: a tie at the boundary
         # when neither model puts them in or out with confidence
         differing_atoms_p_top5={int(a): {n: round(float(p_top5[n][a]), 2) for n in p_top5}
                                 for a in differ})
    if n_fits < 2:
        return
    # the ranking a user gets with sensitivity_fits = n_fits: the mean over n_fits seeds for
    # each k (seed 0 of each is the fit above), its error holding the fit-to-fit spread
    t0 = time.perf_counter()
    over = {"k1": [fits["k1"], fits["k1_seed1"]], "k2": [scalar["k2"]]}
    for name, k in (("k1", 1), ("k2", 2)):
        while len(over[name]) < n_fits:
            m = Isokann(seed=len(over[name]), n_chi=k, **train).fit(data, system=ms)
            over[name].append(m if k == 1 else pair_model(m, 0, 1))
    mean = {n: chi_sensitivity_over_fits(ms_, data.x, bins=20, labels=ms, bootstrap=100)
            for n, ms_ in over.items()}
    tops_f = {n: [int(i) for i, _, _ in s_.top(5)] for n, s_ in mean.items()}
    sixth = {n: [int(i) for i, _, _ in s_.top(6)][-1] for n, s_ in mean.items()}
    agree = ranking_agreement(mean["k1"], mean["k2"], k=5, z=2.0)
    emit(name="ala_k2_vs_k1_over_fits", fits=n_fits, iterations=iters,
         restore_best=restore_best, top5=tops_f, sixth=sixth,
         # equal up to ties at the edge of the top 5, no top-5 atom's share 2σ apart
         agreement=agree.to_dict(),
         same_top5_set_k1_k2=set(tops_f["k1"]) == set(tops_f["k2"]),
         overlap_k1_k2=len(set(tops_f["k1"]) & set(tops_f["k2"])),
         p_top5={n: {int(a): round(float(s_.top_frequency(5)[a]), 2)
                     for a in sorted(set(tops_f["k1"]) | set(tops_f["k2"]))}
                 for n, s_ in mean.items()},
         # the atoms in one top 5 only: ⟨‖∇ᵢχ‖²⟩ ± error (fit-to-fit spread included) as a
         # share of the total under each k, to tell a tie at the boundary from a difference
         differing_share={int(a): {n: [round(float(s_.per_atom[a] / np.nansum(s_.per_atom)), 3),
                                       round(float(s_.per_atom_err[a] /
                                                   np.nansum(s_.per_atom)), 3)]
                                   for n, s_ in mean.items()}
                          for a in sorted(set(tops_f["k1"]) ^ set(tops_f["k2"]))},
         seconds=time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("mb", "ala"))
    ap.add_argument("--fits", type=int, default=4,
                    help="χ fits per k averaged for the k = 2 vs k = 1 ranking (1: none)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="ISOKANN iterations of each alanine fit (default 600; 300 --quick)")
    ap.add_argument("--restore-best", action="store_true",
                    help="end each alanine fit with its lowest-validation-loss network")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "mb"):
        muller_brown()
    if args.only in (None, "ala"):
        alanine(args.quick, args.fits, args.iterations, args.restore_best)


if __name__ == "__main__":
    main()
