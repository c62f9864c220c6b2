"""χ-minimum-energy paths with OpenMM's LocalEnergyMinimizer and a χ restraint."""
import numpy as np
import pytest
import torch

from amore_openmm.chi import ChiModel, Coordinates, PairwiseDistances
from amore_openmm.mep import (CERTIFICATE, STOP_REASONS, ChiPath, LevelSetTracer,
                              trace_chi_mep, trace_chi_meps, transition_states, write_path_dcd,
                              write_path_pdb)
from amore_openmm.sensitivity import chi_sensitivity, feature_saliency, path_vs_ensemble_mse
from amore_openmm.strings import path_distance, string_method
from amore_openmm.systems import load_system, muller_brown_energy
from conftest import muller_brown_starts

torch.set_num_threads(1)
SADDLE = np.array([-0.822, 0.624])
E_SADDLE = -40.66
E_MIN_B = -146.70
MIN_A, MIN_B = (-0.558, 1.442), (0.623, 0.028)


@pytest.fixture(scope="module")
def mb():
    return load_system("muller_brown")


@pytest.fixture(scope="module")
def mb_trained(mb):
    """χ for Müller–Brown trained by ISOKANN on K = 10 bursts of lag 1e-3 (as in the paper)
    from 3000 starts spread over the low-energy region (a reduced quick version)."""
    from amore_openmm.isokann import Isokann
    from amore_openmm.sampling import BurstSampler, ContextPool
    x = muller_brown_starts()
    with ContextPool(mb, size=1, platform="Reference") as pool:
        data = BurstSampler(pool).run(x, n_koopman=10, seed=0, progress=False)
    model = Isokann(iterations=300, minibatch=500, lr=1e-2, seed=0).fit(data, system=mb)
    return model, data


@pytest.fixture(scope="module")
def mb_string(mb):
    return string_method(mb, MIN_A, MIN_B, n_images=50)


@pytest.fixture(scope="module")
def mb_paths(mb, mb_trained):
    model, data = mb_trained
    starts = transition_states(model, data, mb, window=(0.49, 0.51), n=3)
    return starts, trace_chi_meps(mb, model, starts, pool_size=2, step=0.01)


def test_transition_states_in_window_lowest_energy_first(mb, mb_trained):
    model, data = mb_trained
    ts, idx = transition_states(model, data, mb, window=(0.49, 0.51), return_indices=True)
    chi = model.chi(ts)
    assert len(ts) >= 3 and np.all((chi >= 0.49) & (chi <= 0.51))
    e = muller_brown_energy(ts[:, 0, :2])
    assert np.all(np.diff(e) >= 0)
    np.testing.assert_array_equal(ts, data.x[idx])
    with pytest.raises(ValueError, match="widen the window"):
        transition_states(model, data, mb, window=(2.0, 3.0))


def test_chi_mep_muller_brown_crosses_saddle(mb_paths, mb_string):
    starts, paths = mb_paths
    string_xy = mb_string.images[:, 0, :2]
    for p in paths:
        xy = p.positions[:, 0, :2]
        assert np.linalg.norm(xy - SADDLE, axis=1).min() < 0.1
        mean, _ = path_distance(xy, string_xy)
        assert mean < 0.1
        assert abs(p.max_energy - E_SADDLE) < 10.0
        # it connects the two basins
        assert p.chi[0] < 0.05 and p.chi[-1] > 0.95
        assert np.all(np.diff(p.chi) > 0)
        # the restraint held every level set; energies exclude the restraint
        assert p.level_error.max() <= 1e-3 + 1e-9
        np.testing.assert_allclose(p.energy, muller_brown_energy(xy) +
                                   500.0 * p.positions[:, 0, 2] ** 2, atol=1e-6)
        assert set(p.stop_reasons.values()) <= set(STOP_REASONS)
        assert p.stop_reasons["forward"] in ("chi_range", "stalled")
        np.testing.assert_allclose(p.grad_norm ** 2, p.atom_grad_sq.sum(1), rtol=1e-10)
        # every node is a certified level-set minimum
        assert p.n_certified == len(p) and p.certified.all() and p.converged.all()
        assert p.orth_force.max() <= CERTIFICATE.orth_force and np.all(p.iterations >= 0)
        assert p.energy_rel.min() == 0.0 and p.energy_rel[np.argmin(p.energy)] == 0.0
        # all nodes certified: the barrier spans the path, bounded by saddle − lowest minimum
        assert p.barrier() == pytest.approx(p.max_energy - p.energy.min(), abs=1e-9)
        assert 0 < p.barrier() < E_SADDLE - E_MIN_B + 1.0


def test_jumps_split_a_path_and_bound_its_barrier(mb_paths):
    """A continuous χ-MEP has no jump; nodes of a far valley appended to it (as when the
    level-set minimum switches branch) are a jump, and the barrier ignores them."""
    _, paths = mb_paths
    p = paths[0]
    assert not p.jumps().any() and p.continuous().all()
    far = p.node_arrays()
    k = len(p) // 3
    shifted = {name: np.asarray(v).copy() for name, v in far.items()}
    shifted["positions"][:k, 0, :2] += np.array([-0.8, 1.0])      # the first k nodes jump
    shifted["energy"][:k] = p.energy.max() + 200.0                 # ... to a high valley
    q = ChiPath.from_node_arrays(shifted, p.start_index, p.stop_reasons, p.certificate)
    assert q.start_index >= k
    assert np.flatnonzero(q.jumps()).tolist() == [k - 1]
    assert not q.continuous()[:k].any() and q.continuous()[k:].all()
    e = p.energy[k:][p.certified[k:]]
    assert q.barrier() == pytest.approx(e.max() - e.min())


def test_barrier_is_read_between_the_basins_not_on_the_walls_past_them():
    """Past a basin's lowest node a path can climb where χ saturates; those walls are not a
    barrier: it is the highest node between the two sides' lowest nodes, above the lower."""
    energy = np.array([50.0, 0.0, 10.0, 30.0, 5.0, -20.0, 40.0])   # wall, A, TS, B, wall
    m = len(energy)
    x = np.zeros((m, 1, 3))
    x[:, 0, 0] = 0.01 * np.arange(m)                 # evenly spaced: no jump
    p = ChiPath(positions=x, chi=np.linspace(0.05, 0.95, m), energy=energy,
                grad_norm=np.ones(m), atom_grad_sq=np.ones((m, 1)), z=np.linspace(0.05, 0.95, m),
                kappa=np.full(m, 1e4), start_index=3, certified=np.ones(m, bool))
    assert p.barrier() == pytest.approx(30.0 - (-20.0))
    p.certified[5] = False                           # B's lowest node uncertified: next lowest
    assert p.barrier() == pytest.approx(30.0 - 0.0)


def test_kappa_too_soft_gives_uncertified_nodes(mb, mb_trained, mb_paths):
    # the measured failure mode: with a soft restraint the minimizer slides down in χ; the
    # node is kept but marked, the branch ends, and no barrier comes from it
    model, _ = mb_trained
    starts, _ = mb_paths
    p = trace_chi_mep(mb, model, starts[0], kappa=100.0, max_nodes=5, direction="forward")
    assert p.level_error.max() > 1e-2
    assert p.n_certified == 0 and not p.certified.any()
    assert p.stop_reasons == {"forward": "uncertified"}
    assert np.isnan(p.barrier()) and np.all(np.isnan(p.energy_rel))


def test_too_few_iterations_give_unconverged_uncertified_nodes(mb):
    model, stable = _saddle_chi()
    x0 = SADDLE + 0.3 * stable          # far from the level-set minimum (the saddle)
    p = trace_chi_mep(mb, model, x0, max_nodes=5, kappa=1e6, max_iterations=1)
    assert len(p) == 1 and not p.converged[0] and not p.certified[0]
    assert p.iterations[0] >= 2     # evaluations: the first try and the retry (4x the limit)
    assert p.stop_reasons == {"forward": "uncertified", "backward": "uncertified"}
    good = trace_chi_mep(mb, model, x0, max_nodes=1, kappa=1e6)
    assert good.certified.all() and good.converged.all()


def _mb_energy(x):
    """Müller–Brown energy of one (1, 3) structure: the potential + the z spring."""
    return float(muller_brown_energy(x[:, :2])[0] + 500.0 * x[0, 2] ** 2)


def _level_set_perturbations(model, x, rng, size, n):
    """n structures on the level set χ = χ(x) at distance ~size from x: a random displacement
    orthogonal to ∇χ, then Newton steps back onto the level set."""
    c, g = model.chi_and_grad(x[None])
    out = []
    for _ in range(n):
        d = rng.normal(size=x.shape)
        d -= (d * g[0]).sum() / (g[0] ** 2).sum() * g[0]
        y = x + size * d / np.linalg.norm(d)
        for _ in range(50):
            cy, gy = model.chi_and_grad(y[None])
            if abs(cy[0] - c[0]) < 1e-7:
                break
            y = y - (cy[0] - c[0]) * gy[0] / (gy[0] ** 2).sum()
        assert abs(model.chi(y[None])[0] - c[0]) < 1e-6     # float32 χ
        out.append(y)
    return out


def test_certified_nodes_are_level_set_minima(mb, mb_trained, mb_paths):
    """Perturbing a certified node within its level set never lowers the energy by more than
    the first-order bound ‖F⊥‖·δ allowed by its orthogonal force residual."""
    model, _ = mb_trained
    p = mb_paths[1][0]
    rng = np.random.default_rng(0)
    delta = 0.02
    for m in np.flatnonzero(p.certified)[::8]:
        x = p.positions[m]
        f_perp = p.orth_force[m] * np.sqrt(3 * p.n_atoms)     # RMS per component -> norm
        for y in _level_set_perturbations(model, x, rng, delta, 8):
            assert _mb_energy(y) >= p.energy[m] - f_perp * delta * 1.5 - 1e-6
    # the test has power: from a point on a level set away from its minimum, some
    # perturbation within the level set lowers the energy by much more than that bound
    m = p.start_index
    x_off = _level_set_perturbations(model, p.positions[m], rng, 0.1, 1)[0]
    e_off = _mb_energy(x_off)
    assert min(_mb_energy(y) for y in _level_set_perturbations(model, x_off, rng, delta, 16)) \
        < e_off - 0.1


def _saddle_chi() -> tuple[ChiModel, np.ndarray]:
    """Analytic χ = sigmoid(4 u·(r − saddle)) with u the unstable direction at the saddle:
    its level set through the saddle is the stable line, on which the saddle is the minimum."""
    h, H = 1e-4, np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * h, np.eye(2)[j] * h
            H[i, j] = (muller_brown_energy(SADDLE + ei + ej) - muller_brown_energy(SADDLE + ei - ej)
                       - muller_brown_energy(SADDLE - ei + ej)
                       + muller_brown_energy(SADDLE - ei - ej)) / (4 * h * h)
    w, v = np.linalg.eigh(H)
    u, s = v[:, 0], v[:, 1]
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(4 * u[None, :]))
        net[0].bias.fill_(float(-4 * u @ SADDLE))
    return ChiModel(Coordinates(1, dims=(0, 1)), network=net), s


def test_start_node_is_level_set_minimum(mb):
    model, stable = _saddle_chi()
    x0 = SADDLE + 0.1 * stable           # on the χ = 0.5 line, 0.1 from the saddle
    p = trace_chi_mep(mb, model, x0, max_nodes=1)
    assert len(p) == 1 and p.stop_reasons == {"forward": "max_nodes", "backward": "max_nodes"}
    assert np.linalg.norm(p.positions[0, 0, :2] - SADDLE) < 5e-3
    assert abs(p.chi[0] - 0.5) < 1e-3
    assert p.energy[0] == pytest.approx(E_SADDLE, abs=0.05)


def test_step_modes_and_direction(mb):
    model, _ = _saddle_chi()
    fwd = trace_chi_mep(mb, model, SADDLE, step=0.02, max_nodes=6, direction="forward")
    assert fwd.start_index == 0 and len(fwd) == 6
    # Δχ ≈ h per node in "chi" mode
    np.testing.assert_allclose(np.diff(fwd.chi), 0.02, atol=2e-3)
    fixed = trace_chi_mep(mb, model, SADDLE, step=0.01, step_mode="fixed", max_nodes=6,
                          direction="backward")
    assert fixed.start_index == len(fixed) - 1 and np.all(np.diff(fixed.chi) > 0)
    # fixed-length step: ε = 0.01 along ∇χ, so Δχ ≈ ε‖∇χ‖
    dchi = np.diff(fixed.chi)
    np.testing.assert_allclose(dchi, 0.01 * fixed.grad_norm[1:], rtol=0.2)


def test_path_io(tmp_path, mb, mb_paths):
    import mdtraj as md
    p = mb_paths[1][0]
    p.save(tmp_path / "p.npz")
    q = ChiPath.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(q.positions, p.positions)
    assert q.stop_reasons == p.stop_reasons and q.start_index == p.start_index
    for name in ("certified", "converged", "iterations", "orth_force", "energy_rel"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    assert q.n_certified == p.n_certified and q.certificate == p.certificate
    # one uncertified node: marked in the REMARK of its MODEL
    p.certified[1] = False
    write_path_pdb(tmp_path / "p.pdb", p, mb.topology)
    text = (tmp_path / "p.pdb").read_text().splitlines()
    assert sum(line.startswith("MODEL") for line in text) == len(p)
    assert any("node's own |grad_i chi(x_node)|^2" in line for line in text[:3])
    status = [line for line in text if line.startswith("REMARK   2") and "chi " in line]
    assert len(status) == len(p)
    assert ["NOT certified" in line for line in status] == [m == 1 for m in range(len(p))]
    atoms = [line for line in text if line.startswith(("ATOM", "HETATM"))]
    assert len(atoms) == len(p)
    assert all(float(line[60:66]) == 100.0 for line in atoms)  # one atom: its own maximum
    xyz = np.array([[float(line[30:38]), float(line[38:46]), float(line[46:54])]
                    for line in atoms])
    np.testing.assert_allclose(xyz / 10, p.positions[:, 0], atol=1e-3)
    write_path_dcd(tmp_path / "p.dcd", p, mb.topology)
    t = md.load_dcd(str(tmp_path / "p.dcd"), top=md.Topology.from_openmm(mb.topology))
    assert t.n_frames == len(p)
    np.testing.assert_allclose(t.xyz, p.positions, atol=1e-5)


def test_sensitivity_and_saliency_on_trained_chi(mb_trained, mb_paths):
    model, data = mb_trained
    sens = chi_sensitivity(model, data.x, bins=20)
    assert sens.levelset.shape == (1, 20) and sens.counts.sum() == len(data.x)
    ranked = feature_saliency(model, data.x)
    assert sorted(name for name, _ in ranked) == ["x", "y"]
    assert all(v > 0 for _, v in ranked)
    p = mb_paths[1][0]
    mse = path_vs_ensemble_mse(p, sens)
    # the path's ‖∇χ‖² profile follows the level-set averages far better than a zero profile
    assert mse < 0.5 * np.mean(p.atom_grad_sq ** 2)


def test_constrained_peptide_path_keeps_constraints():
    # alanine dipeptide with H-bond constraints; χ = sigmoid of the O(ACE)–H(NME) distance
    ms = load_system("alanine_dipeptide", constraints="HBonds")
    net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid()).double()
    x0 = ms.positions[0]
    d0 = float(np.linalg.norm(x0[5] - x0[17]))
    with torch.no_grad():
        net[0].weight.fill_(-20.0)
        net[0].bias.fill_(20.0 * d0)
    model = ChiModel(PairwiseDistances(22, pairs=[(5, 17)]), network=net)
    p = trace_chi_mep(ms, model, x0, step=0.03, max_nodes=7, tolerance=5.0)
    assert len(p) == 7 and np.all(np.isfinite(p.energy))
    assert p.level_error.max() <= 1e-3 + 1e-9
    # certified with the constrained directions projected out of the force residual
    assert p.certified.all() and p.orth_force.max() <= CERTIFICATE.orth_force
    assert np.all(np.diff(p.chi) > 0)
    for k in range(ms.system.getNumConstraints()):
        i, j, dist = ms.system.getConstraintParameters(k)
        lengths = np.linalg.norm(p.positions[:, i] - p.positions[:, j], axis=1)
        np.testing.assert_allclose(lengths, dist._value, atol=1e-4)
    # only the restrained distance drives χ: all other atoms have zero sensitivity
    assert np.all(p.atom_grad_sq[:, [i for i in range(22) if i not in (5, 17)]] == 0)


def test_bad_arguments(mb):
    model, _ = _saddle_chi()
    with pytest.raises(ValueError, match="x0 must have shape"):
        trace_chi_mep(mb, model, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="step_mode"):
        trace_chi_mep(mb, model, SADDLE, step_mode="big")
    with pytest.raises(TypeError, match="MolecularSystem"):
        trace_chi_mep(mb.system, model, SADDLE)


@pytest.mark.slow
def test_alanine_dipeptide_chi_mep_and_sensitivity(tmp_path):
    """Paper-like alanine dipeptide run (scaled down): trajectory at 310 K, one burst per
    frame, ISOKANN on all pair distances, a χ-MEP from χ ≈ 0.5, sensitivities and figures."""
    from amore_openmm import plots
    from amore_openmm.isokann import Isokann
    from amore_openmm.sampling import BurstSampler, ContextPool, sample_trajectory
    ms = load_system("alanine_dipeptide")
    traj = sample_trajectory(ms, 10000, 100, seed=0, platform="Reference", progress=False)
    with ContextPool(ms, size=1, platform="Reference") as pool:
        data = BurstSampler(pool).run(traj, n_koopman=1, seed=0, progress=False)
    model = Isokann(iterations=500, minibatch=1000, seed=0).fit(data, system=ms)
    starts = transition_states(model, data, ms, window=(0.49, 0.51), n=1)
    p = trace_chi_mep(ms, model, starts[0], step=0.01, max_nodes=200, max_node_rmsd=0.05)
    assert p.chi.min() < 0.1 and p.chi.max() > 0.9
    assert np.all(np.isfinite(p.energy))
    assert p.node_rmsd().max() <= 0.05
    assert p.level_error.max() <= 2e-3
    assert np.all(np.diff(p.chi) > 0)
    print("certified nodes:", p.n_certified, "of", len(p), "max orth force",
          np.nanmax(p.orth_force), "barrier", p.barrier())
    # a branch may end on one node that fails its certificate (kept, marked); all others
    # are certified level-set minima, and the barrier comes from them
    assert p.n_certified >= len(p) - 2 and p.certified[p.start_index]
    assert p.certified[1:-1].all() and p.barrier() < 150.0
    sens = chi_sensitivity(model, data.x, bins=100, labels=ms)
    print("top-5 bootstrap frequency:", {i: sens.top_frequency(5)[i] for i, _, _ in sens.top(5)})
    # distance features: rigid-motion invariance of χ
    from amore_openmm.sensitivity import chi_gradients
    _, g = chi_gradients(model, data.x[:50])
    assert np.abs(g.sum(axis=1)).max() < 1e-4 * np.abs(g).max()
    top5 = sens.top(5)
    print("top five atoms (0-based index, label, <|grad_i chi|^2>):", top5)
    # the paper's atoms O(ACE), O(ALA), H(NME) (1-based 6, 16, 18 = 0-based 5, 15, 17)
    assert len({5, 15, 17} & {i for i, _, _ in top5}) >= 2
    # the path's per-atom profile is much closer to the level-set ensemble profile than to 0
    mse = path_vs_ensemble_mse(p, sens)
    print("path vs ensemble MSE:", mse)
    assert mse < 0.5 * np.mean(p.atom_grad_sq ** 2)
    for f in (plots.plot_levelset_heatmap(tmp_path / "heat.png", sens),
              plots.plot_atom_ranking(tmp_path / "rank.png", sens, highlight=[5, 15, 17]),
              plots.plot_ramachandran(tmp_path / "rama.png", ms, data.x,
                                      chi=model.chi(data.x), chi_paths=[p], starts=starts),
              write_path_pdb(tmp_path / "path.pdb", p, ms.topology)):
        assert f.stat().st_size > 1000
    rows = sens.write_ranking_csv(tmp_path / "ranking.csv").read_text().splitlines()
    assert len(rows) == 23 and rows[1].split(",")[3] == top5[0][1]
    bf = [float(line[60:66]) for line in (tmp_path / "path.pdb").read_text().splitlines()
          if line.startswith("ATOM")]
    assert len(bf) == 22 * len(p) and max(bf) == 100.0 and min(bf) >= 0.0


def test_level_set_tracer_relax_and_constraint_projection(mb):
    from amore_openmm.mep.certify import ConstraintProjector, orthogonal_force_rms
    model, stable = _saddle_chi()
    tracer = LevelSetTracer(mb, model)
    x0 = np.array([[*(SADDLE + 0.1 * stable), 0.0]])
    node = tracer.relax(x0, 0.5)                       # automatic κ
    assert node.local_ok and node.converged and node.level_error <= 1e-3
    assert np.linalg.norm(node.x[0, :2] - SADDLE) < 5e-3
    soft = tracer.relax(x0, 0.5, kappa=1.0)            # κ fixed and far too soft
    assert not soft.local_ok and soft.level_error > 1e-2
    # a force along a constrained bond is no residual; across the bond it is
    x = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.3, 0.0]])
    proj = ConstraintProjector(np.array([[0, 1]]), np.zeros(3, dtype=bool))
    along = np.array([[-5.0, 0, 0], [5.0, 0, 0], [0, 0, 0]])
    grad_chi = np.array([[0, 0, 0], [0, 0, 0], [0, 1.0, 0]])
    assert orthogonal_force_rms(along, grad_chi, x, proj) == pytest.approx(0.0, abs=1e-12)
    assert orthogonal_force_rms(along, grad_chi, x) == pytest.approx(np.sqrt(50 / 9))
    across = np.array([[0, 3.0, 0], [0, 0, 0], [0, 0, 0]])
    assert orthogonal_force_rms(across, grad_chi, x, proj) > 0.5


def test_path_starts_top_up_a_thin_window_with_the_samples_closest_to_half(mb, mb_trained):
    """Fewer transition states than paths asked for: the window's samples first (lowest
    energy first), then the samples outside it closest to χ = 0.5, with a warning; never
    fewer starts than asked for while the data has them."""
    from amore_openmm.pipeline.stages import path_starts
    model, data = mb_trained
    ts = transition_states(model, data, mb, window=(0.49, 0.51))
    assert len(path_starts(mb, model, data, 2, (0.49, 0.51), "Reference")) == len(ts)
    with pytest.warns(RuntimeWarning, match=f"only {len(ts)} sample"):
        starts = path_starts(mb, model, data, len(ts) + 3, (0.49, 0.51), "Reference")
    np.testing.assert_array_equal(starts[:len(ts)], ts)
    chi_all, chi_extra = model.chi(data.x), model.chi(starts[len(ts):])
    outside = chi_all[(chi_all < 0.49) | (chi_all > 0.51)]
    assert len(chi_extra) == 3 and np.all((chi_extra < 0.49) | (chi_extra > 0.51))
    np.testing.assert_allclose(np.sort(np.abs(chi_extra - 0.5)),
                               np.sort(np.abs(outside - 0.5))[:3], atol=1e-6)
    with pytest.warns(RuntimeWarning, match="widen the window"):    # an empty window
        assert len(path_starts(mb, model, data, 4, (2.0, 3.0), "Reference")) == 4


def test_a_path_whose_start_fails_its_certificate_is_traced_again_from_a_spare(mb, mb_trained):
    """A start whose level-set minimum is not certified (here: κ fixed far too soft to hold
    the level set) is replaced by the path from the next transition state when that one is
    certified; without spares, or when the spare fails too, the uncertified path stays."""
    from amore_openmm.pipeline.stages import replace_failed_starts
    model, data = mb_trained
    ts = transition_states(model, data, mb, window=(0.4, 0.6))[:2]
    assert len(ts) == 2

    def soft(starts):
        return trace_chi_meps(mb, model, starts, pool_size=1, kappa=1e-6, max_nodes=5)

    def held(starts):
        return trace_chi_meps(mb, model, starts, pool_size=1, max_nodes=5)

    failed = soft(ts[:1])
    assert failed[0].n_certified == 0
    assert replace_failed_starts(list(failed), ts[:0], held)[0] is failed[0]
    with pytest.warns(RuntimeWarning, match="1 replaced"):
        fixed = replace_failed_starts(list(failed), ts[1:], held)[0]
    assert fixed.n_certified == len(fixed) > 1
    start = fixed.positions[fixed.start_index]
    assert abs(float(model.chi(start[None])[0]) - float(model.chi(ts[1:])[0])) < 0.05
    with pytest.warns(RuntimeWarning, match="0 replaced"):
        assert replace_failed_starts(list(failed), ts[1:], soft)[0] is failed[0]
    good = held(ts[:1])
    assert replace_failed_starts(list(good), ts[1:], soft)[0] is good[0]   # not traced again
