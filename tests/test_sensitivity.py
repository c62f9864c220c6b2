"""χ-sensitivity on hand-built χ functions with known gradients."""
import numpy as np
import pytest
import torch

from amore_openmm.chi import ChiModel, PairwiseDistances
from amore_openmm.sensitivity import (Sensitivity, chi_gradients, chi_sensitivity,
                                      chi_sensitivity_over_fits, combine_fits,
                                      feature_saliency, path_agreement, path_vs_ensemble_mse)

torch.set_num_threads(1)
K, D0 = 8.0, 0.3


class DistanceChi(torch.nn.Module):
    """χ = sigmoid(K (|x_b − x_a| − D0)): depends on one distance only."""

    def __init__(self, a=1, b=3):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        d = torch.linalg.norm(x[:, self.b] - x[:, self.a], dim=-1)
        return torch.sigmoid(K * (d - D0))


def _samples(n=400, n_atoms=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.2, size=(n, n_atoms, 3))


def test_analytic_per_atom_sensitivity_exact():
    x = _samples()
    chi, grad = chi_gradients(DistanceChi(), x, batch_size=64)   # several chunks
    d = np.linalg.norm(x[:, 3] - x[:, 1], axis=1)
    s = 1 / (1 + np.exp(-K * (d - D0)))
    np.testing.assert_allclose(chi, s, rtol=1e-12)
    expected_sq = (K * s * (1 - s)) ** 2                         # ‖∇₁χ‖² = ‖∇₃χ‖²
    sens = chi_sensitivity(DistanceChi(), x, bins=10, labels=list("ABCDE"))
    np.testing.assert_allclose(sens.per_atom[[1, 3]], expected_sq.mean(), rtol=1e-10)
    np.testing.assert_array_equal(sens.per_atom[[0, 2, 4]], 0.0)
    # distance features: Σᵢ ∇ᵢχ = 0 and Σᵢ xᵢ × ∇ᵢχ = 0
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.cross(x, grad).sum(axis=1), 0.0, atol=1e-12)
    # ranking, labels, top
    assert set(sens.ranking[:2]) == {1, 3}
    assert [t[1] for t in sens.top(2)] in (["B", "D"], ["D", "B"])
    assert sens.fraction.sum() == pytest.approx(1.0)


def test_levelset_bins_and_counts():
    x = _samples(n=1000, seed=1)
    sens = chi_sensitivity(DistanceChi(), x, bins=20, min_count=1)
    chi, grad = chi_gradients(DistanceChi(), x)
    assert sens.levelset.shape == (5, 20) and sens.counts.shape == (20,)
    assert sens.counts.sum() == 1000 == sens.n_samples
    np.testing.assert_allclose(sens.bin_edges, np.linspace(0, 1, 21))
    # each populated bin's value is the mean over exactly the samples in that bin
    g2 = (grad ** 2).sum(-1)
    for b in np.flatnonzero(sens.counts):
        sel = (chi >= sens.bin_edges[b]) & (chi < sens.bin_edges[b + 1])
        assert sel.sum() == sens.counts[b]
        np.testing.assert_allclose(sens.levelset[:, b], g2[sel].mean(0), rtol=1e-12)
    assert np.all(np.isnan(sens.levelset[:, sens.empty_bins]))
    # counts-weighted average of the level sets is the ensemble average
    ok = ~sens.empty_bins
    np.testing.assert_allclose((sens.levelset[:, ok] * sens.counts[ok]).sum(1) / 1000,
                               sens.per_atom, rtol=1e-12)
    # sigmoid: the gradient peaks at χ = 0.5, so middle bins exceed the ends
    mid = sens.levelset[1, 9:11]
    assert np.all(mid[np.isfinite(mid)] > np.nanmax(sens.levelset[1, [0, 19]]))


def test_path_vs_ensemble_mse_exact():
    x = _samples(n=2000, seed=2)
    sens = chi_sensitivity(DistanceChi(), x, bins=10, min_count=1)
    chi, grad = chi_gradients(DistanceChi(), x[:30])
    g2 = (grad ** 2).sum(-1)
    ref = sens.levelset[:, sens.bin_index(chi)].T
    assert path_vs_ensemble_mse((chi, g2), sens) == pytest.approx(np.mean((g2 - ref) ** 2))
    # a "path" that carries exactly the level-set profile has zero error
    assert path_vs_ensemble_mse((chi, ref), sens) == pytest.approx(0.0, abs=1e-20)
    assert path_vs_ensemble_mse((chi, g2), sens, reference="ensemble") == pytest.approx(
        np.mean((g2 - sens.per_atom) ** 2))
    with pytest.raises(ValueError, match="shape"):
        path_vs_ensemble_mse((chi, g2[:, :3]), sens)


def test_path_agreement_scale_free_measures():
    x = _samples(n=2000, seed=2)
    sens = chi_sensitivity(DistanceChi(), x, bins=10, min_count=1, bootstrap=0)
    chi, _ = chi_gradients(DistanceChi(), x[:30])
    ref = sens.levelset[:, sens.bin_index(chi)].T
    # a profile of the same shape but 3x the magnitude: absolute MSE large, scale-free 0
    res = path_agreement((chi, 3.0 * ref), sens)
    assert res.mse_nm4 == pytest.approx(np.mean((2.0 * ref) ** 2))
    assert res.mse_normalized == pytest.approx(0.0, abs=1e-15)
    assert res.cosine_distance == pytest.approx(0.0, abs=1e-12)
    assert path_vs_ensemble_mse((chi, 3.0 * ref), sens, kind="normalized") == \
        res.mse_normalized
    # a profile on the wrong atoms: the scale-free measures see it
    wrong = np.zeros_like(ref)
    wrong[:, 0] = ref.sum(axis=1)
    res = path_agreement((chi, wrong), sens)
    assert res.cosine_distance == pytest.approx(1.0) and res.mse_normalized > 0.05
    with pytest.raises(ValueError, match="kind"):
        path_vs_ensemble_mse((chi, ref), sens, kind="relative")


class LinearOnDistances(torch.nn.Module):
    """χ = w · f(x) + c with f = three pair distances: ∂ν/∂f_j = w_j exactly."""

    class Feat(torch.nn.Module):
        feature_names = ["d(0,1)", "d(1,2)", "d(0,2)"]

        def forward(self, x):
            return torch.stack([torch.linalg.norm(x[:, i] - x[:, j], dim=-1)
                                for i, j in ((0, 1), (1, 2), (0, 2))], dim=1)

    def __init__(self):
        super().__init__()
        self.featurizer = self.Feat()
        self.network = torch.nn.Linear(3, 1).double()
        with torch.no_grad():
            self.network.weight.copy_(torch.tensor([[0.5, -2.0, 1.0]]))

    def forward(self, x):
        return self.network(self.featurizer(x)).reshape(-1)


def test_feature_saliency_ranks_features():
    ranked = feature_saliency(LinearOnDistances(), _samples(n=50, n_atoms=3))
    assert [name for name, _ in ranked] == ["d(1,2)", "d(0,2)", "d(0,1)"]
    np.testing.assert_allclose([v for _, v in ranked], [4.0, 1.0, 0.25], rtol=1e-12)
    with pytest.raises(TypeError, match="featurizer"):
        feature_saliency(DistanceChi(), _samples(n=5))


def test_save_load_and_csv(tmp_path):
    sens = chi_sensitivity(DistanceChi(), _samples(n=100), bins=5, labels=list("ABCDE"))
    sens.save(tmp_path / "s.npz")
    back = Sensitivity.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.per_atom, sens.per_atom)
    np.testing.assert_array_equal(back.levelset, sens.levelset)
    assert back.labels == sens.labels
    np.testing.assert_array_equal(back.per_atom_err, sens.per_atom_err)
    np.testing.assert_array_equal(back.boot_per_atom, sens.boot_per_atom)
    assert back.min_count == sens.min_count
    text = sens.write_ranking_csv(tmp_path / "r.csv", k=2).read_text().splitlines()
    assert text[0] == ("rank,atom_index_0based,atom_index_1based,label,mean_grad_sq_nm-2,"
                       "stderr_nm-2,fraction,top2_frequency,status")
    row = text[1].split(",")
    assert row[3] in ("B", "D") and int(row[2]) == int(row[1]) + 1 and row[7] == "1"


def test_bad_input_messages():
    with pytest.raises(ValueError, match="positions must be"):
        chi_sensitivity(DistanceChi(), np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match="labels"):
        chi_sensitivity(DistanceChi(), _samples(n=4), labels=["a"])
    with pytest.raises(ValueError, match="bins"):
        chi_sensitivity(DistanceChi(), _samples(n=4), bins=0)


def test_per_sample_gradients_sum_to_zero_for_distance_features():
    x = _samples(n=50, n_atoms=5, seed=3)
    model = ChiModel(PairwiseDistances(5)).double()
    _, grad = chi_gradients(model, x)
    scale = np.abs(grad).max(axis=(1, 2))
    assert np.all(scale > 0)
    # Σᵢ ∇ᵢχ = 0 for each sample (translation invariance), not only on average
    assert np.all(np.abs(grad.sum(axis=1)).max(axis=1) < 1e-10 * np.maximum(scale, 1.0))


def test_error_bars_shrink_with_more_samples():
    small = chi_sensitivity(DistanceChi(), _samples(n=200, seed=4), bins=5, seed=1)
    large = chi_sensitivity(DistanceChi(), _samples(n=3200, seed=5), bins=5, seed=1)
    for sens, n in ((small, 200), (large, 3200)):
        # the bootstrap error agrees with the analytic standard error of a mean
        _, g = chi_gradients(DistanceChi(), _samples(n=n, seed=4 if n == 200 else 5))
        g2 = (g ** 2).sum(-1)[:, 1]
        assert sens.per_atom_err[1] == pytest.approx(g2.std(ddof=1) / np.sqrt(n), rel=0.3)
    # 16x the samples: about 4x smaller errors
    assert np.all(large.per_atom_err[[1, 3]] < 0.5 * small.per_atom_err[[1, 3]])
    ok = np.isfinite(small.levelset_err[1]) & np.isfinite(large.levelset_err[1])
    assert ok.any() and np.nanmean(large.levelset_err[1, ok]) < \
        0.5 * np.nanmean(small.levelset_err[1, ok])
    # atoms χ does not depend on have exactly zero sensitivity and zero error
    np.testing.assert_array_equal(small.per_atom_err[[0, 2, 4]], 0.0)


def test_zero_weights_drop_samples_and_weights_reweight():
    x = _samples(n=300, seed=6)
    junk = _samples(n=100, seed=7) * 3.0
    base = chi_sensitivity(DistanceChi(), x, bins=10, bootstrap=0)
    both = chi_sensitivity(DistanceChi(), np.concatenate([x, junk]), bins=10, bootstrap=0,
                           weights=np.r_[np.ones(300), np.zeros(100)])
    np.testing.assert_allclose(both.per_atom, base.per_atom, rtol=1e-12)
    np.testing.assert_array_equal(both.counts, base.counts)
    np.testing.assert_allclose(both.levelset, base.levelset, rtol=1e-12)
    assert both.n_samples == 300
    # weight 2 on a sample = that sample twice
    w = np.ones(300)
    w[:50] = 2.0
    weighted = chi_sensitivity(DistanceChi(), x, bins=10, bootstrap=0, weights=w)
    doubled = chi_sensitivity(DistanceChi(), np.concatenate([x, x[:50]]), bins=10,
                              bootstrap=0)
    np.testing.assert_allclose(weighted.per_atom, doubled.per_atom, rtol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        chi_sensitivity(DistanceChi(), x, weights=-w)


def test_min_count_empties_sparse_bins():
    x = _samples(n=300, seed=8)
    sens = chi_sensitivity(DistanceChi(), x, bins=20, min_count=15, bootstrap=20)
    sparse = (sens.counts < 15)
    assert sparse.any() and (~sparse).any()
    np.testing.assert_array_equal(sens.empty_bins, sparse)
    assert np.all(np.isnan(sens.levelset[:, sparse]))
    assert np.all(np.isnan(sens.levelset_err[:, sparse]))
    assert np.all(np.isfinite(sens.levelset[:, ~sparse]))


class PartialChi(DistanceChi):
    """DistanceChi that declares which atoms it featurizes (as ChiModel.featurized_atoms)."""

    featurized_atoms = np.array([1, 3])


def test_atoms_not_featurized_are_nan_not_zero(tmp_path):
    sens = chi_sensitivity(PartialChi(), _samples(n=200), bins=5, labels=list("ABCDE"),
                           bootstrap=50)
    assert np.all(np.isnan(sens.per_atom[[0, 2, 4]]))
    assert np.all(np.isnan(sens.per_atom_err[[0, 2, 4]]))
    assert np.all(np.isnan(sens.levelset[[0, 2, 4]]))
    assert np.all(np.isfinite(sens.per_atom[[1, 3]]))
    assert set(sens.ranking[:2]) == {1, 3} and len(sens.top(5)) == 2
    freq = sens.top_frequency(2)
    np.testing.assert_array_equal(freq[[1, 3]], 1.0)
    assert np.all(np.isnan(freq[[0, 2, 4]]))
    assert sens.fraction[[1, 3]].sum() == pytest.approx(1.0)
    rows = [r.split(",") for r in
            sens.write_ranking_csv(tmp_path / "a.csv").read_text().splitlines()[1:]]
    assert [r[-1] for r in rows] == ["featurized"] * 2 + ["not featurized"] * 3
    assert [r[0] for r in rows[2:]] == ["", "", ""]
    # the agreement of a path is computed on the featurized atoms only
    chi, grad = chi_gradients(PartialChi(), _samples(n=20, seed=9))
    assert path_agreement((chi, (grad ** 2).sum(-1)), sens, reference="ensemble").n_atoms == 2


def test_top_frequency_counts_resamples():
    sens = chi_sensitivity(DistanceChi(a=1, b=3), _samples(n=400, seed=10), bins=5,
                           bootstrap=100)
    freq = sens.top_frequency(1)
    # atoms 1 and 3 have identical ‖∇ᵢχ‖² in every sample: ties resolve to the lower index
    assert freq[1] == 1.0 and freq[3] == 0.0 and np.nansum(freq) == pytest.approx(1.0)
    assert np.all(sens.top_frequency(2)[[1, 3]] == 1.0)


def test_chimodel_featurized_atoms_are_nan():
    model = ChiModel(PairwiseDistances(5, atoms=[0, 2, 3])).double()
    sens = chi_sensitivity(model, _samples(n=50), bins=5, bootstrap=10)
    assert np.all(np.isnan(sens.per_atom[[1, 4]]))
    assert np.all(np.isfinite(sens.per_atom[[0, 2, 3]]))


def test_angle_saliency_is_the_chain_rule_through_sin_and_cos(ala):
    """ν = a·sin ψ on (sin, cos) dihedral features: ∂ν/∂ψ = a·cos ψ, ∂ν/∂φ = 0 (rad⁻²)."""
    import torch

    from amore_openmm.chi import BackboneDihedrals
    from amore_openmm.sensitivity import angle_saliency

    feat = BackboneDihedrals(ala.topology).double()
    psi = [j for j, nm in enumerate(feat.dihedral_names) if "ψ" in nm][0]

    class SinPsi(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.featurizer = feat

        def from_features(self, f):
            return 0.3 * f[:, 2 * psi]

        def forward(self, x):
            return self.from_features(self.featurizer(x))

    rng = np.random.default_rng(0)
    x0 = ala.positions[0]
    x = x0[None] + rng.normal(0, 0.02, (40,) + x0.shape)
    ranked = dict(angle_saliency(SinPsi(), x))
    theta = np.asarray(feat.angles(torch.as_tensor(x, dtype=torch.float64)))[:, psi]
    expect = 0.09 * np.mean(np.cos(theta) ** 2)
    assert abs(ranked[feat.dihedral_names[psi]] - expect) < 1e-9 * max(expect, 1)
    assert all(v < 1e-20 for k, v in ranked.items() if k != feat.dihedral_names[psi])


def test_combining_fits_adds_the_fit_to_fit_spread(tmp_path):
    x = _samples(n=400, seed=9)
    one = chi_sensitivity(DistanceChi(1, 3), x, bins=5, seed=2)
    # two identical fits: the same numbers, no spread to add
    same = combine_fits([one, chi_sensitivity(DistanceChi(1, 3), x, bins=5, seed=2)])
    assert same.fits == 2 and np.allclose(same.per_atom, one.per_atom)
    assert np.allclose(same.per_atom_err, one.per_atom_err)
    # two fits that disagree on which atom drives χ (atom 1 or atom 0, both with atom 3)
    other = chi_sensitivity(DistanceChi(0, 3), x, bins=5, seed=2)
    both = chi_sensitivity_over_fits([DistanceChi(1, 3), DistanceChi(0, 3)], x, bins=5,
                                     seed=2)
    assert np.allclose(both.per_atom, 0.5 * (one.per_atom + other.per_atom))
    assert np.all(both.per_atom_err >= 0.5 * np.abs(one.per_atom - other.per_atom) - 1e-12)
    assert np.all(both.per_atom_err[[0, 1]] > 3 * one.per_atom_err[1])
    # resampling the fits: atom 0 and atom 1 each come out on top in some resamples
    top1 = both.top_frequency(1)
    assert 0.1 < top1[0] < 0.9 and 0.1 < top1[1] < 0.9
    back = Sensitivity.load(both.save(tmp_path / "fits.npz"))
    assert back.fits == 2 and np.allclose(back.per_atom, both.per_atom)
    with pytest.raises(ValueError, match="atoms or χ bins"):
        combine_fits([one, chi_sensitivity(DistanceChi(1, 3), x, bins=4)])


def _given(shares, errs):
    """A Sensitivity with these per-atom values and errors (one bin)."""
    v = np.asarray(shares, dtype=float)
    return Sensitivity(per_atom=v, levelset=v[:, None], counts=np.array([10]),
                       bin_edges=np.array([0.0, 1.0]), per_atom_err=np.asarray(errs, float))


def test_ranking_agreement_tells_a_tie_at_the_edge_from_a_different_ranking():
    from amore_openmm.sensitivity import ranking_agreement
    base = [0.30, 0.20, 0.15, 0.10, 0.09, 0.08, 0.05, 0.03]
    err = [0.01] * 8
    # atoms 4 and 5 swap places, within their errors: the top-5 sets differ by a tie
    swapped = [0.30, 0.20, 0.15, 0.10, 0.08, 0.09, 0.05, 0.03]
    r = ranking_agreement(_given(base, err), _given(swapped, err), k=5)
    assert not r.same_top_k and r.differing == (4, 5) and all(r.boundary_ties)
    assert r.same_within_errors and not r.apart
    # the same swap with errors 10× smaller is a real difference
    tight = [0.001] * 8
    r = ranking_agreement(_given(base, tight), _given(swapped, tight), k=5)
    assert not any(r.boundary_ties) and set(r.apart) == {4, 5} and not r.same_within_errors
    # equal sets whose shares differ beyond the errors do not agree either
    moved = [0.20, 0.30, 0.15, 0.10, 0.09, 0.08, 0.05, 0.03]
    r = ranking_agreement(_given(base, err), _given(moved, err), k=5)
    assert r.same_top_k and set(r.apart) == {0, 1} and not r.same_within_errors
    # an atom below both top 5 that differs shows in share_z only
    sharp = err[:7] + [0.001]
    r = ranking_agreement(_given(base, sharp), _given(base[:7] + [0.003], sharp), k=5)
    assert r.same_within_errors and not r.apart and abs(r.share_z[7]) > 10
    # the scale of χ cancels: b = 4 a (a k = 2 pair difference) is the same ranking
    r = ranking_agreement(_given(base, err), _given(4 * np.array(base), 4 * np.array(err)))
    assert r.same_within_errors and np.allclose(r.share_z, 0)
    assert r.to_dict()["same_within_errors"] is True
    with pytest.raises(ValueError, match="atoms"):
        ranking_agreement(_given(base, err), _given(base[:5], err[:5]))
