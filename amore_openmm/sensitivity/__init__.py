"""χ-sensitivity: which atoms (and features) drive the slow process.

For samples x of an ensemble ρ (optionally weighted):

* ensemble average ⟨‖∇ᵢχ‖²⟩_ρ per atom i, with bootstrap standard errors and, per atom, how
  often it lands in the top k across resamples (:mod:`.ensemble`);
* level-set average ⟨‖∇ᵢχ‖²⟩_z: the same average restricted to samples with χ(x) in a bin
  around z (paper eq. 4; 100 bins on [0, 1] in the paper): an atoms × χ matrix; bins with
  fewer than ``min_count`` samples are empty (NaN);
* feature saliency ⟨‖∂ν/∂f_j‖²⟩ for χ = ν ∘ f (features f, network ν), and per dihedral angle
  in rad⁻² through sin/cos by the chain rule (:mod:`.compare`);
* agreement of ‖∇ᵢχ‖² along a χ-MEP with the level-set average at the nodes' χ values, as
  the paper's absolute MSE (nm⁻⁴) and scale-free measures (:mod:`.compare`);
* the mean over several χ fits of the same data, whose error includes the training
  variance, and whether two rankings agree within their errors (:mod:`.fits`).

∇χ comes from ``ChiModel.chi_and_grad`` (or batched autograd for any other torch module
mapping positions (B, n, 3) nm → χ (B,)) (:mod:`.gradients`). ∇χ is in nm⁻¹, so
sensitivities are in nm⁻². Atoms the model does not featurize are NaN, never 0.
"""
from .compare import (PathAgreement, angle_saliency, feature_saliency, path_agreement,
                      path_vs_ensemble_mse)
from .ensemble import DEFAULT_MIN_COUNT, Sensitivity, chi_sensitivity
from .fits import RankingAgreement, chi_sensitivity_over_fits, combine_fits, ranking_agreement
from .gradients import atom_labels, chi_gradients, featurized_mask

__all__ = ["Sensitivity", "chi_sensitivity", "angle_saliency", "chi_gradients",
           "feature_saliency", "path_vs_ensemble_mse", "path_agreement", "PathAgreement", "atom_labels",
           "featurized_mask", "DEFAULT_MIN_COUNT", "combine_fits", "chi_sensitivity_over_fits",
           "RankingAgreement", "ranking_agreement"]
