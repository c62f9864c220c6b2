"""∇χ for many structures, atom labels, and which atoms a model can see."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["chi_gradients", "atom_labels", "featurized_mask", "positions_array"]


def _torch():
    import torch  # imported lazily: keeps `import amore_openmm.sensitivity` cheap
    return torch


def model_dtype(model: Any):
    """The dtype of the model's parameters (float64 for a model without parameters)."""
    torch = _torch()
    for p in model.parameters():
        return p.dtype
    return torch.float64


def positions_array(positions: Any, name: str = "positions") -> np.ndarray:
    """(B, n, 3) float array from (B, n, 3), (n, 3) or an object with ``.positions``."""
    arr = np.asarray(getattr(positions, "positions", positions))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[2] != 3 or len(arr) == 0:
        raise ValueError(f"{name} must be (B, n_atoms, 3) or (n_atoms, 3) in nm with B >= 1, "
                         f"got shape {arr.shape}")
    return arr


def chi_gradients(model: Any, positions: Any, batch_size: int = 4096
                  ) -> tuple[np.ndarray, np.ndarray]:
    """χ and ∇χ for many structures.

    A :class:`~amore_openmm.chi.ChiModel` (anything with ``chi_and_grad``) computes them
    itself; any other torch module mapping (B, n, 3) nm → χ (B,) is differentiated here by
    batched autograd (``batch_size`` frames per call).

    Returns:
        (chi (B,), grad (B, n, 3) in nm⁻¹), float64 numpy arrays.
    """
    x = positions_array(positions)
    if callable(getattr(model, "chi_and_grad", None)):
        chi, grad = model.chi_and_grad(x, batch_size=int(batch_size))
        return np.asarray(chi, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    torch = _torch()
    dtype = model_dtype(model)
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


def featurized_mask(model: Any, n_atoms: int) -> np.ndarray:
    """(n_atoms,) bool: atoms whose gradient can be non-zero.

    From ``model.featurized_atoms`` (0-based indices; ``ChiModel`` provides it). A plain torch
    module without that attribute is taken to see every atom.
    """
    atoms = getattr(model, "featurized_atoms", None)
    if callable(atoms):
        atoms = atoms()
    mask = np.zeros(n_atoms, dtype=bool)
    if atoms is None:
        mask[:] = True
        return mask
    idx = np.asarray(atoms, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_atoms):
        raise ValueError(f"model.featurized_atoms holds indices outside 0..{n_atoms - 1}")
    mask[idx] = True
    return mask


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
