"""amore_openmm — AMORE-MD inside OpenMM.

Pipeline, one module per stage:

* :mod:`amore_openmm.systems`     load_system → MolecularSystem (PDB+FF, prmtop, System XML, bundled)
* :mod:`amore_openmm.sampling`    ContextPool, BurstSampler (Koopman bursts), sample_trajectory
* :mod:`amore_openmm.data`        KoopmanData (x, y pairs with metadata)
* :mod:`amore_openmm.chi`         featurizers, ChiModel, TorchScript export  ← χ is defined here
* :mod:`amore_openmm.isokann`     Isokann estimator (fit → ChiModel), exit rates  ← χ is trained here
* :mod:`amore_openmm.forces`      χ inside OpenMM: chi_force (TorchForce), ChiRestraintForce, ChiReporter
* :mod:`amore_openmm.mep`         trace_chi_mep / ChiPath (χ-minimum-energy paths)
* :mod:`amore_openmm.strings`     zero-temperature string method baseline
* :mod:`amore_openmm.sensitivity` χ-sensitivity ⟨‖∇ᵢχ‖²⟩ (ensemble and per level set), feature saliency
* :mod:`amore_openmm.adaptive`    AmoreRun: adaptive generations in a resumable run directory
* :mod:`amore_openmm.packing`, :mod:`amore_openmm.distributed`  replica packing, Dask
* :mod:`amore_openmm.cli`         the ``amore`` command;  :mod:`amore_openmm.plots` figures

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
    "sampling": ["ContextPool", "BurstSampler", "sample_trajectory"],
    "chi": ["ChiModel", "PairwiseDistances", "BackboneDihedrals", "Coordinates",
            "make_featurizer"],
    "isokann": ["Isokann", "orient", "exit_rates"],
    "forces": ["chi_force", "ChiRestraintForce", "ChiReporter"],
    "mep": ["trace_chi_mep", "trace_chi_meps", "ChiPath", "transition_states"],
    "strings": ["string_method", "path_distance"],
    "sensitivity": ["chi_sensitivity", "feature_saliency", "path_vs_ensemble_mse"],
    "adaptive": ["AmoreRun"],
    "packing": ["pack_replicas"],
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
