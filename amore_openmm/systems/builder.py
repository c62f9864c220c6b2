"""From heavy atoms to a finished peptide: hydrogens, minimisation, PDB and Amber files.

Hydrogens come from ``openmm.app.Modeller.addHydrogens`` (pH 7: charged termini unless capped
with ACE/NME), then the structure is minimised with OpenMM. Everything runs on the
``Reference`` platform with a fixed seed, so the same call gives the same coordinates on one
machine; another CPU may round differently inside the minimiser (compare built structures by
RMSD, dihedrals and energy, not bit for bit).

Atom order is the one ``Modeller.addHydrogens`` produces from the heavy-atom order of
:func:`~amore_openmm.systems.nerf.build_heavy_atoms` (N, CA, side chain, C, O[, OXT]; each
hydrogen right after its parent).
"""
from __future__ import annotations

import io
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import openmm
from openmm import app, unit

from ..data import atomic_write_text
from .common import load_forcefield
from .nerf import CAPS, per_residue_values, build_heavy_atoms, parse_sequence

__all__ = ["BuiltPeptide", "add_hydrogens", "create_system", "minimize_structure",
           "build_peptide", "write_pdb", "write_amber"]


# --------------------------------------------------------------------------------------------
# hydrogens, minimisation
# --------------------------------------------------------------------------------------------
@contextmanager
def _seeded_python_random(seed: int) -> Iterator[None]:
    """Modeller.addHydrogens draws from Python's global ``random``: seed it, then restore."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def add_hydrogens(topology: app.Topology, positions: np.ndarray,
                  forcefield: Sequence[str] = ("amber14-all.xml",), pH: float = 7.0,
                  seed: int = 0) -> tuple[app.Topology, np.ndarray]:
    """Add hydrogens with ``Modeller.addHydrogens`` (deterministic: seeded, Reference platform).

    Returns the new topology and positions (n, 3) in nm.
    """
    modeller = app.Modeller(topology, positions * unit.nanometer)
    with _seeded_python_random(seed):
        modeller.addHydrogens(load_forcefield(forcefield), pH=pH,
                              platform=openmm.Platform.getPlatformByName("Reference"))
    pos = modeller.getPositions().value_in_unit(unit.nanometer)
    return modeller.getTopology(), np.array([[v[0], v[1], v[2]] for v in pos])


def create_system(topology: app.Topology, forcefield: Sequence[str] = ("amber14-all.xml",),
                  implicit_solvent: str | None = None) -> openmm.System:
    """Vacuum/implicit-solvent System: no cutoff, no constraints (as the bundled manifests)."""
    files = list(forcefield) + ([implicit_solvent] if implicit_solvent else [])
    return load_forcefield(files).createSystem(topology, nonbondedMethod=app.NoCutoff,
                                           constraints=None, rigidWater=False)


def minimize_structure(topology: app.Topology, positions: np.ndarray,
                       forcefield: Sequence[str] = ("amber14-all.xml",),
                       implicit_solvent: str | None = None, tolerance: float = 0.5,
                       max_iterations: int = 0) -> tuple[np.ndarray, float]:
    """Local energy minimisation on the Reference platform (deterministic).

    Args:
        tolerance: RMS force criterion in kJ/mol/nm. max_iterations: 0 = until converged.

    Returns:
        (positions (n, 3) nm, potential energy kJ/mol).
    """
    system = create_system(topology, forcefield, implicit_solvent)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(ctx, tolerance * unit.kilojoule_per_mole /
                                         unit.nanometer, max_iterations)
    st = ctx.getState(getPositions=True, getEnergy=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    energy = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(energy):
        raise RuntimeError("minimisation ended at a non-finite energy: the built structure has "
                           "overlapping atoms; choose other backbone dihedrals")
    return np.asarray(pos, dtype=np.float64), float(energy)


@dataclass
class BuiltPeptide:
    """A built, hydrogenated and (optionally) minimised peptide.

    Attributes: topology; positions (n, 3) nm; energy (kJ/mol, None if not minimised);
    residues (names); phi/psi requested (degrees).
    """

    topology: app.Topology
    positions: np.ndarray
    energy: float | None
    residues: list[str]
    phi: list[float] = field(default_factory=list)
    psi: list[float] = field(default_factory=list)


def build_peptide(sequence: str | Sequence[str], phi: float | Sequence[float] | None = None,
                  psi: float | Sequence[float] | None = None,
                  omega: float | Sequence[float] | None = None,
                  chi: dict[int, Sequence[float]] | None = None, *,
                  forcefield: Sequence[str] = ("amber14-all.xml",),
                  implicit_solvent: str | None = None, pH: float = 7.0, minimize: bool = True,
                  tolerance: float = 0.5, seed: int = 0) -> BuiltPeptide:
    """Peptide from sequence: heavy atoms from dihedrals, hydrogens, minimisation.

    Example: ``build_peptide("ACE-ALA-NME", phi=-80, psi=75)`` or
    ``build_peptide("VGVAPG", phi=[-75]*6, psi=[145]*6, implicit_solvent="implicit/obc2.xml")``.
    Deterministic: the same arguments give the same coordinates.
    """
    names = parse_sequence(sequence)
    n_aa = len([n for n in names if n not in CAPS])
    phis = per_residue_values(phi, n_aa, -120.0, "phi")
    psis = per_residue_values(psi, n_aa, 130.0, "psi")
    top, pos = build_heavy_atoms(names, phis, psis, omega, chi)
    top, pos = add_hydrogens(top, pos, forcefield, pH=pH, seed=seed)
    energy = None
    if minimize:
        pos, energy = minimize_structure(top, pos, forcefield, implicit_solvent, tolerance)
    return BuiltPeptide(topology=top, positions=pos, energy=energy, residues=names,
                        phi=phis, psi=psis)


# --------------------------------------------------------------------------------------------
# writing (no dates or versions in the files: rebuilding gives identical bytes)
# --------------------------------------------------------------------------------------------
def write_pdb(path: str | Path, topology: app.Topology, positions: np.ndarray,
              remarks: Sequence[str] = ()) -> Path:
    """Write a PDB (OpenMM atom names, coordinates in Å with 3 decimals) atomically."""
    buf = io.StringIO()
    for line in remarks:
        buf.write(f"REMARK   1 {line}\n")
    app.PDBFile.writeModel(topology, np.asarray(positions) * 10.0 * unit.angstrom, buf,
                           keepIds=True)
    app.PDBFile.writeFooter(topology, buf)
    return atomic_write_text(Path(path), buf.getvalue())


def write_amber(prmtop: str | Path, inpcrd: str | Path, topology: app.Topology,
                system: openmm.System, positions: np.ndarray) -> tuple[Path, Path]:
    """Write an Amber prmtop/inpcrd pair with parmed from an OpenMM System.

    ``system`` must hold every bond's parameters (build it without constraints and with
    flexible water; the loader applies constraints). Three-site waters (HOH/WAT) get the
    Amber TIP3P H–H bond (0.15136 nm) that Amber and OpenMM's prmtop reader use to make water
    rigid. parmed stamps the prmtop with today's date; it is replaced by a fixed one so that a
    rebuild gives the same bytes.
    """
    import parmed  # local: only the builder needs parmed

    struct = parmed.openmm.load_topology(topology, system, xyz=np.asarray(positions) * 10.0)
    _add_water_hh_bonds(struct, parmed)
    prmtop, inpcrd = Path(prmtop), Path(inpcrd)
    prmtop.parent.mkdir(parents=True, exist_ok=True)
    tmp_top, tmp_crd = prmtop.with_name(prmtop.name + ".tmp"), inpcrd.with_name(
        inpcrd.name + ".tmp")
    struct.save(str(tmp_top), format="amber", overwrite=True)
    struct.save(str(tmp_crd), format="rst7", overwrite=True)
    lines = tmp_top.read_text().splitlines(keepends=True)
    lines = [("%VERSION  VERSION_STAMP = V0001.000  DATE = 01/01/00  00:00:00\n"
              if ln.startswith("%VERSION") else ln) for ln in lines]
    tmp_top.unlink()
    atomic_write_text(prmtop, "".join(lines))
    crd_text = tmp_crd.read_text()
    tmp_crd.unlink()
    atomic_write_text(inpcrd, crd_text)
    return prmtop, inpcrd


def _add_water_hh_bonds(struct, parmed) -> None:  # noqa: ANN001 - parmed types
    """Amber's rigid-water H–H bond (553 kcal/mol/Å², 1.5136 Å) for every 3-site water."""
    hh = None
    for res in struct.residues:
        if res.name not in ("HOH", "WAT") or len(res.atoms) != 3:
            continue
        hs = [a for a in res.atoms if a.element == 1]
        if len(hs) != 2 or hs[1] in hs[0].bond_partners:
            continue
        if hh is None:
            hh = parmed.BondType(553.0, 1.5136, list=struct.bond_types)
            struct.bond_types.append(hh)
        struct.bonds.append(parmed.Bond(hs[0], hs[1], type=hh))
