"""χ-sensitivity on hand-built χ functions with known gradients."""
import numpy as np
import pytest
import torch

from amore_openmm.sensitivity import (Sensitivity, chi_gradients, chi_sensitivity,
                                      feature_saliency, path_vs_ensemble_mse)

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
    sens = chi_sensitivity(DistanceChi(), x, bins=20)
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
    sens = chi_sensitivity(DistanceChi(), x, bins=10)
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
    text = sens.write_ranking_csv(tmp_path / "r.csv").read_text().splitlines()
    assert text[0].startswith("rank,atom_index_0based,atom_index_1based,label")
    assert text[1].split(",")[3] in ("B", "D")


def test_bad_input_messages():
    with pytest.raises(ValueError, match="positions must be"):
        chi_sensitivity(DistanceChi(), np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match="labels"):
        chi_sensitivity(DistanceChi(), _samples(n=4), labels=["a"])
    with pytest.raises(ValueError, match="bins"):
        chi_sensitivity(DistanceChi(), _samples(n=4), bins=0)
