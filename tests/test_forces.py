"""χ inside OpenMM on both backends (TorchForce, PythonForce): CV, restraint forces, reporter,
and the plain-OpenMM loading path."""
import copy
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import openmm
from openmm import app, unit

from amore_openmm.chi import ChiModel, make_featurizer, read_torchscript_metadata
from amore_openmm.forces import (BACKENDS, ChiReporter, ChiRestraintForce, KappaWindowError,
                                 chi_force, chi_from_context, find_chi_restraints,
                                 kappa_window, md_kappa)
from amore_openmm.forces.backend import torchforce_problem

torch.set_num_threads(1)

_NO_TORCHFORCE = torchforce_problem()
requires_torchforce = pytest.mark.skipif(_NO_TORCHFORCE is not None,
                                         reason=f"torchforce backend: {_NO_TORCHFORCE}")
BACKEND_PARAMS = [pytest.param("torchforce", marks=requires_torchforce), "pythonforce"]
assert tuple(p if isinstance(p, str) else p.values[0] for p in BACKEND_PARAMS) == BACKENDS


@pytest.fixture(scope="module")
def frames(ala, trajectory):
    """A few distorted alanine-dipeptide structures from a short 310 K trajectory."""
    return trajectory(ala, n_frames=4, stride=200, seed=3)


@pytest.fixture(scope="module")
def model(ala):
    m = ChiModel(make_featurizer(ala, "auto"), seed=7)
    # sharpen the random output layer so χ varies by O(1) and forces are not tiny
    with torch.no_grad():
        m.network[-1].weight.mul_(25.0)
    return m


@pytest.fixture(scope="module")
def model64(model):
    """The same χ in float64: what the exported TorchScript (and so OpenMM) computes."""
    import copy
    return copy.deepcopy(model).double()


def _bare_system(ms):
    """Same particles as ``ms`` but no physical forces: isolates the χ force."""
    s = openmm.System()
    for i in range(ms.n_atoms):
        s.addParticle(ms.system.getParticleMass(i))
    return s


def _context(system, platform):
    return openmm.Context(system, openmm.VerletIntegrator(1e-3),
                          openmm.Platform.getPlatformByName(platform))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_chi_read_through_openmm_equals_torch(ala, frames, model, model64, platform, backend,
                                              tmp_path):
    path = model.export_torchscript(tmp_path / "chi.pt")
    for source in (model, path):
        system = _bare_system(ala)
        force = ChiRestraintForce(source, z=0.5, kappa=10.0, backend=backend)
        assert isinstance(force, ChiRestraintForce) and force.backend == backend
        system.addForce(force)
        ctx = _context(system, platform)
        torch_chi = model.chi(frames)             # float32 training precision
        torch_chi64 = model64.chi(frames)
        assert np.ptp(torch_chi) > 0.02          # the frames give clearly different χ
        for x, c, c64 in zip(frames, torch_chi, torch_chi64):
            ctx.setPositions(x)
            via_openmm = force.chi(ctx)
            assert via_openmm == pytest.approx(c64, abs=1e-10)
            assert via_openmm == pytest.approx(c, rel=1e-6, abs=1e-6)
            assert chi_from_context(ctx, force) == via_openmm


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_restraint_forces_equal_autograd(ala, frames, model, model64, platform, backend):
    system = _bare_system(ala)
    force = ChiRestraintForce(model, z=0.2, kappa=300.0, backend=backend)
    system.addForce(force)
    ctx = _context(system, platform)
    chi, grad = model64.chi_and_grad(frames)
    assert np.ptp(chi) > 0.02
    for (z, kappa) in [(0.2, 300.0), (0.9, 1.0e4)]:
        ChiRestraintForce.set(ctx, z=z, kappa=kappa)
        assert ctx.getParameter(ChiRestraintForce.Z_PARAM) == z
        for x, c, g in zip(frames, chi, grad):
            ctx.setPositions(x)
            st = ctx.getState(getForces=True, getEnergy=True)
            f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            expected = -kappa * (c - z) * g
            scale = np.abs(expected).max()
            assert scale > 1e-2
            np.testing.assert_allclose(f, expected, atol=1e-9 * scale)
            assert e == pytest.approx(0.5 * kappa * (c - z) ** 2, rel=1e-9)
            # distance features: no net force and no net torque
            np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-9 * scale + 1e-12)
            np.testing.assert_allclose(np.cross(x, f).sum(axis=0), 0.0,
                                       atol=1e-8 * scale + 1e-12)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_parameter_names_do_not_collide_with_user_parameters(ala, frames, model, model64,
                                                             backend):
    """A user force with globals 'z' and 'kappa' keeps its own values."""
    system = _bare_system(ala)
    user = openmm.CustomBondForce("kappa*(r-z)^2")
    user.addGlobalParameter("z", 0.1)
    user.addGlobalParameter("kappa", 2.0)
    user.addBond(0, 1, [])
    user.setForceGroup(1)
    system.addForce(user)
    restraint = ChiRestraintForce(model, z=0.1, kappa=50.0, force_group=2, backend=backend)
    system.addForce(restraint)
    if backend == "torchforce":
        names = {restraint.getGlobalParameterName(i)
                 for i in range(restraint.getNumGlobalParameters())}
    else:
        names = set(restraint.getGlobalParameters().keys())
    assert names == {ChiRestraintForce.Z_PARAM, ChiRestraintForce.KAPPA_PARAM}
    ctx = _context(system, "Reference")
    x = frames[0]
    ctx.setPositions(x)
    ChiRestraintForce.set(ctx, z=0.7, kappa=80.0)
    e_user = ctx.getState(getEnergy=True, groups={1}).getPotentialEnergy()._value
    r = np.linalg.norm(x[1] - x[0])
    assert e_user == pytest.approx(2.0 * (r - 0.1) ** 2, rel=1e-12)
    c = model64.chi(x)[0]
    e_r = ctx.getState(getEnergy=True, groups={2}).getPotentialEnergy()._value
    assert e_r == pytest.approx(0.5 * 80.0 * (c - 0.7) ** 2, rel=1e-9)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_two_prefixed_restraints_in_one_system_survive_getforce_and_xml(ala, frames, model,
                                                                         model64, backend):
    """Two χ restraints with their own parameter names live in one System; after an XML
    round trip (and ``getForce``) they are ChiRestraintForces again, each setting only its
    own parameters."""
    system = _bare_system(ala)
    first = ChiRestraintForce(model, z=0.1, kappa=50.0, force_group=1, backend=backend)
    second = ChiRestraintForce(model, z=0.9, kappa=20.0, force_group=2, backend=backend,
                               prefix="amore_chi2")
    assert (second.z_param, second.kappa_param) == ("amore_chi2_z", "amore_chi2_kappa")
    system.addForce(first)
    system.addForce(second)
    restored = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    found = find_chi_restraints(restored)
    assert sorted(found) == [0, 1]
    a, b = found[0], found[1]
    assert isinstance(a, ChiRestraintForce) and a.backend == backend and b.prefix == "amore_chi2"
    again = ChiRestraintForce.from_force(restored.getForce(1))
    assert again.z_param == "amore_chi2_z"
    ctx = _context(restored, "Reference")
    x = frames[2]
    ctx.setPositions(x)
    c = model64.chi(x)[0]
    b.set(ctx, z=0.4, kappa=30.0)              # the second restraint only
    assert ctx.getParameter("amore_chi_z") == 0.1 and ctx.getParameter("amore_chi2_z") == 0.4

    def energy(group):
        return ctx.getState(getEnergy=True, groups={group}).getPotentialEnergy()._value

    assert energy(1) == pytest.approx(0.5 * 50.0 * (c - 0.1) ** 2, rel=1e-9)
    assert energy(2) == pytest.approx(0.5 * 30.0 * (c - 0.4) ** 2, rel=1e-9)
    assert a.chi(ctx) == pytest.approx(c, abs=1e-10) and b.chi(ctx) == pytest.approx(c, abs=1e-10)
    ChiRestraintForce.set(ctx, z=0.6)          # on the class: the default names
    assert ctx.getParameter("amore_chi_z") == 0.6 and ctx.getParameter("amore_chi2_z") == 0.4


def test_restraint_prefix_and_plain_forces_are_checked(model):
    with pytest.raises(ValueError, match="prefix must be an identifier"):
        ChiRestraintForce(model, prefix="2 bad", backend="pythonforce")
    with pytest.raises(ValueError, match="is not a χ restraint"):
        ChiRestraintForce.from_force(openmm.CustomCVForce("x"))
    with pytest.raises(ValueError, match="is not a χ restraint"):
        ChiRestraintForce.from_force(openmm.HarmonicBondForce())


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_chi_force_group_gives_minus_gradient(ala, frames, model, model64, backend):
    system = _bare_system(ala)
    system.addForce(chi_force(model, force_group=4, backend=backend))
    ctx = _context(system, "Reference")
    ctx.setPositions(frames[1])
    st = ctx.getState(getForces=True, getEnergy=True, groups={4})
    f = st.getForces(asNumpy=True)._value
    chi, grad = model64.chi_and_grad(frames[1])
    assert st.getPotentialEnergy()._value == pytest.approx(chi[0], rel=1e-10)
    np.testing.assert_allclose(f, -grad[0], atol=1e-10 * np.abs(grad).max())


@requires_torchforce
def test_plain_openmm_script_loads_exported_chi(ala, frames, model, model64, tmp_path):
    """The χ file works with torch + openmm + openmmtorch only (no amore_openmm)."""
    path = model.export_torchscript(tmp_path / "chi.pt", training={"note": "test"})
    meta = read_torchscript_metadata(path)
    assert meta["n_atoms"] == ala.n_atoms and len(meta["feature_names"]) == 231
    assert meta["metadata"]["training"]["note"] == "test"
    np.save(tmp_path / "x.npy", frames[2])
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import torch
        import openmm, openmmtorch
        extra = {{"amore_chi.json": ""}}
        module = torch.jit.load({str(path)!r}, _extra_files=extra)
        meta = json.loads(extra["amore_chi.json"])
        x = np.load({str(tmp_path / 'x.npy')!r})
        system = openmm.System()
        for _ in range(meta["n_atoms"]):
            system.addParticle(1.0)
        cv = openmm.CustomCVForce("0.5*k*(chi-0.5)^2")
        cv.addGlobalParameter("k", 100.0)
        cv.addCollectiveVariable("chi", openmmtorch.TorchForce({str(path)!r}))
        system.addForce(cv)
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(x)
        out = {{"chi_openmm": cv.getCollectiveVariableValues(ctx)[0],
               "chi_f32": float(module(torch.tensor(x, dtype=torch.float32))),
               "dtype": str(module(torch.tensor(x)).dtype),
               "amore_loaded": any(m.startswith("amore_openmm") for m in sys.modules)}}
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = model64.chi(frames[2])[0]
    assert out["amore_loaded"] is False
    assert out["dtype"] == "torch.float64"
    assert out["chi_openmm"] == pytest.approx(expected, abs=1e-10)
    assert out["chi_f32"] == pytest.approx(expected, rel=1e-5)   # float32 positions in


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_chi_reporter_logs_chi_of_running_simulation(ala, model, model64, backend, tmp_path):
    sim = app.Simulation(ala.topology, ala.system, ala.make_integrator(seed=5),
                         openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(ala.positions[0])
    sim.context.setVelocitiesToTemperature(ala.temperature, 5)
    log = tmp_path / "chi.csv"
    stream = io.StringIO()
    rep_file = ChiReporter(str(log), 25, model, gradient_norm=True, backend=backend)
    rep_stream = ChiReporter(stream, 50, model, backend=backend)
    assert rep_file.backend == backend
    sim.reporters += [rep_file, rep_stream]
    sim.step(100)
    rep_file.close()
    rows = np.loadtxt(log, delimiter=",", comments="#")
    assert log.read_text().startswith('#"Step","Time (ps)","Chi","|grad Chi| (1/nm)"')
    assert rows.shape == (4, 4)
    np.testing.assert_array_equal(rows[:, 0], [25, 50, 75, 100])
    np.testing.assert_allclose(rows[:, 1], rows[:, 0] * ala.timestep, rtol=1e-9)
    x = sim.context.getState(getPositions=True).getPositions(asNumpy=True)._value
    chi, grad = model64.chi_and_grad(x)
    assert rows[-1, 2] == pytest.approx(chi[0], rel=1e-7)
    assert rows[-1, 3] == pytest.approx(np.linalg.norm(grad[0]), rel=1e-5)
    assert len(set(np.round(rows[:, 2], 7))) > 1       # χ follows the dynamics
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 3 and lines[2].split(",")[0] == "100"
    assert [r[0] for r in rep_stream.values] == [50, 100]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_missing_file_is_a_clear_error(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="export_torchscript"):
        chi_force(tmp_path / "nope.pt", backend=backend)
    with pytest.raises(FileNotFoundError, match="export_torchscript"):
        ChiRestraintForce(tmp_path / "nope.pt", backend=backend)


# --- the κ rule for restrained MD (issue 10 item 8) -------------------------------------------

@pytest.fixture(scope="module")
def md_model(ala):
    """A random pairwise-distance χ whose ‖∇χ‖ (~4 nm⁻¹) is that of a trained alanine χ."""
    m = ChiModel(make_featurizer(ala, "auto"), seed=7)
    with torch.no_grad():
        m.network[-1].weight.mul_(5.0)
    return m


def test_kappa_window_follows_the_physics(ala, md_model):
    x0 = ala.positions[0]
    T, dt = ala.temperature, ala.timestep
    w = kappa_window(md_model, x0, T, dt, masses=ala, chi_tolerance=0.01)
    kT = 0.0083144626 * T
    assert w.kappa_min == pytest.approx(kT / 0.01 ** 2, rel=1e-6)
    # the restraint's fastest period at κ_max is exactly 5 timesteps (the default)
    assert 2 * np.pi / np.sqrt(w.kappa_max * w.curvature) == pytest.approx(5 * dt, rel=1e-12)
    assert w.kappa_min < w.kappa < w.kappa_max
    assert w.kappa == pytest.approx(np.sqrt(w.kappa_min * w.kappa_max), rel=1e-12)
    assert md_kappa(md_model, x0, T, dt * unit.picosecond, masses=ala,
                    chi_tolerance=0.01) == pytest.approx(w.kappa)
    # hydrogen mass for every atom bounds the frequency from above: a smaller κ_max
    w_h = kappa_window(md_model, x0, T, dt, chi_tolerance=0.01)
    _, g = copy.deepcopy(md_model).double().chi_and_grad(x0)
    assert w_h.curvature == pytest.approx(float((g * g).sum()) / 1.008, rel=1e-9)
    assert w_h.kappa_max < w.kappa_max
    # a timestep too long for the tolerance: the error names one that works
    w = kappa_window(md_model, x0, T, dt, masses=ala)          # the defaults
    with pytest.raises(KappaWindowError, match="timestep") as err:
        md_kappa(md_model, x0, T, 0.05, masses=ala)
    assert f"{w.max_timestep:.3g}" in str(err.value)
    assert md_kappa(md_model, x0, T, 0.99 * w.max_timestep, masses=ala) > w.kappa_min
    with pytest.warns(RuntimeWarning, match="no restraint stiffness"):
        k = md_kappa(md_model, x0, T, 0.05, masses=ala, on_empty="warn")
    assert k == pytest.approx(kappa_window(md_model, x0, T, 0.05, masses=ala).kappa_max)


def _restrained_md(ala, model, z, kappa, backend, n_steps=1000, every=10):
    system = openmm.XmlSerializer.clone(ala.system)
    system.addForce(ChiRestraintForce(model, z=z, kappa=kappa, backend=backend))
    integ = ala.make_integrator(seed=3)            # Langevin, 2 fs, 310 K
    ctx = _context_with(system, integ)
    ctx.setPositions(ala.positions[0])
    ctx.setVelocitiesToTemperature(ala.temperature, 3)
    m64 = copy.deepcopy(model).double()
    chis = []
    for _ in range(n_steps // every):
        integ.step(every)
        x = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value
        chis.append(m64.chi(x)[0] if np.isfinite(x).all() else np.nan)
    energy = ctx.getState(getEnergy=True).getPotentialEnergy()._value
    return np.array(chis), energy


def _context_with(system, integrator):
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_restrained_md_with_md_kappa_is_stable_and_holds_z(ala, md_model, backend):
    """2 fs Langevin MD of the bundled alanine dipeptide with κ from md_kappa: finite, χ
    held at z within its thermal width sqrt(kT/κ); 10× above κ_max (1.6 steps per restraint
    period, below the Verlet limit of π) the same MD blows up."""
    x0 = ala.positions[0]
    z = float(copy.deepcopy(md_model).double().chi(x0)[0])
    w = kappa_window(md_model, x0, ala.temperature, ala.timestep, masses=ala)
    sigma = np.sqrt(w.kT / w.kappa)
    assert sigma <= 0.01
    chis, energy = _restrained_md(ala, md_model, z, w.kappa, backend)
    assert np.isfinite(chis).all() and np.isfinite(energy) and energy < 500.0
    held = chis[10:]                                   # after 200 fs
    assert abs(held.mean() - z) < sigma
    assert 0.3 * sigma < held.std() < 1.5 * sigma
    if backend == "pythonforce":
        chis, energy = _restrained_md(ala, md_model, z, 10 * w.kappa_max, backend, 500)
        assert not (np.isfinite(energy) and energy < 1e6)
