"""The molecule of interest: default and user selections, and whole molecules in a box."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openmm
import pytest
from openmm import app, unit

from amore_openmm.systems import (MolecularSystem, SystemLoadError, default_selection,
                                  load_system, make_whole, muller_brown_system,
                                  periodic_box)

REPO = Path(__file__).resolve().parent.parent
ALA_DIR = REPO / "systems" / "alanine_dipeptide"
WATER_FF = ("amber14-all.xml", "amber14/tip3p.xml")


@pytest.fixture(scope="module")
def solvated(ala) -> MolecularSystem:
    """Alanine dipeptide in a 2.2 nm TIP3P box with 0.5 M NaCl (a few ions), PME."""
    ff = app.ForceField(*WATER_FF)
    mod = app.Modeller(ala.topology, ala.positions[0] * unit.nanometer)
    mod.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(2.2, 2.2, 2.2) * unit.nanometer,
                   ionicStrength=0.5 * unit.molar)
    system = ff.createSystem(mod.topology, nonbondedMethod=app.PME,
                             nonbondedCutoff=0.9 * unit.nanometer, constraints=app.HBonds)
    pos = mod.getPositions().value_in_unit(unit.nanometer)
    return MolecularSystem(system=system, topology=mod.topology, positions=[pos], name="solv")


def test_default_selection_excludes_water_and_ions(solvated, ala):
    names = {r.name for r in solvated.topology.residues()}
    assert {"HOH", "NA", "CL"} <= names  # the box really holds water and both ions
    assert solvated.is_periodic and not ala.is_periodic
    assert solvated.selection.tolist() == list(range(22))
    assert solvated.n_selected == 22 < solvated.n_atoms
    assert solvated.heavy_atoms() == ala.heavy_atoms()  # no water oxygen among them
    assert len(solvated.heavy_atoms(selected=False)) > len(ala.heavy_atoms()) + 100
    assert ala.selection.tolist() == list(range(22))
    assert muller_brown_system().selection.tolist() == [0]
    # a box of nothing but water keeps every atom (nothing else could be of interest)
    water = app.Modeller(solvated.topology, solvated.positions[0] * unit.nanometer)
    water.delete([r for r in water.topology.residues() if r.name != "HOH"])
    assert len(default_selection(water.topology)) == water.topology.getNumAtoms()


def test_user_selection_string(solvated):
    sel = solvated.with_overrides(atoms="resname ALA")
    ala_res = [a.index for a in solvated.topology.atoms() if a.residue.name == "ALA"]
    assert sel.selection.tolist() == ala_res and sel.metadata["atoms"] == "resname ALA"
    assert solvated.selection.tolist() == list(range(22))  # the original is unchanged
    back = sel.with_overrides(atoms=None)
    assert back.selection.tolist() == list(range(22)) and "atoms" not in back.metadata
    idx = solvated.with_overrides(atoms=[5, 15, 17, 5])
    assert idx.selection.tolist() == [5, 15, 17]
    with pytest.raises(ValueError):  # the selection is read-only
        idx.selection[0] = 1


def test_selection_from_load_system_and_manifest(tmp_path):
    ms = load_system("alanine_dipeptide", atoms="not element H")
    assert ms.selection.tolist() == ms.heavy_atoms(selected=False)
    assert ms.polar_atoms() == ms.heavy_atoms()  # polar H are outside this selection
    folder = tmp_path / "ala"
    shutil.copytree(ALA_DIR, folder)
    toml = folder / "system.toml"
    toml.write_text(toml.read_text().replace('constraints = "None"\n',
                                             'constraints = "None"\natoms = "resid 1"\n'))
    ms = load_system(folder)
    assert [a.residue.name for a in ms.topology.atoms() if a.index in ms.selection] == \
        ["ALA"] * 10
    assert load_system(folder, atoms="all").n_selected == 22  # the call wins over the file
    assert load_system("muller_brown", atoms="index 0").selection.tolist() == [0]


@pytest.mark.parametrize("atoms, problem", [
    ("resname XYZ", "matches no atom"),
    ("name CA", "leaves 1 atom"),
    ("resname ALA and", "not a valid mdtraj selection"),
    ("", "not a selection"),
])
def test_bad_selection_names_the_selection_and_the_fix(atoms, problem):
    with pytest.raises(SystemLoadError) as err:
        load_system("alanine_dipeptide", atoms=atoms)
    msg = str(err.value)
    assert problem in msg and repr(atoms) in msg and "mdtraj selection string" in msg
    assert isinstance(err.value, ValueError)


def test_bad_selection_in_manifest_names_the_file(tmp_path):
    folder = tmp_path / "ala"
    shutil.copytree(ALA_DIR, folder)
    toml = folder / "system.toml"
    toml.write_text(toml.read_text().replace('constraints = "None"\n',
                                             'constraints = "None"\natoms = "protein and water"\n'))
    with pytest.raises(SystemLoadError, match="protein and water.*matches no atom"):
        load_system(folder)
    toml.write_text(toml.read_text().replace('atoms = "protein and water"', "atoms = 3"))
    with pytest.raises(SystemLoadError, match=r"atoms = 3 has type int"):
        load_system(folder)


# ---------------------------------------------------------------------------------------------
# make_whole
# ---------------------------------------------------------------------------------------------
BOXES = {
    "cubic": np.diag([2.0, 2.0, 2.0]),
    # a rhombic dodecahedron (xy-square) in OpenMM's reduced form: a ∥ x, b in the xy plane
    "triclinic": np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.41421356]]),
}


def _periodic_ala(ala, box: np.ndarray) -> MolecularSystem:
    system = openmm.XmlSerializer.clone(ala.system)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.6)
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box))
    return MolecularSystem(system=system, topology=ala.topology, positions=ala.positions)


def _wrap(x: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Put every atom into the box (fractional coordinates in [0, 1)): splits molecules."""
    frac = x @ np.linalg.inv(box)
    return (frac - np.floor(frac)) @ box


def _bonds(ms: MolecularSystem) -> np.ndarray:
    return np.array([(a.index, b.index) for a, b in ms.topology.bonds()])


@pytest.mark.parametrize("kind", list(BOXES))
def test_make_whole_restores_a_molecule_split_by_the_box(ala, kind):
    box = BOXES[kind]
    ms = _periodic_ala(ala, box)
    bonds = _bonds(ms)
    x0 = ms.positions[0] - ms.positions[0].mean(0)  # centred on the box corner: 8 images
    rng = np.random.default_rng(1)
    frames = np.stack([x0 + rng.normal(0, 0.05, 3) for _ in range(6)])
    wrapped = _wrap(frames, box)
    length = lambda x: np.linalg.norm(x[..., bonds[:, 0], :] - x[..., bonds[:, 1], :], axis=-1)
    assert length(wrapped).max() > 1.0  # really split across faces
    whole = make_whole(wrapped, ms)
    assert whole.shape == wrapped.shape and np.allclose(length(whole), length(frames))
    # the same molecule up to one lattice translation of the whole
    for w, f in zip(whole, frames):
        shift = (w - f) @ np.linalg.inv(box)
        assert np.allclose(shift, np.round(shift[0]), atol=1e-9)
    # shifting the whole input by lattice vectors shifts the output by a lattice vector only
    moved = wrapped + np.array([1, -2, 1]) @ box
    again = make_whole(moved, ms)
    shift = (again - whole) @ np.linalg.inv(box)
    assert np.allclose(shift, np.round(shift[:, :1]), atol=1e-9)
    assert np.allclose(make_whole(wrapped[0], ms), whole[0])  # one frame (n, 3) as well


def test_make_whole_brings_selected_molecules_together_and_keeps_the_rest(solvated):
    box = periodic_box(solvated)
    assert np.allclose(box, np.diag([2.2, 2.2, 2.2]))
    assert periodic_box(load_system("alanine_dipeptide")) is None
    water = next(r for r in solvated.topology.residues() if r.name == "HOH")
    w_idx = [a.index for a in water.atoms()]
    ms = solvated.with_overrides(atoms=f"resname ACE ALA NME or resid {water.index}")
    x = ms.positions[0].copy()
    x[w_idx] += box[0] * 1 + box[2] * -1  # the water one box away from the solute
    x[:22] = _wrap(x[:22] + 0.5 * box[0], box)  # the solute split across a face
    bonds = np.array([(a.index, b.index) for a, b in ms.topology.bonds() if a.index < 22])
    blen = lambda y: np.linalg.norm(y[bonds[:, 0]] - y[bonds[:, 1]], axis=-1)
    assert blen(x).max() > 1.0
    out = make_whole(x[None], ms, box=box[None])[0]
    assert np.allclose(blen(out), blen(ms.positions[0]))
    centre = lambda idx: out[idx].mean(0)
    d = (centre(w_idx) - centre(list(range(22)))) @ np.linalg.inv(box)
    assert np.all(np.abs(d) <= 0.5 + 1e-9)  # the water's nearest image of the solute
    others = np.setdiff1d(np.arange(ms.n_atoms), list(range(22)) + w_idx)
    assert np.array_equal(out[others], x[others])  # atoms outside the selection stay put


def test_make_whole_is_identity_without_periodic_boundaries(ala):
    x = np.stack([ala.positions[0], ala.positions[0] + 5.0])
    assert np.array_equal(make_whole(x, ala), x)
    with pytest.raises(ValueError, match="positions"):
        make_whole(x[:, :5], ala)


def test_a_selection_that_does_not_parse_gets_one_short_line():
    """mdtraj's parser error lists its whole grammar (kilobytes): the message keeps the
    selection, where the parser stopped and an example, on one line."""
    with pytest.raises(SystemLoadError) as err:
        load_system("alanine_dipeptide", atoms="name CA CB or )")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert "'name CA CB or )'" in msg and "character 15" in msg and "at ')'" in msg
    assert "such as 'not water'" in msg
    with pytest.raises(SystemLoadError, match="at the end"):
        load_system("alanine_dipeptide", atoms="name CA and (")
