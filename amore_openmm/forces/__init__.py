"""χ inside OpenMM: the only place that builds OpenMM forces from a χ model.

* :func:`chi_force` — the χ collective variable as an OpenMM force whose energy is χ.
* :class:`ChiRestraintForce` — the restraint 0.5·κ·(χ − z)²; z and κ are the global
  parameters ``amore_chi_z`` and ``amore_chi_kappa`` on every backend (``prefix=`` renames
  them, so that two restraints fit in one System), changed with ``Context.setParameter`` (or
  :meth:`ChiRestraintForce.set`) without rebuilding the Context;
  :func:`find_chi_restraints` / :meth:`ChiRestraintForce.from_force` recover them from a
  System read back from XML or from ``System.getForce``.
* :class:`ChiReporter` — logs step, time, χ (and ‖∇χ‖) of a running ``openmm.app.Simulation``.
* :func:`md_kappa` — the restraint stiffness for restrained MD (see :mod:`.kappa`).
* :func:`backend_info` — which backend ``backend="auto"`` picks here, and why.

Two backends compute the same χ (the exported TorchScript model, float64) to round-off:

* ``"torchforce"`` (:mod:`.torchforce`): an ``openmmtorch.TorchForce``; the restraint is a
  ``CustomCVForce`` over it. Needs openmm-torch (``pip install 'amore_openmm[torchforce]'``,
  which pins openmm<8.6).
* ``"pythonforce"`` (:mod:`.pythonforce`): an ``openmm.PythonForce`` (OpenMM ≥ 8.5) calling the
  model with torch, or, for a default ChiModel (pair distances, LayerNorm/Linear/Sigmoid),
  with float64 numpy passes checked against torch on the first call; no openmm-torch. Its
  callback pickles with the model's bytes, so a System holding it serialises with
  ``XmlSerializer``.

``backend="auto"`` (the default everywhere) takes "torchforce" where openmm-torch imports and
OpenMM < 8.6, else "pythonforce"; ``AMORE_CHI_BACKEND`` overrides it. Umbrella windows take
:func:`backend_for`, which on Reference/CPU prefers the numpy passes. Importing this package
does not import ``openmmtorch``: that happens when the torchforce backend is chosen.
"""
from .backend import (BACKENDS, ChiBackendError, backend_for, backend_info,
                      openmmtorch_version, resolve_backend)
from .common import KAPPA_PARAM, Z_PARAM, evaluate_chi, load_chi_module
from .kappa import KappaWindow, KappaWindowError, kappa_window, md_kappa
from .pythonforce import ChiComputation
from .reporter import ChiReporter
from .restraint import ChiRestraintForce, chi_force, chi_from_context, find_chi_restraints

__all__ = ["chi_force", "ChiRestraintForce", "ChiReporter", "load_chi_module",
           "chi_from_context", "backend_info", "backend_for", "resolve_backend", "BACKENDS",
           "ChiBackendError", "openmmtorch_version", "md_kappa", "kappa_window", "KappaWindow",
           "KappaWindowError", "ChiComputation", "evaluate_chi", "Z_PARAM", "KAPPA_PARAM",
           "find_chi_restraints"]
