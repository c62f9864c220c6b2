"""Dihedral angles on numpy positions: the one implementation the package uses.

:func:`dihedral_angles` is vectorised over frames and quadruples; :func:`backbone_dihedrals`
reads φ/ψ of a peptide from its topology's bonds. Sign convention (IUPAC, as mdtraj and
OpenMM): looking along b→c, positive when a→b turns clockwise onto c→d.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from openmm import app

__all__ = ["dihedral_angles", "backbone_dihedral_atoms", "backbone_dihedrals"]

Quad = tuple[int, int, int, int]


def dihedral_angles(positions: Any, quads: Any) -> np.ndarray:
    """Dihedral angles (radians, in (−π, π]) of atom quadruples.

    Args:
        positions: (..., n, 3) coordinates (any leading frame dimensions).
        quads: (m, 4) 0-based atom indices a, b, c, d.

    Returns:
        (..., m) float64 angles.
    """
    x = np.asarray(positions, dtype=np.float64)
    q = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    a, b, c, d = (x[..., q[:, k], :] for k in range(4))
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, axis=-1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, axis=-1, keepdims=True) * b1n
    return np.arctan2(np.sum(np.cross(b1n, v) * w, axis=-1), np.sum(v * w, axis=-1))


def backbone_dihedral_atoms(topology: app.Topology
                            ) -> list[tuple[str, Quad | None, Quad | None]]:
    """(residue label, φ quad, ψ quad) for each residue with N, CA and C; None where the
    neighbour atom (C of the residue before, N of the residue after, found through the
    topology's bonds) does not exist, e.g. at a free terminus. Caps (ACE, NME) have no CA and
    get no entry; labels are residue name + residue id (``ALA2``)."""
    names = {(a.residue.index, a.name): a.index for a in topology.atoms()}
    residue_of = {a.index: a.residue.index for a in topology.atoms()}
    partner: dict[tuple[int, str], int] = {}  # (atom, wanted name) -> bonded atom elsewhere
    for a, b in topology.bonds():
        for x, y in ((a, b), (b, a)):
            if residue_of[x.index] != residue_of[y.index]:
                partner[(x.index, y.name)] = y.index
    out = []
    for r in topology.residues():
        bb = [names.get((r.index, n)) for n in ("N", "CA", "C")]
        if any(i is None for i in bb):
            continue
        n, ca, c = bb
        prev_c, next_n = partner.get((n, "C")), partner.get((c, "N"))
        phi = (prev_c, n, ca, c) if prev_c is not None else None
        psi = (n, ca, c, next_n) if next_n is not None else None
        out.append((f"{r.name}{r.id}", phi, psi))
    return out


def backbone_dihedrals(topology: app.Topology, positions: Any
                       ) -> list[tuple[str, float | None, float | None]]:
    """(residue label, φ, ψ) in degrees for each amino acid of one structure (n, 3); None
    where undefined (see :func:`backbone_dihedral_atoms`)."""
    table = backbone_dihedral_atoms(topology)
    quads = [q for _, phi, psi in table for q in (phi, psi) if q is not None]
    angles = iter(np.degrees(dihedral_angles(positions, quads)).tolist() if quads else [])
    return [(label, next(angles) if phi is not None else None,
             next(angles) if psi is not None else None) for label, phi, psi in table]
