"""The "torchforce" backend: χ as an ``openmmtorch.TorchForce`` (TorchScript) collective
variable, the restraint as a ``CustomCVForce``.

``openmmtorch`` is imported only when this backend is used (:func:`import_openmmtorch`), so
``amore_openmm`` works without it (then the "pythonforce" backend runs χ).
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import openmm

from .common import (CV_NAME, DEFAULT_PREFIX, ModelLike, ChiRestraintBase, existing_file, kj,
                     load_chi_module)

NAME = "torchforce"
_CACHE: dict[str, Any] = {}


class _SimtkNotice(logging.Filter):
    """Drops the ``simtk`` shim's deprecation notice (see :func:`import_openmmtorch`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "simtk.openmm" not in record.getMessage()


def import_openmmtorch() -> Any:
    """The ``openmmtorch`` module, imported once (after torch, as it needs).

    Raises ImportError (the original one) when it is not installed or does not import.
    """
    if "module" not in _CACHE:
        import torch  # noqa: F401  (torch must be imported before openmmtorch)
        # openmmtorch's SWIG wrapper still runs ``import simtk.openmm``, whose shim logs
        # "importing 'simtk.openmm' is deprecated" on the root logger (not a warning);
        # the import is ours, so its notice is dropped here and nowhere else
        root, notice = logging.getLogger(), _SimtkNotice()
        root.addFilter(notice)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import openmmtorch
        except Exception as exc:  # ImportError, or OSError from a missing CUDA library
            _CACHE["module"], _CACHE["error"] = None, exc
        else:
            _CACHE["module"], _CACHE["error"] = openmmtorch, None
        finally:
            root.removeFilter(notice)
    if _CACHE["module"] is None:
        err = _CACHE["error"]
        raise ImportError(f"openmmtorch does not import ({type(err).__name__}: {err})") from err
    return _CACHE["module"]


def torch_chi_force(model: ModelLike, force_group: int | None = None) -> openmm.Force:
    """χ as an ``openmmtorch.TorchForce`` whose energy is χ (forces −∇χ).

    A path is passed to TorchForce as a file. The force does not use periodic boundary
    conditions, so the model sees the Context's unwrapped positions.
    """
    openmmtorch = import_openmmtorch()
    if isinstance(model, (str, os.PathLike)):
        force = openmmtorch.TorchForce(str(existing_file(model)))
    else:
        force = openmmtorch.TorchForce(load_chi_module(model))
    force.setUsesPeriodicBoundaryConditions(False)
    force.setOutputsForces(False)
    force.setName("AmoreChi")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return force


class TorchChiRestraint(ChiRestraintBase, openmm.CustomCVForce):
    """0.5·κ·(χ − z)² as a ``CustomCVForce`` over the TorchForce χ (see ChiRestraintForce)."""

    backend = NAME

    def __init__(self, model: ModelLike, z: float = 0.5, kappa: Any = 1e5,
                 force_group: int | None = None, prefix: str = DEFAULT_PREFIX) -> None:
        z_param, kappa_param = self._use_prefix(prefix)
        chi = torch_chi_force(model)
        openmm.CustomCVForce.__init__(self, f"0.5*{kappa_param}*({CV_NAME}-{z_param})^2")
        self.addGlobalParameter(z_param, float(z))
        self.addGlobalParameter(kappa_param, kj(kappa))
        self.addCollectiveVariable(CV_NAME, chi)
        self.setName("AmoreChiRestraint")
        if force_group is not None:
            self.setForceGroup(int(force_group))

    def chi(self, context: openmm.Context) -> float:
        """χ at the Context's current positions, read through OpenMM."""
        return float(self.getCollectiveVariableValues(context)[0])


def recover_torch_restraint(force: openmm.CustomCVForce) -> TorchChiRestraint | None:
    """``force`` as a :class:`TorchChiRestraint` when it is one that lost its Python class
    (``System.getForce``, an XML round trip), else None."""
    if force.getNumCollectiveVariables() != 1 or force.getCollectiveVariableName(0) != CV_NAME:
        return None
    names = [force.getGlobalParameterName(i) for i in range(force.getNumGlobalParameters())]
    z_params = [n for n in names if n.endswith("_z") and n[:-2] + "_kappa" in names]
    if len(z_params) != 1:
        return None
    force.__class__ = TorchChiRestraint     # the same C++ force; the Python methods come back
    force._use_prefix(z_params[0][:-2])
    return force
