"""The accelerator path: χ forces and ChiReporter on OpenCL (and CUDA where present) against
Reference, in single and mixed precision.

OpenCL runs on any machine with pocl (Debian: pocl-opencl-icd + ocl-icd-libopencl1; .ci/run
installs them). Every test here skips cleanly where the platform does not exist or cannot
create a Context. LocalEnergyMinimizer segfaults on pocl, so nothing here minimises.
"""
import copy
import functools
import io

import numpy as np
import pytest
import torch

import openmm
from openmm import app, unit

from amore_openmm.chi import ChiModel, make_featurizer
from amore_openmm.forces import ChiReporter, ChiRestraintForce, chi_force
from amore_openmm.forces.backend import torchforce_problem

torch.set_num_threads(1)
KJ_NM = unit.kilojoule_per_mole / unit.nanometer
_NO_TORCHFORCE = torchforce_problem()
BACKENDS = [pytest.param("torchforce", marks=pytest.mark.skipif(
    _NO_TORCHFORCE is not None, reason=f"torchforce backend: {_NO_TORCHFORCE}")),
    "pythonforce"]


@functools.lru_cache(maxsize=None)
def _unusable(platform: str) -> str | None:
    """Why ``platform`` cannot run here (None when a Context can be created on it)."""
    names = [openmm.Platform.getPlatform(i).getName()
             for i in range(openmm.Platform.getNumPlatforms())]
    if platform not in names:
        return f"no {platform} platform (platforms: {', '.join(names)})"
    system = openmm.System()
    system.addParticle(1.0)
    try:
        openmm.Context(system, openmm.VerletIntegrator(1e-3),
                       openmm.Platform.getPlatformByName(platform))
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot test here"
        return f"{platform} cannot create a Context ({exc})"
    return None


@pytest.fixture(params=["OpenCL", "CUDA"])
def accel(request):
    why = _unusable(request.param)
    if why is not None:
        pytest.skip(why)
    return request.param


@pytest.fixture(scope="module")
def model(ala):
    m = ChiModel(make_featurizer(ala, "auto"), seed=7)
    with torch.no_grad():
        m.network[-1].weight.mul_(5.0)
    return m


@pytest.fixture(scope="module")
def m64(model):
    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def x(ala):
    return ala.positions[0] + 0.01 * np.random.default_rng(0).standard_normal(
        ala.positions[0].shape)


def _bare(ala, force):
    system = openmm.System()
    for i in range(ala.n_atoms):
        system.addParticle(ala.system.getParticleMass(i))
    system.addForce(force)
    return system


def _evaluate(system, x, platform, props=None):
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                         openmm.Platform.getPlatformByName(platform), props or {})
    ctx.setPositions(x)
    st = ctx.getState(getEnergy=True, getForces=True)
    return ctx, st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), \
        st.getForces(asNumpy=True).value_in_unit(KJ_NM)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["single", "mixed"])
def test_chi_restraint_on_accelerator_equals_reference(ala, model, m64, x, accel, precision,
                                                       backend):
    """Energy to 1e-4 kJ/mol and forces to 1e-6 of their scale against Reference; in
    single precision χ is exactly χ(float64) of the float32-rounded positions."""
    force = ChiRestraintForce(model, z=0.2, kappa=1e3, backend=backend)
    system = _bare(ala, force)
    _, e_ref, f_ref = _evaluate(system, x, "Reference")
    ctx, e, f = _evaluate(system, x, accel, {"Precision": precision})
    scale = np.abs(f_ref).max()
    assert scale > 1.0
    assert e == pytest.approx(e_ref, abs=1e-4)
    np.testing.assert_allclose(f, f_ref, atol=1e-6 * scale)
    np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-5 * scale)
    chi = force.chi(ctx)
    assert chi == pytest.approx(m64.chi(x)[0], abs=1e-6)
    if precision == "single":   # float32 positions go into χ, which computes in float64
        x32 = x.astype(np.float32).astype(np.float64)
        assert chi == pytest.approx(m64.chi(x32)[0], abs=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chi_force_group_on_accelerator(ala, model, m64, x, accel, backend):
    """The bare χ force (energy χ, forces −∇χ) in its own group, single precision."""
    system = _bare(ala, chi_force(model, force_group=3, backend=backend))
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                         openmm.Platform.getPlatformByName(accel), {"Precision": "single"})
    ctx.setPositions(x)
    st = ctx.getState(getEnergy=True, getForces=True, groups={3})
    chi, grad = m64.chi_and_grad(x)
    assert st.getPotentialEnergy()._value == pytest.approx(chi[0], abs=1e-6)
    np.testing.assert_allclose(st.getForces(asNumpy=True)._value, -grad[0],
                               atol=1e-5 * np.abs(grad).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_chi_reporter_and_restraint_in_simulation_on_accelerator(ala, model, m64, accel,
                                                                 backend):
    """Restrained Langevin MD of alanine dipeptide on the accelerator (mixed precision)
    with a ChiReporter: finite, χ reported = χ of the reported positions, held near z."""
    system = openmm.XmlSerializer.clone(ala.system)
    z = float(m64.chi(ala.positions[0])[0])
    system.addForce(ChiRestraintForce(model, z=z, kappa=1e5, backend=backend))
    sim = app.Simulation(ala.topology, system, ala.make_integrator(seed=2),
                         openmm.Platform.getPlatformByName(accel), {"Precision": "mixed"})
    sim.context.setPositions(ala.positions[0])
    sim.context.setVelocitiesToTemperature(ala.temperature, 2)
    stream = io.StringIO()
    reporter = ChiReporter(stream, 20, model, gradient_norm=True, backend=backend)
    sim.reporters.append(reporter)
    sim.step(100)
    assert [int(r[0]) for r in reporter.values] == [20, 40, 60, 80, 100]
    st = sim.context.getState(getPositions=True, getEnergy=True)
    xe = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert np.isfinite(xe).all() and st.getPotentialEnergy()._value < 500.0
    chi, grad = m64.chi_and_grad(xe)
    assert reporter.values[-1][2] == pytest.approx(chi[0], abs=1e-9)
    assert reporter.values[-1][3] == pytest.approx(np.linalg.norm(grad[0]), rel=1e-6)
    sigma = np.sqrt(0.0083144626 * ala.temperature / 1e5)
    assert all(abs(r[2] - z) < 10 * sigma for r in reporter.values)
    assert len(stream.getvalue().strip().splitlines()) == 6
