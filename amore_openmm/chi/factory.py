"""Choosing and rebuilding featurizers: :func:`make_featurizer`, :func:`featurizer_from_spec`."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from .featurizers import BackboneDihedrals, Coordinates, PairwiseDistances
from .symmetry import SymmetricPairwiseDistances, equivalent_atom_groups

__all__ = ["make_featurizer", "featurizer_kind", "featurizer_from_spec", "FEATURIZER_KINDS", "AUTO_ALL_ATOMS_BELOW",
           "AUTO_SYM_HEAVY_BELOW"]

FEATURIZER_KINDS = ("auto", "pairwise_sym", "pairwise_all", "pairwise_heavy", "pairwise_polar",
                    "dihedrals", "coordinates")
#: "auto": below this many atoms (of the molecule of interest) all of them, symmetry-aware
AUTO_ALL_ATOMS_BELOW = 100
#: "auto": a peptide with fewer heavy atoms than this also gets "pairwise_sym" over all atoms
AUTO_SYM_HEAVY_BELOW = 100


def featurizer_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a featurizer from its ``spec()`` dictionary."""
    kind = spec.get("kind")
    if kind == "pairwise":
        return PairwiseDistances(spec["n_atoms"], pairs=spec["pairs"], names=spec.get("names"))
    if kind == "pairwise_sym":
        return SymmetricPairwiseDistances(spec["n_atoms"], atoms=spec["atoms"],
                                          groups=spec["groups"], names=spec.get("names"))
    if kind == "dihedrals":
        return BackboneDihedrals(quads=spec["quads"], dihedral_names=spec["dihedral_names"],
                                 n_atoms=spec["n_atoms"])
    if kind == "coordinates":
        return Coordinates(spec["n_atoms"], dims=spec["dims"], atoms=spec["atoms"])
    raise ValueError(f"unknown featurizer kind {kind!r} in saved χ model; expected pairwise, "
                     "pairwise_sym, dihedrals or coordinates")


def _selection(system: Any) -> np.ndarray:
    """The molecule of interest (``MolecularSystem.selection``, 0-based, sorted)."""
    return np.asarray(system.selection, dtype=np.int64)


def _is_peptide(topology: Any, atoms: set[int]) -> bool:
    """True when some residue inside ``atoms`` has backbone atoms N, CA and C."""
    for res in topology.residues():
        names = {a.name for a in res.atoms() if a.index in atoms}
        if {"N", "CA", "C"} <= names:
            return True
    return False


def _auto_kind(system: Any, sel: np.ndarray) -> str:
    if getattr(system, "coordinate_dims", None):
        return "coordinates"
    if len(sel) < AUTO_ALL_ATOMS_BELOW:
        return "pairwise_sym"
    top = getattr(system, "topology", None)
    if top is not None and _is_peptide(top, set(sel.tolist())):
        heavy = set(system.heavy_atoms()) & set(sel.tolist())
        if len(heavy) < AUTO_SYM_HEAVY_BELOW:
            return "pairwise_sym"
    return "pairwise_heavy"


def featurizer_kind(system: Any, kind: str | None = "auto") -> str:
    """The concrete featurizer kind :func:`make_featurizer` builds for ``kind`` ("auto" and
    None resolved for this system; "pairwise" spelled "pairwise_all")."""
    if kind is None:
        kind = getattr(system, "featurizer", "auto") or "auto"
    if kind == "pairwise":
        kind = "pairwise_all"
    if kind not in FEATURIZER_KINDS:
        raise ValueError(f"featurizer kind {kind!r} is not known; use one of "
                         f"{', '.join(FEATURIZER_KINDS)}")
    return _auto_kind(system, _selection(system)) if kind == "auto" else kind


def make_featurizer(system: Any, kind: str | None = "auto") -> nn.Module:
    """The featurizer for a :class:`~amore_openmm.systems.MolecularSystem`.

    Features cover the molecule of interest (``system.selection``; solvent and ions are left
    out), never more.

    Args:
        system: the MolecularSystem (uses ``n_atoms``, ``selection``, ``topology``,
            ``coordinate_dims``, ``atom_labels()``, ``heavy_atoms()``, ``polar_atoms()``).
        kind: one of :data:`FEATURIZER_KINDS`:

            * "auto": "coordinates" for 2-D toys; "pairwise_sym" when the molecule has fewer
              than ``AUTO_ALL_ATOMS_BELOW`` atoms or is a peptide with fewer than
              ``AUTO_SYM_HEAVY_BELOW`` heavy atoms; "pairwise_heavy" above.
            * "pairwise_sym": distances between all atoms, invariant under permutations of
              equivalent atoms (methyl H, NH3⁺ H, carboxylate O; see
              :mod:`amore_openmm.chi.symmetry`). Every atom is featurized.
            * "pairwise_all": all labelled distances (a methyl rotation looks like a process).
            * "pairwise_heavy": heavy atoms only. "pairwise_polar": heavy atoms + H on N/O/S
              (leaves out every C-bound H, HA included: those atoms get no gradient).
            * "dihedrals": backbone φ/ψ as (sin, cos). "coordinates": raw x, y(, z).

            None: the system's own default (``system.featurizer``).
    """
    kind = featurizer_kind(system, kind)
    n = int(system.n_atoms)
    sel = _selection(system)
    try:
        labels = system.atom_labels()
    except AttributeError:
        labels = None
    if kind == "pairwise_sym":
        top = getattr(system, "topology", None)
        groups = equivalent_atom_groups(top, atoms=sel) if top is not None else []
        return SymmetricPairwiseDistances(n, atoms=sel, groups=groups, names=labels)
    if kind in ("pairwise_all", "pairwise_heavy", "pairwise_polar"):
        atoms = sel
        if kind != "pairwise_all":
            sub = system.heavy_atoms() if kind == "pairwise_heavy" else system.polar_atoms()
            atoms = np.intersect1d(sel, np.asarray(sub, dtype=np.int64))
        if len(atoms) < 2:
            raise ValueError(f"system {getattr(system, 'name', '')!r} has fewer than two "
                             f"atoms for featurizer {kind!r}; use 'pairwise_sym'")
        return PairwiseDistances(n, atoms=atoms, names=labels)
    if kind == "dihedrals":
        return BackboneDihedrals(system.topology)
    dims = getattr(system, "coordinate_dims", None)
    return Coordinates(n, dims=dims or (0, 1, 2))
