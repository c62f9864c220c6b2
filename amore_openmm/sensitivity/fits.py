"""χ-sensitivities averaged over several χ fits (training seeds) of the same data.

ISOKANN's χ is a random function of its training seed: on alanine dipeptide (2,000 starts,
600 iterations) four fits of k = 1 share only 2–4 of their top-5 atoms, and the bootstrap over
frames cannot see that (all fits use the same frames). The mean over fits carries an error
that adds the fit-to-fit spread to the frame error, so a tie at the edge of the top k shows
as one (``benchmarks/multichi.py --only ala --fits 4`` compares k = 1 and k = 2 this way,
with :func:`ranking_agreement`). The training length moves the mean ranking as well, because
a long fit learns the noise of Kχ; fits that keep their lowest validation loss
(``TrainingSettings.restore_best``) do not (the numbers: :mod:`amore_openmm.isokann_validation`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .ensemble import Sensitivity, chi_sensitivity

__all__ = ["combine_fits", "chi_sensitivity_over_fits", "RankingAgreement", "ranking_agreement"]


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


@dataclass(frozen=True)
class RankingAgreement:
    """Two χ-sensitivity rankings compared with their errors (:func:`ranking_agreement`).

    Attributes:
        k: the top-k compared; ``z``: the tolerance in standard errors.
        top_a, top_b: the top-k atoms (0-based) of each.
        differing: atoms in one top k only.
        boundary_ties: for each differing atom, True when the ranking that leaves it out has
            it within ``z`` errors of its own k-th atom (a tie at the edge of the top k).
        share_z: (n,) (share_a − share_b) / its error per atom (shares: ⟨‖∇ᵢχ‖²⟩ over the
            sum over atoms, so the scale of χ cancels); NaN for atoms not featurized.
        apart: atoms of either top k whose shares differ by more than ``z`` errors (atoms
            below both top k are compared in ``share_z`` only: with ~20 atoms at z = 2 one of
            them is expected to exceed it by chance).
    """

    k: int
    z: float
    top_a: tuple[int, ...]
    top_b: tuple[int, ...]
    differing: tuple[int, ...]
    boundary_ties: tuple[bool, ...]
    share_z: np.ndarray
    apart: tuple[int, ...]

    @property
    def same_top_k(self) -> bool:
        """The two top-k sets are equal."""
        return not self.differing

    @property
    def same_within_errors(self) -> bool:
        """The top-k sets are equal up to ties at their edge, and no atom of either top k
        has shares more than ``z`` errors apart: these data cannot tell the rankings apart."""
        return all(self.boundary_ties) and not self.apart

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "z": self.z, "top_a": list(self.top_a), "top_b": list(self.top_b),
                "same_top_k": self.same_top_k, "same_within_errors": self.same_within_errors,
                "differing": {int(a): bool(t) for a, t in zip(self.differing,
                                                              self.boundary_ties)},
                "apart": list(self.apart),
                "max_abs_share_z": float(np.nanmax(np.abs(self.share_z)))
                if np.isfinite(self.share_z).any() else None}


def _shares(s: Sensitivity) -> tuple[np.ndarray, np.ndarray]:
    total = np.nansum(s.per_atom)
    if not total > 0:
        raise ValueError("ranking_agreement: a sensitivity sums to zero over its atoms")
    return s.per_atom / total, np.asarray(s.per_atom_err, dtype=float) / total


def ranking_agreement(a: Sensitivity, b: Sensitivity, k: int = 5, z: float = 2.0
                      ) -> RankingAgreement:
    """Do two χ-sensitivity rankings (two χ of the same process: k = 1 and a pair of k = 2,
    two seeds, two ensembles) agree, given their errors?

    The top-k sets may differ only by ties: an atom in ``a``'s top k but not in ``b``'s
    counts as a tie when, in ``b``, its share is within ``z`` standard errors of the share of
    ``b``'s k-th atom (and vice versa). Independently, the shares of the atoms of either top
    k are compared between the two (``apart``; every atom's in ``share_z``). Errors are the
    sensitivities' ``per_atom_err`` (bootstrap, and the fit-to-fit spread for
    :func:`combine_fits`); without errors only equal sets agree."""
    if a.n_atoms != b.n_atoms:
        raise ValueError(f"ranking_agreement: {a.n_atoms} atoms against {b.n_atoms}; compare "
                         "sensitivities of one system")
    if int(k) < 1:
        raise ValueError(f"ranking_agreement: k must be >= 1, got {k}")
    pa, ea = _shares(a)
    pb, eb = _shares(b)
    top = {name: tuple(int(i) for i, _, _ in s.top(int(k))) for name, s in (("a", a), ("b", b))}
    differing = tuple(sorted(set(top["a"]) ^ set(top["b"])))

    def tied(i: int, p: np.ndarray, e: np.ndarray, own: tuple[int, ...]) -> bool:
        edge = own[-1]
        tol = float(z) * np.hypot(e[i], e[edge])
        return bool(np.isfinite(tol) and p[i] + tol >= p[edge])

    ties = tuple(tied(i, pb, eb, top["b"]) if i in top["a"] else tied(i, pa, ea, top["a"])
                 for i in differing)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_z = (pa - pb) / np.hypot(ea, eb)
    union = sorted(set(top["a"]) | set(top["b"]))
    apart = tuple(int(i) for i in union if abs(np.nan_to_num(share_z[i])) > float(z))
    return RankingAgreement(k=int(k), z=float(z), top_a=top["a"], top_b=top["b"],
                            differing=differing, boundary_ties=ties, share_z=share_z,
                            apart=apart)
