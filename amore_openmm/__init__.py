"""amore_openmm — AMORE-MD inside OpenMM.

Pipeline, one module or sub-package per stage (a start goes from ``load_system`` to
``KoopmanData`` through ``systems``, ``sampling`` and ``data`` alone):

* :mod:`amore_openmm.systems`     load_system → MolecularSystem (PDB+FF, prmtop, System XML,
  bundled), the molecule of interest (``selection``), periodic whole-molecule helpers, the
  sequence → structure builder
* :mod:`amore_openmm.sampling`    ContextPool, BurstSampler (Koopman bursts, burst sanity),
  sample_trajectory, replica packing (pack_replicas)
* :mod:`amore_openmm.data`        KoopmanData (x, y, weights), atomic writes, JSON
* :mod:`amore_openmm.chi`         featurizers (pairwise_sym: permutation-aware), ChiModel,
  TorchScript export  ← χ is defined here
* :mod:`amore_openmm.isokann`     Isokann estimator (fit → ChiModel, validation loss),
  orient, exit rates  ← χ is trained here
* :mod:`amore_openmm.forces`      χ inside OpenMM: chi_force, ChiRestraintForce, ChiReporter,
  md_kappa; backends "torchforce" (openmm-torch) and "pythonforce" (openmm.PythonForce)
* :mod:`amore_openmm.mep`         trace_chi_mep / ChiPath: certified χ-minimum-energy paths
* :mod:`amore_openmm.strings`     zero-temperature string method baseline
* :mod:`amore_openmm.sensitivity` χ-sensitivity ⟨‖∇ᵢχ‖²⟩ (ensemble and per level set, error
  bars), feature and per-dihedral saliency, path-vs-ensemble agreement
* :mod:`amore_openmm.channels`    transition channels: paths clustered by route
* :mod:`amore_openmm.pipeline`    AmoreRun: adaptive generations in a resumable run directory;
  settings in :mod:`amore_openmm.config`
* :mod:`amore_openmm.distributed` Dask executor;  :mod:`amore_openmm.cli` the ``amore``
  command;  :mod:`amore_openmm.plots` figures;  :mod:`amore_openmm.threads` worker threads
  that have left the process when their pool has shut down

Names are imported lazily so that ``import amore_openmm`` stays cheap (torch loads on first use).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "systems": ["load_system", "MolecularSystem", "SystemLoadError", "muller_brown_system",
                "bundled_systems"],
    "data": ["KoopmanData"],
    "sampling": ["ContextPool", "BurstSampler", "sample_trajectory", "pack_replicas"],
    "chi": ["ChiModel", "PairwiseDistances", "BackboneDihedrals", "Coordinates",
            "make_featurizer"],
    "isokann": ["Isokann", "orient", "exit_rates"],
    "forces": ["chi_force", "ChiRestraintForce", "ChiReporter", "md_kappa", "backend_info"],
    "mep": ["trace_chi_mep", "trace_chi_meps", "ChiPath", "transition_states"],
    "strings": ["string_method", "path_distance"],
    "sensitivity": ["chi_sensitivity", "chi_sensitivity_over_fits", "ranking_agreement",
                    "feature_saliency", "angle_saliency", "path_vs_ensemble_mse",
                    "path_agreement"],
    "channels": ["find_channels"],
    "pipeline": ["AmoreRun"],
    "distributed": ["DaskExecutor"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'amore_openmm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"amore_openmm.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
