"""The peptide builder (NeRF, hydrogens, minimisation), numpy dihedrals and the bundled builds.

Minimised structures are not bit-portable across CPUs (the minimiser's path depends on the
last bits of every force), so built structures are compared with committed files by what
matters: heavy-atom RMSD after superposition, backbone dihedrals and energy. Bit-identity is
tested only within one run (the same call twice).
"""
from __future__ import annotations

import math
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import app, unit

from amore_openmm import systems
from amore_openmm.systems import load_system

REPO = Path(__file__).resolve().parent.parent
ALA_DIR = REPO / "systems" / "alanine_dipeptide"
#: cross-machine tolerances for a minimised build against the committed file
RMSD_TOL_NM, DIHEDRAL_TOL_DEG, ENERGY_TOL_KJ = 0.02, 5.0, 3.0


def superposed_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (nm) of two (n, 3) structures after optimal superposition (Kabsch)."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(((a @ rot - b) ** 2).sum(1).mean()))


def _energy(topology: app.Topology, pos: np.ndarray, implicit: str | None) -> float:
    system = systems.create_system(topology, implicit_solvent=implicit)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
        unit.kilojoule_per_mole)


def assert_same_structure(top: app.Topology, built: np.ndarray, committed_pdb: Path,
                          implicit: str | None = None) -> None:
    """A fresh build matches a committed file within cross-machine tolerances."""
    ref = app.PDBFile(str(committed_pdb))
    pos = ref.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert [(a.residue.name, a.name) for a in top.atoms()] == \
        [(a.residue.name, a.name) for a in ref.topology.atoms()]
    heavy = [a.index for a in top.atoms() if a.element.symbol != "H"]
    assert superposed_rmsd(built[heavy], pos[heavy]) < RMSD_TOL_NM
    for (lab, f1, s1), (_, f2, s2) in zip(systems.backbone_dihedrals(top, built),
                                          systems.backbone_dihedrals(ref.topology, pos)):
        for x, y in ((f1, f2), (s1, s2)):
            assert (x is None) == (y is None)
            if x is not None:  # periodic difference in degrees
                assert abs((x - y + 180.0) % 360.0 - 180.0) < DIHEDRAL_TOL_DEG, (lab, x, y)
    assert _energy(top, built, implicit) == pytest.approx(_energy(ref.topology, pos, implicit),
                                                          abs=ENERGY_TOL_KJ)


# ---------------------------------------------------------------------------------------------
# numpy dihedrals
# ---------------------------------------------------------------------------------------------
def test_dihedral_angles_match_mdtraj_and_broadcast():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7, 3))
    quads = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 4, 5, 6], [6, 0, 2, 4]])
    got = systems.dihedral_angles(x, quads)
    assert got.shape == (5, 4)
    top = mdtraj.Topology()
    res = top.add_residue("X", top.add_chain())
    for _ in range(7):
        top.add_atom("C", mdtraj.element.carbon, res)
    ref = mdtraj.compute_dihedrals(mdtraj.Trajectory(x, top), quads, periodic=False)
    assert np.allclose(got, ref, atol=1e-5)  # mdtraj computes in float32
    assert np.allclose(systems.dihedral_angles(x[2], quads), got[2])
    # a known value: a planar cis quadruple is 0, trans is ±π, and the sign follows IUPAC
    sq = np.array([[1.0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]])
    assert systems.dihedral_angles(sq, [[0, 1, 2, 3]])[0] == pytest.approx(0.0)
    assert abs(systems.dihedral_angles(sq, [[0, 1, 2, 4]])[0]) == pytest.approx(math.pi)
    assert systems.dihedral_angles(sq, [[0, 1, 2, 5]])[0] == pytest.approx(-math.pi / 2)


def test_backbone_dihedrals_match_mdtraj(ala):
    traj = mdtraj.Trajectory(ala.positions[0][None], mdtraj.Topology.from_openmm(ala.topology))
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    [(label, f, s)] = systems.backbone_dihedrals(ala.topology, ala.positions[0])
    assert label == "ALA2"
    assert f == pytest.approx(np.degrees(phi[0, 0]), abs=1e-3)
    assert s == pytest.approx(np.degrees(psi[0, 0]), abs=1e-3)


def _cip_volume(pos: np.ndarray, center: int, a: int, b: int, c: int) -> float:
    """> 0 when a→b→c (priority order, lowest-priority atom away) is counterclockwise: S."""
    p = pos[center]
    return float(np.dot(pos[a] - p, np.cross(pos[b] - p, pos[c] - p)))


def test_builder_geometry_and_dihedrals():
    phi = (-100.0, 60.0, -60.0, -90.0, -65.0, -150.0)
    psi = (150.0, -120.0, -40.0, 0.0, 140.0, 170.0)
    top, pos = systems.build_heavy_atoms("VGVAPG", phi, psi)
    idx = {(a.residue.index, a.name): a.index for a in top.atoms()}
    got = systems.backbone_dihedrals(top, pos)
    for k, (_label, f, s) in enumerate(got):
        if f is not None:
            assert f == pytest.approx(phi[k], abs=1e-6)
        if s is not None:
            assert s == pytest.approx(psi[k], abs=1e-6)
    assert got[0][1] is None and got[-1][2] is None
    for r in range(6):
        assert np.linalg.norm(pos[idx[r, "N"]] - pos[idx[r, "CA"]]) == pytest.approx(0.1458)
        assert np.linalg.norm(pos[idx[r, "C"]] - pos[idx[r, "O"]]) < 0.126
    for r in range(5):
        assert np.linalg.norm(pos[idx[r, "C"]] - pos[idx[r + 1, "N"]]) == pytest.approx(0.1329)
    # proline ring closes with a sensible N–CD bond before any minimisation
    assert np.linalg.norm(pos[idx[4, "N"]] - pos[idx[4, "CD"]]) == pytest.approx(0.147, abs=0.005)
    # no heavy-atom clashes
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos))
    assert d.min() > 0.12
    with pytest.raises(ValueError, match="PRO"):
        systems.build_heavy_atoms("VGVAPG", phi=-120.0, psi=130.0)  # Pro φ must be ≈ −65°
    with pytest.raises(ValueError, match="phi"):
        systems.build_heavy_atoms("VGVAPG", phi=[-60.0] * 5)
    with pytest.raises(ValueError, match="not supported"):
        systems.parse_sequence("VGCAPG")  # no cysteine


def test_builder_all_residues_chirality_and_forcefield():
    """Every supported residue: amber14 templates match (names, hydrogens), L-chirality kept."""
    seq = "ACE-ALA-VAL-LEU-ILE-SER-THR-PHE-PRO-GLY-NME"
    built = systems.build_peptide(seq, phi=-65.0, psi=140.0)
    assert math.isfinite(built.energy) and built.energy < 0
    top, pos = built.topology, built.positions
    systems.create_system(top)  # raises if any residue has no amber14 template
    idx = {(a.residue.index, a.name): a.index for a in top.atoms()}
    for r in top.residues():
        if r.name in ("ACE", "NME", "GLY"):
            continue
        i = r.index
        # CA is S for every L-amino acid here: N > C > CB > HA
        assert _cip_volume(pos, idx[i, "CA"], idx[i, "N"], idx[i, "C"], idx[i, "CB"]) > 0, r
    ile, thr = 4, 6
    # Ile CB is S: CA > CG1 > CG2 > HB; Thr CB is R: OG1 > CA > CG2 > HB
    assert _cip_volume(pos, idx[ile, "CB"], idx[ile, "CA"], idx[ile, "CG1"], idx[ile, "CG2"]) > 0
    assert _cip_volume(pos, idx[thr, "CB"], idx[thr, "OG1"], idx[thr, "CA"], idx[thr, "CG2"]) < 0
    # the minimised phenyl ring is planar and the proline ring closed
    ring = [pos[idx[7, n]] for n in ("CG", "CD1", "CD2", "CE1", "CE2", "CZ")]
    ring = np.array(ring) - np.mean(ring, 0)
    assert np.linalg.svd(ring, compute_uv=False)[-1] < 0.005
    assert np.linalg.norm(pos[idx[8, "N"]] - pos[idx[8, "CD"]]) == pytest.approx(0.147, abs=0.005)


def test_builder_is_deterministic_and_matches_committed_files(tmp_path):
    a = systems.build_bundled_systems(tmp_path / "a", ["alanine_dipeptide", "muller_brown"])
    b = systems.build_bundled_systems(tmp_path / "b", ["alanine_dipeptide", "muller_brown"])
    for name in a:  # same machine, same call: identical bytes
        assert [p.name for p in a[name]] == [p.name for p in b[name]]
        for pa, pb in zip(a[name], b[name]):
            assert pa.read_bytes() == pb.read_bytes(), pa.name
    # the committed manifests are what the builder writes (no computed numbers in them)
    for name in a:
        assert (REPO / "systems" / name / "system.toml").read_text() == \
            (tmp_path / "a" / name / "system.toml").read_text()
    # the committed structure is what the builder makes, within cross-machine tolerances
    new = app.PDBFile(str(tmp_path / "a" / "alanine_dipeptide" / "alanine_dipeptide.pdb"))
    assert_same_structure(new.topology, new.getPositions(asNumpy=True).value_in_unit(
        unit.nanometer), ALA_DIR / "alanine_dipeptide.pdb")
    # the regenerated folder loads like the bundled one
    ms = load_system(tmp_path / "b" / "alanine_dipeptide")
    assert ms.n_atoms == 22 and math.isfinite(ms.energy())


def test_solvated_alanine_in_a_box_of_any_edge(tmp_path):
    """build_solvated_alanine: the solute is the bundled dipeptide, the water grows with the
    edge, the default selection is the 22 solute atoms, and the relaxed box has no clashes."""
    with pytest.raises(ValueError, match="edge_nm"):
        systems.build_solvated_alanine(tmp_path / "tiny", 1.5)   # below twice the cutoff
    systems.build_solvated_alanine(tmp_path / "box", 1.95)
    ms = load_system(tmp_path / "box")
    bundled = load_system("alanine_dipeptide_tip3p")
    assert ms.n_selected == 22 and 300 < ms.n_atoms < bundled.n_atoms
    assert ms.name == "alanine_dipeptide_water_box"       # not the bundled box's presets
    assert ms.system.usesPeriodicBoundaryConditions()
    edge = ms.system.getDefaultPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer)
    assert edge == pytest.approx(1.95, abs=1e-6)
    assert [a.name for a in ms.topology.atoms()][:22] == \
        [a.name for a in bundled.topology.atoms()][:22]
    assert ms.energy() < 0      # minimised: water-water attraction wins over the contacts


def test_unminimised_build_is_exact():
    """Before minimisation the build is plain geometry: the requested dihedrals, to 1e-9°."""
    conf = systems.VGVAPG_CONFORMATIONS[1]
    top, pos = systems.build_heavy_atoms("VGVAPG", conf.phi, conf.psi)
    top2, pos2 = systems.build_heavy_atoms("VGVAPG", conf.phi, conf.psi)
    assert np.array_equal(pos, pos2)
    for k, (_label, f, s) in enumerate(systems.backbone_dihedrals(top, pos)):
        if f is not None:
            assert f == pytest.approx(conf.phi[k], abs=1e-9)
        if s is not None:
            assert s == pytest.approx(conf.psi[k], abs=1e-9)


def test_vgvapg_build_reproduces_committed_conformation():
    conf = systems.VGVAPG_CONFORMATIONS[1]
    built = systems.build_peptide("VGVAPG", conf.phi, conf.psi,
                                  implicit_solvent="implicit/obc2.xml")
    assert built.topology.getNumAtoms() == 73
    folder = REPO / "systems" / "vgvapg" / "conformations"
    assert_same_structure(built.topology, built.positions, folder / f"{conf.name}.pdb",
                          implicit="implicit/obc2.xml")
    with pytest.raises(AssertionError):  # the comparison tells conformations apart
        assert_same_structure(built.topology, built.positions, folder / "c04_helical.pdb",
                              implicit="implicit/obc2.xml")


def test_builder_aromatic_and_charged_residues():
    """Tyr, Trp, Asp, Glu, Asn, Gln, Lys: amber14 templates match, L-chirality, rings close."""
    seq = "ACE-TYR-TRP-ASP-GLU-ASN-GLN-LYS-NME"
    built = systems.build_peptide(seq, phi=-65.0, psi=140.0, minimize=False)
    top, pos = built.topology, built.positions
    system = systems.create_system(top)  # raises if a residue has no amber14 template
    idx = {(a.residue.index, a.name): a.index for a in top.atoms()}
    for r in top.residues():
        if r.name not in ("ACE", "NME"):
            i = r.index
            assert _cip_volume(pos, idx[i, "CA"], idx[i, "N"], idx[i, "C"], idx[i, "CB"]) > 0
    d = lambda r, a, b: np.linalg.norm(pos[idx[r, a]] - pos[idx[r, b]])
    # the ring-closing bonds that the NeRF tree does not place directly
    assert d(1, "CZ", "CE2") == pytest.approx(0.139, abs=0.006)
    assert d(2, "NE1", "CE2") == pytest.approx(0.137, abs=0.01)
    assert d(2, "CH2", "CZ3") == pytest.approx(0.140, abs=0.01)
    indole = np.array([pos[idx[2, n]] for n in ("CG", "CD1", "NE1", "CE2", "CD2", "CE3",
                                                "CZ2", "CZ3", "CH2")])
    assert np.linalg.svd(indole - indole.mean(0), compute_uv=False)[-1] < 1e-6
    # pH 7: Asp−, Glu−, Lys+ (the caps are neutral)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    q = sum(nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
            for i in range(system.getNumParticles()))
    assert q == pytest.approx(-1.0, abs=1e-6)
