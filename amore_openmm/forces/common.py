"""What every χ backend shares: loading the TorchScript χ, evaluating χ and ∇χ with torch,
the restraint's global parameter names, and the restraint's common interface.

Nothing here imports ``openmmtorch``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import openmm
from openmm import unit

ModelLike = Any  # ChiModel | torch.jit.ScriptModule | str | os.PathLike

#: Global parameter names of the χ restraint, identical on every backend. The ``amore_``
#: prefix keeps them from colliding with a user's own global parameters.
Z_PARAM = "amore_chi_z"
KAPPA_PARAM = "amore_chi_kappa"
#: Name of the χ collective variable inside the TorchForce restraint's CustomCVForce.
CV_NAME = "amore_chi"


def existing_file(model: str | os.PathLike) -> Path:
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"χ TorchScript file {path} does not exist; write it with "
                                "ChiModel.export_torchscript(path)")
    return path


def load_chi_module(model: ModelLike) -> torch.jit.ScriptModule:
    """A TorchScript χ module (positions (n, 3) nm → 0-dim float64 χ) from a ChiModel, a
    ScriptModule, or the path of a file written by ``ChiModel.export_torchscript``."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if isinstance(model, (str, os.PathLike)):
        return torch.jit.load(str(existing_file(model)), map_location="cpu")
    if hasattr(model, "scripted"):
        return model.scripted()
    raise TypeError(f"model must be a ChiModel, a TorchScript module or a file path, got "
                    f"{type(model).__name__}")


def chi_module_bytes(model: ModelLike) -> bytes:
    """The TorchScript χ as the bytes of a ``torch.jit.save`` file (a file's own bytes for a
    path), so a force can carry the model inside a pickle or an XML System."""
    if isinstance(model, (str, os.PathLike)):
        return existing_file(model).read_bytes()
    buf = io.BytesIO()
    torch.jit.save(load_chi_module(model), buf)
    return buf.getvalue()


def evaluate_chi(module: Any, positions: np.ndarray, gradient: bool = True
                 ) -> tuple[float, np.ndarray | None]:
    """χ and ∇χ (nm⁻¹, same shape as ``positions``) of one structure (n, 3) nm, in float64.

    This is what OpenMM computes through either backend; a χ that does not depend on the
    positions has a zero gradient.
    """
    x = torch.as_tensor(np.ascontiguousarray(positions, dtype=np.float64))
    if not gradient:
        with torch.no_grad():
            return float(module(x).reshape(())), None
    x.requires_grad_(True)
    with torch.enable_grad():
        c = module(x).reshape(())
        if not c.requires_grad:
            return float(c.detach()), np.zeros(x.shape)
        (g,) = torch.autograd.grad(c, x, allow_unused=True)
    grad = np.zeros(x.shape) if g is None else g.detach().numpy()
    return float(c.detach()), grad


def as_float(value: Any, unit_: Any, name: str) -> float:
    """A plain float in ``unit_`` from a number or an ``openmm.unit`` Quantity."""
    if unit.is_quantity(value):
        if not value.unit.is_compatible(unit_):
            raise ValueError(f"{name} must be in units compatible with {unit_}, got {value}")
        return float(value.value_in_unit(unit_))
    return float(value)


def kj(value: Any) -> float:
    """kJ/mol from a number or an energy Quantity."""
    return as_float(value, unit.kilojoule_per_mole, "kappa")


class ChiRestraintBase:
    """The interface every backend's restraint 0.5·κ·(χ − z)² offers (see ChiRestraintForce)."""

    Z_PARAM = Z_PARAM
    KAPPA_PARAM = KAPPA_PARAM
    CV_NAME = CV_NAME
    backend = ""

    @classmethod
    def set(cls, context: openmm.Context, z: float | None = None, kappa: Any = None) -> None:
        """Set the restraint centre and/or stiffness (kJ/mol) of ``context``."""
        if z is not None:
            context.setParameter(Z_PARAM, float(z))
        if kappa is not None:
            context.setParameter(KAPPA_PARAM, kj(kappa))

    def chi(self, context: openmm.Context) -> float:  # pragma: no cover - overridden
        """χ at the Context's current positions (this force must be in its System)."""
        raise NotImplementedError
