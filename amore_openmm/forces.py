"""Stage 3c — χ inside OpenMM (the only module that imports ``openmmtorch``).

* :func:`chi_force` — the χ collective variable, an ``openmmtorch.TorchForce`` whose energy is χ.
* :class:`ChiRestraintForce` — a ``CustomCVForce`` with energy 0.5·κ·(χ − z)²; z and κ are global
  parameters (:attr:`ChiRestraintForce.Z_PARAM`, :attr:`ChiRestraintForce.KAPPA_PARAM`) changed
  with ``Context.setParameter`` without rebuilding the Context.
* :class:`ChiReporter` — logs step, time, χ (and ‖∇χ‖) of a running ``openmm.app.Simulation``,
  in the style of ``StateDataReporter``; it evaluates χ with torch from the reported positions,
  so the simulated System needs no TorchForce.

Keeping every ``openmmtorch`` use here lets a second backend (e.g. a Python-callback force)
replace ``TorchForce`` later without touching the rest of the package.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch  # must be imported before openmmtorch
import openmm
from openmm import unit

try:  # the plugin's Python wrapper still imports the deprecated ``simtk`` name
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import openmmtorch
except ImportError as exc:  # pragma: no cover - exercised only without the plugin
    openmmtorch = None
    _IMPORT_ERROR: Exception | None = exc
else:
    _IMPORT_ERROR = None

__all__ = ["chi_force", "ChiRestraintForce", "ChiReporter", "load_chi_module", "chi_from_context"]

ModelLike = Any  # ChiModel | torch.jit.ScriptModule | str | os.PathLike


def _require_plugin() -> None:
    if openmmtorch is None:
        raise ImportError(
            "openmmtorch is not installed, so χ cannot run inside OpenMM. Install "
            "'acellera-openmmtorch-cpu==1.10' (CPU) or 'acellera-openmmtorch-cu13==1.10' (CUDA) "
            f"with openmm>=8.4,<8.6 (import error: {_IMPORT_ERROR})")


def load_chi_module(model: ModelLike) -> torch.jit.ScriptModule:
    """A TorchScript χ module (positions (n, 3) nm → 0-dim float64 χ) from a ChiModel, a
    ScriptModule, or the path of a file written by ``ChiModel.export_torchscript``."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"χ TorchScript file {path} does not exist; write it with "
                                    "ChiModel.export_torchscript(path)")
        return torch.jit.load(str(path), map_location="cpu")
    if hasattr(model, "scripted"):
        return model.scripted()
    raise TypeError(f"model must be a ChiModel, a TorchScript module or a file path, got "
                    f"{type(model).__name__}")


def chi_force(model: ModelLike, force_group: int | None = None) -> "openmmtorch.TorchForce":
    """The χ collective variable as an ``openmmtorch.TorchForce`` (its energy is χ).

    Args:
        model: a :class:`~amore_openmm.chi.ChiModel`, a TorchScript module, or the path of a
            file written by ``ChiModel.export_torchscript``. A path is passed to TorchForce as
            a file so the force serialises with the file's name.
        force_group: optional force group (e.g. to read −∇χ with ``getState(groups={g})``).

    Adding the returned force to a System directly would add χ (in kJ/mol) to the energy;
    normally it is a collective variable of a ``CustomCVForce`` (see :class:`ChiRestraintForce`).
    """
    _require_plugin()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"χ TorchScript file {path} does not exist; write it with "
                                    "ChiModel.export_torchscript(path)")
        force = openmmtorch.TorchForce(str(path))
    else:
        force = openmmtorch.TorchForce(load_chi_module(model))
    force.setUsesPeriodicBoundaryConditions(False)
    force.setOutputsForces(False)
    force.setName("AmoreChi")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return force


def _kj(value: Any) -> float:
    if unit.is_quantity(value):
        return float(value.value_in_unit(unit.kilojoule_per_mole))
    return float(value)


class ChiRestraintForce(openmm.CustomCVForce):
    """Harmonic restraint on χ: E = 0.5·κ·(χ − z)² (kJ/mol), χ from :func:`chi_force`.

    Args:
        model: ChiModel, TorchScript module or exported file path.
        z: restraint centre (dimensionless χ value).
        kappa: stiffness in kJ/mol (χ is dimensionless); a Quantity in energy units is accepted.
        force_group: optional force group of the restraint.

    Change the centre and stiffness of a live Context with
    ``context.setParameter(ChiRestraintForce.Z_PARAM, z)`` (or :meth:`set`), no rebuild needed.
    The parameter names carry an ``amore_`` prefix so they cannot collide with a user's own.
    """

    Z_PARAM = "amore_chi_z"
    KAPPA_PARAM = "amore_chi_kappa"
    CV_NAME = "amore_chi"

    def __init__(self, model: ModelLike, z: float = 0.5, kappa: Any = 1e5,
                 force_group: int | None = None) -> None:
        _require_plugin()
        super().__init__(f"0.5*{self.KAPPA_PARAM}*({self.CV_NAME}-{self.Z_PARAM})^2")
        self.addGlobalParameter(self.Z_PARAM, float(z))
        self.addGlobalParameter(self.KAPPA_PARAM, _kj(kappa))
        self.addCollectiveVariable(self.CV_NAME, chi_force(model))
        self.setName("AmoreChiRestraint")
        if force_group is not None:
            self.setForceGroup(int(force_group))

    @classmethod
    def set(cls, context: openmm.Context, z: float | None = None, kappa: Any = None) -> None:
        """Set the restraint centre and/or stiffness of ``context``."""
        if z is not None:
            context.setParameter(cls.Z_PARAM, float(z))
        if kappa is not None:
            context.setParameter(cls.KAPPA_PARAM, _kj(kappa))

    def chi(self, context: openmm.Context) -> float:
        """χ at the Context's current positions (this force must be in the Context's System)."""
        return float(self.getCollectiveVariableValues(context)[0])


def chi_from_context(context: openmm.Context, force: openmm.CustomCVForce, index: int = 0
                     ) -> float:
    """χ read through OpenMM: the value of collective variable ``index`` of ``force``."""
    return float(force.getCollectiveVariableValues(context)[index])


class ChiReporter:
    """Reporter for ``openmm.app.Simulation`` writing step, time (ps), χ and optionally ‖∇χ‖.

    Args:
        file: a file name (opened for writing, closed by :meth:`close`) or a text stream.
        reportInterval: steps between reports.
        model: ChiModel, TorchScript χ module, or exported file path.
        gradient_norm: also write ‖∇χ‖ (nm⁻¹), by autograd.
        separator: column separator (as in ``StateDataReporter``).

    χ is evaluated from the reported (unwrapped) positions with torch in float64, so it
    matches the exported TorchForce and the System needs no χ force. The values reported are
    also kept in :attr:`values` as (step, time, χ[, ‖∇χ‖]) tuples.
    """

    def __init__(self, file: str | os.PathLike | TextIO, reportInterval: int, model: ModelLike,
                 gradient_norm: bool = False, separator: str = ",") -> None:
        if int(reportInterval) < 1:
            raise ValueError(f"reportInterval must be >= 1, got {reportInterval}")
        self._interval = int(reportInterval)
        self._module = load_chi_module(model)
        self._grad = bool(gradient_norm)
        self._sep = separator
        self._own = isinstance(file, (str, os.PathLike))
        self._out: TextIO = open(file, "w", encoding="utf-8") if self._own else file  # noqa: SIM115
        self._header_written = False
        self.values: list[tuple[float, ...]] = []

    def describeNextReport(self, simulation: Any) -> dict[str, Any]:
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": False, "include": ["positions"]}

    def _evaluate(self, positions: np.ndarray) -> tuple[float, float | None]:
        x = torch.as_tensor(positions, dtype=torch.float64)
        if not self._grad:
            with torch.no_grad():
                return float(self._module(x)), None
        x.requires_grad_(True)
        with torch.enable_grad():
            c = self._module(x)
            (g,) = torch.autograd.grad(c, x)
        return float(c.detach()), float(torch.linalg.norm(g))

    def report(self, simulation: Any, state: openmm.State) -> None:
        if not self._header_written:
            cols = ['"Step"', '"Time (ps)"', '"Chi"'] + (['"|grad Chi| (1/nm)"'] if self._grad
                                                          else [])
            self._out.write("#" + self._sep.join(cols) + "\n")
            self._header_written = True
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        chi, gnorm = self._evaluate(np.asarray(pos))
        step = int(simulation.currentStep)
        time = state.getTime().value_in_unit(unit.picosecond)
        row: tuple[float, ...] = (step, time, chi) + ((gnorm,) if self._grad else ())
        self.values.append(row)
        fields = [str(step), f"{time:.6g}", f"{chi:.8g}"] + \
            ([f"{gnorm:.6g}"] if self._grad else [])
        self._out.write(self._sep.join(fields) + "\n")
        if hasattr(self._out, "flush"):
            self._out.flush()

    def close(self) -> None:
        """Close the file if this reporter opened it."""
        if self._own and not self._out.closed:
            self._out.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
