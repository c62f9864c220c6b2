"""What every χ backend shares: loading the TorchScript χ, evaluating χ and ∇χ with torch,
the restraint's global parameter names, and the restraint's common interface.

Nothing here imports ``openmmtorch``.
"""
from __future__ import annotations

import functools
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import openmm
from openmm import unit

ModelLike = Any  # ChiModel | torch.jit.ScriptModule | str | os.PathLike

#: Default prefix of the χ restraint's global parameters (``<prefix>_z``, ``<prefix>_kappa``),
#: identical on every backend; the ``amore_`` part keeps them from colliding with a user's own
#: global parameters. Two χ restraints in one System need two prefixes.
DEFAULT_PREFIX = "amore_chi"
Z_PARAM = f"{DEFAULT_PREFIX}_z"
KAPPA_PARAM = f"{DEFAULT_PREFIX}_kappa"
#: Name of the χ collective variable inside the TorchForce restraint's CustomCVForce.
CV_NAME = "amore_chi"


def parameter_names(prefix: str) -> tuple[str, str]:
    """The restraint's global parameter names (z, κ) for ``prefix``; checks the prefix."""
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ValueError(f"prefix must be an identifier (letters, digits, '_'; e.g. "
                         f"'{DEFAULT_PREFIX}' or 'amore_chi2'), got {prefix!r}")
    return f"{prefix}_z", f"{prefix}_kappa"


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


class _ClassOrInstanceMethod:
    """A method bound to the instance when called on one, else to the class (so
    ``ChiRestraintForce.set(ctx, ...)`` sets the default parameters and ``force.set(ctx, ...)``
    the force's own)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj: Any, owner: Any) -> Any:
        return functools.partial(self.func, owner if obj is None else obj)


class ChiRestraintBase:
    """The interface every backend's restraint 0.5·κ·(χ − z)² offers (see ChiRestraintForce)."""

    Z_PARAM = Z_PARAM
    KAPPA_PARAM = KAPPA_PARAM
    CV_NAME = CV_NAME
    backend = ""
    #: this restraint's global parameter names (instances with another prefix override them)
    z_param = Z_PARAM
    kappa_param = KAPPA_PARAM

    @_ClassOrInstanceMethod
    def set(self, context: openmm.Context, z: float | None = None, kappa: Any = None) -> None:
        """Set the restraint centre and/or stiffness (kJ/mol) of ``context``: the default
        parameters when called on the class, this force's own when called on an instance."""
        if z is not None:
            context.setParameter(self.z_param, float(z))
        if kappa is not None:
            context.setParameter(self.kappa_param, kj(kappa))

    @property
    def prefix(self) -> str:
        """The prefix of this restraint's global parameters."""
        return self.z_param[:-len("_z")]

    def _use_prefix(self, prefix: str) -> tuple[str, str]:
        self.z_param, self.kappa_param = parameter_names(prefix)
        return self.z_param, self.kappa_param

    def chi(self, context: openmm.Context) -> float:  # pragma: no cover - overridden
        """χ at the Context's current positions (this force must be in its System)."""
        raise NotImplementedError
