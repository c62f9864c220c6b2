"""Replica packing (issue 7): exact per-copy energies/forces, packed burst statistics."""
from __future__ import annotations

import numpy as np
import openmm
import pytest

from amore_openmm.sampling import (BurstSampler, ContextPool, PackedEngine, PackedSpec,
                                   PackingError, cached_chunk, engine_cache, pack_replicas,
                                   packed_stream_key)
from amore_openmm.systems import MolecularSystem, load_system

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)  # alanine dipeptide, 0-based


@pytest.fixture(scope="module")
def ala() -> MolecularSystem:
    return load_system("alanine_dipeptide")


def _energy_forces(system: openmm.System, pos: np.ndarray, platform: str = "Reference"
                   ) -> tuple[float, np.ndarray]:
    props = {"Threads": "1"} if platform == "CPU" else {}
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(pos)
    st = ctx.getState(getEnergy=True, getForces=True)
    return st.getPotentialEnergy()._value, st.getForces(asNumpy=True)._value


def _perturbed(ms: MolecularSystem, m: int, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0 = ms.positions[0]
    return np.stack([x0 + rng.normal(0.0, sigma, x0.shape) for _ in range(m)])


def _check_exact(ms: MolecularSystem, xs: np.ndarray, rtol: float, platform: str = "Reference",
                 **kw) -> None:
    ps = pack_replicas(ms, len(xs), **kw)
    packed, shifts = ps.pack_positions(xs)
    E, F = _energy_forces(ps.system, packed, platform)
    F = ps.unpack(F)
    singles = [_energy_forces(ms.system, x, platform) for x in xs]
    E_sum = sum(e for e, _ in singles)
    assert abs(E - E_sum) <= rtol * abs(E_sum)
    for c, (_, f) in enumerate(singles):
        # per copy, relative to that copy's largest force component
        assert np.max(np.abs(F[c] - f)) <= rtol * np.max(np.abs(f)), f"copy {c}"
    np.testing.assert_allclose(ps.unpack_positions(packed, shifts), xs, atol=1e-12)


def test_vacuum_packing_exact_reference(ala: MolecularSystem) -> None:
    # the copies overlap in space (no offsets): any cross-copy term would be enormous
    ps = pack_replicas(ala, 5)
    assert ps.exact and not np.any(ps.offsets) and ps.n_particles == 5 * 22
    assert ps.topology.getNumAtoms() == 110 and ps.dropped_forces == ["CMMotionRemover"]
    _check_exact(ala, _perturbed(ala, 5), rtol=1e-6)
    # identical copies: the packed energy is exactly M times one copy's
    same = np.repeat(ala.positions[0][None], 4, axis=0)
    E4, _ = _energy_forces(pack_replicas(ala, 4).system, same.reshape(-1, 3))
    E1, _ = _energy_forces(ala.system, ala.positions[0])
    assert E4 == pytest.approx(4 * E1, rel=1e-9)


def test_vacuum_packing_exact_cpu(ala: MolecularSystem) -> None:
    _check_exact(ala, _perturbed(ala, 3, seed=1), rtol=1e-6, platform="CPU")


def test_muller_brown_packing_exact() -> None:
    ms = load_system("muller_brown")
    xs = np.array([[[-0.558, 1.442, 0.01]], [[0.623, 0.028, -0.02]], [[-0.822, 0.624, 0.0]]])
    _check_exact(ms, xs, rtol=1e-12)


def test_implicit_solvent_packing_exact_reference() -> None:
    ms = load_system("vgvapg")
    assert any(isinstance(f, openmm.CustomGBForce) for f in ms.system.getForces())
    xs = _perturbed(ms, 3, sigma=0.005, seed=2)
    # default: copies on a grid, packed GB force with a 5 nm cutoff, cross-copy terms masked
    ps = pack_replicas(ms, 3)
    assert not ps.exact and ps.gb_cutoff == 5.0 and np.linalg.norm(ps.offsets[0] -
                                                                   ps.offsets[1]) >= 7.0
    _check_exact(ms, xs, rtol=1e-6)
    # overlapping copies: only the select() mask keeps them apart
    _check_exact(ms, xs, rtol=1e-6, spacing=0.0)
    # a cutoff shorter than the molecule loses intra-copy GB pairs: a measurable error
    ps_small = pack_replicas(ms, 1, gb_cutoff=0.8)
    E_small, _ = _energy_forces(ps_small.system, ps_small.pack_positions(xs[:1])[0])
    E1, _ = _energy_forces(ms.system, xs[0])
    assert abs(E_small - E1) > 1e-3 * abs(E1)


def test_packing_refuses_what_it_cannot_pack(ala: MolecularSystem) -> None:
    with pytest.raises(PackingError, match="copies"):
        pack_replicas(ala, 0)
    periodic = openmm.XmlSerializer.clone(ala.system)
    periodic.setDefaultPeriodicBoxVectors(openmm.Vec3(3, 0, 0), openmm.Vec3(0, 3, 0),
                                          openmm.Vec3(0, 0, 3))
    for f in periodic.getForces():
        if isinstance(f, openmm.NonbondedForce):
            f.setNonbondedMethod(openmm.NonbondedForce.PME)
    with pytest.raises(PackingError, match="periodic"):
        pack_replicas(MolecularSystem(periodic, ala.topology, ala.positions), 2)
    obc = openmm.XmlSerializer.clone(ala.system)
    gb = openmm.GBSAOBCForce()
    for _ in range(ala.n_atoms):
        gb.addParticle(0.0, 0.15, 0.8)
    obc.addForce(gb)
    with pytest.raises(PackingError, match="obc2"):
        pack_replicas(MolecularSystem(obc, ala.topology, ala.positions), 2)


def test_stream_key_depends_on_every_burst() -> None:
    a = packed_stream_key(7, [(0, 0), (1, 0)])
    assert a == packed_stream_key(7, [(0, 0), (1, 0)])
    assert len({a, packed_stream_key(8, [(0, 0), (1, 0)]), packed_stream_key(7, [(0, 0), (2, 0)]),
                packed_stream_key(7, [(0, 0), (1, 1)]),
                packed_stream_key(7, [(0, 0), (1, 0)], attempt=1)}) == 5
    assert 1 <= a < 2**31


def _dihedral(x: np.ndarray, idx: tuple[int, int, int, int]) -> np.ndarray:
    p0, p1, p2, p3 = (x[..., i, :] for i in idx)
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    return np.arctan2((np.cross(b1n, v) * w).sum(-1), (v * w).sum(-1))


def _task(x: np.ndarray, K: int, seed: int, lag: int = 100) -> dict:
    return {"chunk": 0, "x": x, "start_index": np.arange(len(x)), "n_koopman": K,
            "lag_steps": lag, "seed": seed, "max_retries": 1, "max_displacement": 100.0}


def test_packed_bursts_match_unpacked_statistics(ala: MolecularSystem) -> None:
    """End-point φ/ψ after 0.2 ps bursts: packed (M=8) and unpacked agree in mean and variance;
    packed runs are deterministic per seed and the copies of a group are not correlated."""
    n_starts, K = 12, 16  # 192 bursts each
    starts = np.repeat(ala.positions[0][None], n_starts, axis=0)
    with ContextPool(ala, size=1, platform="Reference") as pool:
        ref = BurstSampler(pool).run(starts, K, seed=3, progress=False).y.reshape(-1, 22, 3)
    eng = PackedEngine(ala, copies=8, platform="Reference")
    out = eng.run_chunk(_task(starts, K, seed=3))
    assert out["ok"].all() and eng.groups_run == n_starts * K // 8
    packed = out["y"].reshape(-1, 22, 3)
    for idx in (PHI, PSI):
        a, b = _dihedral(ref.astype(np.float64), idx), _dihedral(packed.astype(np.float64), idx)
        z = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert abs(z) < 4.0, (idx, a.mean(), b.mean())
        ratio = b.var(ddof=1) / a.var(ddof=1)
        assert 0.6 < ratio < 1.67, (idx, ratio)  # F(191,191) 99.9% band ≈ [0.63, 1.6]
        assert a.std() > 0.02  # the bursts really move
    # copies of one packed group see independent noise: their displacements are uncorrelated
    d = (packed - starts[0]).reshape(-1, 8, 66)
    c = np.corrcoef(d[:, 0].ravel(), d[:, 1].ravel())[0, 1]
    assert abs(c) < 0.2
    again = PackedEngine(ala, copies=8, platform="Reference").run_chunk(_task(starts, K, 3))
    np.testing.assert_array_equal(again["y"], out["y"])
    other = eng.run_chunk(_task(starts, K, seed=4))
    assert not np.allclose(other["y"], out["y"])


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_burst_sampler_with_replicas(ala: MolecularSystem, platform: str) -> None:
    """BurstSampler(pool, replicas=M) packs starts into one Context per chunk: the data do not
    depend on the pool size (process slots on Reference, threads on CPU) and every burst
    moves away from its start like an unpacked one."""
    starts = _perturbed(ala, 6, sigma=0.002, seed=7)
    runs = []
    for size in (1, 2):
        with ContextPool(ala, size=size, platform=platform) as pool:
            data = BurstSampler(pool, replicas=4).run(starts, 2, lag_steps=50, seed=11,
                                                       progress=False)
        runs.append(data)
    assert runs[0].y.shape == (6, 2, 22, 3) and runs[0].extra["replicas"] == 4
    np.testing.assert_array_equal(runs[0].y, runs[1].y)
    moved = np.sqrt(((runs[0].y - starts[:, None]) ** 2).sum(-1).mean(-1))
    assert np.all((moved > 0.005) & (moved < 0.1))  # nm: thermal motion, no explosion
    assert not np.array_equal(runs[0].y[:, 0], runs[0].y[:, 1])  # k gives distinct bursts


def test_bad_copy_fails_alone_and_padding(ala: MolecularSystem) -> None:
    starts = _perturbed(ala, 5, sigma=0.002, seed=5)
    starts[2, 1] = starts[2, 0]  # two atoms on top of each other: this burst explodes
    spec = PackedSpec.from_system(ala, copies=4, platform="Reference")
    task = {**_task(starts, 1, seed=0, lag=20), "sanity": {"enabled": False}}
    out = cached_chunk(spec, task)  # 5 bursts: groups of 4 + 1
    assert out["ok"].tolist() == [True, True, False, True, True]
    assert out["y"].shape == (5, 1, 22, 3) and np.all(np.isfinite(out["y"][out["ok"]]))
    assert {e[0] for e in out["events"]} == {2}
    # with the sanity checks (the default) the overlapping start is refused before any burst
    out = cached_chunk(spec, _task(starts, 1, seed=0, lag=20))
    assert out["ok"].tolist() == [True, True, False, True, True]
    assert [e[:4] for e in out["events"]] == [(2, -1, 0, "start_energy")]
    # the per-process engine cache: the same spec reuses the same Context
    engines = {key: eng for key, eng in engine_cache().items() if key[0] == "packed"}
    cached_chunk(spec, _task(starts[:1], 1, seed=0, lag=5))
    assert {key: eng for key, eng in engine_cache().items() if key[0] == "packed"} == engines


def test_packed_engine_refuses_a_broken_bond_and_keeps_normal_bursts(ala) -> None:
    from amore_openmm.sampling.sanity import system_bonds

    starts = _perturbed(ala, 3, sigma=0.002, seed=8)
    i, j = system_bonds(ala.system)[0][4]
    u = starts[1, j] - starts[1, i]
    starts[1, j] = starts[1, i] + 0.5 * u / np.linalg.norm(u)  # bond i-j stretched to 0.5 nm
    eng = PackedEngine(ala, copies=2, platform="Reference")
    task = {**_task(starts, 2, seed=1, lag=20), "sanity": {"energy_margin_kT": 1e9}}
    out = eng.run_chunk(task)
    assert out["ok"].tolist() == [True, False, True]
    assert [e[:4] for e in out["events"]] == [(1, -1, 0, "start_bond")]
    assert eng.groups_run == 2  # 4 bursts of the 2 good starts, 2 copies per group


@pytest.mark.gpu
@pytest.mark.parametrize("platform", ["CUDA", "OpenCL"])
def test_packing_on_gpu(ala: MolecularSystem, platform: str) -> None:
    """Packed energies/forces and packed bursts on a GPU platform (skipped where none)."""
    from amore_openmm.sampling import available_platforms
    if platform not in available_platforms():
        pytest.skip(f"no {platform} platform here")
    xs = _perturbed(ala, 8, seed=6)
    ps = pack_replicas(ala, 8)
    ctx = openmm.Context(ps.system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName(platform), {"Precision": "double"})
    ctx.setPositions(ps.pack_positions(xs)[0])
    F = ps.unpack(ctx.getState(getForces=True).getForces(asNumpy=True)._value)
    for c, x in enumerate(xs):
        f = _energy_forces(ala.system, x)[1]
        assert np.max(np.abs(F[c] - f)) <= 1e-5 * np.max(np.abs(f))
    # bursts from thermal-size perturbations (0.01 nm noise on every atom puts a structure
    # 200–650 kT above the minimum: the sanity checks refuse most such starts)
    out = PackedEngine(ala, copies=8, platform=platform).run_chunk(
        _task(_perturbed(ala, 8, sigma=0.003, seed=6), 2, seed=0))
    assert out["ok"].all() and np.all(np.isfinite(out["y"]))
