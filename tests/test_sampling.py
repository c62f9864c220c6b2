"""Tests of the burst engine: reproducibility, pool reuse, robustness, physics of bursts."""
from __future__ import annotations

import concurrent.futures
import math
import os
import warnings

import numpy as np
import openmm
import pytest
from openmm import app

from amore_openmm.data import KoopmanData
from amore_openmm.sampling import (BurstFailureWarning, BurstSampler, BurstSanity, ContextPool,
                                   burst_seed, choose_platform, sample_trajectory)
from amore_openmm.systems import BOLTZ, MolecularSystem, load_system, muller_brown_system

ALA_PDB = "alanine_dipeptide"  # the bundled system


@pytest.fixture(scope="module")
def ala() -> MolecularSystem:
    return load_system(ALA_PDB, temperature=310.0)


@pytest.fixture(scope="module")
def ala_starts(ala: MolecularSystem) -> np.ndarray:
    rng = np.random.default_rng(0)
    x0 = ala.positions[0]
    return x0[None] + rng.normal(scale=0.003, size=(6,) + x0.shape)


@pytest.fixture(scope="module")
def pool2(ala: MolecularSystem):
    with ContextPool(ala, size=2, platform="Reference") as pool:
        yield pool


def harmonic_brownian(n_particles: int = 50, k: float = 100.0, kT: float = 2.5,
                      a: float = 0.005, lag_steps: int = 400) -> MolecularSystem:
    """Independent particles (1 amu) in 0.5*k*r^2, BrownianIntegrator with γ=1/ps, k·dt/(mγ)=a."""
    system = openmm.System()
    force = openmm.CustomExternalForce(f"0.5*{k}*(x^2+y^2+z^2)")
    top = app.Topology()
    res = top.addResidue("HO", top.addChain())
    for i in range(n_particles):
        system.addParticle(1.0)
        force.addParticle(i, [])
        top.addAtom(f"P{i}", None, res)
    system.addForce(force)
    pos = np.ones((n_particles, 3))
    return MolecularSystem.from_openmm(system, top, pos, temperature=kT / BOLTZ,
                                       timestep=a / k, friction=1.0, integrator="brownian",
                                       lag_steps=lag_steps, featurizer="coordinates",
                                       name="harmonic")


# ---------------------------------------------------------------------------------------------
def test_burst_seed_is_valid_and_distinct() -> None:
    seeds = {burst_seed(7, i, k) for i in range(50) for k in range(4)}
    assert len(seeds) == 200
    assert all(1 <= s < 2**31 - 1 for s in seeds)
    assert burst_seed(7, 3, 1) == burst_seed(7, 3, 1)
    assert burst_seed(7, 3, 1) != burst_seed(8, 3, 1)
    assert burst_seed(-1, 0, 0) >= 1  # negative run seeds are valid too


def test_same_seed_same_data_whatever_pool_size(ala, ala_starts, pool2) -> None:
    with ContextPool(ala, size=1, platform="Reference") as pool1:
        assert pool1.mode == "inline"
        d1 = BurstSampler(pool1).run(ala_starts, 2, 30, seed=11, progress=False)
    assert pool2.mode == "process"
    d2 = BurstSampler(pool2).run(ala_starts, 2, 30, seed=11, progress=False, chunk_size=1)
    d3 = BurstSampler(pool2).run(ala_starts, 2, 30, seed=11, progress=False, chunk_size=4)
    assert np.array_equal(d1.y, d2.y) and np.array_equal(d2.y, d3.y)
    # a burst's stream depends only on (seed, start index, k): a subset run reproduces it
    d4 = BurstSampler(pool2).run(ala_starts[3:], 2, 30, seed=11, progress=False,
                                 start_indices=[3, 4, 5])
    assert np.array_equal(d4.y, d1.y[3:])
    # and another seed gives other bursts
    d5 = BurstSampler(pool2).run(ala_starts, 2, 30, seed=12, progress=False)
    assert not np.allclose(d5.y, d1.y)


def test_bursts_differ_by_k_and_move_thermally(ala, ala_starts, pool2) -> None:
    d = BurstSampler(pool2).run(ala_starts, 3, 50, seed=1, progress=False)
    for k1, k2 in [(0, 1), (0, 2), (1, 2)]:
        assert not np.allclose(d.y[:, k1], d.y[:, k2])
    # 100 fs at 310 K: atoms move ~0.01–0.1 nm, nothing explodes
    disp = np.linalg.norm(d.y - d.x[:, None], axis=-1)
    assert 0.005 < disp.mean() < 0.2 and disp.max() < 1.0
    # normal bursts pass the sanity checks: nothing refused, dropped or retried
    assert d.n_starts == 6 and d.extra["dropped"] == [] and d.extra["drop_counts"] == {}
    assert d.extra["retried"] == 0


def test_shapes_and_metadata(ala, ala_starts, pool2) -> None:
    d = BurstSampler(pool2).run(ala_starts[:4], 3, 10, seed=5, generation=2, origin="mep",
                                start_indices=[10, 11, 12, 13], progress=False)
    assert isinstance(d, KoopmanData)
    assert d.x.shape == (4, 22, 3) and d.y.shape == (4, 3, 22, 3)
    assert d.x.dtype == np.float32
    np.testing.assert_allclose(d.x, ala_starts[:4], atol=1e-6)
    assert d.generation.tolist() == [2] * 4 and d.origin.tolist() == ["mep"] * 4
    assert d.seed.tolist() == [5] * 4
    assert d.lag_steps == 10 and d.timestep == pytest.approx(ala.timestep)
    assert d.lag_time == pytest.approx(10 * ala.timestep)
    assert d.system_name == ala.name
    assert d.extra["start_index"].tolist() == [10, 11, 12, 13] and d.extra["dropped"] == []
    assert d.extra["drop_counts"] == {} and d.weights.tolist() == [1.0] * 4
    # lag_steps defaults to the system's
    d2 = BurstSampler(pool2).run(ala_starts[:1], 1, seed=5, progress=False)
    assert d2.lag_steps == ala.lag_steps


def test_contexts_created_once(ala, ala_starts) -> None:
    with ContextPool(ala, size=2, platform="Reference") as pool:
        assert pool.contexts_created == 2
        sampler = BurstSampler(pool)
        for seed in range(3):
            sampler.run(ala_starts, 2, 10, seed=seed, progress=False, chunk_size=1)
        assert pool.contexts_created == 2
        assert len(set(pool.worker_pids)) == 2
    with ContextPool(ala, size=2, platform="CPU") as pool:
        assert pool.mode == "thread" and pool.properties["Threads"] == "1"
        BurstSampler(pool).run(ala_starts, 2, 10, seed=0, progress=False, chunk_size=1)
        BurstSampler(pool).run(ala_starts, 2, 10, seed=1, progress=False, chunk_size=1)
        assert pool.contexts_created == 2


def test_cpu_platform_threads_are_reproducible(ala, ala_starts) -> None:
    """Per-Context RNG on CPU: neither pool size nor thread scheduling changes the data."""
    with ContextPool(ala, size=1, platform="CPU") as pool:
        a = BurstSampler(pool).run(ala_starts, 2, 20, seed=4, progress=False, reseed_block=2)
        assert a.extra["reseed"] == "block:2"  # auto: block re-seeding off Reference
    with ContextPool(ala, size=2, platform="CPU") as pool:
        b = BurstSampler(pool).run(ala_starts, 2, 20, seed=4, progress=False, reseed_block=2)
        c = BurstSampler(pool).run(ala_starts, 2, 20, seed=4, progress=False, reseed="burst",
                                   chunk_size=1)
        d = BurstSampler(pool).run(ala_starts, 2, 20, seed=4, progress=False, reseed="burst",
                                   chunk_size=4)
        # per-burst streams: a subset run reproduces its starts
        e = BurstSampler(pool).run(ala_starts[4:], 2, 20, seed=4, progress=False,
                                   reseed="burst", start_indices=[4, 5])
    assert np.array_equal(a.y, b.y)
    assert np.array_equal(c.y, d.y) and np.array_equal(e.y, c.y[4:])
    assert not np.allclose(a.y[:, 0], a.y[:, 1]) and not np.allclose(a.y, c.y)


def test_block_reseeding_on_reference_matches_across_pool_sizes(ala, ala_starts,
                                                                pool2) -> None:
    with ContextPool(ala, size=1, platform="Reference") as pool1:
        a = BurstSampler(pool1).run(ala_starts, 2, 20, seed=6, progress=False,
                                    reseed="block", reseed_block=4)
    b = BurstSampler(pool2).run(ala_starts, 2, 20, seed=6, progress=False, reseed="block",
                                reseed_block=4)
    burst = BurstSampler(pool2).run(ala_starts, 2, 20, seed=6, progress=False)
    assert np.array_equal(a.y, b.y) and not np.allclose(a.y, burst.y)
    assert not np.allclose(a.y[:, 0], a.y[:, 1])


def test_exploding_start_is_dropped_with_warning(ala, ala_starts, pool2) -> None:
    bad = ala_starts[:3].copy()
    bad[1, 5] = bad[1, 0] + 0.002  # non-bonded atoms 0.002 nm apart: LJ blows it up (NaN)
    with pytest.warns(BurstFailureWarning, match=r"start 1 \(input row 1\) refused"):
        d = BurstSampler(pool2).run(bad, 2, 20, seed=0, progress=False, max_retries=2)
    assert d.n_starts == 2 and d.extra["start_index"].tolist() == [0, 2]
    assert [e["start_index"] for e in d.extra["dropped"]] == [1]
    assert d.extra["dropped"][0]["reason"] == "start_energy"  # refused before any burst
    assert d.extra["drop_counts"] == {"start_energy": 1}
    np.testing.assert_allclose(d.x, bad[[0, 2]], atol=1e-6)
    assert np.all(np.isfinite(d.y))
    # without the sanity checks the start's bursts blow up and the NaN guard drops it
    with pytest.warns(BurstFailureWarning, match=r"start 1 \(input row 1\) dropped"):
        d = BurstSampler(pool2).run(bad, 2, 20, seed=0, progress=False, max_retries=2,
                                    sanity=BurstSanity(enabled=False))
    assert d.extra["dropped"][0]["reason"] in ("non_finite", "displacement")


def _stretched(x: np.ndarray, i: int, j: int, length: float) -> np.ndarray:
    """``x`` with atom j moved along the bond i-j so that the bond is ``length`` nm long."""
    out = x.copy()
    u = x[j] - x[i]
    out[j] = x[i] + u / np.linalg.norm(u) * length
    return out


def test_start_with_a_broken_bond_is_refused(ala, ala_starts, pool2) -> None:
    from amore_openmm.sampling.sanity import system_bonds

    pairs, r0 = system_bonds(ala.system)
    assert len(pairs) == 21  # 22 atoms, one molecule: a tree of 21 bonds
    i, j = pairs[0]
    starts = ala_starts[:3].copy()
    starts[2] = _stretched(starts[2], i, j, 0.5)
    with pytest.warns(BurstFailureWarning, match=r"start 2 \(input row 2\) refused"):
        d = BurstSampler(pool2).run(starts, 2, 20, seed=0, progress=False)
    assert d.extra["start_index"].tolist() == [0, 1]
    # the stretched bond costs ~10^4 kJ/mol: the energy window refuses it first ...
    assert d.extra["dropped"] == [{"start_index": 2, "k": -1, "reason": "start_energy",
                                   "detail": d.extra["dropped"][0]["detail"]}]
    # ... and with the energy window opened wide, the bond check does
    wide = BurstSanity(energy_margin_kT=1e9)
    with pytest.warns(BurstFailureWarning, match="bond"):
        d = BurstSampler(pool2).run(starts, 2, 20, seed=0, progress=False, sanity=wide)
    assert d.extra["drop_counts"] == {"start_bond": 1}
    assert f"bond {i}-{j} is 0.5 nm" in d.extra["dropped"][0]["detail"]


def pulled_dimer(force: float = 100.0) -> MolecularSystem:
    """Two particles bonded at 0.1 nm (k = 100 kJ/mol/nm²) and pulled apart by ±``force``
    kJ/mol/nm at 5 K: overdamped, the bond relaxes (τ = mγ/2k = 5 fs) to ~force/k = 1 nm
    within a 50 fs burst, far past any bond limit, while energy falls and nothing moves
    100 nm. Without the pull the bond fluctuates by sqrt(kT/k) ≈ 0.02 nm."""
    system = openmm.System()
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.1, 100.0)
    pull = openmm.CustomExternalForce(f"-s*{force}*x")
    pull.addPerParticleParameter("s")
    top = app.Topology()
    res = top.addResidue("DIM", top.addChain())
    for s in (-1.0, 1.0):
        pull.addParticle(system.addParticle(1.0), [s])
        top.addAtom(f"P{int(s > 0)}", None, res)
    system.addForce(bond)
    system.addForce(pull)
    pos = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    return MolecularSystem.from_openmm(system, top, pos, temperature=5.0, timestep=0.001,
                                       friction=1.0, integrator="brownian", lag_steps=50,
                                       featurizer="coordinates", name="dimer")


def test_burst_that_tears_a_bond_is_retried_then_dropped_and_counted() -> None:
    ms = pulled_dimer()
    starts = np.repeat(ms.positions[0][None], 3, axis=0)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        with pytest.warns(BurstFailureWarning, match="bond 0-1 is"):
            d = BurstSampler(pool).run(starts, 2, seed=0, progress=False, max_retries=2)
        assert d.n_starts == 0 and d.y.shape == (0, 2, 2, 3)  # nothing of it enters the data
        assert d.extra["drop_counts"] == {"bond": 3}
        assert [(e["start_index"], e["k"]) for e in d.extra["dropped"]] == [(0, 0), (1, 0),
                                                                            (2, 0)]
        # without the pull the dimer is a plain thermal bond: every burst is kept
        free = pulled_dimer(force=0.0)
    with ContextPool(free, size=1, platform="Reference") as pool:
        ok = BurstSampler(pool).run(starts, 2, seed=0, progress=False)
    assert ok.n_starts == 3 and ok.extra["drop_counts"] == {}
    length = np.linalg.norm(ok.y[:, :, 1] - ok.y[:, :, 0], axis=-1)
    assert np.all(length < 0.25) and length.std() > 0.005  # thermal, within the limit


def test_failed_bursts_are_retried_with_new_seeds() -> None:
    """A tight displacement bound makes some bursts fail; retries with new seeds succeed."""
    ms = harmonic_brownian(n_particles=1, lag_steps=20)
    x = np.zeros((30, 1, 3))
    # a 20-step burst moves each coordinate by ~N(0, 0.0675² nm²) (OU variance); a 0.15 nm bound
    # fails ~8 % of first attempts (any of 3 coordinates beyond 2.2 sd)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BurstFailureWarning)
            d = BurstSampler(pool).run(x, 2, seed=3, progress=False, max_retries=6,
                                       max_displacement=0.15)
    assert d.extra["retried"] > 0
    assert d.n_starts >= 28  # dropping needs 7 failures in a row
    assert np.abs(d.y - d.x[:, None]).max() <= 0.15


def test_save_load_round_trip_and_wrong_system(ala, ala_starts, pool2, tmp_path) -> None:
    d = BurstSampler(pool2).run(ala_starts[:3], 2, 10, seed=2, progress=False,
                                generation=1, origin="user")
    path = d.save(tmp_path / "bursts.npz")
    back = KoopmanData.load(path, n_atoms=ala.n_atoms)
    assert np.array_equal(back.x, d.x) and np.array_equal(back.y, d.y)
    assert back.origin.tolist() == ["user"] * 3 and back.generation.tolist() == [1] * 3
    assert back.lag_steps == 10 and back.system_name == ala.name
    with pytest.raises(ValueError, match="different system"):
        KoopmanData.load(path, n_atoms=1)


def test_interrupt_keeps_finished_chunks_and_resume_matches(ala, ala_starts, tmp_path) -> None:
    ck = tmp_path / "ck.npz"
    with ContextPool(ala, size=1, platform="Reference") as pool:
        sampler = BurstSampler(pool)
        full = sampler.run(ala_starts, 2, 20, seed=9, progress=False)
        calls = []

        def stop_after_two(chunk: KoopmanData) -> None:
            calls.append(chunk.n_starts)
            if len(calls) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt) as info:
            sampler.run(ala_starts, 2, 20, seed=9, progress=False, chunk_size=2,
                        checkpoint=ck, on_chunk=stop_after_two)
        partial = info.value.partial
        assert partial.n_starts == 4 and sampler.partial.n_starts == 4
        np.testing.assert_array_equal(partial.y, full.y[:4])
        on_disk = KoopmanData.load(ck, n_atoms=22)  # the checkpoint is a KoopmanData file
        assert on_disk.n_starts == 4
        resumed = sampler.run(ala_starts, 2, 20, seed=9, progress=False, chunk_size=2,
                              checkpoint=ck, on_chunk=lambda c: calls.append(-c.n_starts))
        assert calls[2:] == [-2]  # only the missing chunk was computed
        np.testing.assert_array_equal(resumed.y, full.y)
        with pytest.raises(ValueError, match="different run"):
            sampler.run(ala_starts, 2, 20, seed=10, progress=False, checkpoint=ck)


def test_brownian_harmonic_variance_and_relaxation() -> None:
    """Euler–Maruyama OU process: exact mean (1-a)^n x0 and variance kT/k (1-(1-a)^2n)/(1-a/2)."""
    k, kT, a, n = 100.0, 2.5, 0.005, 400
    ms = harmonic_brownian(n_particles=50, k=k, kT=kT, a=a, lag_steps=n)
    x0 = np.full((4, 50, 3), 0.5)
    with ContextPool(ms, size=2, platform="Reference") as pool:
        d = BurstSampler(pool).run(x0, 10, seed=1, progress=False)
    samples = d.y.reshape(-1).astype(np.float64)  # 4 starts × 10 bursts × 150 coordinates
    decay = (1 - a) ** n
    mean_exp = 0.5 * decay
    var_exp = kT / k * (1 - (1 - a) ** (2 * n)) / (1 - a / 2)
    m = len(samples)
    assert abs(samples.mean() - mean_exp) < 4 * math.sqrt(var_exp / m)
    assert abs(samples.var() / var_exp - 1) < 4 * math.sqrt(2 / m)
    # sanity: the stationary variance kT/k is within 2 % of var_exp here
    assert var_exp == pytest.approx(kT / k, rel=0.02)


def test_muller_brown_bursts_from_minimum() -> None:
    ms = muller_brown_system()
    x = np.repeat(np.array([[[-0.558, 1.442, 0.0]]]), 20, axis=0)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        d = BurstSampler(pool).run(x, 5, seed=0, progress=False)
    disp = (d.y - d.x[:, None])[..., 0, :2].reshape(-1, 2)
    # 10 steps of 1e-4 with kT = 12.5: free diffusion sd sqrt(2 kT dt 10) = 0.158 per axis;
    # the well's curvature shrinks it somewhat
    sd = disp.std(axis=0)
    assert np.all((sd > 0.08) & (sd < 0.2))
    assert np.abs(d.y[..., 2]).max() < 0.3  # z stays held by its spring


def test_sample_trajectory_shapes_and_determinism(ala) -> None:
    a = sample_trajectory(ala, 5, 20, seed=3, platform="Reference", progress=False)
    b = sample_trajectory(ala, 5, 20, seed=3, platform="Reference", progress=False)
    c = sample_trajectory(ala, 5, 20, seed=4, platform="Reference", progress=False)
    assert a.shape == (5, 22, 3) and a.dtype == np.float64
    assert np.array_equal(a, b) and not np.allclose(a, c)
    steps = np.linalg.norm(np.diff(a, axis=0), axis=-1)
    assert np.all(steps.max(axis=1) > 1e-3)  # frames move
    x0 = ala.positions[0] + 0.01
    d = sample_trajectory(ala, 2, 10, seed=3, x0=x0, platform="Reference", progress=False)
    assert np.linalg.norm(d[0] - x0, axis=-1).max() < 0.2


def test_interrupted_trajectory_resumes_from_its_checkpoint(ala, tmp_path, monkeypatch) -> None:
    """A trajectory killed after some frames continues from its checkpoint (frames and the
    Context's state, thermostat random state included) to the frames of an uninterrupted run;
    a checkpoint of another trajectory is ignored with a warning."""
    from amore_openmm.sampling import trajectory
    kw = dict(platform="Reference", progress=False)
    full = sample_trajectory(ala, 8, 20, seed=5, **kw)
    ck = tmp_path / "traj.partial.npz"
    real_step, calls = trajectory._step, []

    def dies_at_frame_5(*a):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        real_step(*a)

    monkeypatch.setattr(trajectory, "_step", dies_at_frame_5)
    with pytest.raises(KeyboardInterrupt):
        sample_trajectory(ala, 8, 20, seed=5, checkpoint=ck, checkpoint_interval=0, **kw)
    monkeypatch.setattr(trajectory, "_step", real_step)
    with np.load(ck) as f:
        assert len(f["frames"]) == 5
    calls.clear()
    monkeypatch.setattr(trajectory, "_step", lambda *a: calls.append(1) or real_step(*a))
    resumed = sample_trajectory(ala, 8, 20, seed=5, checkpoint=ck, **kw)
    assert len(calls) == 3                                   # only the missing frames ran
    np.testing.assert_allclose(resumed, full, atol=1e-6)
    other = sample_trajectory(ala, 8, 20, seed=6, **kw)
    assert np.abs(other - full).max() > 1e-3                 # the seed matters
    with pytest.warns(RuntimeWarning, match="another trajectory"):
        again = sample_trajectory(ala, 8, 20, seed=6, checkpoint=ck, **kw)
    np.testing.assert_allclose(again, other, atol=1e-6)


def test_auto_platform_probe_reports_and_is_cached(ala, capsys) -> None:
    import amore_openmm.sampling.pool as pool_module

    pool_module._PROBE_CACHE.clear()
    name, report = choose_platform(ala)
    assert name in report["steps_per_s"] and report["chosen"] == name
    assert all(rate > 0 for rate in report["steps_per_s"].values())
    assert "platform auto ->" in capsys.readouterr().err
    again, report2 = choose_platform(ala)  # cached: no second probe
    assert again == name and report2 is report
    assert "cached probe" in capsys.readouterr().err


def test_bad_arguments(ala, pool2) -> None:
    with pytest.raises(ValueError, match="starts must have shape"):
        BurstSampler(pool2).run(np.zeros((2, 5, 3)), 1, progress=False)
    with pytest.raises(ValueError, match="start_indices must be unique"):
        BurstSampler(pool2).run(np.repeat(ala.positions[0][None], 2, 0), 1,
                                start_indices=[1, 1], progress=False)
    with pytest.raises(ValueError, match="platform"):
        ContextPool(ala, size=1, platform="NoSuchPlatform")


def test_ctrl_c_in_process_pool_keeps_work_and_pool_survives(ala, ala_starts) -> None:
    """Ctrl-C after the first finished chunk (from the chunk hook, so no timing is involved):
    the workers get a real SIGINT, as a terminal's Ctrl-C reaches the whole process group, and
    the main thread gets the KeyboardInterrupt that Python's SIGINT handler raises. (Raised
    here directly: a SIGINT the process sends itself may be handled by another thread and
    turn into a KeyboardInterrupt only later, after the run has finished.) The run stops,
    finished chunks come back, the workers ignore the signal, survive and are reused."""
    import signal

    starts = np.repeat(ala_starts, 10, axis=0)  # 60 starts, chunks of 4
    sent = []

    def ctrl_c(chunk: KoopmanData) -> None:
        if not sent:
            sent.append(chunk.n_starts)
            for pid in pool.worker_pids:  # what a terminal's Ctrl-C does to the workers
                os.kill(pid, signal.SIGINT)
            raise KeyboardInterrupt

    with ContextPool(ala, size=2, platform="Reference") as pool:
        pids = pool.worker_pids
        sampler = BurstSampler(pool)
        with pytest.raises(KeyboardInterrupt) as info:
            sampler.run(starts, 1, 50, seed=0, progress=False, chunk_size=4, on_chunk=ctrl_c)
        part = info.value.partial
        assert sent == [4] and 4 <= part.n_starts < len(starts)
        assert sampler.partial.n_starts == part.n_starts
        ref = sampler.run(starts, 1, 50, seed=0, progress=False, chunk_size=4)
        rows = part.extra["start_index"]
        np.testing.assert_array_equal(part.y, ref.y[rows])  # kept work is the right work
        assert pool.worker_pids == pids and pool.contexts_created == 2


class _KillOnce(concurrent.futures.Executor):
    """Runs chunks on a pool's slots; chunk ``victim`` instead kills the worker process that
    gets it (``os._exit`` inside the worker): a worker dying mid-chunk, deterministically."""

    def __init__(self, pool: ContextPool, victim: int) -> None:
        self.pool, self.victim, self.n = pool, victim, 0

    def submit(self, fn, /, *args, **kwargs):
        self.n += 1
        if self.n - 1 == self.victim:
            return self.pool.submit(9, runner=os._exit)
        return self.pool.submit(args[-1])


def test_dead_worker_fails_the_run_keeps_work_and_is_restarted(ala, ala_starts) -> None:
    with ContextPool(ala, size=2, platform="Reference") as pool:
        sampler = BurstSampler(pool, executor=_KillOnce(pool, victim=2))
        starts = np.repeat(ala_starts, 2, axis=0)
        with pytest.raises(RuntimeError, match=r"died \(exit code 9\)") as info:
            sampler.run(starts, 1, 20, seed=0, progress=False, chunk_size=2)
        part = info.value.partial
        rows = part.extra["start_index"].tolist()
        assert {0, 1, 2, 3} <= set(rows) and not {4, 5} & set(rows)  # chunks 0, 1 kept
        ref = BurstSampler(pool).run(starts, 1, 20, seed=0, progress=False, chunk_size=1)
        assert ref.n_starts == len(starts)  # the dead worker was replaced
        np.testing.assert_array_equal(part.y, ref.y[rows])
        assert pool.contexts_created == 3


def test_user_executor_gives_the_same_data(ala, ala_starts, pool2) -> None:
    import concurrent.futures as cf

    ref = BurstSampler(pool2).run(ala_starts, 2, 20, seed=8, progress=False)
    with cf.ThreadPoolExecutor(1) as ex:
        got = BurstSampler(pool2, executor=ex).run(ala_starts, 2, 20, seed=8, progress=False)
    assert np.array_equal(ref.y, got.y)


def test_empty_and_quantity_inputs(ala, pool2) -> None:
    from openmm import unit

    empty = BurstSampler(pool2).run(np.zeros((0, 22, 3)), 2, 10, progress=False)
    assert empty.n_starts == 0 and empty.y.shape == (0, 2, 22, 3)
    q = BurstSampler(pool2).run(ala.positions[0] * 10 * unit.angstrom, 1, 10, seed=1,
                                progress=False)
    plain = BurstSampler(pool2).run(ala.positions[0], 1, 10, seed=1, progress=False)
    assert q.n_starts == 1 and np.array_equal(q.y, plain.y)


def test_barostat_system_bursts_are_independent() -> None:
    """A barostat has its own random stream, step counter and box: bursts must not inherit
    them from the previous burst on the same Context."""
    n, L = 64, 2.0
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(L, 0, 0), openmm.Vec3(0, L, 0),
                                        openmm.Vec3(0, 0, L))
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.8)
    top = app.Topology()
    res = top.addResidue("AR", top.addChain())
    for _ in range(n):
        system.addParticle(39.9)
        nb.addParticle(0.0, 0.34, 0.99)
        top.addAtom("Ar", app.element.argon, res)
    system.addForce(nb)
    system.addForce(openmm.MonteCarloBarostat(100.0, 120.0, 2))
    top.setPeriodicBoxVectors(system.getDefaultPeriodicBoxVectors())
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3), -1).reshape(-1, 3) * 0.5 + 0.25
    ms = MolecularSystem.from_openmm(system, top, grid, temperature=120, timestep=0.004,
                                     lag_steps=50, name="argon")
    starts = np.repeat(grid[None], 3, axis=0)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        assert not pool.fast_reseed  # the barostat needs the reinitialize path
        a = BurstSampler(pool).run(starts, 2, seed=1, progress=False)
        b = BurstSampler(pool).run(starts[1:], 2, seed=1, progress=False, start_indices=[1, 2])
    assert np.array_equal(a.y[1:], b.y)
