#!/usr/bin/env python
"""Alanine dipeptide (vacuum, Reference platform): χ umbrella sampling + MBAR against plain MD.

One run, one JSON line:

(a) F(χ) from ``umbrella_free_energy`` (adaptive windows, MBAR) against the χ histogram of a
    long unbiased run, mean-aligned over the χ bins where the unbiased run has at least
    ``--min-count`` frames: the maximal deviation (kT) and the χ range compared (goal ≤ 0.5).
(b) The top atom's ensemble ⟨‖∇ᵢχ‖²⟩: MBAR-reweighted from the windows and plain from the
    unbiased frames. Each error is the larger of a block bootstrap (umbrella: within
    windows, MBAR re-solved; plain: block = the statistical inefficiency of χ) and batch
    means over consecutive time segments; both are printed. Cost-normalised error SE·sqrt(CPU-minutes) of each and
    their ratio plain/umbrella (goal ≥ 10). CPU time is ``time.process_time`` of everything
    a method needs: MD (χ restraint forces included), pilots, χ/gradient evaluation, MBAR.
(c) The top atom's level-set average ⟨‖∇ᵢχ‖²⟩_z at the window nearest χ = 0.5 (frames with
    |χ − z| ≤ ``--slab``): from that window against the plain frames in the same slab, each
    cost-normalised by its whole run's CPU (the windows give every level set at once).
    Also printed: the umbrella's CPU split into pilots and production, the ratio with the
    production alone, CPU ms per MD step of each (MD only), and SE²·frames of each (the
    variance per frame; their ratio is what the windows gain per frame, whatever a frame
    costs).

The χ is a run directory's model (``--model``; default the quick pipeline's
/tmp/umbrella_ala/model/chi_state.pt, made with ``amore run alanine_dipeptide --preset quick``
when missing).

Example::

    OMP_NUM_THREADS=1 python benchmarks/alanine_fes.py --md-ps 2000 --frames 300
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from openmm import unit

RUN = Path("/tmp/umbrella_ala")


def model_path(arg: str) -> Path:
    if arg:
        return Path(arg)
    path = RUN / "model" / "chi_state.pt"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "amore_openmm.cli", "run", "alanine_dipeptide",
                        "--preset", "quick", "--out", str(RUN)], check=True)
    return path


def top_atom(path: Path, fallback: int) -> int:
    """Rank-1 atom of the run's sensitivity table next to the model, else ``fallback``."""
    table = path.parent.parent / "sensitivity" / "atoms.csv"
    if table.is_file():
        with open(table) as fh:
            return int(next(csv.DictReader(fh))["atom_index_0based"])
    return fallback


def plain_md(ms, n_frames: int, stride: int, seed: int) -> np.ndarray:
    ctx = ms.make_context("Reference", seed=seed)
    ctx.setVelocitiesToTemperature(ms.temperature, seed + 1)
    integ = ctx.getIntegrator()
    integ.step(50 * stride)                     # equilibration, discarded
    x = np.zeros((n_frames, ms.n_atoms, 3))
    for i in range(n_frames):
        integ.step(stride)
        x[i] = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(
            unit.nanometer)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="")
    ap.add_argument("--md-ps", type=float, default=2000.0, help="unbiased run length (ps)")
    ap.add_argument("--md-stride", type=int, default=50, help="steps between unbiased frames")
    ap.add_argument("--frames", type=int, default=300, help="frames per umbrella window")
    ap.add_argument("--stride", type=int, default=50, help="steps between umbrella frames")
    ap.add_argument("--equilibration", type=int, default=20)
    ap.add_argument("--pilot-frames", type=int, default=50)
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--bins", type=int, default=25)
    ap.add_argument("--min-count", type=int, default=50)
    ap.add_argument("--slab", type=float, default=0.025,
                    help="half width in χ of the level set near 0.5 compared in (c)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default="", help="keep the umbrella run (samples, F(χ)) and "
                    "the plain frames in this directory (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from amore_openmm.biased import (reweighted_sensitivity, umbrella_free_energy,
                                     window_sensitivity)
    from amore_openmm.biased.mbar import SEGMENTS
    from amore_openmm.biased.mbar import statistical_inefficiency
    from amore_openmm.biased.umbrella import UmbrellaSamples, evaluate_chi_batch
    from amore_openmm.chi import ChiModel
    from amore_openmm.sensitivity import chi_sensitivity
    from amore_openmm.systems import load_system

    path = model_path(args.model)
    model = ChiModel.load(path)
    ms = load_system("alanine_dipeptide")
    atom = top_atom(path, 0)

    # -- plain MD ------------------------------------------------------------------------
    c0 = time.process_time()
    n = int(round(args.md_ps / (ms.timestep * args.md_stride)))
    x = plain_md(ms, n, args.md_stride, args.seed)
    cpu_plain_md = (time.process_time() - c0) / 60.0
    chi_md = evaluate_chi_batch(model, x)
    one = UmbrellaSamples(positions=x[:1], chi=chi_md, energy=np.zeros(n),
                          window=np.zeros(n, int), z=np.array([0.5]), kappa=np.array([1.0]),
                          kT=ms.kT)
    g = int(np.ceil(statistical_inefficiency(one)))
    plain = chi_sensitivity(model, x, bins=10, bootstrap=args.bootstrap, block=g,
                            seed=args.seed)
    # batch means over the same number of consecutive segments as the umbrella's error
    quarters = [chi_sensitivity(model, part, bins=1, bootstrap=0, min_count=1).per_atom
                for part in np.array_split(x, SEGMENTS)]
    cpu_plain = (time.process_time() - c0) / 60.0

    # -- umbrella + MBAR -----------------------------------------------------------------
    c0 = time.process_time()
    with (contextlib.nullcontext(args.keep) if args.keep
          else tempfile.TemporaryDirectory()) as tmp:
        fes = umbrella_free_energy(ms, model, tmp, windows="auto", frames=args.frames,
                                   stride=args.stride, equilibration=args.equilibration,
                                   bins=args.bins, bootstrap=args.bootstrap, seed=args.seed,
                                   pilot_frames=args.pilot_frames,
                                   max_windows=args.max_windows)
        info = json.loads((Path(tmp) / "fes.json").read_text())
        if args.keep:
            np.save(Path(tmp) / "plain_positions.npy", x)
    umb, ess = reweighted_sensitivity(fes, model, bins=10, bootstrap=args.bootstrap,
                                      seed=args.seed)
    cpu_umb = (time.process_time() - c0) / 60.0

    # -- (a) F(χ) where both sample ------------------------------------------------------
    edges = np.linspace(0.0, 1.0, args.bins + 1)
    _, f_umb, f_err = fes.profile(edges)
    counts = np.histogram(chi_md, edges)[0]
    with np.errstate(divide="ignore"):
        f_md = -np.log(counts / counts.sum() / np.diff(edges))
    both = (counts >= args.min_count) & np.isfinite(f_umb)
    dev = (f_umb - f_umb[both].mean()) - (f_md - f_md[both].mean())
    centres = 0.5 * (edges[1:] + edges[:-1])

    outside = (chi_md < fes.chi.min()) | (chi_md > fes.chi.max())
    inner = float(chi_sensitivity(model, x[~outside], bins=10, bootstrap=0).per_atom[atom]) \
        if (~outside).sum() > 1 else None

    # -- (c) the level set near χ = 0.5 (the paper's level-set sensitivity there): the
    # window nearest 0.5 against the plain frames in the same χ slab
    k_mid = int(np.argmin(np.abs(fes.z - 0.5)))
    z_mid = float(fes.z[k_mid])
    samples = fes.samples
    _, ls_mean, ls_err, ls_used = window_sensitivity(samples, model, halfwidth=args.slab,
                                                     bootstrap=args.bootstrap,
                                                     block=int(umb.block), seed=args.seed)
    slab = np.abs(chi_md - z_mid) <= args.slab
    plain_ls = plain_ls_err = None
    if slab.sum() >= 2 * SEGMENTS:
        sub = chi_sensitivity(model, x[slab], bins=1, bootstrap=args.bootstrap, min_count=1,
                              seed=args.seed)
        parts = np.array_split(np.flatnonzero(slab), SEGMENTS)     # consecutive in time
        seg = [chi_sensitivity(model, x[p], bins=1, bootstrap=0, min_count=1).per_atom[atom]
               for p in parts]
        plain_ls = float(sub.per_atom[atom])
        plain_ls_err = max(float(sub.per_atom_err[atom]),
                           float(np.std(seg, ddof=1) / np.sqrt(SEGMENTS)))

    # -- (b) cost-normalised standard error of the top atom ------------------------------
    se_u_boot = float(np.std(umb.boot_per_atom[:, atom], ddof=1))
    se_u_seg = float(np.std(umb.segment_per_atom[:, atom], ddof=1) / np.sqrt(SEGMENTS))
    se_p_boot = float(plain.per_atom_err[atom])
    se_p_seg = float(np.std(np.asarray(quarters)[:, atom], ddof=1) / np.sqrt(SEGMENTS))
    # both errors are the larger of bootstrap and batch means, as reweighted_sensitivity's
    se_u, se_p = float(umb.per_atom_err[atom]), max(se_p_boot, se_p_seg)
    norm_u, norm_p = se_u * np.sqrt(cpu_umb), se_p * np.sqrt(cpu_plain)
    # where the cost goes and what a frame buys: SE²·frames is the variance one frame adds
    # (equal per-frame variances mean the windows reduce no variance, and the ratio can then
    # be no better than sqrt(plain cost / umbrella cost) per frame, < 1 whatever the pilots)
    wall = max(float(info["wall_seconds"]), 1e-9)
    cpu_pilots = cpu_umb * float(info["plan_seconds"]) / wall
    cpu_production = cpu_umb * (float(info["md_seconds"]) - float(info["plan_seconds"])) / wall
    umb_steps = int(np.sum((args.frames + args.equilibration) * args.stride
                           * np.asarray(info["substeps"])))
    var_u, var_p = se_u ** 2 * len(fes.chi), se_p ** 2 * n
    print(json.dumps({
        "system": "alanine_dipeptide (vacuum, Reference)", "model": str(path),
        "top_atom_0based": atom, "temperature_K": ms.temperature,
        "md_ps": args.md_ps, "md_frames": n, "md_chi_range": [float(chi_md.min()),
                                                              float(chi_md.max())],
        "md_statistical_inefficiency_frames": g,
        "umbrella_windows": len(fes.z), "umbrella_frames": len(fes.chi),
        "umbrella_substeps_max": int(np.max(info["substeps"])),
        "certified": info["certified"], "note": info["note"],
        "window_overlap_min": info["window_overlap_min"],
        "F_max_dev_kT": float(np.abs(dev[both]).max()) if both.any() else None,
        "F_compared_chi_range": [float(centres[both].min()), float(centres[both].max())]
        if both.any() else None, "F_bins_compared": int(both.sum()),
        "F_median_err_kT": float(np.nanmedian(f_err[both])) if both.any() else None,
        "grad_sq_umbrella_nm-2": float(umb.per_atom[atom]), "se_umbrella": se_u,
        "grad_sq_plain_nm-2": float(plain.per_atom[atom]), "se_plain": se_p,
        "se_umbrella_bootstrap": se_u_boot, "se_umbrella_segments": se_u_seg,
        "se_plain_bootstrap": se_p_boot, "se_plain_segments": se_p_seg,
        "umbrella_block_frames": int(umb.block),
        "umbrella_segments_top_atom": [float(v) for v in umb.segment_per_atom[:, atom]],
        "cpu_min_umbrella": cpu_umb, "cpu_min_plain": cpu_plain,
        "se_sqrt_cpu_min_umbrella": norm_u, "se_sqrt_cpu_min_plain": norm_p,
        "cost_normalised_se_ratio_plain_over_umbrella": norm_p / norm_u,
        "cpu_min_umbrella_pilots": cpu_pilots, "cpu_min_umbrella_production": cpu_production,
        "cost_normalised_se_ratio_production_only":
            norm_p / (se_u * np.sqrt(max(cpu_production, 1e-12))),
        "cpu_ms_per_step_plain": cpu_plain_md * 6e4 / ((n + 50) * args.md_stride),
        "cpu_ms_per_step_umbrella_production": cpu_production * 6e4 / max(umb_steps, 1),
        "se2_times_frames_umbrella": var_u, "se2_times_frames_plain": var_p,
        "per_frame_variance_ratio_plain_over_umbrella": var_p / var_u,
        "levelset_z": z_mid, "levelset_halfwidth": args.slab,
        "levelset_frames_umbrella": int(ls_used[k_mid]), "levelset_frames_plain": int(slab.sum()),
        "levelset_grad_sq_umbrella_nm-2": float(ls_mean[k_mid, atom]),
        "levelset_se_umbrella": float(ls_err[k_mid, atom]),
        "levelset_grad_sq_plain_nm-2": plain_ls, "levelset_se_plain": plain_ls_err,
        # whole-run CPU of each: the umbrella's windows give every level set at once
        "levelset_cost_normalised_se_ratio_plain_over_umbrella":
            (plain_ls_err * np.sqrt(cpu_plain)) / (float(ls_err[k_mid, atom]) * np.sqrt(cpu_umb))
            if plain_ls_err else None,
        "umbrella_ess": ess,
        # coverage: the windows' frames span chi_range_umbrella; the plain run's frames
        # outside it (basin bottoms, where ‖∇χ‖² is small) are missing from the reweighted
        # ensemble, so compare also the plain average over the frames inside it
        "chi_range_umbrella": [float(fes.chi.min()), float(fes.chi.max())],
        "plain_fraction_outside_umbrella_range": float(np.mean(outside)),
        "grad_sq_plain_inside_umbrella_range_nm-2": inner}), flush=True)


if __name__ == "__main__":
    main()
