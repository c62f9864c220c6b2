"""One call for a run directory's χ and system: umbrella windows → F(χ) files + ΔF‡."""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..data import MemoryBudgetError, atomic_write_text
from .analysis import write_window_sensitivities
from .mbar import ChiFreeEnergy, fit_mbar
from .adaptive import PILOT_OVERLAP, WindowPlan, pair_overlap, plan_windows
from .umbrella import STIFFNESS_LIMIT, UmbrellaSampler

__all__ = ["umbrella_free_energy", "neighbour_overlap", "certify", "MIN_OVERLAP",
           "PILOT_OVERLAP"]

#: the windows done so far, while the umbrella MD runs: an interrupted call with the same
#: arguments and ``out_dir`` continues from it
PARTIAL = "umbrella_partial.npz"

#: least overlap of the χ histograms of neighbouring windows for a certified profile: MBAR
#: joins windows only through the samples they share; below this a window's F is joined to
#: its neighbour's by a handful of frames (or none), and the barrier is not determined
MIN_OVERLAP = 0.03


def neighbour_overlap(chi: Any, window: Any, n_windows: int, bins: int = 30) -> np.ndarray:
    """Overlap Σ min(pₖ, pₖ₊₁) of the χ histograms of neighbouring windows, (K−1,), in [0, 1],
    each pair on ``bins`` bins spanning the two windows' χ (so narrow windows where χ is
    steep are resolved as well as broad ones)."""
    chi, window = np.asarray(chi, dtype=float), np.asarray(window)
    per = [chi[window == k] for k in range(n_windows)]
    return np.array([pair_overlap(per[k], per[k + 1], bins) for k in range(n_windows - 1)])


def umbrella_free_energy(system: Any, model: Any, out_dir: str | os.PathLike,
                         windows: int | str | Any = "auto", kappa: Any = "auto",
                         frames: int = 1000, stride: int | None = None,
                         equilibration: int = 100, bins: int = 50, bootstrap: int = 100,
                         seed: int = 0, platform: str = "Reference", backend: str = "auto",
                         progress: bool = False, substeps: Any = "auto",
                         max_windows: int = 64, pilot_frames: int | None = None,
                         pilot_rounds: int = 8, window_width: float | None = None
                         ) -> ChiFreeEnergy:
    """Umbrella windows along χ, MBAR, and the files of ``out_dir``:
    ``umbrella_samples.npz``, ``fes.npz``, ``fes.csv`` (F(χ) in kT and kJ/mol with errors),
    the windows' χ-sensitivities (:func:`~amore_openmm.biased.analysis.write_window_sensitivities`:
    ``reweighted_atoms.csv``, ``reweighted_sensitivity.npz``, ``window_levelsets.csv``),
    ``fes.png`` and ``fes.json`` (ΔF‡ with error, effective sample size, wall seconds, the
    window plan, and ``certified``: ΔF‡ is finite, every pair of neighbouring windows
    overlaps by at least :data:`MIN_OVERLAP` and no window's restraint was too stiff for
    its integrator step (stiffness number ≤ 2·STIFFNESS_LIMIT); ``note`` says where not).

    ``windows``: "auto" (default) designs windows and per-window κ on the F(χ) of pilot
    rounds (:func:`~amore_openmm.biased.adaptive.plan_windows`: ``max_windows``,
    ``pilot_frames`` (default frames // 10, at least 50), ``pilot_rounds``,
    ``window_width`` (a window's χ spread where F is flat; default 0.05); a numeric
    ``kappa`` is the scout round's κ) — what a trained ISOKANN χ, whose F is steep and
    concave at the basin edges, needs; a count (equally spaced on [0, 1]) or the centres
    use ``kappa`` as given.
    ``substeps``: see :class:`UmbrellaSampler` ("auto": finer steps where the restraint is
    stiff). Other arguments: :class:`UmbrellaSampler`, :meth:`UmbrellaSampler.run`,
    :func:`fit_mbar`.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    plan: WindowPlan | None = None
    if isinstance(windows, str):
        if windows != "auto":
            raise ValueError(f"windows must be 'auto', a count >= 2 or a list of centres, got "
                             f"{windows!r}")
        pf = max(50, int(frames) // 10) if pilot_frames is None else int(pilot_frames)
        plan = plan_windows(system, model, kappa=kappa, max_windows=max_windows,
                            rounds=pilot_rounds, pilot_frames=pf, stride=stride, seed=seed,
                            platform=platform, backend=backend, width=window_width)
        z, kappa = plan.z, plan.kappa
    elif np.ndim(windows) == 0:
        if int(windows) < 2:
            raise ValueError(f"windows must be >= 2 (or a list of centres, or 'auto'), got "
                             f"{windows}")
        z = np.linspace(0.0, 1.0, int(windows))
    else:
        z = windows
    t_plan = time.perf_counter() - t0
    sampler = UmbrellaSampler(system, model, z, kappa=kappa, platform=platform,
                              backend=backend, substeps=substeps,
                              min_substeps=1 if plan is None else plan.substeps)
    partial = out / PARTIAL
    samples = sampler.run(frames=frames, stride=stride, equilibration=equilibration, seed=seed,
                          progress=progress, checkpoint=partial)
    t_md = time.perf_counter() - t0
    samples.save(out / "umbrella_samples.npz")
    partial.unlink(missing_ok=True)
    fes = fit_mbar(samples, bootstrap=bootstrap, seed=seed)
    fes.save(out / "fes.npz")
    fes.write_csv(out / "fes.csv", bins, (0.0, 1.0))
    fes.plot(out / "fes.png", bins, (0.0, 1.0))
    summary = certify(samples, fes, bins)
    # the windows' χ-sensitivities: certified with (and only with) the profile; too big
    # for the memory budget they are left out (the samples are saved), not the profile
    try:
        rw = write_window_sensitivities(
            fes, sampler.model, out, labels=system, atoms=getattr(system, "selection", None),
            bootstrap=bootstrap, seed=seed)
        rw["certified"] = bool(summary.get("certified"))
        if not rw["certified"]:
            rw["note"] = ("the F(χ) profile is not certified, so neither are these weights: "
                          "not a result (see the profile's note)")
        summary["reweighted_sensitivity"] = rw
    except MemoryBudgetError as err:
        warnings.warn(str(err), RuntimeWarning, stacklevel=2)
        summary["reweighted_sensitivity"] = {"skipped": str(err)}
    summary.update({"n_samples": samples.n_samples, "windows": samples.z.tolist(),
                    "kappa_kJ_mol": samples.kappa.tolist(),
                    "substeps": np.asarray(samples.substeps).tolist(),
                    "frames_per_window": int(frames), "stride": samples.stride,
                    "block": fes.block, "plan": None if plan is None else plan.to_dict(),
                    "plan_seconds": t_plan, "md_seconds": t_md,
                    "wall_seconds": time.perf_counter() - t0})
    if plan is not None and not plan.converged:
        summary["note"] = "; ".join(x for x in (summary["note"], "pilot: " + plan.note) if x)
    atomic_write_text(out / "fes.json", json.dumps(summary, indent=2))
    return fes


def certify(samples: Any, fes: ChiFreeEnergy, bins: int = 50) -> dict[str, Any]:
    """ΔF‡ (:meth:`ChiFreeEnergy.barrier` on [0, 1]) and its certificate: ``certified`` is
    True when ΔF‡ and its error are finite, every neighbour overlap ≥ :data:`MIN_OVERLAP`,
    every one of ``bins`` χ bins between the outer windows holds frames, and every window's
    stiffness number ≤ 2·STIFFNESS_LIMIT; ``note`` says what failed."""
    overlap = neighbour_overlap(samples.chi, samples.window, len(samples.z))
    barrier = fes.barrier(bins, (0.0, 1.0))
    finite = all(np.isfinite(barrier[k]) for k in ("barrier_kT", "barrier_err_kT"))
    stiff = np.zeros(len(samples.z)) if samples.stiffness is None else \
        np.nan_to_num(np.asarray(samples.stiffness, dtype=float))
    notes = []
    low = np.flatnonzero(overlap < MIN_OVERLAP)
    if len(low):
        notes.append("windows do not overlap on " + ", ".join(
            f"[{samples.z[g]:.3f}, {samples.z[g + 1]:.3f}] ({overlap[g]:.3f})"
            for g in low[:6]))
    hard = np.flatnonzero(stiff > 2 * STIFFNESS_LIMIT)
    if len(hard):
        notes.append("restraint too stiff for the integrator step (χ too steep) at z = " +
                     ", ".join(f"{samples.z[k]:.3f} ({stiff[k]:.2f})" for k in hard[:6]))
    # every reported χ bin between the outer windows must hold frames: overlap alone misses
    # windows that never left their start (all frames where the previous window was)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    counts = np.histogram(samples.chi, edges)[0]
    inside = (edges[1:] > samples.z.min()) & (edges[:-1] < samples.z.max())
    empty = np.flatnonzero(inside & (counts == 0))
    if len(empty):
        notes.append(f"no frames with χ in {len(empty)} of the {int(inside.sum())} bins "
                     f"between the outer windows, e.g. [{edges[empty[0]]:.3f}, "
                     f"{edges[empty[0] + 1]:.3f}]")
    if not finite:
        notes.append("ΔF‡ undetermined (a basin or the barrier is not sampled)")
    return {**barrier, "certified": not notes, "note": "; ".join(notes),
            "window_overlap_min": float(overlap.min()) if len(overlap) else float("nan"),
            "window_overlap": overlap.tolist(), "stiffness_max": float(stiff.max()),
            "effective_sample_size": fes.effective_sample_size}
