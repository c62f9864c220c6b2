"""The bundled systems in ``systems/``, rebuilt from sequence by the project's own code.

``build_bundled_systems(out_dir)`` writes every bundled folder (structure files and a
``system.toml`` manifest). Files carry no dates or versions: a rebuild on the same machine
gives identical bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import openmm
from openmm import app, unit

from ..data import atomic_write_text
from .builder import build_peptide, create_system, write_amber, write_pdb
from .common import load_forcefield
from .loader import systems_root
from .manifest import toml_text
from .nerf import PRO_PHI

__all__ = ["BundledConformation", "VGVAPG_CONFORMATIONS", "ALANINE_PHI_PSI",
           "CHIGNOLIN_PHI_PSI", "BUNDLED_BUILDERS", "build_bundled_systems",
           "build_solvated_alanine"]


@dataclass(frozen=True)
class BundledConformation:
    """One starting conformation: a name and per-residue (φ, ψ) in degrees."""

    name: str
    description: str
    phi: tuple[float, ...]
    psi: tuple[float, ...]


def _turn(kind: str, at: int, base: tuple[float, float] = (-120.0, 130.0)
          ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """VGVAPG dihedrals: β strand with a two-residue turn at residues at, at+1 (0-based)."""
    turns = {"I": ((-60.0, -30.0), (-90.0, 0.0)), "II": ((-60.0, 120.0), (80.0, 0.0)),
             "II'": ((60.0, -120.0), (-80.0, 0.0))}
    phi, psi = [base[0]] * 6, [base[1]] * 6
    for k, (f, s) in enumerate(turns[kind]):
        phi[at + k], psi[at + k] = f, s
    phi[4] = PRO_PHI
    return tuple(phi), tuple(psi)


def _uniform(f: float, s: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    phi = [f] * 6
    phi[4] = PRO_PHI
    return tuple(phi), tuple([s] * 6)


#: VGVAPG starting structures: open (strand, PPII, fully extended) and closed (helical, β-turns
#: of types I, II, II' at different positions). Proline's φ is fixed at −65° by its ring.
VGVAPG_CONFORMATIONS: tuple[BundledConformation, ...] = (
    BundledConformation("c01_beta", "open: beta strand (-120, 130)", *_uniform(-120.0, 130.0)),
    BundledConformation("c02_ppii", "open: polyproline II (-75, 145)", *_uniform(-75.0, 145.0)),
    BundledConformation("c03_extended", "open: fully extended (-150, 155)",
                        *_uniform(-150.0, 155.0)),
    BundledConformation("c04_helical", "closed: right-handed helical (-60, -45)",
                        *_uniform(-60.0, -45.0)),
    BundledConformation("c05_turnII_V1G2", "closed: type II turn at Val1-Gly2",
                        *_turn("II", 0)),
    BundledConformation("c06_turnI_G2V3", "closed: type I turn at Gly2-Val3", *_turn("I", 1)),
    BundledConformation("c07_turnIIp_G2V3", "closed: type II' turn at Gly2-Val3",
                        *_turn("II'", 1)),
    BundledConformation("c08_turnI_V3A4", "closed: type I turn at Val3-Ala4", *_turn("I", 2)),
    BundledConformation("c09_turnII_V3A4", "closed: type II turn at Val3-Ala4",
                        *_turn("II", 2)),
    BundledConformation("c10_turnI_A4P5", "closed: type I turn at Ala4-Pro5 (Pro at i+2)",
                        *_turn("I", 3)),
)

ALANINE_PHI_PSI = (-80.0, 75.0)  # C7eq, the vacuum minimum of alanine dipeptide
#: chignolin start: extended strands G1-D3 and T8-G10 around a turn P4-G7 (P4, E5, T6
#: helical, G7 left-handed), roughly the NMR structure's backbone (PDB 1UAO)
CHIGNOLIN_PHI_PSI = ((-80.0, -140.0, -120.0, -65.0, -90.0, -100.0, 80.0, -120.0, -120.0, -90.0),
                     (150.0, 160.0, 160.0, -30.0, 0.0, 10.0, 20.0, 150.0, 140.0, 150.0))
TIP3P_FORCEFIELD = ("amber14-all.xml", "amber14/tip3p.xml")
#: cubic box edge (nm; ≈ 0.9 nm of water around the solute), PME cutoff (nm), minimiser steps
TIP3P_BOX_NM, TIP3P_CUTOFF_NM, TIP3P_MIN_ITERATIONS = 2.4, 0.9, 200
_BUILT_BY = "built by amore_openmm.systems (systems/build.py); do not edit by hand"


def _build_muller_brown(folder: Path) -> list[Path]:
    text = toml_text({
        "system": {"name": "muller_brown", "kind": "muller_brown",
                   "description": "one particle in the 4-term Mueller-Brown potential (x, y), "
                                  "z held near 0 by a spring; overdamped dynamics"},
        "dynamics": {"sigma": 5.0, "timestep": 0.0001, "lag_steps": 10,
                     "integrator": "brownian", "friction": 1.0},
        "chi": {"featurizer": "coordinates"},
    }, header=[_BUILT_BY, "beta = 2/sigma^2 (kT = 12.5 kJ/mol), m*gamma = 1, lag 1e-3"])
    return [atomic_write_text(folder / "system.toml", text)]


def _build_alanine(folder: Path) -> list[Path]:
    phi, psi = ALANINE_PHI_PSI
    built = build_peptide("ACE-ALA-NME", phi=phi, psi=psi)
    pdb = write_pdb(folder / "alanine_dipeptide.pdb", built.topology, built.positions, [
        _BUILT_BY, f"ACE-ALA-NME from phi={phi:g} psi={psi:g}, hydrogens by Modeller, "
                   "minimised with amber14-all in vacuum"])
    # The Amber files carry the PDB's (rounded) coordinates so both routes see one structure.
    pdbf = app.PDBFile(str(pdb))
    pos = pdbf.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    system = create_system(pdbf.topology)
    prm, crd = write_amber(folder / "alanine_dipeptide.prmtop",
                           folder / "alanine_dipeptide.inpcrd", pdbf.topology, system, pos)
    text = toml_text({
        "system": {"name": "alanine_dipeptide", "kind": "openmm",
                   "description": "ACE-ALA-NME (22 atoms), amber14-all, vacuum",
                   "pdb": pdb.name, "prmtop": prm.name, "inpcrd": crd.name,
                   "forcefield": ["amber14-all.xml"], "nonbonded_method": "NoCutoff",
                   "constraints": "None"},
        "dynamics": {"temperature": 310.0, "friction": 1.0, "timestep": 0.002,
                     "integrator": "langevin_middle", "lag_steps": 100},
        "chi": {"featurizer": "pairwise_sym"},
    }, header=[_BUILT_BY, "the PDB is loaded with the force field; prmtop/inpcrd (parmed) "
               "hold the same system for Amber tools"])
    return [pdb, prm, crd, atomic_write_text(folder / "system.toml", text)]


def _build_vgvapg(folder: Path, conformations: Sequence[BundledConformation] | None = None
                  ) -> list[Path]:
    confs = list(VGVAPG_CONFORMATIONS if conformations is None else conformations)
    written: list[Path] = []
    rel: list[str] = []
    for conf in confs:
        built = build_peptide("VGVAPG", phi=conf.phi, psi=conf.psi,
                              implicit_solvent="implicit/obc2.xml")
        path = write_pdb(folder / "conformations" / f"{conf.name}.pdb", built.topology,
                         built.positions, [_BUILT_BY, f"VGVAPG {conf.description}",
                                           "phi " + " ".join(f"{x:g}" for x in conf.phi),
                                           "psi " + " ".join(f"{x:g}" for x in conf.psi)])
        written.append(path)
        rel.append(f"conformations/{conf.name}.pdb")
    text = toml_text({
        "system": {"name": "vgvapg", "kind": "openmm",
                   "description": "VGVAPG, charged termini (73 atoms), amber14-all + OBC2 "
                                  "implicit solvent; open and closed (beta-turn) starts",
                   "pdb": rel[0], "conformations": rel,
                   "forcefield": ["amber14-all.xml"], "implicit_solvent": "implicit/obc2.xml",
                   "nonbonded_method": "NoCutoff", "constraints": "None"},
        "dynamics": {"temperature": 298.0, "friction": 1.0, "timestep": 0.002,
                     "integrator": "langevin_middle", "lag_steps": 250},
        "chi": {"featurizer": "pairwise_sym"},
    }, header=[_BUILT_BY, "psi of the central valine (Val3): atoms 25, 27, 39, 41 (0-based)"])
    written.append(atomic_write_text(folder / "system.toml", text))
    return written


def build_solvated_alanine(folder: str | Path, edge_nm: float = TIP3P_BOX_NM) -> list[Path]:
    """Alanine dipeptide (the bundled structure) in a cubic TIP3P box of edge ``edge_nm``,
    PME, written to ``folder`` as prmtop/inpcrd + system.toml (load it with
    ``load_system(folder)``). The bundled ``alanine_dipeptide_tip3p`` is the default edge
    (2.4 nm, 1,288 atoms); 3.1 nm gives 2,626 atoms, 3.85 nm 5,497. Another edge is
    named ``alanine_dipeptide_water_box`` (generic presets: the bundled one's are sized for
    its 1,288 atoms)."""
    edge = float(edge_nm)
    if not edge > 2 * TIP3P_CUTOFF_NM:
        raise ValueError(f"edge_nm must exceed twice the {TIP3P_CUTOFF_NM} nm cutoff, got "
                         f"{edge_nm}")
    folder = Path(folder)
    name = "alanine_dipeptide_tip3p" if edge == TIP3P_BOX_NM else "alanine_dipeptide_water_box"
    rel = Path("alanine_dipeptide") / "alanine_dipeptide.pdb"
    # the vacuum structure built beside it (same call), else the bundled one
    src_path = folder.parent / rel if (folder.parent / rel).is_file() else systems_root() / rel
    src = app.PDBFile(str(src_path))
    ff = load_forcefield(TIP3P_FORCEFIELD)
    mod = app.Modeller(src.topology, src.positions)
    mod.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(edge, edge, edge) * unit.nanometer,
                   neutralize=True)  # neutral solute: no ions added
    kwargs = dict(nonbondedMethod=app.PME, nonbondedCutoff=TIP3P_CUTOFF_NM * unit.nanometer)
    # addSolvent leaves close contacts (positive energy): relax them with the production
    # constraints, on the Reference platform (deterministic on one machine)
    ctx = openmm.Context(ff.createSystem(mod.topology, constraints=app.HBonds, rigidWater=True,
                                         **kwargs), openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(mod.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, TIP3P_MIN_ITERATIONS)
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    # parmed needs every bond's parameters: write the flexible System; the loader applies
    # HBond constraints and rigid water (the manifest says so)
    system = ff.createSystem(mod.topology, constraints=None, rigidWater=False, **kwargs)
    prm, crd = write_amber(folder / "alanine_dipeptide_tip3p.prmtop",
                           folder / "alanine_dipeptide_tip3p.inpcrd", mod.topology, system, pos)
    n_water = sum(r.name == "HOH" for r in mod.topology.residues())
    text = toml_text({
        "system": {"name": name, "kind": "openmm",
                   "description": f"ACE-ALA-NME in {n_water} TIP3P waters "
                                  f"({mod.topology.getNumAtoms()} atoms), cubic box "
                                  f"{edge:.3f} nm, amber14-all + amber14/tip3p, PME",
                   "prmtop": prm.name, "inpcrd": crd.name,
                   "nonbonded_method": "PME", "nonbonded_cutoff": TIP3P_CUTOFF_NM,
                   "constraints": "HBonds", "atoms": "not water"},
        "dynamics": {"temperature": 310.0, "friction": 1.0, "timestep": 0.002,
                     "integrator": "langevin_middle", "lag_steps": 100},
        "chi": {"featurizer": "pairwise_sym"},
    }, header=[_BUILT_BY, f"solvated with Modeller.addSolvent, minimised "
               f"({TIP3P_MIN_ITERATIONS} iterations); HBond constraints and rigid water are "
               "applied when the prmtop is loaded"])
    return [prm, crd, atomic_write_text(folder / "system.toml", text)]


def _build_alanine_tip3p(folder: Path) -> list[Path]:
    return build_solvated_alanine(folder)


def _build_chignolin(folder: Path) -> list[Path]:
    """Chignolin GYDPETGTWG from sequence in a β-hairpin-like start, OBC2 implicit solvent."""
    phi, psi = CHIGNOLIN_PHI_PSI
    built = build_peptide("GYDPETGTWG", phi=phi, psi=psi, implicit_solvent="implicit/obc2.xml")
    pdb = write_pdb(folder / "chignolin.pdb", built.topology, built.positions, [
        _BUILT_BY, "GYDPETGTWG, charged termini, hairpin-like start (turn P4-G7)",
        "phi " + " ".join(f"{x:g}" for x in phi), "psi " + " ".join(f"{x:g}" for x in psi)])
    text = toml_text({
        "system": {"name": "chignolin", "kind": "openmm",
                   "description": f"chignolin GYDPETGTWG, charged termini "
                                  f"({built.topology.getNumAtoms()} atoms), amber14-all + "
                                  "OBC2 implicit solvent; beta-hairpin-like start",
                   "pdb": pdb.name, "forcefield": ["amber14-all.xml"],
                   "implicit_solvent": "implicit/obc2.xml", "nonbonded_method": "NoCutoff",
                   "constraints": "None"},
        "dynamics": {"temperature": 300.0, "friction": 1.0, "timestep": 0.002,
                     "integrator": "langevin_middle", "lag_steps": 250},
        "chi": {"featurizer": "pairwise_sym"},
    }, header=[_BUILT_BY, "built from sequence with the NeRF builder, hydrogens by Modeller, "
               "minimised with amber14-all + OBC2"])
    return [pdb, atomic_write_text(folder / "system.toml", text)]


#: bundled system name -> function(folder) that writes it and returns the files (the solvated
#: alanine dipeptide reads the vacuum one's PDB, so it comes after it)
BUNDLED_BUILDERS = {"muller_brown": _build_muller_brown, "alanine_dipeptide": _build_alanine,
                    "vgvapg": _build_vgvapg, "alanine_dipeptide_tip3p": _build_alanine_tip3p,
                    "chignolin": _build_chignolin}


def build_bundled_systems(out_dir: str | Path, names: Sequence[str] | None = None
                          ) -> dict[str, list[Path]]:
    """(Re)build the bundled systems into ``out_dir``/<name>/; returns the files written.

    ``names``: any of :data:`BUNDLED_BUILDERS` (default: all).
    """
    out = Path(out_dir)
    names = list(BUNDLED_BUILDERS) if names is None else list(names)
    unknown = [n for n in names if n not in BUNDLED_BUILDERS]
    if unknown:
        raise ValueError(f"names: unknown bundled system(s) {unknown}; known: "
                         f"{', '.join(BUNDLED_BUILDERS)}")
    return {n: BUNDLED_BUILDERS[n](out / n) for n in names}
