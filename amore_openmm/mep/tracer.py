"""LevelSetTracer: one OpenMM Context (System copy + χ restraint) and the per-node work.

``relax(x, z, kappa)`` minimises the energy on the level set χ = z from x and returns a
:class:`LevelSetNode` with everything its certificate needs (see :mod:`.certify`).

Choosing κ. At the restrained minimum the restraint balances the physical force along ∇χ:
``κ·|χ − z|·‖∇χ‖ ≈ |F·∇χ|/‖∇χ‖``, so holding ``|χ − z| ≤ δ`` needs
``κ ≳ |F·∇χ| / (δ·‖∇χ‖²)``. With ``kappa=None`` a node starts from that estimate (F: the
physical force at the start positions, δ = ``chi_tolerance``/2, never below ``kappa_min``),
checks ``|χ − z|`` after minimising and, while it exceeds ``chi_tolerance``, raises κ by
``max(10, 4·|χ − z|/δ)`` and minimises again (up to ``kappa_max``). Measured: on Müller–Brown
κ = 1e4 lets the minimiser slide back in χ while ~1e7 holds; on alanine dipeptide ~1e5 holds
χ to 1e-3. A node whose minimiser did not converge is minimised once more from where it
stopped with ``retry_factor`` times the iteration limit.

χ and ∇χ come from the model (``ChiModel.chi_and_grad``, autograd); inside the Context χ is
the exported TorchScript copy of the same model (float64).
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import openmm
from openmm import unit

from ..settings import MEPSettings
from ..systems import MolecularSystem, get_platform
from .certify import CERTIFICATE, Certificate, ConstraintProjector, orthogonal_force_rms, rms

__all__ = ["LevelSetTracer", "LevelSetNode", "RelaxSettings", "as_chi_model", "TOLERANCE"]

KJ = unit.kilojoule_per_mole
KJ_NM = unit.kilojoule_per_mole / unit.nanometer
#: TorchScript compilation is not thread-safe
SCRIPT_LOCK = threading.Lock()
#: minimiser tolerance (RMS force, kJ/mol/nm) of χ-MEP nodes of systems without solvent
TOLERANCE = 1.0
_MEP = MEPSettings()  # the defaults of the χ-MEP knobs


def as_chi_model(model: Any):
    """A :class:`~amore_openmm.chi.ChiModel` from a ChiModel or the path of a file written by
    ``ChiModel.save`` or ``ChiModel.export_torchscript`` (the one source of χ and ∇χ)."""
    from ..chi import ChiModel
    if isinstance(model, ChiModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return ChiModel.load(model)
    raise TypeError(f"model must be a ChiModel or the path of a saved/exported ChiModel "
                    f"file, got {type(model).__name__}")


@dataclass(frozen=True)
class RelaxSettings:
    """How :meth:`LevelSetTracer.relax` minimises (see the module docstring).

    tolerance (kJ/mol/nm, RMS) and max_iterations go to ``LocalEnergyMinimizer.minimize``;
    chi_tolerance is the |χ − z| the κ controller aims at (default: the certificate's);
    retry_factor multiplies max_iterations for the one retry of a non-converged node.
    """

    tolerance: float = TOLERANCE
    max_iterations: int = _MEP.max_iterations
    chi_tolerance: float = CERTIFICATE.chi_error
    kappa_min: float = _MEP.kappa_min
    kappa_max: float = _MEP.kappa_max
    retry_factor: int = _MEP.retry_factor
    certificate: Certificate = CERTIFICATE


@dataclass
class LevelSetNode:
    """One level-set minimum and its measurements (energies kJ/mol, forces kJ/mol/nm).

    ``iterations`` counts the minimiser's energy/force evaluations for this node over all κ
    and retries (L-BFGS iterations plus line-search evaluations, so ≥ the iterations;
    -1 when not counted); ``orth_force`` is an RMS per force component.
    """

    x: np.ndarray
    chi: float
    energy: float
    grad: np.ndarray
    z: float
    kappa: float
    iterations: int
    converged: bool
    orth_force: float
    local_ok: bool = False

    @property
    def level_error(self) -> float:
        return abs(self.chi - self.z)


class _EvaluationCounter:
    """Counts energy/force evaluations of a Context: an ``openmm.PythonForce`` with zero
    energy and force in the restraint's group.

    Why not ``openmm.MinimizationReporter`` (which would give L-BFGS iterations): passing a
    Python reporter to ``LocalEnergyMinimizer.minimize`` keeps the GIL held during
    minimisation, and the TorchForce's autograd then aborts ("autograd engine was called while
    holding the GIL"; openmm 8.5.2, openmm-torch 1.10). Evaluations are what a node costs.
    """

    def __init__(self, n_atoms: int) -> None:
        self.count = 0
        self._zeros = np.zeros((n_atoms, 3))

    def __call__(self, state: Any) -> tuple[float, np.ndarray]:  # noqa: ARG002
        self.count += 1
        return 0.0, self._zeros

    def force(self, group: int) -> openmm.Force:
        f = openmm.PythonForce(self)
        f.setForceGroup(group)
        f.setName("AmoreEvaluationCounter")
        return f


def free_force_group(system: openmm.System) -> int | None:
    used = {system.getForce(i).getForceGroup() for i in range(system.getNumForces())}
    free = [g for g in range(31, -1, -1) if g not in used]
    return free[0] if free else None


class LevelSetTracer:
    """One Context (a copy of the physical System + χ restraint 0.5·κ·(χ − z)² in its own
    force group) and the per-node operations of the χ-MEP.

    Args:
        system: the MolecularSystem (its System is cloned, never modified).
        model: a ChiModel or the path of a saved/exported one.
        platform, properties: OpenMM platform of the Context.
        settings: :class:`RelaxSettings` (may be replaced later: ``tracer.settings = ...``).
        scripted: an already compiled TorchScript χ (shared by the threads of
            :func:`~amore_openmm.mep.trace_chi_meps`).
        count_evaluations: count the minimiser's energy/force evaluations per node (on the
            Reference and CPU platforms only; elsewhere nodes report -1).

    Public attributes: ``context``, ``restraint_group`` (force group of the restraint),
    ``physical_groups`` (bit mask of all other groups), ``kT`` (kJ/mol), ``n_atoms``.
    """

    def __init__(self, system: MolecularSystem, model: Any, platform: str = "Reference",
                 properties: dict | None = None, settings: RelaxSettings | None = None,
                 scripted: Any = None, count_evaluations: bool = True):
        from .. import forces  # imported here: forces pulls in openmmtorch
        if not isinstance(system, MolecularSystem):
            raise TypeError(f"system must be a MolecularSystem (load_system(...)), got "
                            f"{type(system).__name__}")
        self.model = as_chi_model(model)
        self.settings = settings or RelaxSettings()
        self.n_atoms = system.n_atoms
        self.kT = float(system.kT)
        omm = openmm.XmlSerializer.clone(system.system)  # never modify the user's System
        group = free_force_group(omm)
        if group is None:
            raise ValueError("all 32 force groups of the System are in use; free one so the "
                             "χ restraint can be evaluated separately")
        with SCRIPT_LOCK:
            source = scripted if scripted is not None else (
                model if isinstance(model, (str, os.PathLike)) else self.model)
            restraint = forces.ChiRestraintForce(source, 0.5, 1.0)
        restraint.setForceGroup(group)
        omm.addForce(restraint)
        # counting costs a host round trip per evaluation on a GPU: CPU platforms only
        self._counter = _EvaluationCounter(omm.getNumParticles()) \
            if count_evaluations and platform in ("Reference", "CPU") else None
        if self._counter is not None:
            omm.addForce(self._counter.force(group))
        self.restraint_group = group
        self.physical_groups = sum(1 << g for g in range(32) if g != group)
        self._z, self._k = forces.ChiRestraintForce.Z_PARAM, forces.ChiRestraintForce.KAPPA_PARAM
        self.context = openmm.Context(omm, openmm.VerletIntegrator(0.001),
                                      get_platform(platform),
                                      properties or {})
        self.projector = ConstraintProjector.from_system(omm)
        self.has_constraints = omm.getNumConstraints() > 0

    # -- state access ------------------------------------------------------------------------
    def set_positions(self, x: np.ndarray) -> np.ndarray:
        """Set positions (constraints applied) and return them."""
        self.context.setPositions(x)
        if self.has_constraints:
            self.context.applyConstraints(1e-6)
        return self.positions()

    def positions(self) -> np.ndarray:
        return self.context.getState(getPositions=True).getPositions(asNumpy=True) \
            .value_in_unit(unit.nanometer)

    def physical(self) -> tuple[float, np.ndarray]:
        """(energy kJ/mol, force (n, 3) kJ/mol/nm) of the physical System (no restraint)."""
        st = self.context.getState(getEnergy=True, getForces=True,
                                   groups=self.physical_groups)
        return (st.getPotentialEnergy().value_in_unit(KJ),
                st.getForces(asNumpy=True).value_in_unit(KJ_NM))

    def total_force(self) -> np.ndarray:
        """Force of energy + restraint (what the minimiser minimises), kJ/mol/nm."""
        st = self.context.getState(getForces=True)
        return st.getForces(asNumpy=True).value_in_unit(KJ_NM)

    def chi_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """χ and ∇χ (n, 3) nm⁻¹ at x, from the model."""
        chi, g = self.model.chi_and_grad(np.asarray(x)[None])
        return float(chi[0]), g[0]

    def minimize(self, z: float, kappa: float, tolerance: float, max_iterations: int) -> int:
        """``LocalEnergyMinimizer.minimize`` on the level set z with stiffness κ; returns the
        number of energy/force evaluations it made (0 when not counted)."""
        self.context.setParameter(self._z, z)
        self.context.setParameter(self._k, kappa)
        before = self._counter.count if self._counter is not None else 0
        openmm.LocalEnergyMinimizer.minimize(self.context, tolerance, max_iterations)
        return self._counter.count - before if self._counter is not None else 0

    # -- one node ----------------------------------------------------------------------------
    def initial_kappa(self, x: np.ndarray) -> float:
        """κ estimate |F·∇χ|/(δ‖∇χ‖²) at x, clipped to [kappa_min, kappa_max]."""
        s = self.settings
        _, f = self.physical()
        _, g = self.chi_grad(x)
        g2 = float((g * g).sum())
        k = abs(float((f * g).sum())) / (0.5 * s.chi_tolerance * g2) if g2 > 0 else s.kappa_min
        return float(np.clip(k, s.kappa_min, s.kappa_max)) if math.isfinite(k) else s.kappa_max

    def measure(self, z: float, kappa: float, iterations: int) -> LevelSetNode:
        """Measure the node at the Context's current positions (minimised on level z)."""
        s = self.settings
        x = self.positions()
        e, f = self.physical()
        chi, g = self.chi_grad(x)
        total = rms(self.projector(x, self.total_force()[None])[0])
        converged = total <= s.tolerance * (1 + 1e-9)
        finite = math.isfinite(e) and math.isfinite(chi) and bool(np.all(np.isfinite(g)))
        orth = orthogonal_force_rms(f, g, x, self.projector) if finite else math.nan
        if self._counter is None:
            iterations = -1
        node = LevelSetNode(x, chi, e, g, z, kappa, iterations, bool(converged), orth)
        node.local_ok = s.certificate.local_ok(node.level_error, total, orth,
                                               e if finite else math.nan, s.tolerance)
        return node

    def relax(self, x: np.ndarray, z: float, kappa: float | None = None) -> LevelSetNode:
        """Minimise on the level set χ = z from x.

        ``kappa=None`` chooses κ and raises it until |χ − z| ≤ ``settings.chi_tolerance``
        (or ``kappa_max``); a number fixes κ. A node whose minimiser did not converge is
        minimised once more with ``retry_factor``·max_iterations. The returned node says
        whether it passes the certificate's local tests (``local_ok``).
        """
        s = self.settings
        x = self.set_positions(x)
        adaptive = kappa is None
        k = self.initial_kappa(x) if adaptive else float(kappa)
        iterations = 0
        while True:
            iterations += self.minimize(z, k, s.tolerance, s.max_iterations)
            node = self.measure(z, k, iterations)
            err = node.level_error
            if err <= s.chi_tolerance or not adaptive or k >= s.kappa_max or \
                    not math.isfinite(err):
                break
            k = min(s.kappa_max, k * max(10.0, 4.0 * err / (0.5 * s.chi_tolerance)))
        if not node.converged and math.isfinite(node.energy):
            iterations += self.minimize(z, k, s.tolerance, s.max_iterations * s.retry_factor)
            node = self.measure(z, k, iterations)
        return node

    def with_settings(self, **changes: Any) -> RelaxSettings:
        """Replace some settings (returns the new :class:`RelaxSettings`)."""
        self.settings = replace(self.settings, **changes)
        return self.settings
