"""Choosing the χ backend: "torchforce" (openmm-torch) or "pythonforce" (openmm.PythonForce).

``backend="auto"`` picks "torchforce" where ``openmmtorch`` imports and OpenMM is older than
8.6 (acellera-openmmtorch 1.10 segfaults with OpenMM 8.6 when a TorchForce is wrapped in a
CustomCVForce or deserialised), else "pythonforce". The environment variable
``AMORE_CHI_BACKEND`` (``torchforce`` or ``pythonforce``) overrides the automatic choice.
:func:`backend_for` also knows the platform and the model: on a CPU platform a ChiModel
with numpy passes runs faster as "pythonforce".
"""
from __future__ import annotations

import importlib.metadata
import os
from typing import Any

import openmm

from . import pythonforce, torchforce

BACKENDS = (torchforce.NAME, pythonforce.NAME)
ENV_VAR = "AMORE_CHI_BACKEND"
#: First OpenMM version the openmm-torch 1.10 wheels do not work with.
TORCHFORCE_OPENMM_LIMIT = (8, 6)


class ChiBackendError(ValueError):
    """An unknown χ backend name, or a backend that cannot run in this environment."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def openmmtorch_version() -> str | None:
    """Version of the installed openmm-torch distribution (None when none is installed)."""
    names = importlib.metadata.packages_distributions().get("openmmtorch", [])
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return None


def torchforce_problem() -> str | None:
    """Why the torchforce backend cannot run here, or None when it can."""
    if openmmtorch_version() is None:   # checked first: the likelier reason, and no import
        return "openmm-torch is not installed"
    if _version_tuple(openmm.__version__)[:2] >= TORCHFORCE_OPENMM_LIMIT:
        return (f"openmm {openmm.__version__} >= 8.6: the openmm-torch 1.10 wheels segfault "
                "with it")
    try:
        torchforce.import_openmmtorch()
    except ImportError as exc:
        return f"openmmtorch is not importable ({exc})"
    return None


def resolve_backend(backend: str = "auto") -> tuple[str, str]:
    """(backend name, reason) for a requested ``backend``: "auto", "torchforce" or
    "pythonforce". Raises :class:`ChiBackendError` for an unknown name or an explicitly
    requested torchforce that cannot run here."""
    requested = str(backend).strip().lower()
    source = f"requested (backend={backend!r})"
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ChiBackendError(f"environment variable {ENV_VAR}={env!r} is not a χ "
                                      f"backend; use one of {', '.join(BACKENDS)} or unset it")
            requested, source = env, f"environment {ENV_VAR}={env}"
        else:
            problem = torchforce_problem()
            if problem is None:
                return torchforce.NAME, "auto: openmmtorch imports and openmm < 8.6"
            requested, source = pythonforce.NAME, f"auto: {problem}"
    if requested == pythonforce.NAME:
        if not hasattr(openmm, "PythonForce"):
            raise ChiBackendError(f"backend 'pythonforce' needs openmm>=8.5 (openmm.PythonForce);"
                                  f" this is openmm {openmm.__version__}: upgrade openmm")
        return requested, source
    if requested == torchforce.NAME:
        problem = torchforce_problem()
        if problem is not None:
            raise ChiBackendError(
                f"backend 'torchforce' ({source}) cannot run: {problem}. Install the extra "
                "(pip install 'amore_openmm[torchforce]', which pins openmm<8.6) or use "
                "backend='pythonforce'")
        return requested, source
    raise ChiBackendError(f"backend must be 'auto', 'torchforce' or 'pythonforce', got "
                          f"{backend!r}")


#: platforms where a PythonForce with the numpy χ passes is faster than TorchForce (alanine
#: dipeptide MD with a χ restraint: 1.6-2.3× the steps/s on Reference, 1.2× on CPU; a
#: 1,288-atom water box: the same)
CPU_PLATFORMS = ("Reference", "CPU")


def backend_for(backend: str, platform: Any, model: Any) -> str:
    """The backend of a χ force of ``model`` on ``platform`` (a name or an openmm.Platform):
    "auto" without ``AMORE_CHI_BACKEND`` is "pythonforce" on a CPU platform when the
    model's χ has numpy passes (:func:`~amore_openmm.forces.pythonforce.numpy_passes`),
    else what :func:`resolve_backend` picks; an explicit name is kept."""
    name = platform.getName() if isinstance(platform, openmm.Platform) else str(platform)
    if (str(backend).strip().lower() == "auto" and not os.environ.get(ENV_VAR, "").strip()
            and name in CPU_PLATFORMS and hasattr(openmm, "PythonForce")
            and pythonforce.numpy_passes(model) is not None):
        return pythonforce.NAME
    return resolve_backend(backend)[0]


def backend_info(backend: str = "auto") -> dict[str, Any]:
    """Which χ backend ``backend`` resolves to here and why (for ``amore info``):
    ``{"name", "reason", "openmm_version", "openmmtorch_version"}`` (the last None when
    openmm-torch is not installed)."""
    name, reason = resolve_backend(backend)
    return {"name": name, "reason": reason, "openmm_version": openmm.__version__,
            "openmmtorch_version": openmmtorch_version()}
