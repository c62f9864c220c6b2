"""Featurizers f(x) of χ = ν ∘ f: pairwise distances, backbone dihedrals, raw coordinates.

Every featurizer is a TorchScript-compatible ``torch.nn.Module`` mapping positions (n, 3) or
(B, n, 3) in nm to features (B, F), with ``feature_names`` (F labels), ``featurized_atoms``
(0-based indices of the atoms the features depend on: ∇χ is zero on every other atom),
``spec()`` (a JSON-able dict that :func:`~amore_openmm.chi.featurizer_from_spec` rebuilds it
from) and ``n_atoms`` (rows the positions must have at least; extra rows are ignored).
The symmetry-aware distances are in :mod:`amore_openmm.chi.symmetry`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["PairwiseDistances", "BackboneDihedrals", "Coordinates", "backbone_quads"]


def as_batch(x: torch.Tensor) -> torch.Tensor:
    """(n, 3) -> (1, n, 3); (B, n, 3) unchanged."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    return x


def backbone_quads(topology: Any) -> tuple[list[list[int]], list[str]]:
    """Backbone φ/ψ atom quads (0-based) and names like ``"ALA2 φ"`` from an OpenMM Topology.

    φ of residue r is C(r−1)–N–CA–C, ψ is N–CA–C–N(r+1), within one chain; residues are those
    with N, CA and C atoms (residue numbers as in the PDB).
    """
    residues = [(res, {a.name: a.index for a in res.atoms()}) for res in topology.residues()]
    quads, names = [], []
    for k, (res, atoms) in enumerate(residues):
        if not all(n in atoms for n in ("N", "CA", "C")):
            continue
        label = f"{res.name}{res.id}"
        prev = residues[k - 1] if k > 0 else None
        nxt = residues[k + 1] if k + 1 < len(residues) else None
        if prev is not None and "C" in prev[1] and prev[0].chain is res.chain:
            quads.append([prev[1]["C"], atoms["N"], atoms["CA"], atoms["C"]])
            names.append(f"{label} φ")
        if nxt is not None and "N" in nxt[1] and nxt[0].chain is res.chain:
            quads.append([atoms["N"], atoms["CA"], atoms["C"], nxt[1]["N"]])
            names.append(f"{label} ψ")
    return quads, names


class PairwiseDistances(nn.Module):
    """Distances |x_j − x_i| (nm) for selected atom pairs, by direct differences.

    The Gram trick (|a|² + |b|² − 2a·b) loses the digits of short distances in float32, so
    distances are taken from coordinate differences. Distance features make χ invariant to
    rigid motions: Σᵢ ∇ᵢχ = 0 and Σᵢ xᵢ × ∇ᵢχ = 0.

    Args:
        n_atoms: atoms in the System (positions passed to ``forward`` have this many rows or
            more; extra atoms, e.g. solvent, are ignored).
        atoms: use all pairs i < j of these atoms (default: all atoms). Excludes ``pairs``.
        pairs: explicit (P, 2) list of atom index pairs.
        names: per-atom labels (length ``n_atoms``) used to name the features.
    """

    kind = "pairwise"
    __jit_ignored_attributes__ = ["feature_names", "atom_names"]
    __jit_unused_properties__ = ["n_features", "pairs", "featurized_atoms"]

    def __init__(self, n_atoms: int, atoms: Sequence[int] | None = None,
                 pairs: Sequence[Sequence[int]] | np.ndarray | None = None,
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        n_atoms = int(n_atoms)
        if atoms is not None and pairs is not None:
            raise ValueError("PairwiseDistances: give either atoms= or pairs=, not both")
        if pairs is None:
            sel = np.arange(n_atoms) if atoms is None else np.asarray(list(atoms), dtype=np.int64)
            if len(np.unique(sel)) != len(sel):
                raise ValueError(f"PairwiseDistances: atoms= has duplicate indices: {list(sel)}")
            iu, ju = np.triu_indices(len(sel), k=1)
            pairs_arr = np.stack([sel[iu], sel[ju]], axis=1) if len(sel) > 1 else \
                np.zeros((0, 2), dtype=np.int64)
        else:
            pairs_arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs_arr) == 0:
            raise ValueError("PairwiseDistances needs at least one atom pair (two atoms)")
        if pairs_arr.min() < 0 or pairs_arr.max() >= n_atoms:
            raise ValueError(f"PairwiseDistances: atom indices must lie in [0, {n_atoms}); got "
                             f"range [{pairs_arr.min()}, {pairs_arr.max()}]")
        if np.any(pairs_arr[:, 0] == pairs_arr[:, 1]):
            raise ValueError("PairwiseDistances: a pair (i, i) has zero distance and no gradient")
        self.n_atoms = n_atoms
        self.register_buffer("i", torch.as_tensor(pairs_arr[:, 0].copy()))
        self.register_buffer("j", torch.as_tensor(pairs_arr[:, 1].copy()))
        self.atom_names = list(names) if names is not None else [str(k) for k in range(n_atoms)]
        if len(self.atom_names) != n_atoms:
            raise ValueError(f"PairwiseDistances: names has {len(self.atom_names)} labels for "
                             f"{n_atoms} atoms")
        self.feature_names = [f"d({self.atom_names[a]},{self.atom_names[b]})"
                              for a, b in pairs_arr.tolist()]

    @property
    def n_features(self) -> int:
        return int(self.i.shape[0])

    @property
    def pairs(self) -> np.ndarray:
        return np.stack([self.i.cpu().numpy(), self.j.cpu().numpy()], axis=1)

    @property
    def featurized_atoms(self) -> np.ndarray:
        """Sorted 0-based indices of the atoms in any pair."""
        return np.unique(self.pairs)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = as_batch(positions)
        d = x[:, self.j] - x[:, self.i]
        return torch.sqrt((d * d).sum(-1))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms, "pairs": self.pairs.tolist(),
                "names": list(self.atom_names)}


class BackboneDihedrals(nn.Module):
    """Backbone dihedrals φ, ψ as (sin, cos) features, named like ``"ALA2 φ"``.

    The quads come from :func:`backbone_quads`. The angle convention is IUPAC (as in mdtraj
    and :func:`amore_openmm.systems.dihedral_angles`); this is the torch copy, needed so that
    the exported χ stays TorchScript. Features are ordered [sin, cos] per dihedral.

    Args:
        topology: an OpenMM ``Topology`` (or None when ``quads`` is given).
        quads: explicit (D, 4) atom indices; ``dihedral_names`` then names them.
        n_atoms: atom count (taken from the topology when given).
    """

    kind = "dihedrals"
    __jit_ignored_attributes__ = ["feature_names", "dihedral_names"]
    __jit_unused_properties__ = ["n_features", "featurized_atoms"]

    def __init__(self, topology: Any = None, quads: Sequence[Sequence[int]] | None = None,
                 dihedral_names: Sequence[str] | None = None,
                 n_atoms: int | None = None) -> None:
        super().__init__()
        if quads is None:
            if topology is None:
                raise ValueError("BackboneDihedrals needs a topology (or quads=)")
            quads, dihedral_names = backbone_quads(topology)
            n_atoms = topology.getNumAtoms()
            if not quads:
                raise ValueError("BackboneDihedrals: the topology has no backbone φ/ψ (needs "
                                 "consecutive residues with N, CA, C atoms); use the "
                                 "'pairwise_all' featurizer instead")
        q = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
        if n_atoms is None:
            n_atoms = int(q.max()) + 1
        self.n_atoms = int(n_atoms)
        self.register_buffer("quads", torch.as_tensor(q.copy()))
        self.dihedral_names = list(dihedral_names) if dihedral_names is not None else \
            [f"dihedral{k}" for k in range(len(q))]
        if len(self.dihedral_names) != len(q):
            raise ValueError("BackboneDihedrals: dihedral_names must name every quad")
        self.feature_names = [f"{t}({n})" for n in self.dihedral_names for t in ("sin", "cos")]

    @property
    def n_features(self) -> int:
        return 2 * int(self.quads.shape[0])

    @property
    def featurized_atoms(self) -> np.ndarray:
        """Sorted 0-based indices of the dihedral atoms (∇χ is zero on all others)."""
        return np.unique(self.quads.cpu().numpy())

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Dihedral angles (B, D) in radians, (−π, π]."""
        x = as_batch(positions)
        p0, p1 = x[:, self.quads[:, 0]], x[:, self.quads[:, 1]]
        p2, p3 = x[:, self.quads[:, 2]], x[:, self.quads[:, 3]]
        b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
        n1 = torch.cross(b1, b2, dim=-1)
        n2 = torch.cross(b2, b3, dim=-1)
        y = torch.sqrt((b2 * b2).sum(-1)) * (b1 * n2).sum(-1)
        return torch.atan2(y, (n1 * n2).sum(-1))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        a = self.angles(positions)
        return torch.stack([torch.sin(a), torch.cos(a)], dim=-1).reshape(a.shape[0], -1)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms,
                "quads": self.quads.cpu().numpy().tolist(),
                "dihedral_names": list(self.dihedral_names)}


class Coordinates(nn.Module):
    """Raw Cartesian coordinates (nm) of selected atoms and dimensions, for 2-D toy models.

    For Müller–Brown (one particle, dynamics in x and y) use ``Coordinates(1, dims=(0, 1))``.
    Not rotation invariant: use only for toys or already-aligned data.
    """

    kind = "coordinates"
    __jit_ignored_attributes__ = ["feature_names"]
    __jit_unused_properties__ = ["n_features", "featurized_atoms"]

    def __init__(self, n_atoms: int, dims: Sequence[int] = (0, 1),
                 atoms: Sequence[int] | None = None) -> None:
        super().__init__()
        self.n_atoms = int(n_atoms)
        atoms_l = list(range(self.n_atoms)) if atoms is None else [int(a) for a in atoms]
        dims_l = [int(d) for d in dims]
        if not dims_l or any(d not in (0, 1, 2) for d in dims_l):
            raise ValueError(f"Coordinates: dims must be a non-empty subset of (0, 1, 2), "
                             f"got {tuple(dims)}")
        if not atoms_l or min(atoms_l) < 0 or max(atoms_l) >= self.n_atoms:
            raise ValueError(f"Coordinates: atoms must be indices in [0, {self.n_atoms})")
        self.register_buffer("atoms", torch.as_tensor(atoms_l, dtype=torch.long))
        self.register_buffer("dims", torch.as_tensor(dims_l, dtype=torch.long))
        axis = "xyz"
        self.feature_names = ([axis[d] for d in dims_l] if len(atoms_l) == 1 else
                              [f"{a}:{axis[d]}" for a in atoms_l for d in dims_l])

    @property
    def n_features(self) -> int:
        return int(self.atoms.shape[0] * self.dims.shape[0])

    @property
    def featurized_atoms(self) -> np.ndarray:
        """Sorted 0-based indices of the atoms whose coordinates are features."""
        return np.unique(self.atoms.cpu().numpy())

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = as_batch(positions)
        return x[:, self.atoms][:, :, self.dims].reshape(x.shape[0], -1)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms,
                "atoms": self.atoms.cpu().numpy().tolist(),
                "dims": self.dims.cpu().numpy().tolist()}
