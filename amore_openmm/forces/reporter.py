"""ChiReporter: χ (and ‖∇χ‖) of a running ``openmm.app.Simulation``."""
from __future__ import annotations

import os
from typing import Any, TextIO

import numpy as np
import openmm
from openmm import unit

from .backend import resolve_backend
from .common import ModelLike, evaluate_chi, load_chi_module


class ChiReporter:
    """Reporter for ``openmm.app.Simulation`` writing step, time (ps), χ and optionally ‖∇χ‖.

    Args:
        file: a file name (opened for writing, closed by :meth:`close`) or a text stream.
        reportInterval: steps between reports.
        model: ChiModel, TorchScript χ module, or exported file path.
        gradient_norm: also write ‖∇χ‖ (nm⁻¹), by autograd.
        separator: column separator (as in ``StateDataReporter``).
        backend: "auto", "torchforce" or "pythonforce", checked like the force factories'
            and kept in :attr:`backend`. The reporter needs no OpenMM force: on either backend
            it evaluates the same TorchScript χ with torch in float64 from the reported
            (unwrapped) positions, which is what both backends' forces compute, so the
            simulated System needs no χ force and the values are the same to round-off.

    The values reported are also kept in :attr:`values` as (step, time, χ[, ‖∇χ‖]) tuples.
    """

    def __init__(self, file: str | os.PathLike | TextIO, reportInterval: int, model: ModelLike,
                 gradient_norm: bool = False, separator: str = ",", backend: str = "auto"
                 ) -> None:
        if int(reportInterval) < 1:
            raise ValueError(f"reportInterval must be >= 1, got {reportInterval}")
        self.backend, _ = resolve_backend(backend)
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

    def report(self, simulation: Any, state: openmm.State) -> None:
        if not self._header_written:
            cols = ['"Step"', '"Time (ps)"', '"Chi"'] + (['"|grad Chi| (1/nm)"'] if self._grad
                                                          else [])
            self._out.write("#" + self._sep.join(cols) + "\n")
            self._header_written = True
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        chi, grad = evaluate_chi(self._module, np.asarray(pos), gradient=self._grad)
        step = int(simulation.currentStep)
        time = state.getTime().value_in_unit(unit.picosecond)
        gnorm = float(np.linalg.norm(grad)) if grad is not None else None
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
