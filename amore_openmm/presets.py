"""Built-in run sizes (presets) per system: data only, resolved by :mod:`amore_openmm.config`.

``GENERIC_PRESETS`` apply to every system without its own entry (files on disk included);
``PRESETS[name]`` to a bundled system or a folder whose ``system.toml`` names it. Sizes are
chosen so that ``default`` fits the time budget on 2 CPU cores; ``paper`` is for GPUs.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "GENERIC_PRESETS", "PRESET_NAMES"]

#: the preset names (``science``: only systems with a built-in science preset, vgvapg)
PRESET_NAMES = ("default", "quick", "paper", "science")


# --------------------------------------------------------------------------------------------
GENERIC_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"n_starts": 200, "n_koopman": 2, "iterations": 150,
              "iterations_per_generation": 50, "generations": 1, "paths_per_generation": 1,
              "starts_per_path": 10, "path_max_nodes": 40, "final_paths": 2,
              "sensitivity_bins": 20, "sensitivity_samples": 1000,
              # F(χ) runs for periodic inputs only (free_energy = "auto"): a smoke-sized profile
              "fes_windows": 11, "fes_frames": 40, "fes_bootstrap": 50, "fes_bins": 20},
    "paper": {"n_starts": 10000, "n_koopman": 1, "iterations": 4000, "minibatch": 1000,
              "iterations_per_generation": 2000, "generations": 0, "final_paths": 34,
              "path_max_nodes": 100, "ts_low": 0.49, "ts_high": 0.51,
              "sensitivity_bins": 100, "sensitivity_samples": 10000},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "muller_brown": {
        # kT = 12.5, dt 1e-4, lag 10 steps; frames every 0.1 time units (1000 steps) as in
        # the authors' script: 300 time units cross the barrier ~35 times (measured)
        "default": {"n_starts": 3000, "stride_steps": 1000, "n_koopman": 8, "iterations": 600,
                    "iterations_per_generation": 200, "minibatch": 200, "generations": 2,
                    "paths_per_generation": 2, "starts_per_path": 25, "path_step": 0.02,
                    "path_max_nodes": 120, "ts_low": 0.45, "ts_high": 0.55,
                    "final_paths": 4, "sensitivity_bins": 50, "sensitivity_samples": 3000},
        "quick": {"n_starts": 1000, "stride_steps": 1000, "n_koopman": 4, "iterations": 200,
                  "iterations_per_generation": 60, "minibatch": 100, "generations": 1,
                  "paths_per_generation": 1, "starts_per_path": 10, "path_max_nodes": 60,
                  "path_step": 0.04, "final_paths": 2, "sensitivity_bins": 20,
                  "sensitivity_samples": 1000},
        # the authors' script: 10,000 frames every 0.1 time units, K = 10, 4000 iterations
        "paper": {"n_starts": 10000, "stride_steps": 1000, "n_koopman": 10, "iterations": 4000,
                  "minibatch": 1000, "optimizer": "nesterov", "weight_decay": 1e-3,
                  "generations": 0, "final_paths": 10, "path_max_nodes": 200,
                  "path_step": 0.01, "ts_low": 0.49, "ts_high": 0.51},
    },
    "alanine_dipeptide": {
        "default": {"n_starts": 3000, "n_koopman": 2, "iterations": 600,
                    "iterations_per_generation": 150, "minibatch": 200, "generations": 2,
                    "paths_per_generation": 2, "starts_per_path": 20, "path_step": 0.025,
                    "path_max_nodes": 80, "final_paths": 4, "sensitivity_bins": 50,
                    "sensitivity_samples": 3000},
        # 300 first-fit iterations: with 150 the first fit of some seeds stalls at a flat χ
        "quick": {"n_starts": 500, "n_koopman": 1, "iterations": 300,
                  "iterations_per_generation": 50, "generations": 1, "paths_per_generation": 1,
                  "starts_per_path": 10, "path_step": 0.05, "path_max_nodes": 40,
                  "final_paths": 2, "sensitivity_bins": 20, "sensitivity_samples": 500},
        # paper: 10,000 starts with K = 1, 4000 iterations, 34 paths of 100 nodes
        "paper": {"n_starts": 10000, "n_koopman": 1, "iterations": 4000, "minibatch": 1000,
                  "generations": 0, "final_paths": 34, "path_max_nodes": 100,
                  "path_step": 0.01, "ts_low": 0.49, "ts_high": 0.51,
                  "sensitivity_bins": 100, "sensitivity_samples": 10000},
    },
    "alanine_dipeptide_tip3p": {
        # 1,288 atoms with PME: ~120–500 steps/s per CPU core, so every MD step counts.
        # default: 1 ns of trajectory (frames every 0.5 ps) for the two basins (αR and β:
        # χ's timescale ~50 ps); 89 min of stages on 2 shared cores with ΔF‡, 1.46 GB
        # (README). 30 nodes per path: with 10 the final paths spanned only χ 0.31–0.76 (ψ
        # moved 10°) and never left the transition region; with 30 both span χ 0.01–0.99
        # (ψ 2° → 130°), 24–26 of 24–26 nodes certified
        "default": {"n_starts": 2000, "stride_steps": 250, "n_koopman": 2, "iterations": 600,
                    "iterations_per_generation": 150, "minibatch": 200, "generations": 2,
                    "paths_per_generation": 1, "starts_per_path": 10, "path_step": 0.05,
                    "path_max_nodes": 30, "final_paths": 2, "sensitivity_bins": 30,
                    "sensitivity_samples": 2000,
                    # ΔF‡ along χ: 21 windows × 200 frames every 0.1 ps (231k steps; 43 min
                    # on 2 shared cores, 15.8 ± 1.0 kJ/mol, certified)
                    "fes_windows": 21, "fes_frames": 200, "fes_stride": 50,
                    "fes_equilibration": 20, "fes_bins": 30},
        # quick: ≤ 10 min and ≤ 2 GB on 2 cores (benchmarks/solvated_pipeline.py): 20 ps of
        # trajectory, 3-node χ-MEPs (a node minimises the whole box: ~10–30 s)
        "quick": {"n_starts": 100, "n_koopman": 1, "iterations": 300,
                  "iterations_per_generation": 50, "minibatch": 50, "generations": 1,
                  "paths_per_generation": 1, "starts_per_path": 4, "path_step": 0.05,
                  "path_max_nodes": 3, "final_paths": 1, "sensitivity_bins": 10,
                  "sensitivity_samples": 100,
                  # ΔF‡ along χ, the headline barrier of a water box: 11 windows × 40 frames
                  # every 0.1 ps (~25k steps); 20 bins: with 50 the 440 frames left ~9 per
                  # bin and ΔF‡ was a noise spike 1.5 kT above the bootstrap band
                  "fes_windows": 11, "fes_frames": 40, "fes_stride": 50,
                  "fes_equilibration": 5, "fes_bootstrap": 50, "fes_bins": 20},
    },
    "chignolin": {
        # 138 atoms, OBC2, lag 0.5 ps. lr 1e-4: over 9,453 pairwise_sym features Adam's first
        # steps at 1e-3 saturate the pairnet (χ constant after one iteration, measured)
        "default": {"n_starts": 1000, "n_koopman": 1, "iterations": 1000, "lr": 1e-4,
                    "iterations_per_generation": 200, "minibatch": 100, "generations": 2,
                    "paths_per_generation": 1, "starts_per_path": 10, "path_step": 0.025,
                    "path_max_nodes": 40, "final_paths": 2, "sensitivity_bins": 30,
                    "sensitivity_samples": 1000},
        # quick, 10-node paths: 1,013 s, 1.31 GB on 2 shared cores (χ-MEPs ~300 s each)
        "quick": {"n_starts": 100, "n_koopman": 1, "iterations": 300, "lr": 1e-4,
                  "iterations_per_generation": 50, "minibatch": 50, "generations": 1,
                  "paths_per_generation": 1, "starts_per_path": 4, "path_step": 0.05,
                  "path_max_nodes": 5, "final_paths": 1, "sensitivity_bins": 10,
                  "sensitivity_samples": 100},
    },
    "vgvapg": {
        # `make science` (≤ 60 min on 2 CPU cores): an equilibrium ensemble of 10 packed replicas,
        # one per bundled conformation (benchmarks/vgvapg_packing.py: 8, 10 and 16 copies per
        # Context give the same ~900 replica-steps/s within the noise of a shared 2-core machine,
        # 2.5× one copy), 10 ps equilibration discarded and 100 ps kept per replica (1 ns, 12-16 min
        # in all. 4 ns, --equilibrium-steps 200000, 37-44 min, gave dihedral ratios 7.07, 8.55, 1.41
        # on seeds 0-2 against 2.98, 1.06, 3.68, but the paper's atoms 1, 1, 0 of 4 against 0, 2, 3
        # and channels 2, 2, 1 against 2, 2, 4: no better on the targets as a whole); Koopman pairs
        # of consecutive frames (lag 0.5 ps), 3000 of them; 2 generations of 2 χ-MEPs with the
        # stopping rule of pipeline.science; 6 final paths from distinct transition states in the
        # paper's wide window χ ∈ [0.49, 0.51]; a second χ on the 10 backbone dihedrals. 300
        # first-fit iterations: on a 1 ns ensemble the pairwise_sym χ collapsed to a constant within
        # 1000 iterations for 3 of 3 seeds (and is retried with other seeds when it does). 60 nodes
        # per path: with 30, 4 of 6 final paths stopped short of χ 0.2 or 0.8 and no channel split
        # was possible; with 60 all 6 spanned χ 0–1 (final_paths 2 min).
        # Since issue 23: the ensemble is temperature replica exchange (4 temperatures
        # 298-400 K, HMR at 4 fs, an exchange every 0.5 ps; 4 replicas on 2 threads ~2 ps/s
        # per replica, benchmarks/replica_exchange.py): 4000 exchanges = 2 ns per replica,
        # 50 ps discarded, the base-temperature frames the ensemble; the Koopman data are
        # 3000 bursts of the original system (2 fs, no HMR) from evenly spaced frames.
        # equilibrium_method = "plain" with the equilibrium_* settings is the run above.
        # Since session 31: 6 temperatures 298-500 K, 6000 exchanges (3 ns per replica),
        # 100 ps discarded. Seed 0 against the 4 × 298-400 K ladder: VAL3 ψ autocorrelation
        # 15 ps (was 86), halves max TV 0.098 (was 0.218), χ timescale 184 ps (was 55), VAL3 ψ
        # first both times; 97 CPU-min in all (was 61).
        "science": {"science": True, "equilibrium_method": "remd", "remd_replicas": 6,
                    "remd_t_max": 500.0, "remd_exchanges": 6000, "remd_ps_per_exchange": 0.5,
                    "hmr": True, "equilibrium_replicas": 0, "equilibrium_steps": 0,
                    "equilibration_steps": 50000, "n_starts": 3000, "n_koopman": 1,
                    "iterations": 300, "iterations_per_generation": 100, "minibatch": 1000,
                    "generations": 2, "paths_per_generation": 2, "starts_per_path": 15,
                    "path_step": 0.05, "path_max_nodes": 60, "ts_low": 0.49,
                    "ts_high": 0.51, "final_paths": 6, "sensitivity_bins": 40,
                    "sensitivity_samples": 3000, "platform": "CPU"},
        # OBC2 on 73 atoms is slow on CPU: the default is a reduced run from the bundled
        # conformations; `paper` is for GPUs (50,000 starts, 20,000 iterations, 100 gens)
        "default": {"n_starts": 600, "n_koopman": 1, "iterations": 1500,
                    "iterations_per_generation": 300, "minibatch": 100, "generations": 2,
                    "paths_per_generation": 1, "starts_per_path": 20, "path_step": 0.025,
                    "path_max_nodes": 80, "final_paths": 2, "sensitivity_bins": 40,
                    "sensitivity_samples": 600},
        "quick": {"n_starts": 120, "n_koopman": 1, "iterations": 600,
                  "iterations_per_generation": 100, "generations": 1, "paths_per_generation": 1,
                  "starts_per_path": 8, "path_step": 0.05, "path_max_nodes": 30,
                  "final_paths": 1, "sensitivity_bins": 20, "sensitivity_samples": 120},
        "paper": {"n_starts": 50000, "stride_steps": 10000, "n_koopman": 1,
                  "iterations": 20000, "minibatch": 1000, "iterations_per_generation": 2000,
                  "generations": 100, "paths_per_generation": 1, "starts_per_path": 200,
                  "path_max_nodes": 200, "path_step": 0.005, "ts_low": 0.4995,
                  "ts_high": 0.5005, "final_paths": 10, "sensitivity_bins": 100,
                  "sensitivity_samples": 50000},
    },
}
