"""χ: featurizers, ChiModel, TorchScript export, ISOKANN training, orientation and exit rates."""
import copy

import numpy as np
import pytest
import torch

from amore_openmm.chi import (BackboneDihedrals, ChiModel, Coordinates, PairwiseDistances,
                              SymmetricPairwiseDistances, equivalent_atom_groups,
                              featurizer_from_spec, make_featurizer, read_torchscript_metadata)
from amore_openmm.data import KoopmanData
from amore_openmm.isokann import (Isokann, IsokannError, exit_rates, koopman_chi,
                                  koopman_targets, orient, validation_split)
from amore_openmm.systems import load_system, muller_brown_energy

torch.set_num_threads(1)
ALA_PDB = "alanine_dipeptide"  # the bundled system (systems/alanine_dipeptide)
MB_A = np.array([[-0.558, 1.442, 0.0]])
MB_B = np.array([[0.623, 0.028, 0.0]])
MB_SADDLE = np.array([-0.822, 0.624])
MB_C = np.array([-0.05, 0.467])


@pytest.fixture(scope="module")
def ala_frames(ala, trajectory):
    return trajectory(ala, n_frames=6, stride=150, seed=11)


# ------------------------------------------------------------------------------------------
# featurizers
# ------------------------------------------------------------------------------------------
def test_make_featurizer_kinds(ala):
    f = make_featurizer(ala, "auto")                 # a small peptide: symmetry-aware, all atoms
    assert isinstance(f, SymmetricPairwiseDistances) and f.n_features == 22 * 21 // 2
    assert f.feature_names[0] == "d(ACE1:CH3,ACE1:C)"
    assert "d({ALA2:HB1|HB2|HB3},ALA2:C)[3/3]" in f.feature_names
    labelled = make_featurizer(ala, "pairwise_all")
    assert isinstance(labelled, PairwiseDistances) and labelled.n_features == 231
    assert labelled.feature_names[0] == "d(ACE1:H1,ACE1:CH3)"
    heavy = make_featurizer(ala, "pairwise_heavy")
    assert heavy.n_features == len(ala.heavy_atoms()) * (len(ala.heavy_atoms()) - 1) // 2
    polar = make_featurizer(ala, "pairwise_polar")  # heavy atoms + the two amide H, no C-H
    names = {a for f in polar.feature_names for a in f[2:-1].split(",")}
    assert names == {"ACE1:CH3", "ACE1:C", "ACE1:O", "ALA2:N", "ALA2:H", "ALA2:CA", "ALA2:CB",
                     "ALA2:C", "ALA2:O", "NME3:N", "NME3:H", "NME3:C"}
    assert polar.n_features == 12 * 11 // 2
    d = make_featurizer(ala, "dihedrals")
    assert d.dihedral_names == ["ALA2 φ", "ALA2 ψ"]
    assert d.feature_names == ["sin(ALA2 φ)", "cos(ALA2 φ)", "sin(ALA2 ψ)", "cos(ALA2 ψ)"]
    mb = make_featurizer(load_system("muller_brown"), "auto")
    assert isinstance(mb, Coordinates) and mb.feature_names == ["x", "y"]
    with pytest.raises(ValueError, match="featurizer kind"):
        make_featurizer(ala, "zmatrix")


def test_distances_by_direct_differences_survive_float32_far_from_origin(ala, ala_frames):
    """The Gram trick would lose ~1e-2 nm here; direct differences keep ~1e-5 nm."""
    f = PairwiseDistances(ala.n_atoms)
    x = ala_frames + 100.0
    exact = np.linalg.norm(x[:, f.j.numpy()] - x[:, f.i.numpy()], axis=-1)
    got = f(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.abs(got - exact).max() < 1e-4
    assert f(torch.tensor(x[0])).shape == (1, f.n_features)     # (n, 3) accepted


def test_backbone_dihedrals_match_mdtraj(ala, ala_frames):
    import mdtraj

    top = mdtraj.Topology.from_openmm(ala.topology)
    traj = mdtraj.Trajectory(ala_frames.astype(np.float32), top)
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    d = BackboneDihedrals(ala.topology)
    ang = d.angles(torch.tensor(ala_frames)).numpy()
    np.testing.assert_allclose(ang[:, 0], phi[:, 0], atol=1e-5)
    np.testing.assert_allclose(ang[:, 1], psi[:, 0], atol=1e-5)
    feats = d(torch.tensor(ala_frames)).numpy()
    np.testing.assert_allclose(feats[:, 0::2] ** 2 + feats[:, 1::2] ** 2, 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["pairwise_sym", "pairwise_all"])
def test_distance_chi_is_invariant_to_rigid_motion(ala, ala_frames, kind):
    model = ChiModel(make_featurizer(ala, kind), seed=3).double()
    chi, grad = model.chi_and_grad(ala_frames)
    scale = np.abs(grad).max()
    assert scale > 0
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12 * ala.n_atoms + 1e-12 * scale)
    np.testing.assert_allclose(np.cross(ala_frames, grad).sum(axis=1), 0.0, atol=1e-12)
    # and χ itself does not change under a rotation + translation
    th = 0.7
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    moved = ala_frames @ rot.T + np.array([3.0, -1.0, 2.0])
    np.testing.assert_allclose(model.chi(moved), chi, atol=1e-12)


ACE_METHYL_H, ALA_METHYL_H, NME_METHYL_H = [0, 2, 3], [11, 12, 13], [19, 20, 21]


def test_equivalent_atom_groups_from_bonds(ala):
    assert equivalent_atom_groups(ala.topology) == [ACE_METHYL_H, ALA_METHYL_H, NME_METHYL_H]
    assert equivalent_atom_groups(ala.topology, atoms=[0, 2, 11, 12, 13]) == [[0, 2],
                                                                              ALA_METHYL_H]
    vg = load_system("vgvapg")                    # charged termini: NH3+ and carboxylate
    labels = vg.atom_labels()
    named = [[labels[a] for a in g] for g in equivalent_atom_groups(vg.topology)]
    assert ["VAL1:H", "VAL1:H2", "VAL1:H3"] in named                  # NH3+
    assert ["GLY6:O", "GLY6:OXT"] in named                            # carboxylate
    assert ["VAL3:HG11", "VAL3:HG12", "VAL3:HG13"] in named           # methyl
    assert ["ALA4:HB1", "ALA4:HB2", "ALA4:HB3"] in named
    assert len(named) == 7                          # 5 methyls, NH3+, COO-; no CH2 by default
    with_ch2 = [[labels[a] for a in g]
                for g in equivalent_atom_groups(vg.topology, methylene=True)]
    assert ["GLY2:HA2", "GLY2:HA3"] in with_ch2 and len(with_ch2) == 12


def _permuted(frames, perm):
    out = frames.copy()
    src = [p[0] for p in perm]
    dst = [p[1] for p in perm]
    out[:, dst] = frames[:, src]
    return out


def test_pairwise_sym_is_invariant_under_equivalent_atom_permutations(ala, ala_frames):
    f = make_featurizer(ala, "pairwise_sym").double()
    x = torch.tensor(ala_frames)
    ref = f(x).numpy()
    assert ref.shape == (len(ala_frames), 231)
    cyc = [(11, 12), (12, 13), (13, 11)]                               # ALA HB1→HB2→HB3→HB1
    for perm in (cyc, [(11, 13), (13, 11)], [(0, 3), (3, 0)], [(0, 2), (2, 3), (3, 0)],
                 [(19, 20), (20, 19)] + cyc):
        got = f(torch.tensor(_permuted(ala_frames, perm))).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # non-equivalent atoms: HA with one methyl H, and the two carbonyl O
    for perm in ([(9, 11), (11, 9)], [(5, 15), (15, 5)], [(0, 11), (11, 0)]):
        got = f(torch.tensor(_permuted(ala_frames, perm))).numpy()
        assert np.abs(got - ref).max() > 1e-2, perm
    # labelled distances do see a methyl permutation
    lab = make_featurizer(ala, "pairwise_all").double()
    assert np.abs(lab(torch.tensor(_permuted(ala_frames, cyc))).numpy() -
                  lab(x).numpy()).max() > 1e-2


def test_pairwise_sym_chi_uses_every_atom_and_is_rigid_invariant(ala, ala_frames, tmp_path):
    model = ChiModel(make_featurizer(ala), seed=4).double()
    assert model.featurizer_kind == "pairwise_sym"
    np.testing.assert_array_equal(model.featurized_atoms, np.arange(22))
    chi, grad = model.chi_and_grad(ala_frames)
    assert (np.linalg.norm(grad, axis=-1) > 0).all()                  # all 22 atoms
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12 * np.abs(grad).max() * 22)
    np.testing.assert_allclose(np.cross(ala_frames, grad).sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(model.chi(_permuted(ala_frames, [(11, 12), (12, 11)])), chi,
                               atol=1e-12)
    # spec round trip and the TorchScript file
    again = featurizer_from_spec(model.featurizer.spec())
    assert again.feature_names == model.feature_names and again.groups == model.featurizer.groups
    path = model.export_torchscript(tmp_path / "sym.pt")
    assert read_torchscript_metadata(path)["featurized_atoms"] == list(range(22))
    np.testing.assert_allclose(ChiModel.load(path).chi(ala_frames), chi, atol=1e-6)


def test_featurizers_follow_the_selection():
    """Features cover MolecularSystem.selection only (needs load_system(atoms=...))."""
    ms = load_system("alanine_dipeptide", atoms="resname ALA")
    ala_atoms = list(range(6, 16))
    np.testing.assert_array_equal(ms.selection, ala_atoms)
    sym = make_featurizer(ms)
    assert isinstance(sym, SymmetricPairwiseDistances) and sym.groups == [ALA_METHYL_H]
    assert sym.n_features == 10 * 9 // 2
    np.testing.assert_array_equal(sym.featurized_atoms, ala_atoms)
    heavy = make_featurizer(ms, "pairwise_heavy").featurized_atoms
    np.testing.assert_array_equal(heavy, [6, 8, 10, 14, 15])
    model = ChiModel(sym, seed=0)
    x = ms.positions[0]
    grad = model.grad(x)[0]
    assert (np.linalg.norm(grad[ala_atoms], axis=1) > 0).all()
    assert np.abs(np.delete(grad, ala_atoms, axis=0)).max() == 0.0


def test_featurized_atoms_per_kind(ala):
    polar = ChiModel(make_featurizer(ala, "pairwise_polar")).featurized_atoms
    np.testing.assert_array_equal(polar, [1, 4, 5, 6, 7, 8, 10, 14, 15, 16, 17, 18])
    assert 9 not in polar                                              # HA is left out
    heavy = ChiModel(make_featurizer(ala, "pairwise_heavy")).featurized_atoms
    np.testing.assert_array_equal(heavy, ala.heavy_atoms())
    dih = ChiModel(make_featurizer(ala, "dihedrals")).featurized_atoms
    np.testing.assert_array_equal(dih, [4, 6, 8, 14, 16])           # C(ACE) N CA C N(NME)
    np.testing.assert_array_equal(ChiModel(PairwiseDistances(22, pairs=[(5, 17)]))
                                  .featurized_atoms, [5, 17])


def test_exported_chi_on_a_batch(ala, ala_frames, tmp_path):
    """(B, n, 3) → (B,), (n, 3) → 0-dim (TorchForce), float64 either way, float32 accepted."""
    model = ChiModel(make_featurizer(ala), seed=1)
    with torch.no_grad():
        model.network[-1].weight.mul_(20.0)
    scripted = torch.jit.load(str(model.export_torchscript(tmp_path / "chi.pt")))
    ref = model.chi(ala_frames)
    assert np.ptp(ref) > 1e-3
    for dtype in (torch.float32, torch.float64):
        batch = scripted(torch.tensor(ala_frames, dtype=dtype))
        assert batch.dtype == torch.float64 and batch.shape == (len(ala_frames),)
        np.testing.assert_allclose(batch.numpy(), ref, atol=1e-6)
        one = scripted(torch.tensor(ala_frames[2], dtype=dtype))
        assert one.dtype == torch.float64 and one.shape == ()
        assert float(one) == pytest.approx(ref[2], abs=1e-6)
    assert scripted(torch.tensor(ala_frames[:1])).shape == (1,)
    with pytest.raises(Exception, match=r"\(n, 3\) or \(B, n, 3\)"):
        scripted(torch.zeros(66))


def test_default_networks():
    ala = load_system(ALA_PDB)
    m = ChiModel(make_featurizer(ala))
    assert m.network_spec["hidden"] == [38, 6] and m.network_spec["layernorm"]   # 231^(2/3), 231^(1/3)
    assert isinstance(m.network[0], torch.nn.LayerNorm)
    mb = ChiModel(make_featurizer(load_system("muller_brown")))
    sizes = [l.out_features for l in mb.network if isinstance(l, torch.nn.Linear)]
    assert sizes == [8, 8, 8, 1]                                   # the paper's 2→8→8→8→1
    assert ChiModel(make_featurizer(ala), seed=5).state_dict()["network.1.weight"].equal(
        ChiModel(make_featurizer(ala), seed=5).state_dict()["network.1.weight"])


# ------------------------------------------------------------------------------------------
# export and persistence
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pairwise_sym", "pairwise_all", "dihedrals"])
def test_torchscript_export_equals_python_model(ala, ala_frames, kind, tmp_path):
    model = ChiModel(make_featurizer(ala, kind), seed=1)
    with torch.no_grad():
        model.network[-1].weight.mul_(20.0)
    path = model.export_torchscript(tmp_path / "chi.pt", training={"iterations": 3})
    scripted = torch.jit.load(str(path))
    ref = model.chi(ala_frames)
    assert np.ptp(ref) > 1e-3                    # frames differ in χ
    for x, c in zip(ala_frames, ref):
        for dtype in (torch.float32, torch.float64):
            out = scripted(torch.tensor(x, dtype=dtype))
            assert out.dtype == torch.float64 and out.shape == ()
            assert float(out) == pytest.approx(c, abs=1e-6)
    meta = read_torchscript_metadata(path)
    assert meta["n_atoms"] == 22 and meta["featurizer"] == model.featurizer_kind
    assert meta["feature_names"] == model.feature_names
    assert meta["metadata"]["training"] == {"iterations": 3}
    # one file carries everything: it loads back into a ChiModel
    again = ChiModel.load(path)
    np.testing.assert_allclose(again.chi(ala_frames), ref, atol=1e-6)
    assert again.feature_names == model.feature_names


def test_save_load_roundtrip_is_exact(ala, ala_frames, tmp_path):
    model = ChiModel(make_featurizer(ala), seed=2, metadata={"note": "x"})
    model.save(tmp_path / "m.pt")
    again = ChiModel.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(again.chi(ala_frames), model.chi(ala_frames))
    assert again.metadata["note"] == "x"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ChiModel.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="n_atoms=22 rows"):
        model.chi(np.zeros((5, 3)))


# ------------------------------------------------------------------------------------------
# ISOKANN on Müller–Brown
# ------------------------------------------------------------------------------------------
def _sqra_reference(h=0.025, kT=12.5):
    """Slowest eigenfunction of the Müller–Brown Smoluchowski generator by the square-root
    approximation on a grid (D = kT/(mγ) = kT here). Returns (points, χ on them, ν₂)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    xs, ys = np.arange(-1.8, 1.3, h), np.arange(-0.6, 2.2, h)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    E = muller_brown_energy(np.stack([X, Y], -1))
    keep = E < 100.0
    idx = -np.ones(E.shape, int)
    idx[keep] = np.arange(keep.sum())
    rows, cols, vals = [], [], []
    for axis in (0, 1):
        a = [slice(None, -1), slice(None)] if axis == 0 else [slice(None), slice(None, -1)]
        b = [slice(1, None), slice(None)] if axis == 0 else [slice(None), slice(1, None)]
        i, j = idx[tuple(a)], idx[tuple(b)]
        ok = (i >= 0) & (j >= 0)
        dE = (E[tuple(b)] - E[tuple(a)])[ok]
        rate = kT / h**2
        rows += [i[ok], j[ok]]
        cols += [j[ok], i[ok]]
        vals += [rate * np.exp(-dE / (2 * kT)), rate * np.exp(dE / (2 * kT))]
    n = int(keep.sum())
    Q = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, n))
    Q = Q - sp.diags(np.asarray(Q.sum(axis=1)).ravel())
    w, v = sla.eigs(Q, k=3, sigma=0, which="LM")
    order = np.argsort(-w.real)
    psi = v[:, order[1]].real
    chi = (psi - psi.min()) / (psi.max() - psi.min())
    pts = np.stack([X[keep], Y[keep]], 1)
    a_val = chi[np.argmin(np.linalg.norm(pts - MB_A[0, :2], axis=1))]
    if a_val < 0.5:
        chi = 1 - chi
    return pts, chi, float(-w.real[order[1]])


@pytest.fixture(scope="module")
def mb():
    """Müller–Brown Koopman data through the real pipeline (sample_trajectory + BurstSampler):
    two trajectories (one from each deep minimum) plus starts spread over the region below
    −20 kJ/mol so the barrier is covered; K = 5 bursts of the paper's lag (10 steps, 1e-3)."""
    from amore_openmm.sampling import BurstSampler, ContextPool, sample_trajectory

    ms = load_system("muller_brown")
    frames = np.concatenate([
        sample_trajectory(ms, 500, 1000, seed=1, x0=MB_A, platform="Reference", progress=False),
        sample_trajectory(ms, 500, 1000, seed=2, x0=MB_B, platform="Reference", progress=False)])
    rng = np.random.default_rng(0)
    u = rng.uniform([-1.5, -0.3], [1.0, 1.9], size=(40000, 2))
    u = u[muller_brown_energy(u) < -20.0][:2000]
    starts = np.concatenate([frames, np.concatenate([u, np.zeros((len(u), 1))], 1)[:, None]])
    with ContextPool(ms, size=2, platform="Reference") as pool:
        sampler = BurstSampler(pool)
        data = sampler.run(starts, n_koopman=5, seed=3, progress=False)
        # for rates: equilibrium-like starts and a lag beyond the fast relaxation (ν₃ ≈ 56)
        rate_data = sampler.run(frames, n_koopman=5, lag_steps=2000, seed=4, progress=False)
    iso = Isokann(iterations=1000, minibatch=500, seed=0)
    model = iso.fit(data, system=ms)
    return ms, data, rate_data, iso, model


def _xy(points):
    p = np.atleast_2d(points)
    return np.concatenate([p[:, :2], np.zeros((len(p), 1))], 1)[:, None]


def test_muller_brown_chi_separates_minima_and_crosses_half_at_saddle(mb):
    ms, data, _, iso, model = mb
    chi_a, chi_b = model.chi(_xy(MB_A)), model.chi(_xy(MB_B))
    assert abs(chi_a - chi_b)[0] > 0.6
    assert abs(chi_a - chi_b)[0] > 0.9                     # measured ≈ 0.98
    # near the saddle: χ ∈ [0.4, 0.6] within 0.1 nm of it, and the χ = 0.5 level set passes
    # within 0.15 nm (the exact eigenfunction: χ(saddle) ≈ 0.69, χ = 0.5 about 0.1 nm away
    # towards the shallow minimum C)
    def disk(r):
        t = np.linspace(0, 2 * np.pi, 64)
        ring = np.stack([np.cos(t), np.sin(t)], 1) * np.linspace(0, r, 11)[:, None, None]
        return model.chi(_xy((MB_SADDLE + ring).reshape(-1, 2)))
    near = disk(0.1)
    assert np.any((near >= 0.4) & (near <= 0.6))
    wider = disk(0.15)
    assert wider.min() < 0.5 < wider.max()
    chi_s = model.chi(_xy(MB_SADDLE))[0]
    assert min(chi_a, chi_b) + 0.2 < chi_s < max(chi_a, chi_b) - 0.2
    # the shallow minimum C belongs to B's metastable set (barrier to B ≈ 0.7 kT, to A ≈ 3 kT)
    assert abs(model.chi(_xy(MB_C))[0] - chi_b[0]) < 0.2
    # loss went down and the training summary travels with the model
    assert iso.loss_history[-1] < 0.1 * iso.loss_history[0]
    assert model.metadata["training"]["iterations_total"] == 1000


def test_muller_brown_chi_matches_grid_eigenfunction(mb):
    """Compare with the slowest eigenfunction of the generator (square-root approximation)."""
    _, _, _, _, model = mb
    pts, ref, nu2 = _sqra_reference()
    region = muller_brown_energy(pts) < -20.0
    chi = model.chi(_xy(pts[region]))
    if chi[np.argmin(np.linalg.norm(pts[region] - MB_A[0, :2], axis=1))] < 0.5:
        chi = 1 - chi
    rms = float(np.sqrt(np.mean((chi - ref[region]) ** 2)))
    assert rms < 0.1, rms                                  # measured ≈ 0.04
    assert 0.5 < nu2 < 0.9                                 # ≈ 0.685 /ps


def test_orient_flips_chi(mb):
    _, _, _, _, model = mb
    pts = _xy(np.array([MB_A[0], MB_B[0], [*MB_SADDLE, 0.0], [*MB_C, 0.0]]))
    before = model.chi(pts)
    to_a = orient(model, MB_A, target=0.0)
    after = to_a.chi(pts)
    assert after[0] < 0.1 and after[1] > 0.9
    flipped = before[0] > 0.5
    np.testing.assert_allclose(after, 1 - before if flipped else before, atol=1e-6)
    assert to_a.metadata["orientation"]["flipped"] == flipped
    same = orient(to_a, MB_A, target=0.0)
    np.testing.assert_allclose(same.chi(pts), after, atol=1e-7)
    np.testing.assert_allclose(orient(to_a, MB_A, target=1.0).chi(pts), 1 - after, atol=1e-6)
    np.testing.assert_allclose(model.chi(pts), before)            # the input is not modified


def test_exit_rates_on_muller_brown(mb):
    ms, data, rate_data, _, model = mb
    _, _, nu2 = _sqra_reference()
    r = exit_rates(orient(model, MB_B, target=0.0), rate_data)      # χ ≈ 1 on A
    assert r["valid"], r["note"]
    assert r["lag_time_ps"] == pytest.approx(0.2)
    # variational principle: an approximate χ relaxes faster than the true eigenfunction
    assert nu2 * 0.95 < r["rate_sum"] < 1.5 * nu2
    # leaving the deep minimum A is much rarer than leaving B ∪ C
    assert 0 < r["epsilon1"] < 0.2 * r["epsilon2"]
    assert r["r2"] > 0.8
    # with the training lag (1e-3) the decay is below the noise: reported, not invented
    short = exit_rates(model, data)
    assert short["lag_time_ps"] == pytest.approx(1e-3)
    assert short["valid"] or np.isnan(short["rate_sum"]) or short["note"]


def test_fit_again_continues_from_current_weights(mb):
    ms, data, _, _, _ = mb
    iso = Isokann(iterations=40, minibatch=500, seed=5)
    small = data.subset(np.arange(0, data.n_starts, 3))
    m = iso.fit(small, system=ms)
    w = copy.deepcopy(m.state_dict())
    first = list(iso.loss_history)
    m2 = iso.fit(small, model=m, iterations=20)
    assert m2 is m and len(iso.loss_history) == 60
    assert iso.loss_history[40] < 0.5 * first[0]        # no restart from scratch
    assert not torch.equal(w["network.0.weight"], m.state_dict()["network.0.weight"])
    assert m.metadata["training"]["iterations_total"] == 60
    assert m.metadata["training"]["fits"] == 2
    # same seed, same data -> same weights
    again = Isokann(iterations=40, minibatch=500, seed=5).fit(small, system=ms)
    for k, v in w.items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_validation_loss_is_reported_and_comparable_to_train_loss(mb):
    ms, data, _, iso, model = mb
    tr = model.metadata["training"]
    assert tr["validation_fraction"] == 0.1 and tr["n_train"] + tr["n_val"] == data.n_starts
    assert 0.05 * data.n_starts < tr["n_val"] < 0.15 * data.n_starts
    assert np.isfinite(tr["val_loss"]) and np.isfinite(tr["train_loss"])
    print(f"\nMüller–Brown: train loss {tr['train_loss']:.3g}, val loss {tr['val_loss']:.3g}")
    assert 0.3 * tr["train_loss"] < tr["val_loss"] < 3.0 * tr["train_loss"]
    rec = tr["loss_records"]
    assert [r["iteration"] for r in rec] == list(range(100, 1001, 100))
    assert rec[-1]["val_loss"] == tr["val_loss"] and rec[-1]["val_loss"] < rec[0]["val_loss"]
    # the split is seeded, disjoint, and stable when data are appended
    train, val = validation_split(1000, 0.1, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    train2, val2 = validation_split(1500, 0.1, seed=0)
    np.testing.assert_array_equal(val2[val2 < 1000], val)
    assert len(validation_split(1000, 0.0, seed=0)[1]) == 0
    full = Isokann(iterations=3, minibatch=500, validation_fraction=0.0).fit(
        data.subset(np.arange(0, data.n_starts, 5)), system=ms)
    assert full.metadata["training"]["val_loss"] is None


def test_restore_best_ends_with_the_network_of_the_lowest_validation_loss(mb):
    ms, data, _, iso, model = mb
    small = data.subset(np.arange(0, data.n_starts, 10))
    kw = dict(iterations=60, minibatch=50, lr=1e-2, seed=1)
    kept = Isokann(restore_best=True, **kw).fit(small, system=ms)
    tr = kept.metadata["training"]
    assert tr["restored_best"] and 1 <= tr["best_iteration"] <= 60
    assert np.isfinite(tr["val_loss"]) and np.isfinite(tr["train_loss"])
    # every iteration is checked (60 < CHECKS), the recorded ones included
    assert tr["best_val_loss"] <= min(r["val_loss"] for r in tr["loss_records"]) + 1e-12
    # the network returned is the one of that iteration: the same fit stopped there
    again = Isokann(**dict(kw, iterations=tr["best_iteration"])).fit(small, system=ms)
    np.testing.assert_allclose(kept.chi(small.x[:100]), again.chi(small.x[:100]), atol=1e-5)
    assert "restored_best" not in again.metadata["training"]


def test_initial_target_carries_a_chi_into_a_fresh_network(mb):
    """``initial_target``: a fresh χ first regressed onto another χ's values reproduces it,
    and the ISOKANN iterations after it stay on that process (the basins stay apart, the two
    χ stay correlated); a target of the wrong length is refused."""
    ms, data, _, _, model = mb
    small = data.subset(np.arange(0, data.n_starts, 2))
    target = model.chi(small.x)
    carried = Isokann(iterations=0, minibatch=500, seed=9).fit(
        small, system=ms, initial_target=target, initial_iterations=300)
    assert np.corrcoef(carried.chi(small.x), target)[0, 1] > 0.98
    assert carried.metadata["training"]["initial_iterations"] == 300
    iso = Isokann(iterations=100, minibatch=500, seed=9)
    cont = iso.fit(small, system=ms, initial_target=target, initial_iterations=300)
    assert len(iso.loss_history) == 400
    assert np.corrcoef(cont.chi(small.x), target)[0, 1] > 0.9
    assert abs(cont.chi(_xy(MB_A)) - cont.chi(_xy(MB_B)))[0] > 0.6
    with pytest.raises(ValueError, match="initial_target must hold"):
        Isokann(iterations=1).fit(small, system=ms, initial_target=target[:-1],
                                  initial_iterations=5)


def _adam_steps(model):
    return {int(st["step"]) for st in model.optimizer_state["state"]["state"].values()}


def test_optimizer_state_continues_across_fits_and_save_load(mb, tmp_path):
    ms, data, _, _, _ = mb
    small = data.subset(np.arange(0, data.n_starts, 4))
    iso = Isokann(iterations=4, minibatch=200, seed=1)
    m = iso.fit(small, system=ms)
    per_fit = 4 * iso.summary_["steps_per_iteration"]
    assert _adam_steps(m) == {per_fit} and iso.summary_["optimizer_state_from"] == "new"
    iso.fit(small, model=m)
    assert _adam_steps(m) == {2 * per_fit}                  # the estimator's optimizer
    assert iso.summary_["optimizer_state_from"] == "estimator"
    # a resumed pipeline: the state travels in ChiModel.save / load and orient
    m.save(tmp_path / "state.pt")
    back = orient(ChiModel.load(tmp_path / "state.pt"), MB_A, target=1.0)
    fresh = Isokann(iterations=4, minibatch=200, seed=1, lr=5e-4)
    fresh.fit(small, model=back)
    assert fresh.summary_["optimizer_state_from"] == "model"
    assert _adam_steps(back) == {3 * per_fit}
    assert fresh._opt.param_groups[0]["lr"] == 5e-4          # this estimator's settings
    # flipping χ flips the first moment of the last layer only
    m2 = copy.deepcopy(m)
    flipped = orient(m2, MB_A, target=0.0 if m2.chi(MB_A)[0] > 0.5 else 1.0)
    st0, st1 = m2.optimizer_state["state"]["state"], flipped.optimizer_state["state"]["state"]
    last = max(st0)
    assert torch.equal(st1[last]["exp_avg"], -st0[last]["exp_avg"])
    assert torch.equal(st1[0]["exp_avg"], st0[0]["exp_avg"])
    assert torch.equal(st1[last]["exp_avg_sq"], st0[last]["exp_avg_sq"])


def test_quantile_shift_scale(mb):
    ms, data, _, _, model = mb
    t_mm = koopman_targets(model, data)
    assert t_mm.min() == 0.0 and t_mm.max() == 1.0
    t_q = koopman_targets(model, data, shift_scale="quantile", shift_quantile=0.01)
    assert t_q.min() == 0.0 and t_q.max() == 1.0          # values beyond the quantiles: clipped
    at_ends = np.mean((t_q == 0.0) | (t_q == 1.0))
    assert 0.015 < at_ends < 0.03                         # ≈ 2 × 1 % of the starts
    inner = (t_q > 0) & (t_q < 1)
    assert np.corrcoef(t_q[inner], t_mm[inner])[0, 1] > 0.999   # an affine map in between
    # the trained χ stays (near) a fixed point when training continues with quantiles
    iso = Isokann(iterations=30, minibatch=500, seed=0, shift_scale="quantile")
    m = iso.fit(data.subset(np.arange(0, data.n_starts, 2)), model=copy.deepcopy(model))
    assert m.metadata["training"]["shift_scale"] == "quantile"
    assert abs(m.chi(_xy(MB_A)) - m.chi(_xy(MB_B)))[0] > 0.9
    assert m.metadata["training"]["val_loss"] < 0.01
    with pytest.raises(ValueError, match="shift_scale"):
        Isokann(shift_scale="median")
    with pytest.raises(ValueError, match="validation_fraction"):
        Isokann(validation_fraction=1.0)


def test_constant_koopman_chi_is_a_clear_error(mb):
    ms, data, _, _, _ = mb
    x = data.x[:50]
    y = np.repeat(data.x[:1][:, None], 50, axis=0)          # every burst ends at one point
    bad = KoopmanData(x, y, lag_steps=10, timestep=1e-4)
    with pytest.raises(IsokannError, match="Kχ is constant"):
        Isokann(iterations=5).fit(bad, system=ms)
    with pytest.raises(IsokannError, match="at least 2 starts"):
        Isokann(iterations=5).fit(data.subset([0]), system=ms)
    with pytest.raises(ValueError, match="optimizer"):
        Isokann(optimizer="lbfgs")


def test_nesterov_optimizer_trains(mb):
    ms, data, _, _, _ = mb
    iso = Isokann(iterations=30, minibatch=500, optimizer="nesterov", lr=1e-2, seed=0)
    iso.fit(data.subset(np.arange(0, data.n_starts, 2)), system=ms)
    assert iso.summary_["optimizer"] == "nesterov"
    assert np.isfinite(iso.loss_history).all() and iso.loss_history[-1] < iso.loss_history[0]


def test_muller_brown_chi_through_openmm(mb, tmp_path):
    """Coordinates featurizer inside OpenMM: CV value and restraint force on the particle."""
    import openmm
    from amore_openmm.forces import ChiRestraintForce

    ms, _, _, _, model = mb
    path = model.export_torchscript(tmp_path / "mb.pt")
    system = openmm.System()
    system.addParticle(1.0)
    f = ChiRestraintForce(path, z=0.5, kappa=1e3)
    system.addForce(f)
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-4),
                         openmm.Platform.getPlatformByName("Reference"))
    m64 = copy.deepcopy(model).double()
    for p in (MB_A, MB_B, _xy(MB_SADDLE)[0]):
        ctx.setPositions(p)
        chi, grad = m64.chi_and_grad(p)
        assert f.chi(ctx) == pytest.approx(chi[0], abs=1e-12)
        force = ctx.getState(getForces=True).getForces(asNumpy=True)._value
        np.testing.assert_allclose(force, -1e3 * (chi[0] - 0.5) * grad[0], atol=1e-9)
        assert force[0, 2] == 0.0                          # χ ignores z


def test_koopman_chi_shapes(mb):
    _, data, _, _, model = mb
    sub = data.subset(np.arange(10))
    cx, kx = koopman_chi(model, sub)
    assert cx.shape == kx.shape == (10,)
    manual = np.mean([model.chi(sub.y[:, k]) for k in range(sub.n_koopman)], axis=0)
    np.testing.assert_allclose(kx, manual, atol=1e-7)


# ------------------------------------------------------------------------------------------
# alanine dipeptide (slow)
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_alanine_dipeptide_chi_separates_visited_basins():
    """Trajectory frames + one 100-step burst each at 310 K (amber14, vacuum): χ on the
    symmetry-aware featurizer separates the basins the data visit and does not see the
    methyl rotors. In such data φ stays < 0 and the slowest process is
    β/C5 (φ ≈ −145°, ψ ≈ 155°) ↔ C7eq/αR (φ ≈ −80°, ψ ≲ 90°)."""
    from amore_openmm.sampling import BurstSampler, ContextPool, sample_trajectory

    ms = load_system("alanine_dipeptide")
    assert ms.temperature == pytest.approx(310.0)
    frames = sample_trajectory(ms, 10000, 100, seed=1, platform="Reference", progress=False)
    with ContextPool(ms, size=2, platform="Reference") as pool:
        data = BurstSampler(pool).run(frames, n_koopman=1, seed=2, progress=False)
    iso = Isokann(iterations=500, minibatch=1000, seed=0, featurizer="pairwise_sym")
    model = iso.fit(data, system=ms)
    assert model.featurizer_kind == "pairwise_sym"
    chi = model.chi(frames)
    ang = np.degrees(BackboneDihedrals(ms.topology).angles(torch.tensor(frames)).numpy())
    phi, psi = ang[:, 0], np.where(ang[:, 1] < -120, ang[:, 1] + 360, ang[:, 1])  # cut ψ in a gap
    corr = {"ALA2 φ": float(np.corrcoef(chi, phi)[0, 1]),
            "ALA2 ψ": float(np.corrcoef(chi, psi)[0, 1])}
    c5 = (phi < -120) & (psi > 120)
    c7 = (phi > -110) & (phi < -50) & (psi < 90)
    assert c5.sum() > 200 and c7.sum() > 200            # both basins visited
    sep = abs(chi[c5].mean() - chi[c7].mean())
    tracked = max(corr, key=lambda k: abs(corr[k]))
    # methyl rotors (N–CA–CB–HB1, O–C–CH3–H1 of ACE): χ must not follow their 3-fold angle
    rotors = BackboneDihedrals(quads=[[6, 8, 10, 11], [5, 4, 1, 0]], n_atoms=22)
    theta = rotors.angles(torch.tensor(frames)).numpy()
    methyl = max(abs(np.corrcoef(chi, f(3 * theta[:, r]))[0, 1])
                 for r in range(2) for f in (np.cos, np.sin))
    tr = model.metadata["training"]
    print(f"\nalanine dipeptide χ (pairwise_sym): C5 mean {chi[c5].mean():.3f}, C7eq/αR mean "
          f"{chi[c7].mean():.3f}; corr(χ, φ) = {corr['ALA2 φ']:.3f}, corr(χ, ψ) = "
          f"{corr['ALA2 ψ']:.3f}; tracks {tracked}; max |corr(χ, methyl 3θ)| = {methyl:.3f}; "
          f"train loss {tr['train_loss']:.3g}, val loss {tr['val_loss']:.3g}")
    assert sep > 0.6
    assert abs(corr[tracked]) > 0.7
    assert methyl < 0.2
    # the basins are metastable under χ: within-basin spread well below the separation
    assert chi[c5].std() < 0.5 * sep and chi[c7].std() < 0.5 * sep
    # every atom gets a gradient
    grad = model.grad(frames[:50])
    assert (np.linalg.norm(grad, axis=-1).mean(axis=0) > 0).all()
