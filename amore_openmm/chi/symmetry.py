"""Symmetry-aware pairwise distances: χ that does not see permutations of equivalent atoms.

A methyl rotation by 120° only permutes three identical hydrogens, yet labelled distances
d(H1, X), d(H2, X), d(H3, X) change a lot, so ISOKANN can learn the rotor as a "slow process".
:class:`SymmetricPairwiseDistances` (featurizer kind ``"pairwise_sym"``) keeps every atom of
the molecule and makes the features invariant under permutations within each group of
chemically equivalent atoms, by *sorting* (which keeps all the information a symmetric pooling
such as the mean would lose):

* singleton i – singleton j: the distance itself;
* group G – singleton j: the |G| distances d(g, j), g ∈ G, sorted ascending;
* group G – group H: the |G|·|H| distances of the block, flattened and sorted;
* within group G: its |G|(|G|−1)/2 distances, sorted.

The feature count equals that of all labelled pairs. Sorting is a piecewise permutation, so
χ stays differentiable almost everywhere and invariant to rigid motion (Σᵢ∇ᵢχ = 0).
Groups come from the topology's bonds: see :func:`equivalent_atom_groups`.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .featurizers import as_batch

__all__ = ["SymmetricPairwiseDistances", "equivalent_atom_groups", "group_label"]


def _symbol(atom: Any) -> str:
    return atom.element.symbol if atom.element is not None else ""


def equivalent_atom_groups(topology: Any, atoms: Sequence[int] | None = None,
                           methylene: bool = False) -> list[list[int]]:
    """Groups of chemically equivalent atoms (0-based, each sorted, size ≥ 2) from bonds.

    Found by element and bonded heavy atom:

    * the hydrogens of a carbon with three or more H (methyl: ACE/NME CH3, Ala CB, Val, Leu,
      Ile, Thr, Met methyls);
    * the hydrogens of a nitrogen with three H (NH3⁺: N-terminus, Lys NZ);
    * the two oxygens of a carbon that carries exactly two terminal (degree-1) oxygens
      (carboxylate: C-terminal O/OXT, Asp OD1/OD2, Glu OE1/OE2; a protonated acid is left out
      because its OH oxygen is not terminal);
    * with ``methylene=True`` also the two H of a CH2 (diastereotopic in a chiral molecule:
      they do not exchange in MD, so the default leaves them labelled).

    Amide NH2 (Asn, Gln, Arg) and ring flips (Phe/Tyr, guanidinium) are not grouped. A
    topology without bonds gives no groups. Only atoms in ``atoms`` (default: all) are grouped.
    """
    keep = None if atoms is None else {int(a) for a in atoms}
    neighbours: dict[int, list[Any]] = {}
    by_index: dict[int, Any] = {a.index: a for a in topology.atoms()}
    for a, b in topology.bonds():
        neighbours.setdefault(a.index, []).append(b)
        neighbours.setdefault(b.index, []).append(a)
    groups: list[list[int]] = []
    for idx in sorted(neighbours):
        centre, nbrs = by_index[idx], neighbours[idx]
        sym = _symbol(centre)
        hs = [n.index for n in nbrs if _symbol(n) == "H"]
        if (sym == "C" and (len(hs) >= 3 or (methylene and len(hs) == 2))) or \
                (sym == "N" and len(hs) == 3):
            groups.append(sorted(hs))
        if sym == "C":
            terminal_o = [n.index for n in nbrs
                          if _symbol(n) == "O" and len(neighbours.get(n.index, [])) == 1]
            if len(terminal_o) == 2:
                groups.append(sorted(terminal_o))
    if keep is not None:
        groups = [[a for a in g if a in keep] for g in groups]
    return sorted((g for g in groups if len(g) >= 2), key=lambda g: g[0])


def group_label(names: Sequence[str], group: Sequence[int]) -> str:
    """``{ALA2:HB1|HB2|HB3}`` from per-atom labels ``RES#:NAME``."""
    labels = [names[a] for a in group]
    res = [lab.rsplit(":", 1)[0] if ":" in lab else "" for lab in labels]
    if all(":" in lab for lab in labels) and len(set(res)) == 1:
        return "{" + res[0] + ":" + "|".join(lab.rsplit(":", 1)[1] for lab in labels) + "}"
    return "{" + "|".join(labels) + "}"


def _blocks(units: list[list[int]], names: list[str]
            ) -> tuple[list[tuple[int, int]], list[str], list[list[tuple[int, int]]], list[str]]:
    """Plain pairs (+ names) and sorted blocks of pairs (+ base names) over the units.

    A unit is one atom ([i]) or one group; unit pairs (u < v) and each group with itself
    give the blocks; a block of one pair between two singletons is a plain feature.
    """
    label = [names[u[0]] if len(u) == 1 else group_label(names, u) for u in units]
    plain: list[tuple[int, int]] = []
    plain_names: list[str] = []
    blocks: list[list[tuple[int, int]]] = []
    block_names: list[str] = []
    for u, unit in enumerate(units):
        if len(unit) > 1:
            blocks.append(list(combinations(unit, 2)))
            block_names.append(f"d({label[u]})")
        for v in range(u + 1, len(units)):
            pairs = [(a, b) for a in unit for b in units[v]]
            if len(pairs) == 1:
                plain.append(pairs[0])
                plain_names.append(f"d({label[u]},{label[v]})")
            else:
                blocks.append(pairs)
                block_names.append(f"d({label[u]},{label[v]})")
    return plain, plain_names, blocks, block_names


class SymmetricPairwiseDistances(nn.Module):
    """Pairwise distances over ``atoms``, invariant under permutations within ``groups``.

    Args:
        n_atoms: atoms in the System (positions may have more rows; extra rows are ignored).
        atoms: the atoms of the molecule (default: all ``n_atoms``); every one is featurized.
        groups: lists of equivalent atoms (subsets of ``atoms``, disjoint), e.g. from
            :func:`equivalent_atom_groups`.
        names: per-atom labels (length ``n_atoms``) for the feature names. A sorted feature is
            named like ``d({ALA2:HB1|HB2|HB3},ACE1:C)[2/3]``: the 2nd smallest of 3 distances.

    Features: the plain (singleton–singleton) distances first, in the order of the atoms,
    then the sorted blocks.
    """

    kind = "pairwise_sym"
    __jit_ignored_attributes__ = ["feature_names", "atom_names", "groups", "atoms_sel"]
    __jit_unused_properties__ = ["n_features", "featurized_atoms"]

    def __init__(self, n_atoms: int, atoms: Sequence[int] | None = None,
                 groups: Sequence[Sequence[int]] = (),
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.n_atoms = int(n_atoms)
        sel = np.arange(self.n_atoms) if atoms is None else np.asarray(list(atoms), np.int64)
        self.groups = [sorted(int(a) for a in g) for g in groups]
        self._check(sel)
        self.atom_names = list(names) if names is not None else \
            [str(k) for k in range(self.n_atoms)]
        if len(self.atom_names) != self.n_atoms:
            raise ValueError(f"SymmetricPairwiseDistances: names has {len(self.atom_names)} "
                             f"labels for {self.n_atoms} atoms")
        grouped = {a for g in self.groups for a in g}
        first = {g[0]: g for g in self.groups}
        units = [first[a] if a in first else [int(a)] for a in sorted(sel.tolist())
                 if a in first or a not in grouped]
        plain, plain_names, blocks, block_names = _blocks(units, self.atom_names)
        self._register(plain, blocks)
        self.atoms_sel = sorted(int(a) for a in sel)
        self.feature_names = plain_names + [f"{nm}[{r + 1}/{len(b)}]"
                                            for nm, b in zip(block_names, blocks)
                                            for r in range(len(b))]

    def _check(self, sel: np.ndarray) -> None:
        if len(sel) < 2:
            raise ValueError("SymmetricPairwiseDistances needs at least two atoms")
        if len(np.unique(sel)) != len(sel) or sel.min() < 0 or sel.max() >= self.n_atoms:
            raise ValueError(f"SymmetricPairwiseDistances: atoms= must be distinct indices in "
                             f"[0, {self.n_atoms})")
        members = [a for g in self.groups for a in g]
        if len(set(members)) != len(members) or not set(members) <= set(sel.tolist()) or \
                any(len(g) < 2 for g in self.groups):
            raise ValueError("SymmetricPairwiseDistances: groups must be disjoint sets of at "
                             "least two atoms, all inside atoms=")

    def _register(self, plain: list[tuple[int, int]], blocks: list[list[tuple[int, int]]]
                  ) -> None:
        """Buffers: all pairs (i, j); plain pair indices; blocks padded to the widest with the
        index of an appended +inf column (it sorts last and is dropped by ``keep``)."""
        pairs = list(plain) + [p for b in blocks for p in b]
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        width = max([len(b) for b in blocks], default=1)
        pad = np.full((len(blocks), width), len(pairs), dtype=np.int64)
        keep = []
        start = len(plain)
        for k, b in enumerate(blocks):
            pad[k, :len(b)] = np.arange(start, start + len(b))
            keep.extend(range(k * width, k * width + len(b)))
            start += len(b)
        self.register_buffer("i", torch.as_tensor(arr[:, 0].copy()))
        self.register_buffer("j", torch.as_tensor(arr[:, 1].copy()))
        self.register_buffer("plain", torch.arange(len(plain), dtype=torch.long))
        self.register_buffer("blocks", torch.as_tensor(pad))
        self.register_buffer("keep", torch.as_tensor(np.asarray(keep, dtype=np.int64)))

    @property
    def n_features(self) -> int:
        return int(self.plain.shape[0] + self.keep.shape[0])

    @property
    def featurized_atoms(self) -> np.ndarray:
        """Every atom of ``atoms`` (sorted, 0-based)."""
        return np.asarray(self.atoms_sel, dtype=np.int64)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = as_batch(positions)
        diff = x[:, self.j] - x[:, self.i]
        d = torch.sqrt((diff * diff).sum(-1))
        pad = torch.full((d.shape[0], 1), float("inf"), dtype=d.dtype, device=d.device)
        blk = torch.cat([d, pad], dim=1)[:, self.blocks]
        srt = torch.sort(blk, dim=-1)[0].reshape(d.shape[0], -1)[:, self.keep]
        return torch.cat([d[:, self.plain], srt], dim=1)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_atoms": self.n_atoms, "atoms": list(self.atoms_sel),
                "groups": [list(g) for g in self.groups], "names": list(self.atom_names)}
