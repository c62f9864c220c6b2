"""The "pythonforce" backend: the same TorchScript χ evaluated by torch inside an
``openmm.PythonForce`` callback (OpenMM ≥ 8.5), with no openmm-torch.

The callback is a :class:`ChiComputation`: a small picklable object holding the bytes of the
exported TorchScript file. OpenMM pickles it when a System is serialised, so a System with a
χ force still goes through ``XmlSerializer`` and gives the same energy after reloading (the
reloading process needs ``amore_openmm`` importable). The TorchScript module is loaded lazily,
once per process and model.
"""
from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

import numpy as np
import openmm
import torch
from openmm import unit

from .common import KAPPA_PARAM, Z_PARAM, ModelLike, _ChiRestraintBase, chi_module_bytes, \
    evaluate_chi, kj

NAME = "pythonforce"
_MODULES: dict[str, Any] = {}   # sha256 of the TorchScript bytes -> loaded module
_LOCK = threading.Lock()        # TorchScript loading/compilation is not thread-safe


def _load(key: str, data: bytes) -> Any:
    with _LOCK:
        module = _MODULES.get(key)
        if module is None:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            module.eval()
            _MODULES[key] = module
    return module


class ChiComputation:
    """PythonForce callback: energy χ (``restraint=False``) or 0.5·κ·(χ − z)² with κ and z
    read from the State's global parameters :data:`KAPPA_PARAM` and :data:`Z_PARAM`.

    Positions arrive in float64 nm (unwrapped unless the force uses periodic boundary
    conditions); χ and ∇χ are computed in float64 by the TorchScript module.
    """

    def __init__(self, module_bytes: bytes, restraint: bool) -> None:
        self.module_bytes = bytes(module_bytes)
        self.restraint = bool(restraint)
        self.key = hashlib.sha256(self.module_bytes).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        return {"module_bytes": self.module_bytes, "restraint": self.restraint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["module_bytes"], state["restraint"])

    @property
    def module(self) -> Any:
        """The TorchScript χ module (loaded on first use in this process)."""
        module = _MODULES.get(self.key)
        return module if module is not None else _load(self.key, self.module_bytes)

    def chi_and_grad(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """χ and ∇χ (n, 3) nm⁻¹ at ``positions`` (n, 3) nm."""
        chi, grad = evaluate_chi(self.module, positions)
        assert grad is not None
        return chi, grad

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        chi, grad = self.chi_and_grad(x)
        if not self.restraint:
            return chi, -grad
        params = state.getParameters()
        dz = chi - params[Z_PARAM]
        kappa = params[KAPPA_PARAM]
        return 0.5 * kappa * dz * dz, (-kappa * dz) * grad


def python_chi_force(model: ModelLike, force_group: int | None = None) -> openmm.PythonForce:
    """χ as an ``openmm.PythonForce`` whose energy is χ (forces −∇χ); no periodic boundary
    conditions, so the model sees the Context's unwrapped positions."""
    force = openmm.PythonForce(ChiComputation(chi_module_bytes(model), restraint=False), {})
    force.setUsesPeriodicBoundaryConditions(False)
    force.setName("AmoreChi")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return force


class PythonChiRestraint(_ChiRestraintBase, openmm.PythonForce):
    """0.5·κ·(χ − z)² as one ``openmm.PythonForce`` (see ChiRestraintForce)."""

    backend = NAME

    def __init__(self, model: ModelLike, z: float = 0.5, kappa: Any = 1e5,
                 force_group: int | None = None) -> None:
        self.computation = ChiComputation(chi_module_bytes(model), restraint=True)
        openmm.PythonForce.__init__(self, self.computation,
                                    {Z_PARAM: float(z), KAPPA_PARAM: kj(kappa)})
        self.setUsesPeriodicBoundaryConditions(False)
        self.setName("AmoreChiRestraint")
        if force_group is not None:
            self.setForceGroup(int(force_group))

    def chi(self, context: openmm.Context) -> float:
        """χ at the Context's current (unwrapped) positions, by the force's own model."""
        x = context.getState(getPositions=True).getPositions(asNumpy=True)
        return evaluate_chi(self.computation.module, x.value_in_unit(unit.nanometer),
                            gradient=False)[0]
