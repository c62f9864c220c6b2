"""Bundled systems, file inputs, Müller–Brown and the loader's error handling.

The builder is tested in test_systems_builder.py, selections in test_systems_selection.py.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import openmm
import pytest
from openmm import app, unit

from amore_openmm.systems import (VGVAPG_CONFORMATIONS, MolecularSystem, SystemLoadError,
                                  load_system, make_whole, muller_brown_energy, periodic_box,
                                  systems_root)

REPO = Path(__file__).resolve().parent.parent
EXTERNAL = Path(os.environ.get("AMORE_EXTERNAL_DIR", "/nonexistent"))  # opt-in only
ALA_DIR = REPO / "systems" / "alanine_dipeptide"
KJ = unit.kilojoule_per_mole


def _state(ctx: openmm.Context) -> tuple[np.ndarray, float, np.ndarray]:
    st = ctx.getState(getPositions=True, getEnergy=True, getForces=True)
    return (st.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
            st.getPotentialEnergy().value_in_unit(KJ),
            st.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer))


# ---------------------------------------------------------------------------------------------
# Müller–Brown
# ---------------------------------------------------------------------------------------------
MB_MINIMA = [((-0.558, 1.442), -146.70), ((0.623, 0.028), -108.17), ((-0.050, 0.467), -80.77)]
MB_SADDLE = ((-0.822, 0.624), -40.66)


def _mb_force_xy(ctx: openmm.Context, xy: np.ndarray) -> np.ndarray:
    ctx.setPositions([openmm.Vec3(float(xy[0]), float(xy[1]), 0.0)])
    return _state(ctx)[2][0, :2]


def _mb_hessian(ctx: openmm.Context, xy: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Hessian of the OpenMM Müller–Brown force field by central differences of its forces."""
    H = np.zeros((2, 2))
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        H[:, j] = -(_mb_force_xy(ctx, xy + e) - _mb_force_xy(ctx, xy - e)) / (2 * h)
    return 0.5 * (H + H.T)


def test_muller_brown_minima():
    ms = load_system("muller_brown")
    assert ms.source == str(systems_root() / "muller_brown")  # the bundled manifest is used
    assert ms.integrator == "brownian" and ms.coordinate_dims == (0, 1)
    assert ms.kT == pytest.approx(12.5) and ms.timestep == pytest.approx(1e-4)
    assert ms.lag_time == pytest.approx(1e-3)
    ctx = ms.make_context()
    for (xy, energy) in MB_MINIMA:
        start = np.array(xy) + (0.08, -0.06)  # a nearby guess
        ctx.setPositions([openmm.Vec3(start[0], start[1], 0.05)])
        openmm.LocalEnergyMinimizer.minimize(ctx, 1e-4 * KJ / unit.nanometer, 0)
        pos, e, _ = _state(ctx)
        assert np.abs(pos[0, :2] - xy).max() < 1e-2, (xy, pos[0])
        assert abs(pos[0, 2]) < 1e-4  # the z spring holds the particle in the plane
        assert e == pytest.approx(energy, abs=0.1)
        assert np.all(np.linalg.eigvalsh(_mb_hessian(ctx, pos[0, :2])) > 0)
        # the OpenMM force field and the NumPy reference agree
        assert muller_brown_energy(pos[0, :2]) == pytest.approx(e, abs=1e-6)


def test_muller_brown_saddle():
    ms = load_system("muller_brown")
    ctx = ms.make_context()
    xy = np.array(MB_SADDLE[0]) + (0.05, -0.05)
    for _ in range(30):  # Newton on ∇E = 0 with the OpenMM forces
        step = np.linalg.solve(_mb_hessian(ctx, xy), _mb_force_xy(ctx, xy))
        xy = xy + step
        if np.linalg.norm(step) < 1e-10:
            break
    ctx.setPositions([openmm.Vec3(xy[0], xy[1], 0.0)])
    _, e, f = _state(ctx)
    assert np.linalg.norm(f[0, :2]) < 1e-6
    assert np.abs(xy - MB_SADDLE[0]).max() < 1e-2, xy
    assert e == pytest.approx(MB_SADDLE[1], abs=0.1)
    eig = np.linalg.eigvalsh(_mb_hessian(ctx, xy))
    assert eig[0] < 0 < eig[1]  # index-1 saddle


# ---------------------------------------------------------------------------------------------
# bundled systems
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["muller_brown", "alanine_dipeptide", "vgvapg"])
def test_bundled_system_finite_energy_and_1ps_dynamics(name):
    ms = load_system(name)
    n_steps = int(round(1.0 / ms.timestep))  # 1 ps with the system's own integrator
    for k, pos in enumerate(ms.positions[:3]):
        ctx = ms.make_context(seed=11 + k)
        ctx.setPositions(pos)
        e0 = ms.energy(pos)
        assert math.isfinite(e0)
        ctx.setVelocitiesToTemperature(ms.temperature, 5 + k)
        ctx.getIntegrator().step(n_steps)
        x, e, f = _state(ctx)
        assert np.all(np.isfinite(x)) and math.isfinite(e) and np.all(np.isfinite(f))
        # a stable run: no atom flew off and the energy stayed within thermal range. On
        # Müller–Brown (2-D, hot enough to cross) 1 ps may carry the particle to another
        # basin, up to 1.4 per coordinate from the start (measured: 1 of 40 runs moved 1.16),
        # so its bound is the potential's own extent, not 1.0
        limit = 2.0 if ms.coordinate_dims else 1.0
        assert np.abs(x - pos).max() < limit
        dof = 2 if ms.coordinate_dims else 3 * ms.n_atoms
        assert e - e0 < 5 * dof * ms.kT


def _one_ps_on_cpu(ms: MolecularSystem, seed: int) -> tuple[float, float, np.ndarray]:
    """(E before, E after, final positions) of 1 ps on one CPU thread (physics, not bits)."""
    ctx = ms.make_context("CPU", {"Threads": "1"}, seed=seed)
    e0 = _state(ctx)[1]
    ctx.setVelocitiesToTemperature(ms.temperature, seed)
    ctx.getIntegrator().step(int(round(1.0 / ms.timestep)))
    x, e, f = _state(ctx)
    assert np.all(np.isfinite(x)) and math.isfinite(e) and np.all(np.isfinite(f))
    return e0, e, x


def test_solvated_alanine_built_by_the_project():
    """systems/alanine_dipeptide_tip3p: TIP3P box from Modeller.addSolvent, prmtop via parmed."""
    ms = load_system("alanine_dipeptide_tip3p")
    waters = [r for r in ms.topology.residues() if r.name == "HOH"]
    assert ms.n_atoms == 22 + 3 * len(waters) and len(waters) > 300
    assert ms.is_periodic and ms.selection.tolist() == list(range(22))
    assert ms.metadata["atoms"] == "not water"
    assert ms.system.getNumConstraints() == 12 + 3 * len(waters)  # X–H bonds + rigid water
    box = np.diag(periodic_box(ms))
    assert np.allclose(box, box[0]) and 2.3 <= box[0] <= 2.6
    nb = next(f for f in ms.system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.PME
    assert (ms.temperature, ms.timestep, ms.lag_steps) == (310.0, 0.002, 100)
    e0 = ms.energy()
    assert e0 < -35.0 * len(waters)  # liquid water: about −41 kJ/mol per TIP3P molecule
    _, e1, x = _one_ps_on_cpu(ms, 3)
    assert abs(e1 - e0) < 0.1 * abs(e0)  # it stays a liquid at 310 K
    whole = make_whole(x, ms)[:22]
    assert np.linalg.norm(whole[1] - whole[0]) < 0.12  # C–H of ACE stays bonded


def test_chignolin_built_by_the_project():
    """systems/chignolin: GYDPETGTWG from sequence, hairpin-like start, OBC2."""
    ms = load_system("chignolin")
    seq = [r.name for r in ms.topology.residues()]
    assert seq == ["GLY", "TYR", "ASP", "PRO", "GLU", "THR", "GLY", "THR", "TRP", "GLY"]
    assert not ms.is_periodic and ms.n_selected == ms.n_atoms == 138
    assert (ms.temperature, ms.lag_steps) == (300.0, 250)
    assert any(isinstance(f, (openmm.GBSAOBCForce, openmm.CustomGBForce))
               for f in ms.system.getForces())
    ca = [a.index for a in ms.topology.atoms() if a.name == "CA"]
    pos = ms.positions[0]
    # hairpin-like: the strands face each other across the P4–G7 turn
    assert np.linalg.norm(pos[ca[2]] - pos[ca[7]]) < 0.9
    assert np.linalg.norm(pos[ca[0]] - pos[ca[9]]) < 1.2
    e0, e1, x = _one_ps_on_cpu(ms, 4)
    assert e1 - e0 < 5 * 3 * ms.n_atoms * ms.kT and np.abs(x - pos).max() < 1.0


def test_bundled_manifest_settings():
    ala = load_system("alanine_dipeptide")
    assert (ala.n_atoms, ala.temperature, ala.friction, ala.timestep, ala.lag_steps,
            ala.integrator) == (22, 310.0, 1.0, 0.002, 100, "langevin_middle")
    assert ala.system.getNumConstraints() == 0
    nb = [f for f in ala.system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    vg = load_system("vgvapg")
    assert (vg.n_atoms, vg.temperature, vg.lag_steps) == (73, 298.0, 250)
    assert any(isinstance(f, openmm.GBSAOBCForce) or "GB" in type(f).__name__ or
               isinstance(f, openmm.CustomGBForce) for f in vg.system.getForces())
    assert len(vg.positions) == len(VGVAPG_CONFORMATIONS) >= 6
    # charged termini: total charge 0 (NH3+ ... COO-), no hydrogen on the C-terminal carboxylate
    nb = [f for f in vg.system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    q = [nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
         for i in range(vg.n_atoms)]
    assert sum(q) == pytest.approx(0.0, abs=1e-6)
    names = [(a.residue.index, a.name) for a in vg.topology.atoms()]
    assert {(0, "H"), (0, "H2"), (0, "H3"), (5, "OXT")} <= set(names)


def test_vgvapg_conformations_open_and_closed():
    """The starts span open (extended) and closed (turn: CA(i)–CA(i+3) < 7 Å) structures."""
    vg = load_system("vgvapg")
    ca = [a.index for a in vg.topology.atoms() if a.name == "CA"]
    closed, open_ = 0, 0
    for pos in vg.positions:
        d_turn = min(np.linalg.norm(pos[ca[i]] - pos[ca[i + 3]]) for i in range(3))
        end_to_end = np.linalg.norm(pos[ca[0]] - pos[ca[-1]])
        closed += d_turn < 0.7
        open_ += end_to_end > 1.4
    assert closed >= 3 and open_ >= 2
    # pairwise distinct structures (heavy-atom RMSD after superposition > 0.5 Å)
    heavy = vg.heavy_atoms()
    X = [p[heavy] - p[heavy].mean(0) for p in vg.positions]
    for i in range(len(X)):
        for j in range(i):
            u, _, vt = np.linalg.svd(X[i].T @ X[j])
            d = np.sign(np.linalg.det(u @ vt))
            R = u @ np.diag([1, 1, d]) @ vt
            assert np.sqrt(((X[i] @ R - X[j]) ** 2).sum(1).mean()) > 0.05


def test_paper_atom_numbering():
    """Paper (1-based): alanine 6, 16, 18 = O(ACE), O(ALA), H(NME); VGVAPG ψ(Val3) 26, 28, 40, 42."""
    ala = load_system("alanine_dipeptide")
    atoms = list(ala.topology.atoms())
    assert [(atoms[i - 1].residue.name, atoms[i - 1].name) for i in (6, 16, 18)] == \
        [("ACE", "O"), ("ALA", "O"), ("NME", "H")]
    vg = load_system("vgvapg")
    atoms = list(vg.topology.atoms())
    assert [(atoms[i - 1].residue.index, atoms[i - 1].name) for i in (26, 28, 40, 42)] == \
        [(2, "N"), (2, "CA"), (2, "C"), (3, "N")]
    assert atoms[25].residue.name == "VAL"


def test_amber_files_match_pdb_energy():
    """prmtop/inpcrd (written by parmed) and PDB + amber14 give the same energy."""
    ms_pdb = load_system("alanine_dipeptide")
    ms_amb = load_system(ALA_DIR / "alanine_dipeptide.prmtop")
    assert ms_amb.n_atoms == ms_pdb.n_atoms == 22
    assert np.abs(ms_amb.positions[0] - ms_pdb.positions[0]).max() < 2e-4
    rng = np.random.default_rng(3)
    for pos in (ms_pdb.positions[0], ms_pdb.positions[0] + rng.normal(0, 0.005, (22, 3))):
        e_pdb, e_amb = ms_pdb.energy(pos), ms_amb.energy(pos)
        assert abs(e_amb - e_pdb) <= 1e-4 * abs(e_pdb), (e_pdb, e_amb)


def _write_prepared_pdb(path: Path, ms: MolecularSystem, box_nm: float | None) -> Path:
    """The system as another program would write it: residues numbered from 0, a CRYST1."""
    mod = app.Modeller(ms.topology, ms.positions[0] * unit.nanometer)
    for i, res in enumerate(mod.topology.residues()):
        res.id = str(i)
    if box_nm is not None:
        mod.topology.setUnitCellDimensions(openmm.Vec3(box_nm, box_nm, box_nm))
    with open(path, "w") as fh:
        app.PDBFile.writeFile(mod.topology, mod.positions, fh, keepIds=True)
    return path


def test_prepared_pdb_with_cryst1_and_zero_based_residues(tmp_path):
    """A PDB written elsewhere (CRYST1 box, residues from 0) loads as the same vacuum system:
    no water, so the box does not turn on periodic boundaries."""
    ours = load_system("alanine_dipeptide")
    path = _write_prepared_pdb(tmp_path / "alanine-dipeptide.pdb", ours, box_nm=3.0)
    text = path.read_text()
    assert "CRYST1" in text and " ACE A   0" in text
    ala = load_system(path)
    assert ala.n_atoms == 22 and not ala.is_periodic
    assert [(a.residue.name, a.name) for a in ala.topology.atoms()] == \
        [(a.residue.name, a.name) for a in ours.topology.atoms()]
    assert ala.energy() == pytest.approx(ours.energy(), abs=1e-3)  # PDB rounds to 1e-4 nm
    assert ala.temperature == 300.0  # a file carries no dynamics settings: the default
    vg_ours = load_system("vgvapg")
    path = _write_prepared_pdb(tmp_path / "vgvapg.pdb", vg_ours, box_nm=None)
    vg = load_system(path, implicit_solvent="implicit/obc2.xml", temperature=298.0)
    assert vg.n_atoms == 73 and vg.temperature == 298.0
    assert vg.energy() == pytest.approx(vg_ours.energy(), abs=1e-2)
    assert [a.name for a in vg.topology.atoms()] == [a.name for a in vg_ours.topology.atoms()]


@pytest.mark.skipif(not (EXTERNAL / "alanine-dipeptide.pdb").is_file(),
                    reason="optional check on files prepared by others: set AMORE_EXTERNAL_DIR "
                           "to a folder with alanine-dipeptide.pdb and vgvapg.pdb to run it")
def test_external_prepared_pdbs_load():
    ala = load_system(EXTERNAL / "alanine-dipeptide.pdb")
    assert ala.n_atoms == 22 and math.isfinite(ala.energy())
    ours = load_system("alanine_dipeptide")
    assert [(a.residue.name, a.name) for a in ala.topology.atoms()] == \
        [(a.residue.name, a.name) for a in ours.topology.atoms()]
    vg = load_system(EXTERNAL / "vgvapg.pdb", implicit_solvent="implicit/obc2.xml",
                     temperature=298.0)
    assert vg.n_atoms == 73 and math.isfinite(vg.energy())
    ext_atoms, our_atoms = list(vg.topology.atoms()), list(load_system("vgvapg").topology.atoms())
    for i in (25, 27, 39, 41):
        assert ext_atoms[i].name == our_atoms[i].name


# ---------------------------------------------------------------------------------------------
# from_openmm
# ---------------------------------------------------------------------------------------------
def test_from_openmm():
    pdb = app.PDBFile(str(ALA_DIR / "alanine_dipeptide.pdb"))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology,
                                                            nonbondedMethod=app.NoCutoff)
    ms = MolecularSystem.from_openmm(system, pdb.topology, pdb.positions,
                                     temperature=310 * unit.kelvin,
                                     timestep=2 * unit.femtoseconds,
                                     friction=1 / unit.picosecond, lag_steps=100)
    assert ms.timestep == pytest.approx(0.002) and ms.temperature == pytest.approx(310.0)
    assert len(ms.positions) == 1 and ms.positions[0].shape == (22, 3)
    assert ms.energy() == pytest.approx(load_system("alanine_dipeptide").energy(), rel=1e-9)
    two = MolecularSystem.from_openmm(system, pdb.topology,
                                      np.stack([ms.positions[0], ms.positions[0] + 0.001]))
    assert len(two.positions) == 2
    integ = ms.make_integrator(seed=3)
    assert isinstance(integ, openmm.LangevinMiddleIntegrator)
    assert integ.getStepSize().value_in_unit(unit.picosecond) == pytest.approx(0.002)
    with pytest.raises(SystemLoadError, match="atoms"):
        MolecularSystem.from_openmm(system, pdb.topology, ms.positions[0][:21])
    bad = ms.positions[0].copy()
    bad[21] = bad[0]
    with pytest.raises(SystemLoadError, match="non-finite"):
        MolecularSystem.from_openmm(system, pdb.topology, bad)


# ---------------------------------------------------------------------------------------------
# loader errors
# ---------------------------------------------------------------------------------------------
def _copy_system(tmp_path: Path, name: str = "alanine_dipeptide") -> Path:
    dst = tmp_path / name
    shutil.copytree(REPO / "systems" / name, dst)
    return dst


def test_error_missing_file(tmp_path):
    with pytest.raises(SystemLoadError, match="nope.pdb"):
        load_system(tmp_path / "nope.pdb")
    with pytest.raises(SystemLoadError, match="bundled"):
        load_system("no_such_system")
    folder = _copy_system(tmp_path)
    (folder / "alanine_dipeptide.pdb").unlink()
    with pytest.raises(SystemLoadError, match=r"pdb .*alanine_dipeptide.pdb does not exist"):
        load_system(folder)


def test_error_missing_hydrogens_names_fix(tmp_path):
    pdb = app.PDBFile(str(ALA_DIR / "alanine_dipeptide.pdb"))
    mod = app.Modeller(pdb.topology, pdb.positions)
    mod.delete([a for a in mod.topology.atoms() if a.element.symbol == "H"])
    path = tmp_path / "noh.pdb"
    with open(path, "w") as fh:
        app.PDBFile.writeFile(mod.topology, mod.positions, fh)
    with pytest.raises(SystemLoadError) as err:
        load_system(path)
    msg = str(err.value)
    assert "noh.pdb" in msg and "template" in msg and "addHydrogens" in msg and "pdbfixer" in msg


def test_error_atom_count_mismatch(tmp_path):
    import parmed

    crd = parmed.load_file(str(ALA_DIR / "alanine_dipeptide.inpcrd"))
    short = parmed.amber.Rst7(natom=21)
    short.coordinates = np.asarray(crd.coordinates).reshape(-1, 22, 3)[0][:21]
    short.write(str(tmp_path / "short.inpcrd"))
    with pytest.raises(SystemLoadError) as err:
        load_system(ALA_DIR / "alanine_dipeptide.prmtop", inpcrd=tmp_path / "short.inpcrd")
    assert "21 atoms" in str(err.value) and "22" in str(err.value)
    # an OpenMM System XML with a PDB of other atoms
    xml = tmp_path / "ala_system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(load_system("alanine_dipeptide").system))
    other = REPO / "systems" / "vgvapg" / "conformations" / "c01_beta.pdb"
    with pytest.raises(SystemLoadError, match="73 atoms"):
        load_system(xml, pdb=other)
    ok = load_system(xml, pdb=ALA_DIR / "alanine_dipeptide.pdb")
    assert ok.energy() == pytest.approx(load_system("alanine_dipeptide").energy(), rel=1e-9)


def test_error_unknown_forcefield(tmp_path):
    with pytest.raises(SystemLoadError, match="no_such_ff.xml"):
        load_system(ALA_DIR / "alanine_dipeptide.pdb", forcefield=["no_such_ff.xml"])
    folder = _copy_system(tmp_path)
    toml = folder / "system.toml"
    toml.write_text(toml.read_text().replace('"amber14-all.xml"', '"amber99-typo.xml"'))
    with pytest.raises(SystemLoadError, match="amber99-typo.xml"):
        load_system(folder)


def test_error_manifest_unknown_key_and_wrong_type(tmp_path):
    folder = _copy_system(tmp_path)
    toml = folder / "system.toml"
    text = toml.read_text()
    toml.write_text(text.replace("[dynamics]\n", "[dynamics]\ntemprature = 300.0\n"))
    with pytest.raises(SystemLoadError, match="unknown key 'temprature'"):
        load_system(folder)
    toml.write_text(text.replace("temperature = 310.0", 'temperature = "hot"'))
    with pytest.raises(SystemLoadError, match=r"temperature = 'hot' has type str; expected"):
        load_system(folder)
    toml.write_text(text.replace("lag_steps = 100", "lag_steps = 100.5"))
    with pytest.raises(SystemLoadError, match="lag_steps"):
        load_system(folder)
    toml.write_text(text + "\n[mystery]\nx = 1\n")
    with pytest.raises(SystemLoadError, match=r"unknown section \[mystery\]"):
        load_system(folder)


def test_error_non_finite_initial_energy(tmp_path):
    pdb = app.PDBFile(str(ALA_DIR / "alanine_dipeptide.pdb"))
    pos = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    pos[21] = pos[0]  # NME H3 on top of ACE H1: non-bonded overlap
    path = tmp_path / "overlap.pdb"
    with open(path, "w") as fh:
        app.PDBFile.writeFile(pdb.topology, pos * unit.nanometer, fh)
    with pytest.raises(SystemLoadError) as err:
        load_system(path)
    assert "non-finite" in str(err.value) and "overlap.pdb" in str(err.value)
    assert load_system(path, check=False).n_atoms == 22  # opt-out for expert use
