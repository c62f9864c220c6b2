"""χ-sensitivities averaged over several χ fits (training seeds) of the same data.

ISOKANN's χ is a random function of its training seed: on alanine dipeptide (2,000 starts,
600 iterations) four fits of k = 1 share only 2–4 of their top-5 atoms, and the bootstrap over
frames cannot see that (all fits use the same frames). The mean over fits carries an error
that adds the fit-to-fit spread to the frame error, so a tie at the edge of the top k shows
as one (``benchmarks/multichi.py --only ala --fits 4`` compares k = 1 and k = 2 this way).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .ensemble import Sensitivity, chi_sensitivity

__all__ = ["combine_fits", "chi_sensitivity_over_fits"]


def _mean_and_error(values: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over fits (axis 0) and its error: the fit-to-fit variance of the mean plus the
    frames' variance, which is common to all fits (the same frames) and does not average
    down; fits without a bootstrap error contribute only the spread."""
    m, ok = len(values), np.isfinite(errors)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = values.var(axis=0, ddof=1) / m
        frames = np.where(ok, errors ** 2, 0.0).sum(axis=0) / ok.sum(axis=0)
    return values.mean(axis=0), np.sqrt(spread + np.nan_to_num(frames))


def combine_fits(fits: Sequence[Sensitivity], seed: int = 0) -> Sensitivity:
    """One :class:`Sensitivity` from those of several χ fits on the same frames.

    ``per_atom`` and ``levelset`` are the means over fits; their errors add the fit-to-fit
    variance of the mean to the mean bootstrap variance. ``boot_per_atom`` (top-k
    frequencies) resamples the fits as well: resample r averages the r-th resamples of M
    fits drawn with replacement. ``counts`` is the smallest count of each bin over fits (each
    fit bins its own χ), so a bin is "empty" when it is for any fit. ``fits`` records M.
    """
    fits = list(fits)
    if not fits:
        raise ValueError("combine_fits needs at least one Sensitivity")
    if len(fits) == 1:
        return fits[0]
    first = fits[0]
    if any(f.n_atoms != first.n_atoms or f.levelset.shape != first.levelset.shape
           for f in fits):
        raise ValueError("combine_fits: the sensitivities differ in atoms or χ bins; give "
                         "fits of one system with the same bins")
    per_atom, err = _mean_and_error(np.array([f.per_atom for f in fits]),
                                    np.array([f.per_atom_err for f in fits]))
    level, level_err = _mean_and_error(np.array([f.levelset for f in fits]),
                                       np.array([f.levelset_err for f in fits]))
    counts = np.min([f.counts for f in fits], axis=0)
    level[:, counts < first.min_count] = np.nan
    level_err[:, counts < first.min_count] = np.nan
    n_boot = min(len(f.boot_per_atom) for f in fits)
    rng = np.random.default_rng(seed)
    boot = np.array([np.mean([fits[j].boot_per_atom[r]
                              for j in rng.integers(0, len(fits), len(fits))], axis=0)
                     for r in range(n_boot)]).reshape(n_boot, first.n_atoms)
    featurized = np.logical_and.reduce([f.featurized for f in fits])
    return Sensitivity(per_atom=per_atom, levelset=level, counts=counts,
                       bin_edges=first.bin_edges.copy(), labels=list(first.labels),
                       n_samples=first.n_samples, chi_min=min(f.chi_min for f in fits),
                       chi_max=max(f.chi_max for f in fits), per_atom_err=err,
                       levelset_err=level_err, boot_per_atom=boot, featurized=featurized,
                       min_count=first.min_count, block=first.block, fits=len(fits))


def chi_sensitivity_over_fits(models: Sequence[Any], positions: Any, seed: int = 0,
                              **kwargs: Any) -> Sensitivity:
    """:func:`~amore_openmm.sensitivity.chi_sensitivity` of each χ in ``models`` (fits of the
    same data with different seeds) on the same ``positions`` and bootstrap resamples,
    combined by :func:`combine_fits`. ``kwargs``: those of ``chi_sensitivity``."""
    models = list(models)
    if not models:
        raise ValueError("chi_sensitivity_over_fits needs at least one χ model")
    return combine_fits([chi_sensitivity(m, positions, seed=seed, **kwargs) for m in models],
                        seed=seed)
