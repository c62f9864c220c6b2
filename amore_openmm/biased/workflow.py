"""One call for a run directory's χ and system: umbrella windows → F(χ) files + ΔF‡."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import atomic_write_text
from .mbar import ChiFreeEnergy, fit_mbar
from .umbrella import UmbrellaSampler

__all__ = ["umbrella_free_energy", "neighbour_overlap", "MIN_OVERLAP"]

#: the windows done so far, while the umbrella MD runs: an interrupted call with the same
#: arguments and ``out_dir`` continues from it
PARTIAL = "umbrella_partial.npz"

#: least overlap of the χ histograms of neighbouring windows for a certified profile: MBAR
#: joins windows only through the samples they share; below this a window's F is joined to
#: its neighbour's by a handful of frames (or none), and the barrier is not determined
MIN_OVERLAP = 0.03


def neighbour_overlap(chi: Any, window: Any, n_windows: int, bins: int = 100) -> np.ndarray:
    """Overlap Σ min(pₖ, pₖ₊₁) of the χ histograms of neighbouring windows, (K−1,), in [0, 1]."""
    chi, window = np.asarray(chi, dtype=float), np.asarray(window)
    edges = np.linspace(min(0.0, chi.min()), max(1.0, chi.max()), bins + 1)
    hist = np.array([np.histogram(chi[window == k], edges)[0] for k in range(n_windows)],
                    dtype=float)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    return np.minimum(hist[:-1], hist[1:]).sum(axis=1)


def umbrella_free_energy(system: Any, model: Any, out_dir: str | os.PathLike,
                         windows: int | Any = 21, kappa: Any = "auto", frames: int = 1000,
                         stride: int | None = None, equilibration: int = 100, bins: int = 50,
                         bootstrap: int = 100, seed: int = 0, platform: str = "Reference",
                         backend: str = "auto", progress: bool = False) -> ChiFreeEnergy:
    """Umbrella windows along χ, MBAR, and the files of ``out_dir``:
    ``umbrella_samples.npz``, ``fes.npz``, ``fes.csv`` (F(χ) in kT and kJ/mol with errors),
    ``fes.png`` and ``fes.json`` (ΔF‡ with error, effective sample size, wall seconds, and
    ``certified``: ΔF‡ is finite and every pair of neighbouring windows overlaps by at least
    :data:`MIN_OVERLAP`; a χ flat in the basins and steep at the saddle, as ISOKANN's, can
    leave windows apart: give more windows or a per-window ``kappa``).

    ``windows``: a count (equally spaced on [0, 1]) or the centres. Other arguments: see
    :class:`UmbrellaSampler`, :meth:`UmbrellaSampler.run` and :func:`fit_mbar`.
    """
    z = np.linspace(0.0, 1.0, int(windows)) if np.ndim(windows) == 0 else windows
    if np.ndim(windows) == 0 and int(windows) < 2:
        raise ValueError(f"windows must be >= 2 (or a list of centres), got {windows}")
    out = Path(out_dir)
    t0 = time.perf_counter()
    sampler = UmbrellaSampler(system, model, z, kappa=kappa, platform=platform,
                              backend=backend)
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
    overlap = neighbour_overlap(samples.chi, samples.window, len(samples.z))
    barrier = fes.barrier(bins, (0.0, 1.0))
    finite = all(np.isfinite(barrier[k]) for k in ("barrier_kT", "barrier_err_kT"))
    summary = {**barrier, "certified": bool(finite and overlap.min() >= MIN_OVERLAP),
               "window_overlap_min": float(overlap.min()),
               "window_overlap": overlap.tolist(), "effective_sample_size":
               fes.effective_sample_size, "n_samples": samples.n_samples,
               "windows": samples.z.tolist(), "kappa_kJ_mol": samples.kappa.tolist(),
               "frames_per_window": int(frames), "stride": samples.stride,
               "block": fes.block, "md_seconds": t_md,
               "wall_seconds": time.perf_counter() - t0}
    atomic_write_text(out / "fes.json", json.dumps(summary, indent=2))
    return fes
