"""MBAR reweighting of umbrella windows along χ: :func:`fit_mbar` → :class:`ChiFreeEnergy`.

All windows share the physical potential and temperature, so the reduced potential of frame
n in window k differs from the unbiased one only by the bias b_k(χ_n) = 0.5·κ_k·(χ_n−z_k)²/kT.
pymbar solves the window free energies f_k; the unbiased weight of frame n is then
w_n ∝ 1 / Σ_k N_k exp(f_k − b_k(χ_n)). F(χ) is the histogram of χ with these weights;
errors come from a block bootstrap over frames within each window, MBAR re-solved each time.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from ..data import atomic_path, atomic_save_npz
from .umbrella import UmbrellaSamples

__all__ = ["fit_mbar", "ChiFreeEnergy", "statistical_inefficiency", "barrier_height",
           "bootstrap_weights", "segment_weights", "SEGMENTS"]


#: consecutive time segments of the batch-means errors (:func:`segment_weights`)
SEGMENTS = 4


def _pymbar() -> Any:
    # pymbar prints a banner about JAX on import; keep stdout clean for JSON output
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import pymbar
    return pymbar


def statistical_inefficiency(samples: UmbrellaSamples, values: Any = None) -> float:
    """Largest statistical inefficiency g (frames) over the windows (pymbar.timeseries) of
    χ, or of ``values`` ((N,) one number per frame, e.g. an observable to be reweighted:
    inside a window χ is held, and a coordinate orthogonal to it can decorrelate slower)."""
    ts = _pymbar().timeseries
    series = samples.chi if values is None else np.asarray(values, dtype=float)
    if series.shape != samples.chi.shape:
        raise ValueError(f"values must have one number per frame ({samples.n_samples}), "
                         f"got shape {series.shape}")
    g = 1.0
    for k in range(samples.n_windows):
        c = series[samples.window == k]
        if len(c) > 4 and np.ptp(c) > 0:
            g = max(g, float(ts.statistical_inefficiency(c)))
    return g


def _log_weights(bias: np.ndarray, n_k: np.ndarray, f_k: np.ndarray) -> np.ndarray:
    """Normalised log unbiased weights of the frames (MBAR's mixture denominator)."""
    with np.errstate(divide="ignore"):
        log_n = np.log(n_k.astype(float))
    logw = -logsumexp(log_n[:, None] + f_k[:, None] - bias, axis=0)
    return logw - logsumexp(logw)


def _solve(bias: np.ndarray, n_k: np.ndarray, f0: np.ndarray | None = None) -> np.ndarray:
    pymbar = _pymbar()
    with contextlib.redirect_stdout(io.StringIO()):
        m = pymbar.MBAR(bias, n_k, initial_f_k=f0, verbose=False)
    return np.asarray(m.f_k, dtype=float)


def _block_resample(window: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity (N,) of each frame in one moving-block bootstrap within every window."""
    mult = np.zeros(len(window), dtype=np.int64)
    for k in np.unique(window):
        idx = np.flatnonzero(window == k)
        b = max(1, min(block, len(idx)))
        starts = rng.integers(0, len(idx) - b + 1, size=-(-len(idx) // b))
        pick = (starts[:, None] + np.arange(b)).ravel()[:len(idx)]
        mult[idx] += np.bincount(pick, minlength=len(idx))
    return mult


def fit_mbar(samples: UmbrellaSamples, bootstrap: int = 100, block: int | str = "auto",
             seed: int = 0) -> "ChiFreeEnergy":
    """Unbiased weights and F(χ) from umbrella windows by MBAR (pymbar 4).

    Args:
        samples: the windows (:meth:`UmbrellaSampler.run`).
        bootstrap: resamples for the error bars (0: none).
        block: bootstrap block length in frames; "auto" uses the statistical inefficiency
            of χ (:func:`statistical_inefficiency`).
        seed: seed of the resampling.
    """
    if not isinstance(samples, UmbrellaSamples):
        raise ValueError(f"samples must be UmbrellaSamples (UmbrellaSampler.run), got "
                         f"{type(samples).__name__}")
    if int(bootstrap) < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if block == "auto":
        block = int(np.ceil(statistical_inefficiency(samples)))
    elif not (isinstance(block, (int, np.integer)) and block >= 1):
        raise ValueError(f"block must be an integer >= 1 or 'auto', got {block!r}")
    bias = samples.bias_kT()
    n_k = samples.counts
    f_k = _solve(bias, n_k)
    logw = _log_weights(bias, n_k, f_k)
    boot = bootstrap_weights(samples, bootstrap, int(block), seed, f_k)
    return ChiFreeEnergy(chi=samples.chi.copy(), window=samples.window.copy(),
                         weights=np.exp(logw), f_k=f_k, z=samples.z.copy(),
                         kappa=samples.kappa.copy(), kT=samples.kT, boot_weights=boot,
                         block=int(block), samples=samples)


def bootstrap_weights(samples: UmbrellaSamples, n: int, block: int, seed: int = 0,
                      f_k: np.ndarray | None = None) -> np.ndarray:
    """(n, N) unbiased weights of n block-bootstrap resamples (``block`` frames drawn
    together within each window), MBAR re-solved for each, so the error of the window free
    energies enters every reweighted average; 0 for frames a resample did not draw."""
    bias, n_k = samples.bias_kT(), samples.counts
    f_k = _solve(bias, n_k) if f_k is None else f_k
    rng = np.random.default_rng(seed)
    boot = np.zeros((int(n), samples.n_samples))
    for r in range(int(n)):
        mult = _block_resample(samples.window, int(block), rng)
        keep = mult > 0
        fr = _solve(np.repeat(bias[:, keep], mult[keep], axis=1), n_k, f_k)
        lw = _log_weights(bias, n_k, fr)
        w = np.exp(lw - lw.max()) * mult
        boot[r] = w / w.sum()
    return boot


def segment_weights(samples: UmbrellaSamples, segments: int) -> np.ndarray:
    """(segments, N) unbiased weights from consecutive time segments: segment q holds the
    q-th 1/``segments`` of every window's frames, MBAR solved on it alone (0 elsewhere).
    Their spread is a batch-means error that also sees what a bootstrap within windows
    cannot: windows still drifting, or a mode slower than the block."""
    if int(segments) < 2:
        raise ValueError(f"segments must be >= 2, got {segments}")
    bias = samples.bias_kT()
    rank = np.zeros(samples.n_samples)
    for k in range(samples.n_windows):
        idx = np.flatnonzero(samples.window == k)
        rank[idx] = np.arange(len(idx)) / max(len(idx), 1)
    part = np.minimum((rank * int(segments)).astype(int), int(segments) - 1)
    out = np.zeros((int(segments), samples.n_samples))
    for q in range(int(segments)):
        sel = part == q
        n_k = np.bincount(samples.window[sel], minlength=samples.n_windows)
        out[q, sel] = np.exp(_log_weights(bias[:, sel], n_k, _solve(bias[:, sel], n_k)))
    return out


def barrier_height(centers: np.ndarray, f: np.ndarray, split: float = 0.5,
                   reference: str = "left") -> float:
    """ΔF‡ of a profile F (same units out): the maximum of F between the minima on either
    side of ``split`` minus the ``reference`` minimum ("left", "right" or "lower")."""
    centers, f = np.asarray(centers, dtype=float), np.asarray(f, dtype=float)
    ok = np.isfinite(f)
    left, right = ok & (centers < split), ok & (centers >= split)
    if not left.any() or not right.any():
        return float("nan")
    il = np.flatnonzero(left)[np.argmin(f[left])]
    ir = np.flatnonzero(right)[np.argmin(f[right])]
    top = np.max(np.where(ok[il:ir + 1], f[il:ir + 1], -np.inf))
    base = {"left": f[il], "right": f[ir], "lower": min(f[il], f[ir])}[reference]
    return float(top - base)


@dataclass
class ChiFreeEnergy:
    """F(χ) from MBAR-reweighted umbrella windows.

    Attributes:
        chi: (N,) χ of the frames. window: (N,) their window.
        weights: (N,) unbiased Boltzmann weights (sum 1).
        f_k: (K,) reduced window free energies (kT, f_0 = 0).
        z, kappa: the windows' centres and stiffnesses (kJ/mol). kT: kJ/mol.
        boot_weights: (R, N) weights of each bootstrap resample (0 for frames not drawn).
        block: bootstrap block length (frames).
        samples: the :class:`UmbrellaSamples` (positions for starts and sensitivities);
            not saved by :meth:`save`.
    """

    chi: np.ndarray
    window: np.ndarray
    weights: np.ndarray
    f_k: np.ndarray
    z: np.ndarray
    kappa: np.ndarray
    kT: float
    boot_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    block: int = 1
    samples: UmbrellaSamples | None = None

    @property
    def effective_sample_size(self) -> float:
        """Kish effective sample size (Σw)²/Σw² of the unbiased weights."""
        w = self.weights
        return float(w.sum() ** 2 / (w * w).sum())

    def _edges(self, bins: Any, chi_range: tuple[float, float] | None) -> np.ndarray:
        if np.ndim(bins) == 1:
            return np.asarray(bins, dtype=float)
        if int(bins) < 2:
            raise ValueError(f"bins must be >= 2 or an array of edges, got {bins}")
        lo, hi = chi_range if chi_range is not None else (self.chi.min(), self.chi.max())
        return np.linspace(float(lo), float(hi), int(bins) + 1)

    @staticmethod
    def _free(w: np.ndarray, chi: np.ndarray, edges: np.ndarray) -> np.ndarray:
        p, _ = np.histogram(chi, edges, weights=w)
        with np.errstate(divide="ignore"):
            f = -np.log(p / np.diff(edges))
        return f - np.min(f[np.isfinite(f)]) if np.any(np.isfinite(f)) else f

    def profile(self, bins: Any = 50, chi_range: tuple[float, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centres, F in kT with min 0, bootstrap std error in kT) of ``bins`` χ bins (or
        explicit edges) over ``chi_range`` (default: the sampled range). Empty bins: inf."""
        edges = self._edges(bins, chi_range)
        f = self._free(self.weights, self.chi, edges)
        err = np.full(len(f), np.nan)
        if len(self.boot_weights) > 1:
            fb = np.array([self._free(w, self.chi, edges) for w in self.boot_weights])
            # align each resample with the estimate over the commonly populated bins
            ok = np.isfinite(f) & np.all(np.isfinite(fb), axis=0)
            if ok.any():
                fb = fb - (fb[:, ok] - f[ok]).mean(axis=1, keepdims=True)
                err[ok] = fb[:, ok].std(axis=0, ddof=1)
        return 0.5 * (edges[1:] + edges[:-1]), f, err

    def barrier(self, bins: Any = 50, chi_range: tuple[float, float] = (0.0, 1.0),
                split: float = 0.5, reference: str = "left",
                segments: int = SEGMENTS) -> dict[str, float]:
        """ΔF‡: the maximum of F(χ) between the basin minima on either side of ``split``
        minus the reference basin's minimum ("left": the reactant, χ < split; "right";
        "lower": the lower of the two). Returns kT and kJ/mol values with errors: the
        bootstrap's, or the batch-means error over ``segments`` time segments
        (:func:`segment_weights`; needs ``samples``, 0: none) where that is larger."""
        if reference not in ("left", "right", "lower"):
            raise ValueError(f"reference must be 'left', 'right' or 'lower', got {reference!r}")
        edges = self._edges(bins, chi_range)
        centers = 0.5 * (edges[1:] + edges[:-1])

        def height(w: np.ndarray) -> float:
            return barrier_height(centers, self._free(w, self.chi, edges), split, reference)

        val = height(self.weights)
        boot = np.asarray([b for b in map(height, self.boot_weights) if np.isfinite(b)])
        err = float(boot.std(ddof=1)) if len(boot) > 1 else float("nan")
        out = {"barrier_kT": val}
        if (self.samples is not None and int(segments) >= 2
                and int(self.samples.counts.min()) >= int(segments)):
            seg = np.array([height(w) for w in segment_weights(self.samples, int(segments))])
            if np.all(np.isfinite(seg)):
                err = float(np.fmax(err, seg.std(ddof=1) / np.sqrt(len(seg))))
                out["barrier_segments_kT"] = seg.tolist()
        out.update({"barrier_err_kT": err, "barrier_kJ_mol": val * self.kT,
                    "barrier_err_kJ_mol": err * self.kT})
        return out

    def write_csv(self, path: str | os.PathLike, bins: Any = 50,
                  chi_range: tuple[float, float] | None = None) -> Path:
        """F(χ) table (atomic write): chi, F_kT, F_err_kT, F_kJ_mol, F_err_kJ_mol."""
        c, f, e = self.profile(bins, chi_range)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["chi", "F_kT", "F_err_kT", "F_kJ_mol", "F_err_kJ_mol"])
            for ci, fi, ei in zip(c, f, e):
                w.writerow([f"{ci:.6g}", f"{fi:.6g}", f"{ei:.4g}", f"{fi * self.kT:.6g}",
                            f"{ei * self.kT:.4g}"])
        return Path(path)

    def plot(self, path: str | os.PathLike, bins: Any = 50,
             chi_range: tuple[float, float] | None = None, reference: Any = None) -> Path:
        """Figure of F(χ) (kT) with its ±1 s.e. band; ``reference``: optional (χ, F_kT)
        curve drawn for comparison."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        c, f, e = self.profile(bins, chi_range)
        ok = np.isfinite(f)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(c[ok], f[ok], "-", color="C0", label="MBAR")
        band = ok & np.isfinite(e)
        ax.fill_between(c[band], f[band] - e[band], f[band] + e[band], color="C0", alpha=0.3)
        if reference is not None:
            ax.plot(reference[0], reference[1], "--", color="k", label="reference")
        ax.set_xlabel("χ")
        ax.set_ylabel("F(χ) / kT")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path, suffix=Path(path).suffix) as tmp:
            fig.savefig(tmp, dpi=120)
        plt.close(fig)
        return Path(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` (atomic; the positions stay in the samples file)."""
        return atomic_save_npz(path, chi=self.chi, window=self.window, weights=self.weights,
                               f_k=self.f_k, z=self.z, kappa=self.kappa, kT=self.kT,
                               boot_weights=self.boot_weights, block=self.block)

    @classmethod
    def load(cls, path: str | os.PathLike, samples: UmbrellaSamples | None = None
             ) -> "ChiFreeEnergy":
        with np.load(path) as f:
            return cls(chi=f["chi"], window=f["window"], weights=f["weights"], f_k=f["f_k"],
                       z=f["z"], kappa=f["kappa"], kT=float(f["kT"]),
                       boot_weights=f["boot_weights"], block=int(f["block"]), samples=samples)
