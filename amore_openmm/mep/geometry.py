"""Structure helpers shared by the χ-MEP and the string method: input coercion and RMSD."""
from __future__ import annotations

from typing import Any

import numpy as np
from openmm import unit

__all__ = ["as_structure", "superposed_rmsd"]


def as_structure(x: Any, n_atoms: int, name: str = "x0") -> np.ndarray:
    """One structure as a float64 (n_atoms, 3) array in nm.

    Accepts an array or an ``openmm.unit`` Quantity; for a one-particle 2-D system
    (Müller–Brown) also ``(x, y)``, which becomes ``[[x, y, 0]]``. Raises ``ValueError`` naming
    ``name`` and the expected shape otherwise.
    """
    if unit.is_quantity(x):
        x = x.value_in_unit(unit.nanometer)
    arr = np.asarray(x, dtype=np.float64)   # a list of Vec3 is a list of 3-tuples
    if arr.shape == (2,) and n_atoms == 1:
        arr = np.array([[arr[0], arr[1], 0.0]])
    if arr.shape != (n_atoms, 3):
        raise ValueError(f"{name} must have shape ({n_atoms}, 3) in nm (or (x, y) for a "
                         f"one-particle 2-D system), got {arr.shape}")
    return arr


def superposed_rmsd(a: np.ndarray, b: np.ndarray, superpose: bool = True) -> np.ndarray:
    """RMSD (nm) between structures ``a`` and ``b`` (each (M, n, 3) or (n, 3)).

    With ``superpose`` (default) after optimal rigid-body superposition (Kabsch), so only the
    internal change counts; for one particle (or without ``superpose``) the raw coordinate RMSD.
    Returns (M,) (or a 0-d array for single structures).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    single = a.ndim == 2
    if single:
        a, b = a[None], b[None]
    if superpose and a.shape[1] > 1:
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        h = np.einsum("mni,mnj->mij", a, b)
        u, _, vt = np.linalg.svd(h)
        sign = np.sign(np.linalg.det(np.einsum("mij,mjk->mik", u, vt)))
        u[:, :, -1] *= sign[:, None]
        rot = np.einsum("mij,mjk->mik", u, vt)    # a @ rot best matches b
        a = np.einsum("mni,mij->mnj", a, rot)
    d = b - a
    out = np.sqrt((d ** 2).sum(-1).mean(-1))
    return out[0] if single else out
