"""Several slow processes: k memberships χ_1..χ_k on the simplex (``Isokann(n_chi=k)``), the
rate matrix between the k states, and χ-MEPs, sensitivities and channels per transition.

Modules: :mod:`.model` (MultiChiModel, pair_model: the transition i ↔ j as a scalar ChiModel
χ_ij = (χ_i − χ_j + 1)/2 for the existing tracer, forces and sensitivities), :mod:`.estimator`
(the inner-simplex power iteration), :mod:`.rates` (K_c, Q = logm(K_c)/τ, bootstrap errors,
certificate), :mod:`.transitions` (per-pair paths, sensitivities, channels, files),
:mod:`.figures` (simplex scatter, rate-matrix heatmap).
"""
from .estimator import check_n_chi, fit_multichi, isa_targets, isa_vertices
from .model import ExportedMultiChi, MultiChiModel, PairNetwork, memberships, pair_model
from .rates import generator_timescales, rate_matrix
from .transitions import pair_starts, state_minima, trace_pair, transition_segment, transitions

__all__ = ["MultiChiModel", "ExportedMultiChi", "PairNetwork", "pair_model", "memberships",
           "fit_multichi", "check_n_chi", "isa_targets", "isa_vertices", "rate_matrix",
           "generator_timescales",
           "pair_starts", "state_minima", "trace_pair", "transition_segment", "transitions"]
