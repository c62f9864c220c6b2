"""The χ backends: choice and reasons, equality of TorchForce and PythonForce on a physical
System, serialisation of the PythonForce restraint, unwrapped positions in a periodic box."""
import copy
import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import openmm
from openmm import unit

from amore_openmm.chi import ChiModel, make_featurizer
from amore_openmm.forces import (BACKENDS, ChiBackendError, ChiComputation, ChiRestraintForce,
                                 backend_info, chi_force, resolve_backend)
from amore_openmm.forces import backend as backend_mod

torch.set_num_threads(1)
KJ_NM = unit.kilojoule_per_mole / unit.nanometer
_NO_TORCHFORCE = backend_mod.torchforce_problem()
requires_torchforce = pytest.mark.skipif(_NO_TORCHFORCE is not None,
                                         reason=f"torchforce backend: {_NO_TORCHFORCE}")


@pytest.fixture(scope="module")
def model(ala):
    m = ChiModel(make_featurizer(ala, "auto"), seed=11)
    with torch.no_grad():
        m.network[-1].weight.mul_(25.0)
    return m


@pytest.fixture(scope="module")
def frames(ala, trajectory):
    return trajectory(ala, n_frames=3, stride=150, seed=4)


def _energy_forces(system, x, platform="Reference", params=None):
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                         openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(x)
    for k, v in (params or {}).items():
        ctx.setParameter(k, v)
    st = ctx.getState(getEnergy=True, getForces=True)
    return (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            st.getForces(asNumpy=True).value_in_unit(KJ_NM))


def test_importing_forces_does_not_import_openmmtorch():
    code = ("import sys, amore_openmm.forces as f; import amore_openmm.mep; "
            "print('openmmtorch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_backend_choice_and_reasons(monkeypatch):
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    info = backend_info()
    assert set(info) == {"name", "reason", "openmm_version", "openmmtorch_version"}
    assert info["name"] in BACKENDS and info["openmm_version"] == openmm.__version__
    expected = "torchforce" if _NO_TORCHFORCE is None else "pythonforce"
    assert info["name"] == expected and info["reason"].startswith("auto")
    assert resolve_backend("pythonforce")[0] == "pythonforce"
    monkeypatch.setenv(backend_mod.ENV_VAR, "pythonforce")
    assert resolve_backend("auto") == ("pythonforce", "environment AMORE_CHI_BACKEND=pythonforce")
    monkeypatch.setenv(backend_mod.ENV_VAR, "bogus")
    with pytest.raises(ChiBackendError, match="AMORE_CHI_BACKEND"):
        resolve_backend("auto")
    monkeypatch.delenv(backend_mod.ENV_VAR)
    with pytest.raises(ValueError, match="'auto', 'torchforce' or 'pythonforce'"):
        chi_force("x.pt", backend="cuda")


def test_openmm_86_falls_back_to_pythonforce(monkeypatch):
    """With OpenMM ≥ 8.6 auto takes PythonForce, and an explicit torchforce says why not."""
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(backend_mod.openmm, "__version__", "8.6.1")
    monkeypatch.setattr(backend_mod, "openmmtorch_version", lambda: "openmmtorch 1.10")
    name, reason = resolve_backend("auto")
    assert name == "pythonforce" and "8.6.1" in reason and "segfault" in reason
    with pytest.raises(ChiBackendError, match=r"amore_openmm\[torchforce\]"):
        ChiRestraintForce("unused.pt", backend="torchforce")
    assert backend_info()["name"] == "pythonforce"


def test_without_openmm_torch_auto_says_so(monkeypatch):
    """No openmm-torch installed: auto takes PythonForce and names that as the reason (not
    the OpenMM version), on any OpenMM."""
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(backend_mod, "openmmtorch_version", lambda: None)
    for version in ("8.5.2", "8.6.1"):
        monkeypatch.setattr(backend_mod.openmm, "__version__", version)
        name, reason = resolve_backend("auto")
        assert name == "pythonforce" and "not installed" in reason and "segfault" not in reason


@requires_torchforce
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_backends_agree_on_physical_system(ala, frames, model, platform):
    """Alanine dipeptide (amber14) + χ restraint: the same energy and forces on both
    backends, and the restraint's share is −κ(χ − z)∇χ with no net force."""
    results = {}
    for backend in BACKENDS:
        system = openmm.XmlSerializer.clone(ala.system)
        system.addForce(ChiRestraintForce(model, z=0.3, kappa=2e3, force_group=5,
                                          backend=backend))
        results[backend] = [_energy_forces(system, x, platform) for x in frames]
    chi, grad = copy.deepcopy(model).double().chi_and_grad(frames)
    bare = [_energy_forces(ala.system, x, platform) for x in frames]
    for i, x in enumerate(frames):
        (e_t, f_t), (e_p, f_p) = results["torchforce"][i], results["pythonforce"][i]
        scale = np.abs(f_t).max()
        assert e_p == pytest.approx(e_t, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(f_p, f_t, atol=1e-9 * scale)
        e_r, f_r = e_p - bare[i][0], f_p - bare[i][1]
        expected = -2e3 * (chi[i] - 0.3) * grad[i]
        assert e_r == pytest.approx(0.5 * 2e3 * (chi[i] - 0.3) ** 2, rel=1e-7)
        np.testing.assert_allclose(f_r, expected, atol=1e-7 * scale)
        np.testing.assert_allclose(f_r.sum(axis=0), 0.0, atol=1e-7 * scale)


def test_pythonforce_restraint_serialises_and_reloads(ala, frames, model, tmp_path):
    system = openmm.XmlSerializer.clone(ala.system)
    restraint = ChiRestraintForce(model, z=0.6, kappa=500.0, backend="pythonforce")
    system.addForce(restraint)
    params = {ChiRestraintForce.Z_PARAM: 0.45}
    e0, f0 = _energy_forces(system, frames[0], params=params)
    xml = openmm.XmlSerializer.serialize(system)
    assert 'type="PythonForce"' in xml and "amore_chi_kappa" in xml
    again = openmm.XmlSerializer.deserialize(xml)
    e1, f1 = _energy_forces(again, frames[0], params=params)
    assert e1 == pytest.approx(e0, rel=1e-12)   # same to summation round-off
    np.testing.assert_allclose(f1, f0, rtol=1e-12, atol=1e-12 * np.abs(f0).max())
    comp = pickle.loads(pickle.dumps(restraint.computation))
    assert isinstance(comp, ChiComputation) and comp.restraint
    assert set(vars(pickle.loads(pickle.dumps(comp)))) == {"module_bytes", "restraint", "key",
                                                           "prefix", "z_param", "kappa_param",
                                                           "fast", "checked"}
    assert comp.fast is not None                # the default ChiModel: numpy passes
    # a fresh process (module loaded lazily from the pickled bytes) gives the same energy
    (tmp_path / "system.xml").write_text(xml)
    np.save(tmp_path / "x.npy", frames[0])
    script = textwrap.dedent(f"""
        import json, numpy as np, openmm
        s = openmm.XmlSerializer.deserialize(open({str(tmp_path / 'system.xml')!r}).read())
        c = openmm.Context(s, openmm.VerletIntegrator(0.001),
                           openmm.Platform.getPlatformByName("Reference"))
        c.setPositions(np.load({str(tmp_path / 'x.npy')!r}))
        c.setParameter("amore_chi_z", 0.45)
        print(json.dumps(c.getState(getEnergy=True).getPotentialEnergy()._value))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == pytest.approx(e0, rel=1e-12)


def test_numpy_passes_that_are_not_the_module_are_dropped(ala, frames, model):
    """The pythonforce restraint checks its numpy χ passes against the TorchScript module on
    the first call: passes of another model are dropped, and the energy is the module's."""
    from amore_openmm.forces.common import chi_module_bytes
    from amore_openmm.forces.pythonforce import numpy_passes
    other = ChiModel(make_featurizer(ala, "auto"), seed=12)
    x = np.asarray(frames[:2])
    assert np.abs(numpy_passes(model)(x)[0] - numpy_passes(other)(x)[0]).max() > 1e-3
    bare = np.array([_energy_forces(ala.system, xi)[0] for xi in x])
    chi = copy.deepcopy(model).double().chi(x)
    for fast in (numpy_passes(model), numpy_passes(other), None):
        computation = ChiComputation(chi_module_bytes(model), restraint=True, fast=fast)
        system = openmm.XmlSerializer.clone(ala.system)
        system.addForce(openmm.PythonForce(computation, {ChiRestraintForce.Z_PARAM: 0.3,
                                                         ChiRestraintForce.KAPPA_PARAM: 2e3}))
        energies = np.array([_energy_forces(system, xi)[0] for xi in x]) - bare
        np.testing.assert_allclose(energies, 0.5 * 2e3 * (chi - 0.3) ** 2, rtol=1e-7)


def test_backend_for_prefers_numpy_passes_on_cpu_platforms(model, monkeypatch, tmp_path):
    from amore_openmm.forces import backend_for
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    assert backend_for("auto", "Reference", model) == "pythonforce"
    assert backend_for("auto", openmm.Platform.getPlatformByName("CPU"), model) == "pythonforce"
    assert backend_for("auto", "CUDA", model) == resolve_backend("auto")[0]
    path = model.export_torchscript(tmp_path / "chi.pt")      # a file: no numpy passes
    assert backend_for("auto", "Reference", str(path)) == resolve_backend("auto")[0]
    assert backend_for("pythonforce", "CUDA", model) == "pythonforce"
    if _NO_TORCHFORCE is None:
        assert backend_for("torchforce", "Reference", model) == "torchforce"
        monkeypatch.setenv(backend_mod.ENV_VAR, "torchforce")
        assert backend_for("auto", "Reference", model) == "torchforce"


@pytest.mark.parametrize("backend", [pytest.param("torchforce", marks=requires_torchforce),
                                     "pythonforce"])
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_periodic_box_chi_sees_unwrapped_positions(ala, frames, model, backend, platform):
    """In a periodic System χ gets the positions as set (not wrapped into the box)."""
    m64 = copy.deepcopy(model).double()
    box = 1.2
    system = openmm.System()
    for i in range(ala.n_atoms):
        system.addParticle(ala.system.getParticleMass(i))
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(box, 0, 0), openmm.Vec3(0, box, 0),
                                        openmm.Vec3(0, 0, box))
    force = ChiRestraintForce(model, z=0.5, kappa=10.0, backend=backend)
    assert not force.usesPeriodicBoundaryConditions()
    system.addForce(force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                         openmm.Platform.getPlatformByName(platform))
    x = frames[1] - frames[1].mean(axis=0) + np.array([box, 0.5 * box, -2.0 * box])
    assert (x[:, 0] > box).any() and (x[:, 0] < box).any()   # straddles a box face
    ctx.setPositions(x)
    assert force.chi(ctx) == pytest.approx(m64.chi(x)[0], abs=1e-10)
    assert m64.chi(x)[0] == pytest.approx(m64.chi(frames[1])[0], abs=1e-10)


@requires_torchforce
def test_restrained_minimisation_same_on_both_backends(ala, frames, model):
    """LocalEnergyMinimizer with either restraint reaches the level set and the same energy
    (L-BFGS amplifies round-off, so the end structures agree only approximately)."""
    ends = {}
    chi0 = copy.deepcopy(model).double().chi(frames[2])[0]
    z = chi0 + 0.1
    for backend in BACKENDS:
        system = openmm.XmlSerializer.clone(ala.system)
        force = ChiRestraintForce(model, z=z, kappa=1e4, backend=backend)
        system.addForce(force)
        ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3),
                             openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(frames[2])
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 200)
        st = ctx.getState(getEnergy=True, getPositions=True)
        ends[backend] = (st.getPotentialEnergy()._value, force.chi(ctx),
                         st.getPositions(asNumpy=True)._value)
    (e_t, c_t, x_t), (e_p, c_p, x_p) = ends["torchforce"], ends["pythonforce"]
    e_start = _energy_forces(ala.system, frames[2])[0]
    for e, c in ((e_t, c_t), (e_p, c_p)):
        assert abs(c - z) < 0.05 and e < e_start - 10.0
    assert e_p == pytest.approx(e_t, abs=0.5)
    assert np.abs(x_p - x_t).max() < 0.05
