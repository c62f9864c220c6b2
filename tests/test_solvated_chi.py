"""χ in a periodic water box: invariant under box-vector shifts, and inside OpenMM (both χ
backends, the restraint and the reporter) the same for a solute that straddles a box face as
for the whole molecule in the middle of the box."""
import copy

import numpy as np
import openmm
import pytest
from openmm import app, unit

from amore_openmm.chi import ChiModel, make_featurizer
from amore_openmm.forces import ChiReporter, ChiRestraintForce
from amore_openmm.forces import backend as backend_mod
from amore_openmm.systems import load_system, make_whole, periodic_box

BACKENDS = ["pythonforce", pytest.param(
    "torchforce", marks=pytest.mark.skipif(backend_mod.torchforce_problem() is not None,
                                           reason=f"{backend_mod.torchforce_problem()}"))]
GROUP = 30


@pytest.fixture(scope="module")
def water_box():
    return load_system("alanine_dipeptide_tip3p")


@pytest.fixture(scope="module")
def chi_model(water_box):
    # an untrained χ on the solute: not flat, and every atom of the solute matters
    return ChiModel(make_featurizer(water_box, "pairwise_sym"), seed=3).double()


def _on_face(ms, axis=0):
    """The first structure translated so that the solute's centre lies on the box face
    x_axis = L (whole in raw coordinates, half of it outside the box)."""
    box = periodic_box(ms)
    x = ms.positions[0].copy()
    x[:, axis] += box[axis, axis] - x[ms.selection, axis].mean()
    return x


def test_chi_is_invariant_under_box_vector_shifts(water_box, chi_model):
    box = periodic_box(water_box)
    x = water_box.positions[0]
    sel = water_box.selection
    moved_all = x + box[0]
    moved_solute = x.copy()
    moved_solute[sel] += box[1] - 2 * box[2]
    chi = chi_model.chi(np.stack([x, moved_all, moved_solute, _on_face(water_box)]))
    np.testing.assert_allclose(chi, chi[0], rtol=0, atol=1e-10)
    # a solute wrapped atom by atom (split across the face) is made whole first
    split = _on_face(water_box)
    split[sel, 0] = np.mod(split[sel, 0], box[0, 0])
    assert np.ptp(split[sel, 0]) > 0.5 * box[0, 0]
    np.testing.assert_allclose(chi_model.chi(make_whole(split, water_box)), chi[0], atol=1e-10)


def _context(ms, force, platform="Reference"):
    system = copy.deepcopy(ms.system)
    system.addForce(force)
    integ = openmm.LangevinMiddleIntegrator(300, 1, 0.002)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": "1"} if platform == "CPU" else {}
    return openmm.Context(system, integ, plat, props)


def _restraint_energy(ctx):
    return ctx.getState(getEnergy=True, groups={GROUP}).getPotentialEnergy().value_in_unit(
        unit.kilojoule_per_mole)


@pytest.mark.parametrize("backend", BACKENDS)
def test_restraint_sees_the_whole_solute_across_a_box_face(water_box, chi_model, backend):
    force = ChiRestraintForce(chi_model, z=0.2, kappa=1000.0, force_group=GROUP,
                              backend=backend)
    # χ follows the positions as the bonded forces do: unwrapped, no periodic images
    assert not force.usesPeriodicBoundaryConditions()
    bonded = [f for f in water_box.system.getForces() if isinstance(f, openmm.HarmonicBondForce)]
    assert bonded and all(not f.usesPeriodicBoundaryConditions() for f in bonded)
    ctx = _context(water_box, force)
    x0 = water_box.positions[0]
    chi0 = float(chi_model.chi(x0)[0])
    ctx.setPositions(x0)
    e0 = _restraint_energy(ctx)
    assert e0 == pytest.approx(0.5 * 1000.0 * (chi0 - 0.2) ** 2, rel=1e-8)
    assert force.chi(ctx) == pytest.approx(chi0, abs=1e-10)
    # the solute straddling the x face, and again as OpenMM wraps it (molecule by molecule)
    ctx.setPositions(_on_face(water_box))
    assert force.chi(ctx) == pytest.approx(chi0, abs=1e-10)
    assert _restraint_energy(ctx) == pytest.approx(e0, rel=1e-8)
    wrapped = ctx.getState(getPositions=True, enforcePeriodicBox=True).getPositions(asNumpy=True)
    ctx.setPositions(wrapped)
    assert force.chi(ctx) == pytest.approx(chi0, abs=1e-10)
    assert _restraint_energy(ctx) == pytest.approx(e0, rel=1e-8)
    del ctx


@pytest.mark.parametrize("backend", BACKENDS)
def test_chi_in_dynamics_across_the_face_equals_chi_of_the_whole_molecule(
        water_box, chi_model, backend, tmp_path):
    """MD on the CPU platform from a solute on the box face: χ of the force, of the reporter
    and of the model on the made-whole wrapped positions agree at every report."""
    force = ChiRestraintForce(chi_model, z=0.5, kappa=0.0, force_group=GROUP, backend=backend)
    system = copy.deepcopy(water_box.system)
    system.addForce(force)
    sim = app.Simulation(water_box.topology, system,
                         openmm.LangevinMiddleIntegrator(300, 1, 0.002),
                         openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    sim.context.setPositions(_on_face(water_box))
    sim.context.setVelocitiesToTemperature(300, 1)
    rep = ChiReporter(str(tmp_path / "chi.csv"), 5, chi_model, backend=backend)
    sim.reporters.append(rep)
    for _ in range(3):
        sim.step(5)
        st = sim.context.getState(getPositions=True, enforcePeriodicBox=True)
        wrapped = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        whole = make_whole(wrapped, water_box,
                           box=st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(
                               unit.nanometer))
        expected = float(chi_model.chi(whole)[0])
        # CPU positions are single precision: χ agrees to round-off of float32 coordinates
        assert force.chi(sim.context) == pytest.approx(expected, abs=1e-5)
        assert rep.values[-1][2] == pytest.approx(expected, abs=1e-5)
    rep.close()
    assert len(rep.values) == 3
