"""Ensemble and level-set χ-sensitivities with weights, bootstrap errors and minimum counts."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import atomic_path
from ..settings import SensitivitySettings
from .gradients import atom_labels, chi_gradients, featurized_mask

__all__ = ["Sensitivity", "chi_sensitivity", "DEFAULT_MIN_COUNT"]

#: default minimum number of samples for a χ bin to get a level-set value
DEFAULT_MIN_COUNT = 10


@dataclass
class Sensitivity:
    """Per-atom χ-sensitivities of an ensemble, with bootstrap errors.

    Attributes (values in nm⁻²; atom indices 0-based, OpenMM order):
        per_atom: (n,) weighted ensemble mean ⟨‖∇ᵢχ‖²⟩_ρ; NaN for atoms χ does not featurize.
        levelset: (n, bins) ⟨‖∇ᵢχ‖²⟩_z per χ bin; NaN where the bin holds fewer than
            ``min_count`` samples ("empty") and for atoms χ does not featurize.
        counts: (bins,) samples (of non-zero weight) per bin.
        bin_edges: (bins + 1,) χ bin edges (values outside the range fall into the end bins).
        labels: n atom labels.
        n_samples: samples averaged (weight > 0).
        chi_min, chi_max: range of χ over those samples.
        per_atom_err: (n,) bootstrap standard error of ``per_atom`` (NaN without bootstrap).
        levelset_err: (n, bins) bootstrap standard error of ``levelset``.
        boot_per_atom: (R, n) ``per_atom`` of each bootstrap resample (for rank statistics).
        featurized: (n,) bool, atoms whose gradient can be non-zero.
        min_count: the minimum count per bin used.
        block: bootstrap block length (1: independent samples).
        segment_per_atom: (S, n) ``per_atom`` of S consecutive time segments when the error
            is also a batch-means error (reweighted windows); None otherwise.
        fits: χ fits averaged (:func:`~amore_openmm.sensitivity.combine_fits`); 1: one χ.
    """

    per_atom: np.ndarray
    levelset: np.ndarray
    counts: np.ndarray
    bin_edges: np.ndarray
    labels: list[str] = field(default_factory=list)
    n_samples: int = 0
    chi_min: float = float("nan")
    chi_max: float = float("nan")
    per_atom_err: np.ndarray | None = None
    levelset_err: np.ndarray | None = None
    boot_per_atom: np.ndarray | None = None
    featurized: np.ndarray | None = None
    min_count: int = 1
    block: int = 1
    segment_per_atom: np.ndarray | None = None
    fits: int = 1

    def __post_init__(self) -> None:
        n = len(self.per_atom)
        if self.featurized is None:
            self.featurized = np.isfinite(self.per_atom)
        if self.per_atom_err is None:
            self.per_atom_err = np.full(n, np.nan)
        if self.levelset_err is None:
            self.levelset_err = np.full_like(np.asarray(self.levelset, dtype=float), np.nan)
        if self.boot_per_atom is None:
            self.boot_per_atom = np.zeros((0, n))

    @property
    def n_atoms(self) -> int:
        return len(self.per_atom)

    @property
    def bin_centers(self) -> np.ndarray:
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])

    @property
    def empty_bins(self) -> np.ndarray:
        """Boolean (bins,) mask of bins with fewer than ``min_count`` samples (no value)."""
        return self.counts < max(int(self.min_count), 1)

    @property
    def ranking(self) -> np.ndarray:
        """Atom indices (0-based) by decreasing ⟨‖∇ᵢχ‖²⟩_ρ; atoms not featurized last."""
        key = np.where(np.isfinite(self.per_atom), -self.per_atom, np.inf)
        return np.argsort(key, kind="stable")

    @property
    def fraction(self) -> np.ndarray:
        """per_atom normalised to sum 1 over featurized atoms (NaN for the others)."""
        total = np.nansum(self.per_atom)
        return self.per_atom / total if total > 0 else self.per_atom.copy()

    def bin_index(self, chi: Any) -> np.ndarray:
        """Bin of each χ value (out-of-range values go to the end bins)."""
        idx = np.searchsorted(self.bin_edges, np.asarray(chi, dtype=float), side="right") - 1
        return np.clip(idx, 0, len(self.counts) - 1)

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most sensitive featurized atoms as (0-based index, label, value)."""
        order = [i for i in self.ranking if np.isfinite(self.per_atom[i])][:k]
        return [(int(i), self.labels[i] if self.labels else f"atom{i}",
                 float(self.per_atom[i])) for i in order]

    def top_frequency(self, k: int = 5) -> np.ndarray:
        """(n,) fraction of bootstrap resamples in which each atom is among the top ``k``.

        NaN for atoms χ does not featurize, and for all atoms without bootstrap resamples.
        """
        boot = np.asarray(self.boot_per_atom, dtype=float)
        out = np.full(self.n_atoms, np.nan)
        if boot.shape[0] == 0:
            return out
        key = np.where(np.isfinite(boot), -boot, np.inf)
        top = np.argsort(key, axis=1, kind="stable")[:, :int(k)]
        hits = np.bincount(top.ravel(), minlength=self.n_atoms) / boot.shape[0]
        out[self.featurized] = hits[self.featurized]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``.npz`` (atomic write)."""
        from ..data import atomic_save_npz
        return atomic_save_npz(path, per_atom=self.per_atom, levelset=self.levelset,
                               counts=self.counts, bin_edges=self.bin_edges,
                               labels=np.asarray(self.labels, dtype=str),
                               n_samples=self.n_samples, chi_min=self.chi_min,
                               chi_max=self.chi_max, per_atom_err=self.per_atom_err,
                               levelset_err=self.levelset_err,
                               boot_per_atom=self.boot_per_atom, featurized=self.featurized,
                               min_count=self.min_count, block=self.block, fits=self.fits,
                               **({} if self.segment_per_atom is None else
                                  {"segment_per_atom": self.segment_per_atom}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Sensitivity":
        """Load a file written by :meth:`save` (older files: no errors, min_count 1)."""
        with np.load(path) as z:
            opt = {k: z[k] for k in ("per_atom_err", "levelset_err", "boot_per_atom",
                                     "featurized", "segment_per_atom") if k in z.files}
            ints = {k: int(z[k]) for k in ("min_count", "block", "fits") if k in z.files}
            return cls(per_atom=z["per_atom"], levelset=z["levelset"], counts=z["counts"],
                       bin_edges=z["bin_edges"], labels=[str(s) for s in z["labels"]],
                       n_samples=int(z["n_samples"]), chi_min=float(z["chi_min"]),
                       chi_max=float(z["chi_max"]), **opt, **ints)

    def write_ranking_csv(self, path: str | os.PathLike, k: int = 5,
                          atoms: Any = None) -> Path:
        """The atoms CSV (atomic write), ranked by ⟨‖∇ᵢχ‖²⟩_ρ.

        Columns: rank, atom_index_0based, atom_index_1based, label, mean_grad_sq_nm-2,
        stderr_nm-2 (bootstrap), fraction (of the total over featurized atoms),
        top{k}_frequency (share of bootstrap resamples with the atom in the top ``k``),
        status. Atoms χ does not featurize come last with an empty rank, "nan" values and
        status "not featurized". ``atoms`` (0-based indices, e.g. the system's selection)
        limits the rows to those atoms (the solvent of a water box is left out).
        """
        frac, freq = self.fraction, self.top_frequency(k)
        listed = None if atoms is None else set(np.asarray(atoms, dtype=np.int64).tolist())
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["rank", "atom_index_0based", "atom_index_1based", "label",
                        "mean_grad_sq_nm-2", "stderr_nm-2", "fraction", f"top{k}_frequency",
                        "status"])
            for r, i in enumerate(self.ranking, start=1):
                if listed is not None and int(i) not in listed:
                    continue
                ok = bool(self.featurized[i])
                w.writerow([r if ok else "", int(i), int(i) + 1,
                            self.labels[i] if self.labels else f"atom{i}",
                            f"{self.per_atom[i]:.6g}", f"{self.per_atom_err[i]:.3g}",
                            f"{frac[i]:.6g}", f"{freq[i]:.3g}",
                            "featurized" if ok else "not featurized"])
        return Path(path)


def _check_weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per sample ({n}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be finite, >= 0 and not all 0 (0 drops a sample)")
    return w


def _bin_matrix(idx: np.ndarray, bins: int):
    """Sparse (bins, B) one-hot matrix: row k sums the samples of bin k."""
    from scipy import sparse
    return sparse.csr_matrix((np.ones(len(idx)), (idx, np.arange(len(idx)))),
                             shape=(bins, len(idx)))


def _binned_means(onehot: Any, w: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """(bins, n) weighted means per bin (NaN where a bin has no weight)."""
    wsum = onehot @ w
    sums = onehot @ (w[:, None] * g2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / wsum[:, None]


def _bootstrap(onehot: Any, w: np.ndarray, g2: np.ndarray, n_boot: int, block: int,
               seed: int, resample: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap of the weighted means: (R, n) per-atom means of the R resamples and the
    (bins, n) standard deviation of the level-set means over the resamples (Welford, bins
    empty in a resample skipped).

    Moving-block bootstrap: ``block`` consecutive samples are drawn together (1: ordinary
    bootstrap), which keeps the correlation of trajectory frames inside each block.
    ``resample``: (R, B) weights of given resamples instead (e.g. MBAR re-solved per
    resample, :func:`~amore_openmm.biased.mbar.bootstrap_weights`).
    """
    rng = np.random.default_rng(seed)
    b, n = g2.shape
    block = max(1, min(int(block), b))
    n_blocks = -(-b // block)
    if resample is not None:
        n_boot = len(resample)
    per_atom = np.empty((n_boot, n))
    count = np.zeros((onehot.shape[0], n))
    mean = np.zeros((onehot.shape[0], n))
    m2 = np.zeros((onehot.shape[0], n))
    for r in range(n_boot):
        if resample is not None:
            mult = resample[r]
        else:
            starts = rng.integers(0, b - block + 1, size=n_blocks)
            pick = (starts[:, None] + np.arange(block)).ravel()[:b]
            mult = np.bincount(pick, minlength=b) * w
        per_atom[r] = mult @ g2 / mult.sum() if mult.sum() > 0 else np.nan
        level = _binned_means(onehot, mult, g2)
        ok = np.isfinite(level)
        count += ok
        delta = np.where(ok, level - mean, 0.0)
        mean += np.divide(delta, count, out=np.zeros_like(delta), where=count > 0)
        m2 += np.where(ok, delta * (level - mean), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        level_std = np.where(count > 1, np.sqrt(m2 / (count - 1)), np.nan)
    return per_atom, level_std


def chi_sensitivity(model: Any, positions: Any, bins: int = SensitivitySettings().bins,
                    labels: Any = None,
                    chi_range: tuple[float, float] = (0.0, 1.0), batch_size: int = 4096,
                    *, weights: Any = None, bootstrap: int = 200,
                    min_count: int = DEFAULT_MIN_COUNT, block: int = 1,
                    seed: int = 0, resample_weights: Any = None,
                    gradients: Any = None) -> Sensitivity:
    """Ensemble and level-set χ-sensitivities ⟨‖∇ᵢχ‖²⟩_ρ and ⟨‖∇ᵢχ‖²⟩_z with error bars.

    Args:
        model: a ChiModel or any torch module (B, n, 3) nm → χ (B,).
        positions: samples (B, n, 3) nm, e.g. ``KoopmanData.x`` of an unbiased trajectory.
        bins: number of χ bins for the level-set matrix (100 in the paper).
        labels: atom labels: a MolecularSystem, a Topology, or a list of n strings.
        chi_range: χ range divided into ``bins`` equal bins; samples outside it are counted in
            the end bins (χ is not clamped and may stray slightly beyond [0, 1]).
        batch_size: frames per autograd call.
        weights: (B,) non-negative sample weights (e.g. ``KoopmanData.weights``, or
            reweighting factors); 0 drops a sample; default all 1 (the samples are taken as
            a Boltzmann ensemble, which adaptive starts from path nodes are not).
        bootstrap: number of bootstrap resamples for the standard errors and the top-k
            frequencies (0: none, errors NaN).
        min_count: bins with fewer samples get no level-set value (NaN, "empty").
        block: block length of the moving-block bootstrap (use the decorrelation time in
            frames for trajectory data; 1: independent samples).
        seed: seed of the resampling.
        resample_weights: (R, B) weights of R given resamples (0: a sample not drawn) that
            replace the moving-block bootstrap (``bootstrap`` and ``block`` are then unused),
            e.g. :func:`~amore_openmm.biased.mbar.bootstrap_weights`.
        gradients: (χ (B,), ∇χ (B, n, 3)) of ``positions`` already computed
            (:func:`chi_gradients`), so callers that need them too autograd once.

    Atoms the model does not featurize (``model.featurized_atoms``) are NaN in ``per_atom``,
    ``levelset`` and their errors, never 0.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if int(bootstrap) < 0 or int(min_count) < 1 or int(block) < 1:
        raise ValueError(f"bootstrap must be >= 0, min_count >= 1 and block >= 1; got "
                         f"{bootstrap}, {min_count}, {block}")
    lo, hi = float(chi_range[0]), float(chi_range[1])
    if not hi > lo:
        raise ValueError(f"chi_range must be (low, high) with high > low, got {chi_range}")
    chi, grad = (chi_gradients(model, positions, batch_size) if gradients is None
                 else (np.asarray(gradients[0]), np.asarray(gradients[1])))
    if grad.shape[0] != len(chi) or len(chi) != len(positions):
        raise ValueError(f"gradients must be (χ ({len(positions)},), ∇χ ({len(positions)}, n, "
                         f"3)), got shapes {chi.shape} and {grad.shape}")
    w = _check_weights(weights, len(chi))
    keep = w > 0
    chi, w = chi[keep], w[keep]
    resample = None
    if resample_weights is not None:
        resample = np.asarray(resample_weights, dtype=float)
        if resample.ndim != 2 or resample.shape[1] != len(keep) or np.any(resample < 0):
            raise ValueError(f"resample_weights must be a non-negative (R, {len(keep)}) "
                             f"array, got shape {resample.shape}")
        resample = resample[:, keep]
    g2 = np.einsum("bij,bij->bi", grad, grad)[keep]                  # (B, n) ‖∇ᵢχ‖²
    n, nb = g2.shape[1], int(bins)
    feat = featurized_mask(model, n)
    edges = np.linspace(lo, hi, nb + 1)
    idx = np.clip(np.searchsorted(edges, chi, side="right") - 1, 0, nb - 1)
    counts = np.bincount(idx, minlength=nb)
    onehot = _bin_matrix(idx, nb)
    levelset = _binned_means(onehot, w, g2)                         # (bins, n)
    per_atom = w @ g2 / w.sum()
    boot, lerr = _bootstrap(onehot, w, g2, int(bootstrap), block, seed, resample)
    err = boot.std(axis=0, ddof=1) if len(boot) > 1 else np.full(n, np.nan)
    sparse = counts < int(min_count)
    levelset[sparse] = np.nan
    lerr[sparse] = np.nan
    for arr in (per_atom, err):
        arr[~feat] = np.nan
    boot[:, ~feat] = np.nan
    levelset[:, ~feat] = np.nan
    lerr[:, ~feat] = np.nan
    return Sensitivity(per_atom=per_atom, levelset=levelset.T, counts=counts, bin_edges=edges,
                       labels=atom_labels(labels, n), n_samples=len(chi),
                       chi_min=float(chi.min()), chi_max=float(chi.max()),
                       per_atom_err=err, levelset_err=lerr.T, boot_per_atom=boot,
                       featurized=feat, min_count=int(min_count), block=int(block))
