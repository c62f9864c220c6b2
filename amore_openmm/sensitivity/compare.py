"""Feature saliency, and how well one χ-MEP's sensitivity profile matches the ensemble's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .ensemble import Sensitivity
from .gradients import model_dtype, positions_array

__all__ = ["feature_saliency", "angle_saliency", "path_vs_ensemble_mse", "path_agreement", "PathAgreement"]


def _torch():
    import torch
    return torch


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


def _feature_gradients(model: Any, positions: Any, batch_size: int):
    """Yield (features, ∂ν/∂f) per batch (float64 numpy) for χ = ν ∘ f."""
    torch = _torch()
    feat, head, _ = _split_model(model)
    x = positions_array(positions)
    dtype = model_dtype(model)
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
        yield f.detach().double().cpu().numpy(), g.double().cpu().numpy()


def _ranked(names: list[str], mean: np.ndarray) -> list[tuple[str, float]]:
    if len(names) != len(mean):
        names = [f"f{j}" for j in range(len(mean))]
    order = np.argsort(-mean, kind="stable")
    return [(names[j], float(mean[j])) for j in order]


def feature_saliency(model: Any, positions: Any, batch_size: int = 4096
                     ) -> list[tuple[str, float]]:
    """Feature saliency ⟨‖∂ν/∂f_j‖²⟩ over ``positions``, ranked (largest first).

    ``model`` must expose ``featurizer`` (with ``feature_names``) and a network evaluating χ
    from features. Returns [(feature name, value), ...]; unnamed features are ``f<j>``.
    """
    total, n = 0.0, 0
    for _, g in _feature_gradients(model, positions, batch_size):
        total = total + (g ** 2).sum(axis=0)
        n += len(g)
    return _ranked(list(getattr(model.featurizer, "feature_names", []) or []), total / n)


def angle_saliency(model: Any, positions: Any, batch_size: int = 4096
                   ) -> list[tuple[str, float]]:
    """Saliency per dihedral angle ⟨(∂ν/∂θ_d)²⟩ in rad⁻², ranked, as the paper reports it.

    For a featurizer giving [sin θ, cos θ] per dihedral (``BackboneDihedrals``), the chain
    rule gives ∂ν/∂θ = cos θ·∂ν/∂(sin θ) − sin θ·∂ν/∂(cos θ). Names are the featurizer's
    ``dihedral_names`` (e.g. "VAL3 ψ").
    """
    feat = getattr(model, "featurizer", None)
    names = list(getattr(feat, "dihedral_names", []) or [])
    total, n = 0.0, 0
    for f, g in _feature_gradients(model, positions, batch_size):
        if f.shape[1] % 2:
            raise TypeError("angle_saliency needs (sin, cos) pairs per dihedral "
                            f"(a 'dihedrals' featurizer); got {f.shape[1]} features")
        sin, cos = f[:, 0::2], f[:, 1::2]
        dtheta = cos * g[:, 0::2] - sin * g[:, 1::2]
        total = total + (dtheta ** 2).sum(axis=0)
        n += len(f)
    return _ranked(names, total / n)


@dataclass
class PathAgreement:
    """How well a χ-MEP's per-atom ‖∇ᵢχ‖² profile matches the ensemble profile.

    Attributes:
        mse_nm4: mean over compared nodes and featurized atoms of the squared difference of
            ‖∇ᵢχ‖² (nm⁻²) profiles, so its unit is **nm⁻⁴**. This is the paper's measure; the
            paper quotes it "in nm⁻²" (< 0.01 for VGVAPG), but the square of a quantity in
            nm⁻² is in nm⁻⁴. It scales with ‖∇χ‖⁴, so it cannot be compared across models.
        mse_normalized: the same MSE after dividing each profile (each node's and each
            reference's) by its sum over atoms: dimensionless, scale-free; 0 for identical
            shapes.
        cosine_distance: mean over nodes of 1 − cos(angle) between the two profiles as vectors
            over atoms: scale-free, 0 for identical shapes, ≤ 1 for non-negative profiles.
        n_nodes: nodes compared (nodes whose χ bin has no level-set value are skipped).
        n_atoms: featurized atoms compared.
    """

    mse_nm4: float
    mse_normalized: float
    cosine_distance: float
    n_nodes: int
    n_atoms: int


def _profiles(path: Any, sensitivity: Sensitivity, reference: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """(path profile, reference profile), both (nodes, atoms) restricted to the nodes with a
    reference value and the featurized atoms."""
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
        ref = np.asarray(sensitivity.levelset, dtype=float)[:, sensitivity.bin_index(chi)].T
    else:
        raise ValueError(f"reference must be 'levelset' or 'ensemble', got {reference!r}")
    atoms = np.asarray(sensitivity.featurized, dtype=bool)
    nodes = np.all(np.isfinite(ref[:, atoms]), axis=1)
    if not nodes.any() or not atoms.any():
        raise ValueError("no path node lies in a χ bin with a level-set value (enough "
                         "samples); use fewer bins, a smaller min_count or more samples")
    return g2[nodes][:, atoms], np.asarray(ref)[nodes][:, atoms]


def path_agreement(path: Any, sensitivity: Sensitivity, reference: str = "levelset"
                   ) -> PathAgreement:
    """Compare ‖∇ᵢχ‖² along a χ-MEP with the ensemble profile, absolute and scale-free.

    For each path node k (χ_k, per-atom ‖∇ᵢχ(x_k)‖²) the reference is the level-set average
    ⟨‖∇ᵢχ‖²⟩_z in the bin of χ_k (``reference="levelset"``, as in the paper; nodes in bins
    without a value are skipped) or ⟨‖∇ᵢχ‖²⟩_ρ (``reference="ensemble"``). Only featurized
    atoms are compared. ``path`` is a ChiPath (``.chi``, ``.atom_grad_sq``) or a tuple
    (chi (M,), grad_sq (M, n)).
    """
    p, r = _profiles(path, sensitivity, reference)
    ps, rs = p.sum(axis=1, keepdims=True), r.sum(axis=1, keepdims=True)
    pn = np.divide(p, ps, out=np.zeros_like(p), where=ps > 0)
    rn = np.divide(r, rs, out=np.zeros_like(r), where=rs > 0)
    norms = np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.divide((p * r).sum(axis=1), norms, out=np.zeros(len(p)), where=norms > 0)
    return PathAgreement(mse_nm4=float(np.mean((p - r) ** 2)),
                         mse_normalized=float(np.mean((pn - rn) ** 2)),
                         cosine_distance=float(np.mean(1.0 - cos)),
                         n_nodes=len(p), n_atoms=p.shape[1])


def path_vs_ensemble_mse(path: Any, sensitivity: Sensitivity, reference: str = "levelset",
                         kind: str = "absolute") -> float:
    """One number of :func:`path_agreement`.

    ``kind="absolute"``: the paper's MSE of the ‖∇ᵢχ‖² profiles, in **nm⁻⁴** (see
    :class:`PathAgreement` on the paper's "nm⁻²"); ``"normalized"``: the MSE of the profiles
    each divided by its sum (dimensionless); ``"cosine"``: mean 1 − cosine similarity.
    """
    res = path_agreement(path, sensitivity, reference)
    kinds = {"absolute": res.mse_nm4, "normalized": res.mse_normalized,
             "cosine": res.cosine_distance}
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind]
