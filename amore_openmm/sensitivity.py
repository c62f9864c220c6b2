"""χ-sensitivity: which atoms (and features) drive the slow process.

For samples x from the stationary ensemble ρ:

* ensemble average ⟨‖∇ᵢχ‖²⟩_ρ per atom i;
* level-set average ⟨‖∇ᵢχ‖²⟩_z: the same average restricted to samples with χ(x) in a bin
  around z (paper eq. 4; 100 bins on [0, 1] in the paper): an atoms × χ matrix;
* feature saliency ⟨‖∂ν/∂f_j‖²⟩ for χ = ν ∘ f (features f, network ν);
* the mean squared difference between ‖∇ᵢχ‖² along a χ-MEP and the level-set average at the
  nodes' χ values (how representative a single path is of the ensemble mechanism).

Gradients come from batched autograd on any ``torch.nn.Module`` mapping positions
(B, n, 3) in nm to χ (B,): no per-frame Python loop (frames are processed in chunks of
``batch_size`` to bound memory). ∇χ is in nm⁻¹, so sensitivities are in nm⁻².
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import atomic_path

__all__ = ["Sensitivity", "chi_sensitivity", "chi_gradients", "feature_saliency",
           "path_vs_ensemble_mse", "atom_labels"]


def _torch():
    import torch  # imported lazily: keeps `import amore_openmm.sensitivity` cheap
    return torch


def _model_dtype(model: Any):
    torch = _torch()
    for p in model.parameters():
        return p.dtype
    return torch.float64


def _positions_array(positions: Any, name: str = "positions") -> np.ndarray:
    arr = np.asarray(getattr(positions, "positions", positions))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != 3 or len(arr) == 0:
        raise ValueError(f"{name} must be (B, n_atoms, 3) or (n_atoms, 3) in nm with B >= 1, "
                         f"got shape {arr.shape}")
    return arr


def chi_gradients(model: Any, positions: Any, batch_size: int = 4096
                  ) -> tuple[np.ndarray, np.ndarray]:
    """χ and ∇χ for many structures by batched autograd.

    Args:
        model: torch module, positions (B, n, 3) nm -> χ (B,).
        positions: (B, n, 3) or (n, 3) array (nm), or an object with ``.positions``.
        batch_size: frames per autograd call.

    Returns:
        (chi (B,), grad (B, n, 3) in nm⁻¹), float64 numpy arrays.
    """
    torch = _torch()
    x = _positions_array(positions)
    dtype = _model_dtype(model)
    chis, grads = [], []
    for start in range(0, len(x), int(batch_size)):
        xb = torch.as_tensor(x[start:start + batch_size], dtype=dtype).requires_grad_(True)
        with torch.enable_grad():
            chi = model(xb).reshape(-1)
            if chi.shape[0] != xb.shape[0]:
                raise ValueError(f"model returned {chi.shape[0]} values for {xb.shape[0]} "
                                 "structures; it must map (B, n, 3) to (B,)")
            (g,) = torch.autograd.grad(chi.sum(), xb)
        chis.append(chi.detach().double().cpu().numpy())
        grads.append(g.detach().double().cpu().numpy())
    return np.concatenate(chis), np.concatenate(grads)


def atom_labels(source: Any, n_atoms: int) -> list[str]:
    """Atom labels ``RES<resid>:<name>`` from a MolecularSystem, a Topology, or a list."""
    if source is None:
        return [f"atom{i}" for i in range(n_atoms)]
    if hasattr(source, "atom_labels"):
        labels = list(source.atom_labels())
    elif hasattr(source, "atoms"):
        labels = [f"{a.residue.name}{a.residue.id}:{a.name}" for a in source.atoms()]
    else:
        labels = [str(s) for s in source]
    if len(labels) != n_atoms:
        raise ValueError(f"labels: {len(labels)} labels for {n_atoms} atoms; pass one per atom "
                         "(or the system/topology the positions belong to)")
    return labels


@dataclass
class Sensitivity:
    """Per-atom χ-sensitivities of an ensemble.

    Attributes:
        per_atom: (n,) ⟨‖∇ᵢχ‖²⟩_ρ over all samples, nm⁻².
        levelset: (n, bins) ⟨‖∇ᵢχ‖²⟩_z per χ bin; NaN where the bin is empty.
        counts: (bins,) samples per bin.
        bin_edges: (bins + 1,) χ bin edges (values outside the range fall into the end bins).
        labels: n atom labels; atom indices are 0-based (OpenMM order).
        n_samples: number of samples averaged.
        chi_min, chi_max: range of χ over the samples.
    """

    per_atom: np.ndarray
    levelset: np.ndarray
    counts: np.ndarray
    bin_edges: np.ndarray
    labels: list[str] = field(default_factory=list)
    n_samples: int = 0
    chi_min: float = float("nan")
    chi_max: float = float("nan")

    @property
    def n_atoms(self) -> int:
        return len(self.per_atom)

    @property
    def bin_centers(self) -> np.ndarray:
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])

    @property
    def empty_bins(self) -> np.ndarray:
        """Boolean (bins,) mask of bins without samples."""
        return self.counts == 0

    @property
    def ranking(self) -> np.ndarray:
        """Atom indices (0-based) by decreasing ⟨‖∇ᵢχ‖²⟩_ρ."""
        return np.argsort(-self.per_atom, kind="stable")

    @property
    def fraction(self) -> np.ndarray:
        """per_atom normalised to sum 1 (share of the total squared gradient)."""
        total = self.per_atom.sum()
        return self.per_atom / total if total > 0 else self.per_atom.copy()

    def bin_index(self, chi: Any) -> np.ndarray:
        """Bin of each χ value (out-of-range values go to the end bins)."""
        idx = np.searchsorted(self.bin_edges, np.asarray(chi, dtype=float), side="right") - 1
        return np.clip(idx, 0, len(self.counts) - 1)

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most sensitive atoms as (0-based index, label, ⟨‖∇ᵢχ‖²⟩_ρ)."""
        return [(int(i), self.labels[i] if self.labels else f"atom{i}",
                 float(self.per_atom[i])) for i in self.ranking[:k]]

    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``.npz`` (atomic write)."""
        from .data import atomic_save_npz
        return atomic_save_npz(path, per_atom=self.per_atom, levelset=self.levelset,
                               counts=self.counts, bin_edges=self.bin_edges,
                               labels=np.asarray(self.labels, dtype=str),
                               n_samples=self.n_samples, chi_min=self.chi_min,
                               chi_max=self.chi_max)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Sensitivity":
        with np.load(path) as z:
            return cls(per_atom=z["per_atom"], levelset=z["levelset"], counts=z["counts"],
                       bin_edges=z["bin_edges"], labels=[str(s) for s in z["labels"]],
                       n_samples=int(z["n_samples"]), chi_min=float(z["chi_min"]),
                       chi_max=float(z["chi_max"]))

    def write_ranking_csv(self, path: str | os.PathLike) -> Path:
        """Atom ranking as CSV: rank, atom_index_0based, atom_index_1based, label, value."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["rank", "atom_index_0based", "atom_index_1based", "label",
                        "mean_grad_sq_nm-2", "fraction"])
            frac = self.fraction
            for r, i in enumerate(self.ranking, start=1):
                w.writerow([r, int(i), int(i) + 1, self.labels[i] if self.labels else "",
                            f"{self.per_atom[i]:.6g}", f"{frac[i]:.6g}"])
        return Path(path)


def chi_sensitivity(model: Any, positions: Any, bins: int = 100,
                    labels: Any = None, chi_range: tuple[float, float] = (0.0, 1.0),
                    batch_size: int = 4096) -> Sensitivity:
    """Ensemble and level-set χ-sensitivities ⟨‖∇ᵢχ‖²⟩_ρ and ⟨‖∇ᵢχ‖²⟩_z.

    Args:
        model: torch module, (B, n, 3) nm -> χ (B,) (a ChiModel, or any differentiable χ).
        positions: samples of the stationary ensemble, (B, n, 3) nm (e.g. ``KoopmanData.x``
            of an unbiased trajectory).
        bins: number of χ bins for the level-set matrix (100 in the paper).
        labels: atom labels: a MolecularSystem, a Topology, or a list of n strings.
        chi_range: χ range divided into ``bins`` equal bins; samples outside it are counted in
            the end bins (χ is not clamped and may stray slightly beyond [0, 1]).
        batch_size: frames per autograd call.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    lo, hi = float(chi_range[0]), float(chi_range[1])
    if not hi > lo:
        raise ValueError(f"chi_range must be (low, high) with high > low, got {chi_range}")
    chi, grad = chi_gradients(model, positions, batch_size)
    g2 = np.einsum("bij,bij->bi", grad, grad)                  # (B, n) ‖∇ᵢχ‖²
    n = g2.shape[1]
    edges = np.linspace(lo, hi, int(bins) + 1)
    idx = np.clip(np.searchsorted(edges, chi, side="right") - 1, 0, int(bins) - 1)
    counts = np.bincount(idx, minlength=int(bins))
    sums = np.zeros((int(bins), n))
    np.add.at(sums, idx, g2)
    with np.errstate(invalid="ignore", divide="ignore"):
        levelset = (sums / counts[:, None]).T
    levelset[:, counts == 0] = np.nan
    return Sensitivity(per_atom=g2.mean(axis=0), levelset=levelset, counts=counts,
                       bin_edges=edges, labels=atom_labels(labels, n), n_samples=len(chi),
                       chi_min=float(chi.min()), chi_max=float(chi.max()))


def _split_model(model: Any) -> tuple[Any, Any, list[str]]:
    """(featurizer, head, feature names) of χ = head(featurizer(x))."""
    feat = getattr(model, "featurizer", None)
    if feat is None:
        raise TypeError("feature_saliency needs a model with a .featurizer (χ = ν ∘ f), such "
                        f"as amore_openmm.chi.ChiModel; got {type(model).__name__}")
    head = None
    for name in ("from_features", "forward_features", "head"):
        if callable(getattr(model, name, None)):
            head = getattr(model, name)
            break
    if head is None and getattr(model, "network", None) is not None:
        net = model.network
        head = lambda f: net(f).reshape(-1)  # noqa: E731
    if head is None:
        raise TypeError(f"{type(model).__name__} has a featurizer but no network/from_features"
                        " to evaluate χ from features")
    names = list(getattr(feat, "feature_names", []) or [])
    return feat, head, names


def feature_saliency(model: Any, positions: Any, batch_size: int = 4096
                     ) -> list[tuple[str, float]]:
    """Feature saliency ⟨‖∂ν/∂f_j‖²⟩ over ``positions``, ranked (largest first).

    ``model`` must expose ``featurizer`` (with ``feature_names``) and a network evaluating χ
    from features. Returns [(feature name, value), ...]; unnamed features are ``f<j>``.
    """
    torch = _torch()
    feat, head, names = _split_model(model)
    x = _positions_array(positions)
    dtype = _model_dtype(model)
    total = None
    for start in range(0, len(x), int(batch_size)):
        xb = torch.as_tensor(x[start:start + batch_size], dtype=dtype)
        with torch.no_grad():
            f = feat(xb)
        f = f.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            nu = head(f).reshape(-1)
            if start == 0:
                with torch.no_grad():
                    ref = model(xb).reshape(-1)
                if not torch.allclose(nu.detach(), ref, atol=1e-5, rtol=1e-4):
                    raise ValueError("feature_saliency: network(featurizer(x)) differs from "
                                     "model(x); the model is not of the form ν ∘ f")
            (g,) = torch.autograd.grad(nu.sum(), f)
        s = (g.double() ** 2).sum(dim=0).cpu().numpy()
        total = s if total is None else total + s
    mean = total / len(x)
    if len(names) != len(mean):
        names = [f"f{j}" for j in range(len(mean))]
    order = np.argsort(-mean, kind="stable")
    return [(names[j], float(mean[j])) for j in order]


def path_vs_ensemble_mse(path: Any, sensitivity: Sensitivity,
                         reference: str = "levelset") -> float:
    """Mean squared error between ‖∇ᵢχ‖² along a χ-MEP and the ensemble profile.

    For each path node k (χ_k, per-atom ‖∇ᵢχ(x_k)‖²) it compares with the level-set average
    ⟨‖∇ᵢχ‖²⟩_z in the bin of χ_k (``reference="levelset"``, as in the paper; nodes in empty
    bins are skipped) or with ⟨‖∇ᵢχ‖²⟩_ρ (``reference="ensemble"``), and averages over
    nodes and atoms.

    ``path`` is a :class:`~amore_openmm.mep.ChiPath` (uses ``.chi`` and ``.atom_grad_sq``)
    or a tuple (chi (M,), grad_sq (M, n)).
    """
    if isinstance(path, tuple):
        chi, g2 = path
    else:
        chi, g2 = path.chi, getattr(path, "atom_grad_sq", None)
        if g2 is None:
            raise ValueError("path has no per-atom ‖∇ᵢχ‖² (atom_grad_sq); pass a ChiPath from "
                             "trace_chi_mep or a tuple (chi, grad_sq)")
    chi = np.asarray(chi, dtype=float).reshape(-1)
    g2 = np.asarray(g2, dtype=float)
    if g2.shape != (len(chi), sensitivity.n_atoms):
        raise ValueError(f"path grad_sq has shape {g2.shape}; expected ({len(chi)}, "
                         f"{sensitivity.n_atoms}) for this sensitivity")
    if reference == "ensemble":
        ref = np.broadcast_to(sensitivity.per_atom, g2.shape)
    elif reference == "levelset":
        ref = sensitivity.levelset[:, sensitivity.bin_index(chi)].T
    else:
        raise ValueError(f"reference must be 'levelset' or 'ensemble', got {reference!r}")
    ok = np.all(np.isfinite(ref), axis=1)
    if not ok.any():
        raise ValueError("no path node lies in a populated χ bin; use fewer bins or more "
                         "samples")
    return float(np.mean((g2[ok] - ref[ok]) ** 2))
