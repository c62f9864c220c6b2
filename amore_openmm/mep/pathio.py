"""Writing χ-MEPs for viewers: a multi-model PDB (B-factor = χ-sensitivity) and a DCD."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data import atomic_path, atomic_write_text
from .path import ChiPath

__all__ = ["write_path_pdb", "write_path_dcd", "path_bfactors"]


def path_bfactors(chipath: ChiPath, sensitivity: Any = None, scale: float = 100.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(M, n) B-factors and (M,) level-set bin per node (−1 without ``sensitivity``).

    Without ``sensitivity``: the node's own ‖∇ᵢχ(x_node)‖², divided by its largest atom value,
    times ``scale``. With a :class:`~amore_openmm.sensitivity.Sensitivity`: the level-set
    ensemble average ⟨‖∇ᵢχ‖²⟩_z of the χ bin holding the node's χ, normalised the same way.
    Entries that are NaN (an empty bin, an atom χ does not featurize) become 0.
    """
    if sensitivity is not None:
        bins = np.asarray(sensitivity.bin_index(chipath.chi))
        vals = np.asarray(sensitivity.levelset, dtype=float)[:, bins].T
    else:
        bins = np.full(len(chipath), -1)
        vals = np.asarray(chipath.atom_grad_sq, dtype=float)
    vals = np.where(np.isfinite(vals), vals, 0.0)
    top = vals.max(axis=1, keepdims=True)
    return scale * np.divide(vals, top, out=np.zeros_like(vals), where=top > 0), bins


def _header(chipath: ChiPath, sensitivity: Any, scale: float) -> list[str]:
    if sensitivity is None:
        what = ("B-factor = node's own |grad_i chi(x_node)|^2 / max_j |grad_j chi(x_node)|^2"
                f" * {scale:g}")
    else:
        what = ("B-factor = level-set ensemble average <|grad_i chi|^2>_z of the chi bin of "
                f"the node, / its max over atoms * {scale:g}; empty bin or atom not "
                "featurized: 0")
    cert = chipath.certificate
    lines = ["REMARK   1 AMORE chi-MEP, one MODEL per node, ordered by chi",
             f"REMARK   1 {what}",
             f"REMARK   1 certified {chipath.n_certified} of {len(chipath)} nodes"]
    if cert:
        lines.append(f"REMARK   1 certificate |chi-z| <= {cert.get('chi_error')}, RMS orth "
                     f"force <= {cert.get('orth_force')} kJ/mol/nm, energy <= "
                     f"{cert.get('energy_window_kT')} kT above the lowest node, kT "
                     f"{cert.get('kT', float('nan')):.4g} kJ/mol")
    return lines


def _model_remark(chipath: ChiPath, m: int, bin_: int, sensitivity: Any) -> list[str]:
    p = chipath
    status = "certified" if p.certified[m] else "NOT certified"
    lines = [f"REMARK   2 node {m} {status} chi {p.chi[m]:.5f} z {p.z[m]:.5f} energy "
             f"{p.energy[m]:.3f} kJ/mol rel {p.energy_rel[m]:.3f}",
             f"REMARK   2 node {m} orth force {p.orth_force[m]:.3g} kJ/mol/nm (RMS/comp) "
             f"iterations {int(p.iterations[m])} converged {bool(p.converged[m])} "
             f"kappa {p.kappa[m]:.3g}"]
    if sensitivity is not None:
        count = int(np.asarray(sensitivity.counts)[bin_])
        empty = not np.isfinite(np.asarray(sensitivity.levelset)[:, bin_]).any()
        lines.append(f"REMARK   2 node {m} B-factor from level-set bin {bin_} ({count} "
                     f"samples{'; empty bin: B = 0' if empty else ''})")
    return lines


def write_path_pdb(path: str | os.PathLike, chipath: ChiPath, topology: Any,
                   sensitivity: Any = None, bfactor_scale: float = 100.0,
                   atoms: Any = None) -> Path:
    """Multi-model PDB of the path (one MODEL per node), χ-sensitivity in the B-factor.

    ``atoms``: 0-based indices of the atoms to write (e.g. ``MolecularSystem.selection``:
    the solute without its water box); default every atom. Atom serial numbers count the
    written atoms; B-factors are normalised over them.

    What the B-factor holds is decided by ``sensitivity`` and written in REMARK 1:

    * ``sensitivity=None``: the node's *own* per-atom ‖∇ᵢχ(x_node)‖² (from
      ``chipath.atom_grad_sq``), divided by its maximum over atoms, times ``bfactor_scale``.
    * a :class:`~amore_openmm.sensitivity.Sensitivity`: the *level-set ensemble average*
      ⟨‖∇ᵢχ‖²⟩_z of the χ bin that holds the node's χ (not the node's own gradient),
      normalised the same way; an empty bin or an atom that χ does not featurize gives 0.

    Every MODEL has REMARK 2 lines with the node's χ, z, energy, energy above the lowest
    certified node, whether it is certified, its orthogonal force, minimiser iterations and κ
    (and, with ``sensitivity``, the bin and its sample count).
    """
    top = getattr(topology, "topology", topology)
    all_atoms = list(top.atoms())
    if len(all_atoms) != chipath.n_atoms:
        raise ValueError(f"topology has {len(all_atoms)} atoms but the path has "
                         f"{chipath.n_atoms}")
    keep = np.arange(len(all_atoms)) if atoms is None else np.asarray(atoms, dtype=np.int64)
    if keep.ndim != 1 or keep.size == 0 or keep.min() < 0 or keep.max() >= chipath.n_atoms:
        raise ValueError(f"atoms must be 0-based indices in 0..{chipath.n_atoms - 1}")
    bf, bins = path_bfactors(chipath, sensitivity, bfactor_scale)
    if atoms is not None:   # normalised over the written atoms
        bf = bf[:, keep]
        peak = bf.max(axis=1, keepdims=True)
        bf = bfactor_scale * np.divide(bf, peak, out=np.zeros_like(bf), where=peak > 0)
    lines = _header(chipath, sensitivity, bfactor_scale)
    if atoms is not None:
        lines.append(f"REMARK   1 {keep.size} of {chipath.n_atoms} atoms (the selection)")
    for m in range(len(chipath)):
        lines.append(f"MODEL     {m + 1:4d}")
        lines.extend(_model_remark(chipath, m, int(bins[m]), sensitivity))
        xyz = chipath.positions[m][keep] * 10.0  # nm -> Å
        for i, a in enumerate(all_atoms[k] for k in keep):
            name = a.name if len(a.name) >= 4 else f" {a.name:<3s}"
            chain = (a.residue.chain.id or "A")[:1]
            elem = a.element.symbol if a.element is not None else ""
            resid = str(a.residue.id)[-4:]
            lines.append(
                f"{'HETATM' if a.residue.name == 'MB' else 'ATOM  '}{(i + 1) % 100000:5d} "
                f"{name[:4]:4s} {a.residue.name[:3]:>3s} {chain}{resid:>4s}    "
                f"{xyz[i, 0]:8.3f}{xyz[i, 1]:8.3f}{xyz[i, 2]:8.3f}{1.0:6.2f}"
                f"{min(bf[m, i], 999.99):6.2f}          {elem:>2s}")
        lines.append("ENDMDL")
    lines.append("END")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_path_dcd(path: str | os.PathLike, chipath: ChiPath, topology: Any) -> Path:
    """Write the path nodes as a DCD trajectory (via mdtraj)."""
    with atomic_path(path, suffix=".dcd") as tmp:
        chipath.to_mdtraj(topology).save_dcd(str(tmp))
    return Path(path)
