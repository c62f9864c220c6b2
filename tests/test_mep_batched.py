"""χ-MEPs of P packed copies in one Context (mep.batched) against paths traced one at a time."""
import copy
import pickle

import numpy as np
import openmm
import pytest
import torch

from amore_openmm.chi import ChiModel, Coordinates, PairwiseDistances, make_featurizer
from amore_openmm.forces.pythonforce import BatchedChiRestraint
from amore_openmm.mep import CERTIFICATE, trace_chi_mep, trace_chi_meps_batched
from amore_openmm.sampling import pack_replicas
from amore_openmm.systems import load_system

torch.set_num_threads(1)
KJ = openmm.unit.kilojoule_per_mole
KJ_NM = KJ / openmm.unit.nanometer


@pytest.fixture(scope="module")
def ala():
    return load_system("alanine_dipeptide")


def _distance_chi(ms, pair=(5, 17), slope=-20.0):
    """χ = sigmoid(slope·(d − d0)) of one atom distance, d0 its value in the first structure."""
    x0 = ms.positions[0]
    d0 = float(np.linalg.norm(x0[pair[0]] - x0[pair[1]]))
    net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid()).double()
    with torch.no_grad():
        net[0].weight.fill_(slope)
        net[0].bias.fill_(-slope * d0)
    return ChiModel(PairwiseDistances(ms.n_atoms, pairs=[pair]), network=net)


def _starts(ms, count, sigma=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return ms.positions[0][None] + sigma * rng.standard_normal((count, ms.n_atoms, 3))


def _context(system, platform="Reference"):
    return openmm.Context(system, openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform))


def _energy_forces(ctx, groups=-1):
    st = ctx.getState(getEnergy=True, getForces=True, groups=groups)
    return (st.getPotentialEnergy().value_in_unit(KJ),
            st.getForces(asNumpy=True).value_in_unit(KJ_NM))


def test_batched_restraint_is_the_sum_of_single_restraints(ala):
    """Σ_p 0.5 κ_p (χ_p − z_p)² and its forces equal P single-copy PythonForce restraints;
    the numpy fast path equals torch autograd; the force survives XML serialisation."""
    from amore_openmm.forces import ChiRestraintForce
    model = ChiModel(make_featurizer(ala), seed=3)
    xs = _starts(ala, 3, sigma=0.02)
    z, kappa = np.array([0.3, 0.5, 0.7]), np.array([1e3, 2e4, 5e5])
    comp = BatchedChiRestraint(model, 3, ala.n_atoms)
    assert comp.numpy_path                  # pairwise_sym (sorted blocks) + pairnet: numpy
    chi_np, g_np = comp.chi_and_grad(xs)
    chi_ref, g_ref = copy.deepcopy(model).double().chi_and_grad(xs)   # the force's float64
    np.testing.assert_allclose(chi_np, chi_ref, atol=1e-12)
    np.testing.assert_allclose(g_np, g_ref, atol=1e-10 * np.abs(g_ref).max())
    comp.z[:], comp.kappa[:] = z, kappa
    system = openmm.System()
    for _ in range(3 * ala.n_atoms):
        system.addParticle(1.0)
    system.addForce(comp.force())
    ctx = _context(system)
    ctx.setPositions(xs.reshape(-1, 3))
    e, f = _energy_forces(ctx)
    e_single, f_single = 0.0, []
    for p in range(3):
        one = openmm.System()
        for _ in range(ala.n_atoms):
            one.addParticle(1.0)
        one.addForce(ChiRestraintForce(model, z[p], kappa[p], backend="pythonforce"))
        c1 = _context(one)
        c1.setPositions(xs[p])
        ep, fp = _energy_forces(c1)
        e_single += ep
        f_single.append(fp)
    assert e == pytest.approx(e_single, rel=1e-9)
    np.testing.assert_allclose(f, np.concatenate(f_single), atol=1e-7 * np.abs(f).max())
    assert comp.count >= 1
    # pickled (as OpenMM does when serialising the System): same energy
    again = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    c2 = _context(again)
    c2.setPositions(xs.reshape(-1, 3))
    assert _energy_forces(c2)[0] == pytest.approx(e, rel=1e-12)
    assert pickle.loads(pickle.dumps(comp)).numpy_path


@pytest.mark.parametrize("kind", ["pairwise_heavy", "pairwise_sym"])
def test_numpy_path_equals_autograd_far_from_the_start(ala, kind):
    """The numpy χ/∇χ equals torch autograd for labelled and sorted (symmetric) pairs, also
    where the sorted order differs from the start's (large displacements permute blocks)."""
    model = ChiModel(make_featurizer(ala, kind), seed=5)
    xs = _starts(ala, 4, sigma=0.08)
    comp = BatchedChiRestraint(model, 4, ala.n_atoms)
    assert comp.numpy_path
    chi_np, g_np = comp.chi_and_grad(xs)
    chi_ref, g_ref = copy.deepcopy(model).double().chi_and_grad(xs)
    np.testing.assert_allclose(chi_np, chi_ref, atol=1e-12)
    np.testing.assert_allclose(g_np, g_ref, atol=1e-10 * np.abs(g_ref).max())
    np.testing.assert_allclose(g_np.sum(axis=1), 0.0, atol=1e-10)      # Σᵢ∇ᵢχ = 0


def test_generic_model_path_and_shifts():
    """A model the numpy path does not cover (coordinates featurizer) runs through torch;
    per-copy shifts are subtracted before χ (χ of absolute coordinates sees the unshifted
    copy)."""
    model = ChiModel(Coordinates(1, dims=(0, 1)), seed=1).double()
    shifts = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 2.0]])
    comp = BatchedChiRestraint(model, 2, 1, shifts=shifts)
    assert not comp.numpy_path
    x = np.array([[[0.1, 0.2, 0.0]], [[-0.3, 0.5, 0.1]]])
    chi, grad = comp.chi_and_grad(x)
    chi_ref, grad_ref = model.chi_and_grad(x)
    np.testing.assert_allclose(chi, chi_ref, atol=1e-12)
    np.testing.assert_allclose(grad, grad_ref, atol=1e-12)
    comp.z[:], comp.kappa[:] = 0.5, 100.0
    system = openmm.System()
    system.addParticle(1.0)
    system.addParticle(1.0)
    system.addForce(comp.force())
    ctx = _context(system)
    ctx.setPositions((x + shifts[:, None, :]).reshape(-1, 3))
    e, _ = _energy_forces(ctx)
    assert e == pytest.approx(float((0.5 * 100.0 * (chi_ref - 0.5) ** 2).sum()), rel=1e-10)


def test_held_copy_stays_put_while_others_minimise(ala):
    """A held copy does not move during LocalEnergyMinimizer.minimize; the free copies reach
    the same restrained minima as when minimised alone."""
    model = _distance_chi(ala)
    xs = _starts(ala, 3, sigma=0.01, seed=4)
    packed = pack_replicas(ala, 3)
    comp = BatchedChiRestraint(model, 3, ala.n_atoms)
    comp.z[:], comp.kappa[:] = 0.45, 1e5
    packed.system.addForce(comp.force(31))
    ctx = _context(packed.system)
    ctx.setPositions(xs.reshape(-1, 3))
    _, f_phys = _energy_forces(ctx, groups=(1 << 31) - 1)
    comp.held[1] = True
    comp.hold_x[1] = xs[1]
    comp.hold_f[1] = f_phys.reshape(3, ala.n_atoms, 3)[1]
    openmm.LocalEnergyMinimizer.minimize(ctx, 0.1, 2000)
    after = ctx.getState(getPositions=True).getPositions(asNumpy=True)._value.reshape(3, -1, 3)
    assert np.abs(after[1] - xs[1]).max() < 1e-9
    for p in (0, 2):
        assert np.abs(after[p] - xs[p]).max() > 1e-3     # the free copies did move
        alone = BatchedChiRestraint(model, 1, ala.n_atoms)
        alone.z[:], alone.kappa[:] = 0.45, 1e5
        sys1 = openmm.XmlSerializer.clone(ala.system)
        sys1.addForce(alone.force(31))
        one = _context(sys1)
        one.setPositions(xs[p])
        openmm.LocalEnergyMinimizer.minimize(one, 0.1, 2000)
        e_alone = _energy_forces(one, groups=(1 << 31) - 1)[0]
        ref = _context(ala.system)
        ref.setPositions(after[p])
        assert _energy_forces(ref)[0] == pytest.approx(e_alone, abs=0.05)


def _compare(single, batched, e_tol=2.0):
    assert len(single) == len(batched)
    for a, b in zip(single, batched):
        assert abs(len(a) - len(b)) <= 1
        assert b.n_certified >= len(b) - 1 and b.level_error[b.certified].max() <= \
            CERTIFICATE.chi_error
        assert np.all(b.orth_force[b.certified] <= CERTIFICATE.orth_force)
        assert np.all(b.converged[b.certified])
        # energies at matching levels (interpolated along the single path's χ; an end node
        # may lie beyond the single path's ends by the certificate's χ error)
        slack = CERTIFICATE.chi_error
        inside = (b.chi >= a.chi.min() - slack) & (b.chi <= a.chi.max() + slack)
        assert inside.sum() >= len(b) - 2
        de = np.interp(b.chi[inside], a.chi, a.energy) - b.energy[inside]
        assert np.abs(de).max() <= e_tol, de
        n = min(len(a), len(b))
        if len(a) == len(b):
            np.testing.assert_allclose(b.chi[:n], a.chi[:n], atol=5 * CERTIFICATE.chi_error)


def test_batched_alanine_paths_equal_single_paths(ala):
    model = _distance_chi(ala)
    starts = _starts(ala, 3)
    kw = dict(step=0.03, max_nodes=7, tolerance=5.0)
    single = [trace_chi_mep(ala, model, s, **kw) for s in starts]
    batched = trace_chi_meps_batched(ala, model, starts, minimizer="joint", **kw)
    _compare(single, batched)
    # fewer copies than starts: copies take the next start when their path ends
    two = trace_chi_meps_batched(ala, model, starts, copies=2, minimizer="joint", **kw)
    _compare(single, two)


def test_batched_branches_end_at_different_times(ala):
    """Paths stop at different nodes (chi_range reached at different times): finished copies
    are parked; the others continue and match their single traces."""
    model = _distance_chi(ala)
    starts = _starts(ala, 3, seed=2)
    chi0 = model.chi(starts)
    kw = dict(step=0.04, max_nodes=9, tolerance=5.0, direction="forward",
              chi_range=(0.0, float(np.sort(chi0)[1]) + 0.12))
    single = [trace_chi_mep(ala, model, s, **kw) for s in starts]
    assert len({len(p) for p in single}) > 1                    # really different lengths
    batched = trace_chi_meps_batched(ala, model, starts, minimizer="joint", **kw)
    _compare(single, batched)
    assert [p.stop_reasons for p in batched] == [p.stop_reasons for p in single]


def test_batched_muller_brown_matches_single():
    """Müller–Brown packs too (1 particle, CustomExternalForce, copies overlap); χ of the
    coordinates goes through the torch path of the batched force. χ = sigmoid(4 u·(r − s))
    with u the unstable direction of the Hessian at the saddle s: its level sets cross the
    saddle region once."""
    from amore_openmm.systems import muller_brown_energy
    mb = load_system("muller_brown")
    saddle, h = np.array([-0.822, 0.624]), 1e-4
    hess = np.array([[(muller_brown_energy(saddle + (ei + ej) * h)
                       - muller_brown_energy(saddle + (ei - ej) * h)
                       - muller_brown_energy(saddle + (ej - ei) * h)
                       + muller_brown_energy(saddle - (ei + ej) * h)) / (4 * h * h)
                      for ej in np.eye(2)] for ei in np.eye(2)])
    _, vec = np.linalg.eigh(hess)
    u, stable = vec[:, 0], vec[:, 1]
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(4 * u[None, :]))
        net[0].bias.fill_(float(-4 * u @ saddle))
    model = ChiModel(Coordinates(1, dims=(0, 1)), network=net)
    starts = np.zeros((3, 1, 3))
    starts[:, 0, :2] = saddle + np.array([-0.1, 0.05, 0.1])[:, None] * stable \
        + np.array([0.0, 0.02, -0.03])[:, None] * u
    # within χ ∈ [0.4, 0.57] the level-set minimum is unique; beyond ~0.58 a second, lower
    # minimum (towards basin B) appears on the level line, and which of the two a minimiser
    # lands in depends on its steps (joint or single): that would be a jump, not a mismatch
    kw = dict(step=0.02, max_nodes=7)
    single = [trace_chi_mep(mb, model, s, **kw) for s in starts]
    batched = trace_chi_meps_batched(mb, model, starts, minimizer="joint", **kw)
    _compare(single, batched, e_tol=0.5)
    for b in batched:                         # every path runs through the saddle
        assert np.linalg.norm(b.positions[:, 0, :2] - saddle, axis=1).min() < 0.02


def test_batched_implicit_solvent():
    """VGVAPG in implicit solvent (packed CustomGBForce on a grid, per-copy shifts)."""
    ms = load_system("vgvapg")
    model = _distance_chi(ms, pair=(25, 41), slope=-10.0)
    starts = _starts(ms, 2, sigma=0.005, seed=1)
    kw = dict(step=0.03, max_nodes=2, tolerance=5.0, direction="forward")
    single = [trace_chi_mep(ms, model, s, **kw) for s in starts]
    batched = trace_chi_meps_batched(ms, model, starts, minimizer="joint", **kw)
    _compare(single, batched)


def test_bad_arguments(ala):
    model = _distance_chi(ala)
    with pytest.raises(ValueError, match="starts must be"):
        trace_chi_meps_batched(ala, model, np.zeros((2, 5, 3)))
    with pytest.raises(TypeError, match="MolecularSystem"):
        trace_chi_meps_batched(ala.system, model, _starts(ala, 1))
    with pytest.raises(ValueError, match="copies"):
        trace_chi_meps_batched(ala, model, _starts(ala, 1), copies=0)
    with pytest.raises(ValueError, match="step_mode"):
        trace_chi_meps_batched(ala, model, _starts(ala, 2), step_mode="big")


def test_per_copy_lbfgs_stops_each_copy_at_its_own_minimum():
    """Copies with very different stiffness: each converges to its own minimum and stops
    there (the soft ones take few evaluations, not as many as the stiffest)."""
    from amore_openmm.mep.copy_lbfgs import minimize_copies
    rng = np.random.default_rng(0)
    n = 4
    stiff = np.array([1e2, 1e3, 1e4])
    hess, x_min = [], rng.normal(scale=0.05, size=(3, n, 3))
    for k in stiff:
        q, _ = np.linalg.qr(rng.standard_normal((3 * n, 3 * n)))
        hess.append(q @ np.diag(np.linspace(1.0, 30.0, 3 * n) * k) @ q.T)
    hess = np.array(hess)
    seen = []

    def forces(idx, x):
        seen.append(tuple(idx))
        d = (x - x_min[idx]).reshape(len(idx), -1)
        return -np.einsum("aij,aj->ai", hess[idx], d).reshape(x.shape)

    res = minimize_copies(forces, x_min + 0.03, [1e-3, 1e-3, 1e-3], [500, 500, 500])
    assert res.converged.all()
    np.testing.assert_allclose(res.x, x_min, atol=1e-5)
    assert np.sqrt(np.mean(res.force.reshape(3, -1) ** 2, axis=1)).max() <= 1e-3
    # every copy stops when it has converged: later calls do not evaluate it again
    last_seen = [max(i for i, ids in enumerate(seen) if c in ids) for c in range(3)]
    assert all(res.evaluations[c] == sum(c in ids for ids in seen) for c in range(3))
    assert min(last_seen) < max(last_seen)


def _muller_brown_forces(idx, x):
    """Copy forces of the Müller–Brown potential (central differences), (C, 1, 3)."""
    from amore_openmm.systems import muller_brown_energy
    h = 1e-6
    out = np.zeros_like(x)
    for k, p in enumerate(x[:, 0, :2]):
        out[k, 0, :2] = [-(muller_brown_energy(p + e * h) - muller_brown_energy(p - e * h))
                         / (2 * h) for e in np.eye(2)]
    return out


@pytest.mark.parametrize("minimizer, max_iter, max_step", [
    ("lbfgs", 500, 0.05), ("fire", 2000, 0.02)])
def test_per_copy_minimizers_find_the_muller_brown_minima(minimizer, max_iter, max_step):
    """Non-quadratic: copies started in the three Müller–Brown basins reach their minima
    (not a neighbouring one) to the tolerance: per-copy L-BFGS (its gradient-only line search
    does not climb out of a basin) and per-copy FIRE."""
    from amore_openmm.mep.copy_lbfgs import minimize_copies
    from amore_openmm.mep.fire import minimize_copies_fire
    minimize = minimize_copies if minimizer == "lbfgs" else minimize_copies_fire
    minima = np.array([[-0.558, 1.442], [0.623, 0.028], [-0.050, 0.467]])
    x0 = np.zeros((3, 1, 3))
    x0[:, 0, :2] = minima + np.array([[0.1, -0.1], [-0.1, 0.1], [0.08, 0.05]])
    res = minimize(_muller_brown_forces, x0, 1e-2, max_iter, max_step=max_step)
    assert res.converged.all()
    np.testing.assert_allclose(res.x[:, 0, :2], minima, atol=3e-3)


def test_batched_per_copy_minimizer_matches_single_paths(ala):
    """minimizer="copies" (per-copy L-BFGS, streaming): the same certified paths, also with
    fewer copies than starts and on implicit solvent."""
    model = _distance_chi(ala)
    starts = _starts(ala, 3)
    kw = dict(step=0.03, max_nodes=7, tolerance=5.0)
    single = [trace_chi_mep(ala, model, s, **kw) for s in starts]
    _compare(single, trace_chi_meps_batched(ala, model, starts, minimizer="copies", **kw))
    _compare(single, trace_chi_meps_batched(ala, model, starts, copies=2, minimizer="copies",
                                            **kw))
    ms = load_system("vgvapg")
    gb_model = _distance_chi(ms, pair=(25, 41), slope=-10.0)
    gb_starts = _starts(ms, 2, sigma=0.005, seed=1)
    kw = dict(step=0.03, max_nodes=2, tolerance=5.0, direction="forward")
    _compare([trace_chi_mep(ms, gb_model, s, **kw) for s in gb_starts],
             trace_chi_meps_batched(ms, gb_model, gb_starts, minimizer="copies", **kw))
    with pytest.raises(ValueError, match="minimizer"):
        trace_chi_meps_batched(ala, model, starts[:1], minimizer="fast", **kw)


def test_per_copy_lbfgs_copy_joining_later_takes_the_same_steps_as_alone():
    """Streaming: a copy that starts while another is half-way through its minimisation
    follows the same iterates (and evaluation count) as when minimised alone."""
    from amore_openmm.mep.copy_lbfgs import CopyLBFGS, minimize_copies
    rng = np.random.default_rng(3)
    n = 3
    q, _ = np.linalg.qr(rng.standard_normal((3 * n, 3 * n)))
    hess = q @ np.diag(np.linspace(10.0, 3000.0, 3 * n)) @ q.T
    x_min = rng.normal(scale=0.05, size=(n, 3))

    def force(x):
        return -(hess @ (x - x_min).reshape(-1)).reshape(x.shape)

    x0 = [x_min + 0.02, x_min - 0.03]
    alone = minimize_copies(lambda idx, xs: np.stack([force(x) for x in xs]), x0[1][None],
                            1e-4, 400)
    opt = CopyLBFGS(2, (n, 3))
    opt.start(0, x0[0], 1e-4, 400)
    steps = 0
    finished = {}
    while len(finished) < 2:
        if steps == 5:
            opt.start(1, x0[1], 1e-4, 400)
        idx, pts = opt.pending()
        for c in opt.update(idx, np.stack([force(x) for x in pts])):
            finished[int(c)] = opt.result(c)[0].copy()
        steps += 1
    np.testing.assert_allclose(finished[1], alone.x[0], atol=1e-12)
    assert opt.evaluations[1] == alone.evaluations[0]
    np.testing.assert_allclose(finished[0], x_min, atol=1e-6)


def test_per_copy_lbfgs_stops_at_a_force_floor_and_returns_its_best_point():
    """A copy whose force cannot drop below the tolerance (a kink at the minimum, as the
    sorted distances of a symmetric featurizer give) stops after ``patience`` iterations
    without progress, not after max_iterations, and returns the point of lowest RMS force;
    a smooth copy beside it still converges."""
    from amore_openmm.mep.copy_lbfgs import STALL_BAND, minimize_copies
    rng = np.random.default_rng(7)
    n = 4
    q, _ = np.linalg.qr(rng.standard_normal((3 * n, 3 * n)))
    hess = q @ np.diag(np.linspace(50.0, 5000.0, 3 * n)) @ q.T
    x_min = rng.normal(scale=0.05, size=(n, 3))
    kink = np.array([1.5, 0.0])               # E += c Σ|x − x_min|: RMS force ≥ ~c near it

    def forces(idx, xs):
        d = (xs - x_min).reshape(len(idx), -1)
        f = -(d @ hess) - kink[idx, None] * np.sign(d)
        return f.reshape(xs.shape)

    x0 = np.stack([x_min + 0.02, x_min + 0.02])
    res = minimize_copies(forces, x0, 1.0, 5000, patience=30)
    rms = np.sqrt(np.mean(res.force.reshape(2, -1) ** 2, axis=1))
    assert res.converged.tolist() == [False, True]
    assert res.evaluations[0] < 1000                  # not the 5000 iterations' worth
    assert 1.0 < rms[0] <= STALL_BAND * 1.0          # the best point, near the floor
    def energy(x, c):
        d = (x - x_min).reshape(-1)
        return 0.5 * d @ hess @ d + c * np.abs(d).sum()

    # the floored copy got most of the way down (E = 0 at the minimum)
    assert energy(res.x[0], kink[0]) < 0.05 * energy(x0[0], kink[0])
    assert energy(res.x[1], 0.0) < 0.05 * energy(x0[1], 0.0)
    # without the stall test the floored copy runs to its iteration limit
    slow = minimize_copies(forces, x0[:1], 1.0, 300, patience=10 ** 9)
    assert not slow.converged[0] and slow.evaluations[0] >= 300


def test_pipeline_stage_traces_batched_and_a_box_falls_back_to_the_pool(ala, monkeypatch):
    """trace_paths(tracer="batched") (the run setting path_tracer) gives the pool's certified
    paths; a periodic System is traced with the pool, with a warning that says so."""
    from amore_openmm import mep
    from amore_openmm.pipeline import trace_paths
    model = _distance_chi(ala)
    data = _starts(ala, 3)
    kw = dict(step=0.03, max_nodes=7, progress=False)
    pool = trace_paths(ala, model, data, 2, tracer="pool", **kw)
    batched = trace_paths(ala, model, data, 2, tracer="batched", **kw)
    # at the default tolerance (1 kJ/mol/nm) the joint minimiser leaves a few nodes above it
    # (certified: their orthogonal force is within the certificate), so not _compare
    assert len(pool) == len(batched) == 2
    for a, b in zip(pool, batched):
        assert len(a) == len(b) and a.certified.all() and b.certified.all()
        np.testing.assert_allclose(b.chi, a.chi, atol=2 * CERTIFICATE.chi_error)
        np.testing.assert_allclose(b.energy, a.energy, atol=0.5)
    with pytest.raises(ValueError, match="path_tracer"):
        trace_paths(ala, model, data, 2, tracer="fast", **kw)
    seen = []
    monkeypatch.setattr(type(ala), "is_periodic", property(lambda self: True))
    monkeypatch.setattr(mep, "trace_chi_meps", lambda *a, **k: seen.append(k) or [])
    monkeypatch.setattr(mep, "trace_chi_meps_batched", lambda *a, **k: pytest.fail("batched"))
    with pytest.warns(RuntimeWarning, match="one at a time"):
        trace_paths(ala, model, data, 2, tracer="batched", **kw)
    assert len(seen) == 1


def _quadratic_copies(stiff, n=4, seed=0, cond=30.0):
    """Per-copy quadratic wells: Hessians with eigenvalues k·[1, cond], random minima."""
    rng = np.random.default_rng(seed)
    hess, x_min = [], rng.normal(scale=0.05, size=(len(stiff), n, 3))
    for k in stiff:
        q, _ = np.linalg.qr(rng.standard_normal((3 * n, 3 * n)))
        hess.append(q @ np.diag(np.linspace(1.0, cond, 3 * n) * k) @ q.T)
    return np.array(hess), x_min


def test_fire_masks_each_copy_out_at_its_own_minimum():
    """Per-copy FIRE on quadratic wells of different stiffness: every copy reaches its
    minimum to the tolerance and is not evaluated again once converged (masked out), so the
    copies finish at different calls; a copy joining half-way follows its solo iterates."""
    from amore_openmm.mep.fire import CopyFIRE, minimize_copies_fire
    hess, x_min = _quadratic_copies([1e2, 1e3, 1e4])
    seen = []

    def forces(idx, x):
        seen.append(tuple(idx))
        d = (x - x_min[idx]).reshape(len(idx), -1)
        return -np.einsum("aij,aj->ai", hess[idx], d).reshape(x.shape)

    res = minimize_copies_fire(forces, x_min + 0.03, 1e-2, 5000)
    assert res.converged.all()
    assert np.sqrt(np.mean(res.force.reshape(3, -1) ** 2, axis=1)).max() <= 1e-2
    # |x − x_min| ≤ |F|/λ_min: the soft well's distance is bounded by its tolerance
    np.testing.assert_allclose(res.x, x_min, atol=1e-2 * np.sqrt(36) / 1e2)
    assert all(res.evaluations[c] == sum(c in ids for ids in seen) for c in range(3))
    last_seen = [max(i for i, ids in enumerate(seen) if c in ids) for c in range(3)]
    assert len(set(last_seen)) == 3
    # streaming: copy 1 starts while copy 0 is half-way; same iterates as alone
    alone = minimize_copies_fire(lambda i, x: forces(np.array([1]), x), x_min[1:2] + 0.02,
                                 1e-3, 5000)
    opt = CopyFIRE(2, x_min.shape[1:])
    opt.start(0, x_min[0] - 0.03, 1e-3, 5000)
    calls, finished = 0, {}
    while len(finished) < 2:
        if calls == 7:
            opt.start(1, x_min[1] + 0.02, 1e-3, 5000)
        idx, pts = opt.pending()
        f = np.concatenate([forces(np.array([c]), p[None]) for c, p in zip(idx, pts)])
        for c in opt.update(idx, f):
            finished[int(c)] = opt.result(c)[0].copy()
        calls += 1
    np.testing.assert_allclose(finished[1], alone.x[0], atol=1e-12)
    assert opt.evaluations[1] == alone.evaluations[0]


def test_fire_preconditioner_removes_a_stiff_restraint_direction():
    """A well plus a stiff rank-one term (as κ(χ − z)² adds along ∇χ): with the stiff
    direction given, FIRE converges to the same minimum in far fewer force calls."""
    from amore_openmm.mep.fire import CopyFIRE
    hess, x_min = _quadratic_copies([1e2], n=5, seed=2)
    rng = np.random.default_rng(1)
    u = rng.standard_normal(15)
    u /= np.linalg.norm(u)
    kappa = 1e7
    h = hess[0] + kappa * np.outer(u, u)

    def run(stiff):
        opt = CopyFIRE(1, (5, 3))
        opt.start(0, x_min[0] + 0.02, 1e-2, 20000)
        while opt.busy:
            idx, pts = opt.pending()
            f = -(h @ (pts[0] - x_min[0]).reshape(-1)).reshape(1, 5, 3)
            opt.update(idx, f, None if stiff is None else stiff.reshape(1, 5, 3))
        x, f = opt.result(0)
        return x, np.sqrt(np.mean(f ** 2)), int(opt.evaluations[0])

    x_plain, rms_plain, n_plain = run(None)
    x_pre, rms_pre, n_pre = run(np.sqrt(kappa / 1e3) * u)
    assert rms_plain <= 1e-2 and rms_pre <= 1e-2
    np.testing.assert_allclose(x_pre, x_min[0], atol=1e-3)
    assert n_pre < 0.3 * n_plain, (n_pre, n_plain)


def test_batched_fire_paths_match_single_paths(ala):
    """minimizer="fire" (per-copy FIRE, streamed): the single paths' nodes (χ levels,
    energies), every node certified and converged, also with fewer copies than starts;
    fewer force evaluations than the single-path minimiser."""
    model = _distance_chi(ala)
    starts = _starts(ala, 3)
    kw = dict(step=0.03, max_nodes=7, tolerance=1.0)
    single = [trace_chi_mep(ala, model, s, **kw) for s in starts]
    fire = trace_chi_meps_batched(ala, model, starts, minimizer="fire", **kw)
    _compare(single, fire, e_tol=0.5)
    assert all(p.certified.all() and p.converged.all() for p in fire)
    assert sum(p.iterations.sum() for p in fire) < sum(p.iterations.sum() for p in single)
    _compare(single, trace_chi_meps_batched(ala, model, starts, copies=2, minimizer="fire",
                                            **kw), e_tol=0.5)


def test_bond_metric_is_the_bond_hessian_at_rest_lengths():
    """At the bonds' rest lengths the FIRE mass matrix minus its floor is the Hessian of
    Σ ½k(r − r0)² (finite differences) in units of K_REF: bond stretching is what it
    stiffens, and a rigid translation costs only the floor."""
    from amore_openmm.mep.fire import K_REF, bond_metric
    rng = np.random.default_rng(5)
    x = rng.normal(scale=0.15, size=(4, 3))
    pairs = np.array([[0, 1], [1, 2], [1, 3]])
    k = np.array([3e5, 2e5, 1e5])
    r0 = np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1)

    def energy(flat):
        y = flat.reshape(4, 3)
        r = np.linalg.norm(y[pairs[:, 0]] - y[pairs[:, 1]], axis=1)
        return 0.5 * float((k * (r - r0) ** 2).sum())

    h, eye = 1e-5, np.eye(12)
    hess = np.array([[(energy(x.ravel() + h * (a + b)) - energy(x.ravel() + h * (a - b))
                       - energy(x.ravel() - h * (a - b)) + energy(x.ravel() - h * (a + b)))
                      / (4 * h * h) for b in eye] for a in eye])
    m = bond_metric(x, pairs, k, floor=0.3)
    np.testing.assert_allclose(m - 0.3 * eye, hess / K_REF, atol=1e-4 * k.max() / K_REF)
    shift = np.tile([1.0, 0.0, 0.0], 4)
    assert shift @ m @ shift == pytest.approx(0.3 * shift @ shift)
    assert np.all(np.linalg.eigvalsh(m) >= 0.3 - 1e-9)


def _crease(x, s=2.5):
    """Energy and force of a valley with a crease: ½(x₀ − 3)² + ½x₁² + ½x₂² +
    s·max(0, 2 − x₀)·|x₁|; the force along the crease x₁ = 0 points to the smooth minimum
    (3, 0, 0), across it the force flips (as at two equal sorted distances of χ)."""
    x = x.reshape(len(x), 3)
    x0, x1, x2 = x[:, 0], x[:, 1], x[:, 2]
    v = np.maximum(0.0, 2.0 - x0)
    e = 0.5 * (x0 - 3) ** 2 + 0.5 * x1 ** 2 + 0.5 * x2 ** 2 + s * v * np.abs(x1)
    f = np.stack([-(x0 - 3) + s * (x0 < 2) * np.abs(x1), -x1 - s * v * np.sign(x1), -x2], 1)
    return e, f.reshape(len(x), 1, 3)


def test_fire_trapped_on_a_crease_goes_on_with_lbfgs():
    """FIRE freezes on a crease (every step across it flips the force); its time step stays
    at or above dt_min; CopyFIREThenLBFGS hands the trapped copy to L-BFGS, which gets
    further down the valley, and counts both minimisers' force calls."""
    from amore_openmm.mep.fire import OUTCOMES, CopyFIRE, CopyFIREThenLBFGS
    x0 = np.array([[0.0, 0.3, 0.2]])
    fire = CopyFIRE(1, (1, 3))
    fire.start(0, x0, 1e-3, 500)
    dts = []
    while fire.busy:
        i, p = fire.pending()
        fire.update(i, _crease(p)[1])
        dts.append(fire.dt[0])
    assert OUTCOMES[fire.outcome[0]] == "max_steps" and fire.restarts[0] > 50
    assert min(dts) >= fire.dt_min
    both = CopyFIREThenLBFGS(1, (1, 3))
    both.start(0, x0, 1e-3, 500)
    while both.busy:
        i, p = both.pending()
        both.update(i, _crease(p)[1])
    assert both.handed[0] and OUTCOMES[both.fire.outcome[0]] == "trapped"
    assert both.evaluations[0] == both.fire.evaluations[0] + both.lbfgs.evaluations[0]
    e_fire = _crease(fire.result(0)[0][None])[0][0]
    e_both = _crease(both.result(0)[0][None])[0][0]
    assert e_both < e_fire - 1.0, (e_both, e_fire)


def test_serial_and_packed_physical_forces_are_the_same_forces(ala):
    """The two evaluators of the moving copies' forces (one packed call, or one single-copy
    Reference call per copy) give the same total forces, for any subset of copies."""
    from amore_openmm.mep.packed_levels import PackedLevelSets
    model = _distance_chi(ala)
    xs = _starts(ala, 4, sigma=0.02)
    out = {}
    for evaluator in ("packed", "serial"):
        levels = PackedLevelSets(ala, model, 4, "Reference", None, 1, 1.0, 5.0, evaluator)
        levels.load(xs)
        for p in range(4):
            levels.set_level(p, 0.4 + 0.05 * p, 1e4)
        idx = np.array([0, 2, 3])
        out[evaluator] = levels.forces(idx, xs[idx] + 0.003)
        assert (levels.serial_below > 4) == (evaluator == "serial")
    np.testing.assert_allclose(out["serial"], out["packed"], rtol=1e-6, atol=1e-6)
    assert np.abs(out["packed"]).max() > 100.0      # real forces, not zeros
    with pytest.raises(ValueError, match="evaluator"):
        PackedLevelSets(ala, model, 2, "Reference", None, 1, 1.0, 5.0, "fast")


def test_batched_paths_in_worker_processes_match_single_paths(ala):
    """workers=2: the starts are shared by two processes (interleaved) and come back in
    order, each path the single one; serial forces give the same paths."""
    model = _distance_chi(ala)
    starts = _starts(ala, 3)
    kw = dict(step=0.03, max_nodes=7, tolerance=5.0, minimizer="copies")
    single = [trace_chi_mep(ala, model, s, step=0.03, max_nodes=7, tolerance=5.0)
              for s in starts]
    _compare(single, trace_chi_meps_batched(ala, model, starts, workers=2,
                                            evaluator="packed", **kw))
    _compare(single, trace_chi_meps_batched(ala, model, starts, evaluator="serial", **kw))
    with pytest.raises(ValueError, match="workers"):
        trace_chi_meps_batched(ala, model, starts, workers=0, **kw)


def test_call_in_processes_returns_in_order_and_reports_a_failing_worker():
    import math

    from amore_openmm.sampling.workers import call_in_processes
    assert call_in_processes(math.sqrt, [9.0, 4.0]) == [3.0, 2.0]
    assert call_in_processes(math.sqrt, [9.0, 4.0, 1.0], here=True) == [3.0, 2.0, 1.0]
    with pytest.raises(RuntimeError, match="math domain error"):
        call_in_processes(math.sqrt, [4.0, -1.0])
    with pytest.raises(RuntimeError, match="math domain error"):
        call_in_processes(math.sqrt, [4.0, -1.0], here=True)


def test_streamed_node_that_fails_its_certificate_is_relaxed_again_alone(ala, monkeypatch):
    """A per-copy minimiser that gives up after one iteration leaves nodes uncertified; each
    is relaxed again by OpenMM's minimiser on a single copy, so the paths are still the
    single ones."""
    from amore_openmm.mep import batched
    from amore_openmm.mep.copy_lbfgs import CopyLBFGS
    from amore_openmm.mep.packed_levels import PackedLevelSets

    class GiveUp(CopyLBFGS):
        def start(self, c, x, tolerance, max_iterations, keep_memory=False, **options):
            super().start(c, x, tolerance, 1, keep_memory, **options)

    alone = []
    relax_alone = PackedLevelSets.relax_alone
    monkeypatch.setattr(batched._Stream, "optimizer", GiveUp)
    monkeypatch.setattr(PackedLevelSets, "relax_alone",
                        lambda self, *a: alone.append(a[1]) or relax_alone(self, *a))
    model = _distance_chi(ala)
    starts = _starts(ala, 2)
    kw = dict(step=0.03, max_nodes=7, tolerance=5.0)
    single = [trace_chi_mep(ala, model, s, **kw) for s in starts]
    _compare(single, trace_chi_meps_batched(ala, model, starts, minimizer="copies", **kw))
    lo, hi = batched.FALLBACK_CHI
    assert len(alone) >= 7 and all(lo <= z <= hi for z in alone)
