"""Temperature replica exchange: swaps, the base-temperature Boltzmann ensemble, resume."""
import numpy as np
import openmm
import pytest
from openmm import app

from amore_openmm.sampling.replica_exchange import (TemperatureReplicaExchange,
                                                    geometric_temperatures)
from amore_openmm.systems import BOLTZ, MolecularSystem, load_system, muller_brown_system
from amore_openmm.systems.hmr import hmr_system

# 1-D double well U = H((x/A)² − 1)² + C·x (kJ/mol, nm): barrier 8 kT at 300 K, tilted
H, A, C = 20.0, 0.5, 2.0


def double_well(integrator="langevin_middle"):
    system = openmm.System()
    system.addParticle(10.0)
    f = openmm.CustomExternalForce(f"{H}*((x/{A})^2-1)^2+{C}*x+50*(y^2+z^2)")
    f.addParticle(0, [])
    system.addForce(f)
    top = app.Topology()
    top.addAtom("P", None, top.addResidue("DW", top.addChain()))
    return MolecularSystem(system=system, topology=top, positions=[np.array([[A, 0.0, 0.0]])],
                           temperature=300.0, timestep=0.01, friction=5.0,
                           integrator=integrator, name="double_well", coordinate_dims=(0,))


def exact_left_population(T):
    x = np.linspace(-2.0, 2.0, 40001)
    u = H * ((x / A) ** 2 - 1) ** 2 + C * x
    w = np.exp(-(u - u.min()) / (BOLTZ * T))
    return w[x < 0].sum() / w.sum()


def test_geometric_ladder():
    t = geometric_temperatures(300.0, 600.0, 5)
    assert t[0] == pytest.approx(300.0) and t[-1] == pytest.approx(600.0)
    np.testing.assert_allclose(t[1:] / t[:-1], 2 ** 0.25)
    with pytest.raises(ValueError, match="n_replicas"):
        geometric_temperatures(300, 600, 1)
    with pytest.raises(ValueError, match="t_min"):
        geometric_temperatures(600, 300, 4)


def test_bad_input_raises():
    ms = double_well()
    with pytest.raises(ValueError, match="increasing"):
        TemperatureReplicaExchange(ms, [300, 300, 400])
    with pytest.raises(ValueError, match="steps_per_exchange"):
        TemperatureReplicaExchange(ms, [300, 400], 0)
    with pytest.raises(ValueError, match="atoms"):
        TemperatureReplicaExchange(ms, [300, 400], atoms=[5])
    npt = double_well()
    npt.system.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    with pytest.raises(ValueError, match="barostat"):
        TemperatureReplicaExchange(npt, [300, 400])


def test_base_ensemble_matches_boltzmann_where_md_is_stuck():
    """At 300 K the barrier is 8 kT: plain MD from the right well stays there, while the base
    replica of a 300–1200 K ladder reproduces the exact left-well population."""
    ms = double_well()
    p_exact = exact_left_population(300.0)
    assert 0.6 < p_exact < 0.8
    remd = TemperatureReplicaExchange(ms, geometric_temperatures(300, 1200, 4), 50, seed=1)
    res = remd.run(4000)
    assert res.frames.shape == (4000, 1, 3)
    assert np.all((res.acceptance > 0.2) & (res.acceptance < 1.0))
    assert res.round_trips > 50
    p_remd = float(np.mean(res.frames[:, 0, 0] < 0))
    assert abs(p_remd - p_exact) < 0.06

    ctx = ms.make_context(seed=1)
    ctx.setVelocitiesToTemperature(300.0, 1)
    xs = []
    for _ in range(4000):  # the same simulated time as the base replica
        ctx.getIntegrator().step(50)
        xs.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value[0, 0])
    p_md = float(np.mean(np.array(xs) < 0))
    assert abs(p_remd - p_exact) < abs(p_md - p_exact)
    # the energies reported are those of the stored frames
    x = res.frames[:, 0, 0]
    np.testing.assert_allclose(res.frame_energies, H * ((x / A) ** 2 - 1) ** 2 + C * x +
                               50 * (res.frames[:, 0, 1] ** 2 + res.frames[:, 0, 2] ** 2),
                               rtol=1e-6, atol=1e-6)


def test_acceptance_drops_with_wider_spacing():
    """Swap acceptance falls as the neighbour temperature gap grows (Müller–Brown, Brownian)."""
    ms = muller_brown_system()
    t0 = ms.temperature
    near = TemperatureReplicaExchange(ms, [t0, 1.1 * t0], 20, seed=2).run(400)
    far = TemperatureReplicaExchange(ms, [t0, 3.0 * t0], 20, seed=2).run(400)
    assert 0.0 < far.acceptance[0] < near.acceptance[0] < 1.0


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    ms = double_well()
    temps = geometric_temperatures(300, 900, 3)
    full = TemperatureReplicaExchange(ms, temps, 25, seed=7).run(40)

    ckpt = tmp_path / "remd.npz"
    first = TemperatureReplicaExchange(ms, temps, 25, seed=7, checkpoint=ckpt,
                                       checkpoint_every=10)
    done_before = first._one_exchange
    calls = []

    def crash_after_23():
        if len(calls) == 23:
            raise KeyboardInterrupt
        calls.append(1)
        done_before()

    first._one_exchange = crash_after_23
    with pytest.raises(KeyboardInterrupt):
        first.run(40)
    second = TemperatureReplicaExchange(ms, temps, 25, seed=7, checkpoint=ckpt,
                                        checkpoint_every=10)
    assert second.n_done == 20  # the last checkpoint before the interruption
    res = second.run(40)
    assert res.n_exchanges == full.n_exchanges == 40
    np.testing.assert_allclose(res.frames, full.frames, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(res.state_history, full.state_history)
    np.testing.assert_array_equal(res.n_accepted, full.n_accepted)
    assert res.round_trips == full.round_trips
    with pytest.raises(ValueError, match="different run"):
        TemperatureReplicaExchange(ms, temps, 30, seed=7, checkpoint=ckpt)


def test_alanine_hmr_4fs_replica_exchange():
    """Alanine dipeptide with HMR at 4 fs: swaps accepted, energies finite."""
    ms = hmr_system(load_system("alanine_dipeptide"), 3.0, 0.004)
    res = TemperatureReplicaExchange(ms, geometric_temperatures(310, 400, 3), 50,
                                     seed=3).run(60)
    assert res.frames.shape == (60, 22, 3)
    assert np.all(np.isfinite(res.frames)) and np.all(np.isfinite(res.frame_energies))
    assert np.all((res.acceptance > 0.0) & (res.acceptance < 1.0))
    assert res.simulated_time_ps == pytest.approx(60 * 50 * 0.004)


def test_threads_repeat_the_serial_run_on_cpu():
    """On the CPU platform (per-Context random streams) stepping replicas from two threads
    gives the serial run; on Reference threads are refused."""
    ms = double_well()
    temps = geometric_temperatures(300, 900, 3)
    props = {"Threads": "1"}
    serial = TemperatureReplicaExchange(ms, temps, 20, platform="CPU", properties=props,
                                        seed=4).run(15)
    threaded = TemperatureReplicaExchange(ms, temps, 20, platform="CPU", properties=props,
                                          seed=4, threads=2).run(15)
    np.testing.assert_allclose(threaded.frames, serial.frames, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(threaded.state_history, serial.state_history)
    with pytest.raises(ValueError, match="threads"):
        TemperatureReplicaExchange(ms, temps, 20, platform="Reference", threads=2)


def test_equilibrium_ensemble_stores_the_selection(tmp_path):
    from amore_openmm.sampling.replica_exchange import equilibrium_ensemble
    ms = load_system("alanine_dipeptide", atoms="not element H")
    res = equilibrium_ensemble(ms, 10, n_replicas=3, ps_per_exchange=0.2, seed=5,
                               checkpoint=tmp_path / "eq.npz", atoms="selection")
    assert res.frames.shape == (10, ms.n_selected, 3) and ms.n_selected == 10
    np.testing.assert_array_equal(res.atoms, ms.selection)
    assert res.steps_per_exchange == 50 and res.timestep == pytest.approx(0.004)
    assert res.temperatures[0] == pytest.approx(310.0)
    assert res.temperatures[-1] == pytest.approx(1.35 * 310.0)
    assert (tmp_path / "eq.npz").exists()
    # resuming a finished run does nothing more and gives the same frames
    again = equilibrium_ensemble(ms, 10, n_replicas=3, ps_per_exchange=0.2, seed=5,
                                 checkpoint=tmp_path / "eq.npz", atoms="selection")
    np.testing.assert_array_equal(again.frames, res.frames)


def test_progress_lines_name_the_acceptance(capsys):
    ms = double_well()
    TemperatureReplicaExchange(ms, [300.0, 400.0, 530.0], 10, seed=1).run(20, progress=True)
    err = capsys.readouterr().err
    assert "replica exchange double_well: 20/20 exchanges" in err and "acceptance=" in err
