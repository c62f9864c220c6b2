"""The molecule of interest: atom selections and whole molecules in periodic boxes.

A solvated system carries hundreds of water molecules and some ions that χ must not see. The
*selection* (0-based atom indices) names the atoms that features, gradients, atom tables and
path files follow. By default it is every atom that is not water and not a monatomic ion;
users give their own as an mdtraj selection string (``"protein"``, ``"resname ALA"``,
``"not water and not name NA CL"``, ``"index 0 to 21"``).

:func:`make_whole` undoes periodic wrapping: each molecule that holds a selected atom is
rebuilt along its bonds through the minimum image, so no bond of the solute crosses the box.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from openmm import app, unit

from .common import SystemLoadError

__all__ = ["WATER_RESIDUES", "ION_RESIDUES", "default_selection", "select_atoms",
           "check_selection", "selection_problem", "make_whole", "molecules", "periodic_box"]

#: residue names of water models (Amber, CHARMM, GROMACS, OpenMM spellings)
WATER_RESIDUES = frozenset({
    "HOH", "WAT", "H2O", "SOL", "TIP", "TIP2", "TIP3", "TIP3P", "TIP4", "TIP4P", "TIP5",
    "TIP5P", "T3P", "T4P", "T5P", "SPC", "SPCE", "OPC", "OPC3", "DOD", "HHO", "OHH", "OH2"})
#: residue names of monatomic ions (a one-atom residue with one of these names is an ion)
ION_RESIDUES = frozenset({
    "NA", "NA+", "SOD", "K", "K+", "POT", "CL", "CL-", "CLA", "MG", "MG2", "MG+2", "CA",
    "CA2", "CAL", "ZN", "ZN2", "LI", "LI+", "RB", "CS", "CS+", "F", "F-", "BR", "BR-", "I",
    "I-", "IOD", "BA", "SR", "MN", "FE", "FE2", "CU", "CU1", "NI", "CO", "CD", "HG", "IP",
    "IM"})
#: elements that count as an ion when they make up a one-atom residue of another name
_ION_ELEMENTS = frozenset({"Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Mn", "Fe",
                           "Co", "Ni", "Cu", "Zn", "Cd", "Hg", "F", "Cl", "Br", "I"})
SELECTION_HELP = ("give an mdtraj selection string such as 'not water', 'protein', "
                  "'resname ALA', 'not water and not name NA CL' or 'index 0 to 21' "
                  "(see mdtraj's atom selection syntax)")


def is_water_residue(residue: app.topology.Residue) -> bool:
    if residue.name.upper() in WATER_RESIDUES:
        return True
    symbols = sorted(a.element.symbol if a.element is not None else "" for a in residue.atoms())
    # H, H, O plus up to two massless sites (TIP4P/TIP5P): a water whatever its name
    return [s for s in symbols if s] == ["H", "H", "O"] and len(symbols) <= 5


def _is_ion(residue: app.topology.Residue) -> bool:
    atoms = list(residue.atoms())
    if len(atoms) != 1:
        return False
    el = atoms[0].element
    return residue.name.upper() in ION_RESIDUES or (el is not None and el.symbol in _ION_ELEMENTS)


def default_selection(topology: app.Topology) -> np.ndarray:
    """Every atom that is not water and not a monatomic ion (0-based indices, sorted).

    A system made only of water and ions (nothing would be left) gets every atom.
    """
    keep = [a.index for r in topology.residues() if not (is_water_residue(r) or _is_ion(r))
            for a in r.atoms()]
    if not keep:
        keep = [a.index for a in topology.atoms()]
    return np.asarray(sorted(keep), dtype=np.int64)


def select_atoms(topology: app.Topology, text: str, min_atoms: int = 2,
                 where: str = "atoms") -> np.ndarray:
    """0-based atom indices matched by the mdtraj selection ``text`` (checked, sorted).

    Raises :class:`SystemLoadError` naming ``where`` and the selection when the text does not
    parse, matches nothing, or leaves fewer than ``min_atoms`` atoms.
    """
    import mdtraj  # local: only selections need it

    if not isinstance(text, str) or not text.strip():
        raise SystemLoadError(f"{where} = {text!r} is not a selection; {SELECTION_HELP}")
    top = mdtraj.Topology.from_openmm(topology)
    try:
        idx = np.asarray(top.select(text), dtype=np.int64)
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise SystemLoadError(f"{where} = {text!r} is not a valid mdtraj selection "
                              f"({selection_problem(text, exc)}); {SELECTION_HELP}") from None
    return check_selection(idx, topology.getNumAtoms(), min_atoms, f"{where} = {text!r}")


#: longest parser message quoted in an error (mdtraj's pyparsing messages list the grammar)
_PROBLEM_CHARS = 120


def selection_problem(text: str, exc: BaseException) -> str:
    """One short line saying where mdtraj's parser stopped in ``text``.

    mdtraj re-raises pyparsing's error as a ValueError whose message spells out the whole
    grammar (kilobytes); the position is on the pyparsing exception it was raised from."""
    for err in (exc, exc.__cause__, exc.__context__):
        loc = getattr(err, "loc", None)
        if isinstance(loc, int) and 0 <= loc <= len(text):
            while loc < len(text) and text[loc].isspace():
                loc += 1  # pyparsing points at the blank before the token
            rest = text[loc:].rstrip()
            found = f"at {rest[:20]!r}" if rest else "at the end"
            return f"parse error at character {loc + 1}, {found}"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if len(msg) <= _PROBLEM_CHARS else msg[:_PROBLEM_CHARS] + "…"


def check_selection(indices: Any, n_atoms: int, min_atoms: int = 2,
                    what: str = "selection") -> np.ndarray:
    """Validate 0-based indices: integers in range, at least ``min_atoms`` after de-duplication.

    Returns them sorted and unique; raises :class:`SystemLoadError` naming ``what``.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise SystemLoadError(f"{what}: expected a 1-D array of 0-based atom indices, got "
                              f"shape {idx.shape} dtype {idx.dtype}; {SELECTION_HELP}")
    idx = np.unique(idx.astype(np.int64))
    if idx.size == 0:
        raise SystemLoadError(f"{what} matches no atom of the system ({n_atoms} atoms); "
                              f"{SELECTION_HELP}")
    if idx[0] < 0 or idx[-1] >= n_atoms:
        raise SystemLoadError(f"{what}: atom index out of range 0..{n_atoms - 1}")
    if idx.size < min_atoms:
        raise SystemLoadError(f"{what} leaves {idx.size} atom(s), but χ needs at least "
                              f"{min_atoms}; widen the selection ({SELECTION_HELP})")
    return idx


# --------------------------------------------------------------------------------------------
# whole molecules
# --------------------------------------------------------------------------------------------
def molecules(topology: app.Topology) -> list[list[int]]:
    """Connected components of the bond graph (atom indices, each list in BFS order)."""
    return [order for order, _parents in _bfs_forest(topology)]


def _bfs_forest(topology: app.Topology, roots: np.ndarray | None = None
                ) -> list[tuple[list[int], dict[int, int]]]:
    """Per bonded molecule (that holds one of ``roots``, default: all): BFS order + parents."""
    n = topology.getNumAtoms()
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in topology.bonds():
        adj[a.index].append(b.index)
        adj[b.index].append(a.index)
    seen = np.zeros(n, dtype=bool)
    out = []
    for r in (range(n) if roots is None else roots):
        r = int(r)
        if seen[r]:
            continue
        seen[r] = True
        order, parent, queue = [r], {}, deque([r])
        while queue:
            i = queue.popleft()
            for j in adj[i]:
                if not seen[j]:
                    seen[j] = True
                    parent[j] = i
                    order.append(j)
                    queue.append(j)
        out.append((order, parent))
    return out


def _whole_plan(system: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """BFS levels (children, parents) over the molecules of the selection, and the molecules.

    Cached on the MolecularSystem (a copy with another selection gets its own plan).
    """
    key = "_whole_plan"
    cached = system.__dict__.get(key)
    if cached is not None and cached[0] is system.selection:
        return cached[1]
    depth: dict[int, int] = {}
    levels: dict[int, list[tuple[int, int]]] = {}
    mols = []
    for order, parent in _bfs_forest(system.topology, system.selection):
        mols.append(np.asarray(order, dtype=np.int64))
        depth[order[0]] = 0
        for j in order[1:]:
            depth[j] = depth[parent[j]] + 1
            levels.setdefault(depth[j], []).append((j, parent[j]))
    plan = [(np.array([c for c, _ in levels[d]]), np.array([p for _, p in levels[d]]))
            for d in sorted(levels)]
    system.__dict__[key] = (system.selection, (plan, mols))
    return plan, mols


def _minimum_image(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Shift displacements d (F, m, 3) by box vectors (F, 3, 3, rows a, b, c in OpenMM's
    reduced form: a along x, b in the xy plane) to their nearest image."""
    for k in (2, 1, 0):
        vec = box[:, k][:, None, :]                      # (F, 1, 3)
        d = d - np.round(d[..., k:k + 1] / vec[..., k:k + 1]) * vec
    return d


def periodic_box(system: Any) -> np.ndarray | None:
    """The default box vectors (3, 3) nm, rows a, b, c, of a periodic MolecularSystem (None
    when it is not periodic)."""
    if not system.is_periodic:
        return None
    return np.array([[float(c) for c in v.value_in_unit(unit.nanometer)]
                     for v in system.system.getDefaultPeriodicBoxVectors()])


def make_whole(positions: Any, system: Any, box: Any = None) -> np.ndarray:
    """Unwrap each molecule of the selection along its bonds through the minimum image.

    Args:
        positions: (F, n, 3) or (n, 3) nm, all atoms of ``system``.
        system: the :class:`~amore_openmm.systems.MolecularSystem` (its topology's bonds and
            its selection decide which molecules are rebuilt).
        box: box vectors (3, 3) or per frame (F, 3, 3) nm, rows a, b, c; default the
            System's default periodic box.

    Returns:
        A new float64 array of the input's shape. Each molecule that holds a selected atom is
        rebuilt from its first atom outwards so that every bond is its minimum image; then
        every further molecule is moved by whole box vectors to the image whose centroid is
        nearest the first molecule's. Other atoms are unchanged. Not periodic: a copy of the
        input.
    """
    x = np.array(positions, dtype=np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (system.n_atoms, 3):
        raise ValueError(f"positions: expected shape (F, {system.n_atoms}, 3) in nm, got "
                         f"{np.shape(positions)}")
    if not system.is_periodic:
        return x[0] if single else x
    box = periodic_box(system) if box is None else np.asarray(box, dtype=np.float64)
    box = np.broadcast_to(box, (x.shape[0], 3, 3)) if box.ndim == 2 else box
    if box.shape != (x.shape[0], 3, 3):
        raise ValueError(f"box: expected shape (3, 3) or ({x.shape[0]}, 3, 3), got {box.shape}")
    plan, mols = _whole_plan(system)
    for children, parents in plan:
        x[:, children] = x[:, parents] + _minimum_image(x[:, children] - x[:, parents], box)
    if len(mols) > 1:
        ref = x[:, mols[0]].mean(axis=1, keepdims=True)
        for mol in mols[1:]:
            c = x[:, mol].mean(axis=1, keepdims=True)
            x[:, mol] += _minimum_image(c - ref, box) - (c - ref)
    return x[0] if single else x
