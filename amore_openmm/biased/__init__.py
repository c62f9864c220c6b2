"""χ-biased sampling with MBAR reweighting (issue 23).

* :class:`UmbrellaSampler` — umbrella windows 0.5·κ·(χ − z)² along χ inside OpenMM with
  the system's own dynamics → :class:`UmbrellaSamples` (positions, χ, energy per frame).
* :func:`fit_mbar` — pymbar's MBAR over the windows → :class:`ChiFreeEnergy`: unbiased
  weights, F(χ) with block-bootstrap errors, ΔF‡, effective sample size, CSV, figure.
* :func:`reweighted_sensitivity`, :func:`window_sensitivity` (files:
  :func:`write_window_sensitivities`) — ⟨‖∇ᵢχ‖²⟩ of the unbiased
  ensemble (MBAR weights) and per level set from the window at z.
* :func:`stratified_starts` — starts drawn uniformly in χ for unbiased bursts.
* :func:`plan_windows` — pilot rounds placing windows and per-window κ until neighbours
  overlap (what a trained χ, steep at the saddle, needs; ``windows="auto"``).
* :func:`umbrella_free_energy` — the whole thing for one system and χ, writing files.
* :func:`projection_chi`, :func:`grid_free_energy` — a fixed χ and exact F(χ) for 2-D toys.
"""
from .adaptive import WindowPlan, pair_overlap, plan_windows
from .analysis import (reweighted_sensitivity, stratified_starts, window_sensitivity,
                       write_window_sensitivities)
from .mbar import ChiFreeEnergy, barrier_height, fit_mbar, statistical_inefficiency
from .reference import grid_free_energy, projection_chi, sigmoid_chi
from .umbrella import (STIFFNESS_LIMIT, UmbrellaSampler, UmbrellaSamples, auto_kappa,
                       check_chi_model, chi_grad_metric)
from .workflow import MIN_OVERLAP, certify, neighbour_overlap, umbrella_free_energy

__all__ = ["UmbrellaSampler", "UmbrellaSamples", "fit_mbar", "ChiFreeEnergy",
           "stratified_starts", "reweighted_sensitivity", "window_sensitivity",
           "write_window_sensitivities", "umbrella_free_energy", "projection_chi", "sigmoid_chi", "grid_free_energy",
           "auto_kappa",
           "check_chi_model", "statistical_inefficiency", "barrier_height",
           "neighbour_overlap", "MIN_OVERLAP", "plan_windows", "WindowPlan", "pair_overlap",
           "certify", "chi_grad_metric", "STIFFNESS_LIMIT"]
