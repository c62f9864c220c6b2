"""Hydrogen mass repartitioning: masses, and a stable 4 fs step on alanine dipeptide."""
import numpy as np
import openmm
import pytest
from openmm import unit

from amore_openmm.systems import BOLTZ, load_system
from amore_openmm.systems.hmr import constrain_hbonds, hmr_system, repartition_hydrogen_masses


@pytest.fixture(scope="module")
def alanine():
    return load_system("alanine_dipeptide")


def _masses(system):
    return np.array([system.getParticleMass(i).value_in_unit(unit.dalton)
                     for i in range(system.getNumParticles())])


def _is_h(ms):
    return np.array([a.element.symbol == "H" for a in ms.topology.atoms()])


def test_masses_conserved_and_hydrogens_at_target(alanine):
    before = _masses(alanine.system)
    out = repartition_hydrogen_masses(alanine.system, alanine.topology, 3.0 * unit.dalton)
    after = _masses(out)
    h = _is_h(alanine)
    assert after.sum() == pytest.approx(before.sum(), abs=1e-9)
    np.testing.assert_allclose(after[h], 3.0)
    assert np.all(after[~h] < before[~h] + 1e-12)
    # every heavy atom group (heavy atom + its hydrogens) keeps its mass
    groups = {}
    for a, b in alanine.topology.bonds():
        for x, y in ((a, b), (b, a)):
            if x.element.symbol == "H" and y.element.symbol != "H":
                groups.setdefault(y.index, set()).add(x.index)
    for heavy, hs in groups.items():
        idx = [heavy, *hs]
        assert after[idx].sum() == pytest.approx(before[idx].sum(), abs=1e-9)
    # the input System is untouched, and a second call changes nothing
    np.testing.assert_array_equal(_masses(alanine.system), before)
    again = _masses(repartition_hydrogen_masses(out, alanine.topology, 3.0))
    np.testing.assert_allclose(again, after, atol=1e-12)


def test_bad_masses_raise(alanine):
    with pytest.raises(ValueError, match="hydrogen_mass"):
        repartition_hydrogen_masses(alanine.system, alanine.topology, 0.0)
    # a methyl carbon (12 amu, three H) cannot give 3 × 4 amu and stay heavier than 4 amu
    with pytest.raises(ValueError, match="min_heavy_mass"):
        repartition_hydrogen_masses(alanine.system, alanine.topology, 4.5)


def test_water_hydrogens_left_alone():
    """A rigid TIP3P water keeps its masses even with water=True; flexible water only with it."""
    from openmm import app
    top = app.Topology()
    res = top.addResidue("HOH", top.addChain())
    o = top.addAtom("O", app.element.oxygen, res)
    h1 = top.addAtom("H1", app.element.hydrogen, res)
    h2 = top.addAtom("H2", app.element.hydrogen, res)
    top.addBond(o, h1)
    top.addBond(o, h2)
    system = openmm.System()
    for m in (15.999, 1.008, 1.008):
        system.addParticle(m)
    assert _masses(repartition_hydrogen_masses(system, top, 3.0))[1] == pytest.approx(1.008)
    assert _masses(repartition_hydrogen_masses(system, top, 3.0, water=True))[1] == 3.0
    for i, j, r in ((0, 1, 0.09572), (0, 2, 0.09572), (1, 2, 0.15139)):
        system.addConstraint(i, j, r)
    assert _masses(repartition_hydrogen_masses(system, top, 3.0, water=True))[1] == \
        pytest.approx(1.008)


def _nve_energies(ms, dt, seed=3):
    """Total and kinetic energy (kJ/mol) every 40 fs in 20 ps of NVE at ``dt``, after 8 ps of
    Langevin equilibration."""
    plat = openmm.Platform.getPlatformByName("Reference")
    lang = openmm.LangevinMiddleIntegrator(ms.temperature, 1.0, dt)
    lang.setRandomNumberSeed(seed)
    ctx = openmm.Context(ms.system, lang, plat)
    ctx.setPositions(ms.positions[0])
    ctx.applyConstraints(1e-8)
    ctx.setVelocitiesToTemperature(ms.temperature, seed)
    lang.step(int(round(8.0 / dt)))
    st = ctx.getState(getPositions=True, getVelocities=True)
    verlet = openmm.VerletIntegrator(dt)
    verlet.setConstraintTolerance(1e-8)
    nve = openmm.Context(ms.system, verlet, plat)
    nve.setPositions(st.getPositions())
    nve.setVelocities(st.getVelocities())
    total, kinetic = [], []
    for _ in range(500):
        verlet.step(int(round(0.04 / dt)))
        s = nve.getState(getEnergy=True)
        ke = s.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        kinetic.append(ke)
        total.append(ke + s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    return np.array(total), np.array(kinetic)


def test_4fs_step_with_hmr_is_stable(alanine):
    """4 fs + HBonds + 3 amu hydrogens: NVE conserves the total energy (its fluctuation is a
    small part of the kinetic energy's, no drift), and Langevin dynamics stays finite at the
    target temperature."""
    hmr = hmr_system(alanine, 3.0, 0.004)
    assert hmr.system.getNumConstraints() == int(_is_h(alanine).sum())
    assert hmr.timestep == pytest.approx(0.004)
    total, kinetic = _nve_energies(hmr, 0.004)
    assert np.all(np.isfinite(total))
    assert np.std(total) < 0.3 * np.std(kinetic)  # ~0.2 measured; 7 fs gives NaN
    slope = np.polyfit(np.arange(total.size) * 0.04, total, 1)[0]  # kJ/mol/ps
    assert abs(slope) < 0.5

    ctx = hmr.make_context("Reference", seed=11)
    ctx.applyConstraints(1e-6)
    ctx.setVelocitiesToTemperature(hmr.temperature, 11)
    ndof = 3 * hmr.n_atoms - hmr.system.getNumConstraints() - 3 * any(
        isinstance(f, openmm.CMMotionRemover) for f in hmr.system.getForces())
    temps = []
    for i in range(5000):  # 100 ps
        ctx.getIntegrator().step(5)
        if i >= 250:
            ke = ctx.getState(getEnergy=True).getKineticEnergy().value_in_unit(
                unit.kilojoule_per_mole)
            temps.append(2 * ke / (ndof * BOLTZ))
    pe = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
        unit.kilojoule_per_mole)
    assert np.isfinite(pe) and pe < 200.0
    assert np.mean(temps) == pytest.approx(hmr.temperature, rel=0.05)


def test_constrain_hbonds_adds_only_missing_constraints(alanine):
    built = load_system("alanine_dipeptide", constraints="HBonds")
    n_h = int(_is_h(alanine).sum())
    assert built.system.getNumConstraints() == n_h
    assert constrain_hbonds(built.system, built.topology).getNumConstraints() == n_h
    added = constrain_hbonds(alanine.system, alanine.topology)
    assert added.getNumConstraints() == n_h and alanine.system.getNumConstraints() == 0
    # the lengths are the force field's equilibrium bond lengths
    def lengths(system):
        return np.sort([system.getConstraintParameters(k)[2].value_in_unit(unit.nanometer)
                        for k in range(system.getNumConstraints())])
    np.testing.assert_allclose(lengths(added), lengths(built.system), atol=1e-9)
    with pytest.raises(ValueError, match="timestep"):
        hmr_system(alanine, 3.0, 0.0)
