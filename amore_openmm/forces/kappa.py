"""The κ rule for restrained MD: a ChiRestraintForce stiffness that holds χ and stays stable.

Near the level set the restraint 0.5·κ·(χ − z)² has the Cartesian Hessian κ·∇χ∇χᵀ (rank
one). In mass-weighted coordinates its one non-zero eigenvalue is

    ω² = κ · Σ_i ‖∇_iχ‖² / m_i            (≤ κ‖∇χ‖²/m_min),

so the restraint adds a vibration of period T = 2π/ω. Two bounds follow:

* stability/accuracy of the integrator: T ≥ ``steps_per_period`` · Δt, i.e.
  κ ≤ κ_max = (2π / (steps_per_period·Δt))² / max_x Σ_i ‖∇_iχ(x)‖²/m_i, the maximum taken
  over the given positions (the structures the MD will visit). Verlet-type integrators are
  stable for ω·Δt < 2 (T > π·Δt); the default 5 steps per period (ω·Δt = 1.26) keeps a margin
  of 1.6 at the stiffest of the given structures;
* holding the level set: in the stiff limit χ fluctuates thermally with standard deviation
  sqrt(kT/κ), so sqrt(kT/κ) ≤ ``chi_tolerance`` needs κ ≥ κ_min = kT/chi_tolerance² (default
  0.02: a fiftieth of χ's range).

:func:`md_kappa` returns the geometric mean of the window [κ_min, κ_max] (the same safety
factor on both sides). When κ_min > κ_max no κ does both at this timestep: it raises
:class:`KappaWindowError` (or warns and returns κ_max) naming the longest timestep that
would work, Δt_max = 2π / (steps_per_period · sqrt(κ_min · max Σ‖∇_iχ‖²/m_i)), and the
tightest tolerance reachable at this timestep, sqrt(kT/κ_max).

Measured (bundled alanine dipeptide, 310 K, Langevin 2 fs, Reference): with a χ of
‖∇χ‖ ≈ 4 nm⁻¹ the window is [2.6e4, 6.8e5]; κ = 1.3e5 from this rule held χ at z with
std 0.003 (sqrt(kT/κ) = 0.0044), while 10·κ_max (3 steps per period, the Verlet limit) ran
the potential energy up to ~1e9 kJ/mol within 1000 steps (tests/test_forces.py). Issue 10
reports the README's κ = 1e5 not holding χ with a trained χ while κ = 3e4 held it to 0.009,
which is sqrt(kT/3e4): that χ's κ_max lay below 1e5. For the README example's trained χ
(2,000 frames) the window at ±0.01 and 10 steps per period is empty ([2.6e4, 5.8e3]: its
stiffest frame has Σ‖∇ᵢχ‖²/mᵢ four times the typical one); at the defaults ±0.02 and 5 steps
it is [6.4e3, 2.3e4].
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import openmm
from openmm import unit

from .common import ModelLike, as_float, evaluate_chi, load_chi_module

#: Molar gas constant in kJ/(mol·K) (OpenMM's value).
BOLTZ = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
#: Mass used for every atom when none are given: hydrogen, the lightest, so ω is bounded above.
HYDROGEN_MASS = 1.008


class KappaWindowError(ValueError):
    """No restraint stiffness both holds χ and keeps the MD stable at this timestep."""


@dataclass(frozen=True)
class KappaWindow:
    """The κ window of :func:`md_kappa` (kJ/mol; χ is dimensionless).

    ``kappa`` is the geometric mean of [kappa_min, kappa_max] (NaN when the window is
    empty); ``max_timestep`` (ps) is the longest step with a non-empty window;
    ``best_tolerance`` the smallest thermal std of χ reachable at this timestep;
    ``curvature`` max over positions of Σ_i ‖∇_iχ‖²/m_i (nm⁻² amu⁻¹).
    """

    kappa_min: float
    kappa_max: float
    kappa: float
    max_timestep: float
    best_tolerance: float
    curvature: float
    kT: float

    @property
    def empty(self) -> bool:
        return not self.kappa_min <= self.kappa_max


def _masses(masses: Any, n: int) -> np.ndarray:
    if masses is None:
        return np.full(n, HYDROGEN_MASS)
    system = getattr(masses, "system", masses)
    if isinstance(system, openmm.System):
        m = np.array([system.getParticleMass(i).value_in_unit(unit.dalton)
                      for i in range(system.getNumParticles())])
    else:
        m = np.asarray(masses, dtype=np.float64).reshape(-1)
    if m.shape[0] < n:
        raise ValueError(f"masses: {m.shape[0]} masses for positions of {n} atoms; pass one "
                         "mass (amu) per atom, an openmm.System or a MolecularSystem")
    return m[:n]


def _positions(positions: Any) -> np.ndarray:
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"positions must be (n, 3) or (S, n, 3) in nm, got {x.shape}")
    return x


def kappa_window(model: ModelLike, positions: Any, temperature: Any, timestep: Any,
                 masses: Any = None, chi_tolerance: float = 0.02,
                 steps_per_period: float = 5.0) -> KappaWindow:
    """The κ window for restrained MD (see the module docstring for the physics).

    Args:
        model: ChiModel, TorchScript χ module or exported file path.
        positions: (n, 3) or (S, n, 3) nm: structures representative of the restrained MD
            (e.g. the start structure(s) on the level set).
        temperature: K (or a Quantity). timestep: ps (or a Quantity).
        masses: per-atom masses (amu), an ``openmm.System`` or a MolecularSystem; None uses
            the hydrogen mass for every atom (a conservative bound).
        chi_tolerance: wanted thermal standard deviation of χ about z.
        steps_per_period: timesteps per period of the restraint's vibration (Verlet-type
            integrators are unstable below π; default 5).
    """
    temp = as_float(temperature, unit.kelvin, "temperature")
    dt = as_float(timestep, unit.picosecond, "timestep")
    if not (temp > 0 and dt > 0 and chi_tolerance > 0 and steps_per_period > 0):
        raise ValueError(f"temperature ({temp} K), timestep ({dt} ps), chi_tolerance "
                         f"({chi_tolerance}) and steps_per_period ({steps_per_period}) must "
                         "be positive")
    x = _positions(positions)
    inv_m = 1.0 / _masses(masses, x.shape[1])
    inv_m[~np.isfinite(inv_m)] = 0.0   # massless (virtual) sites do not vibrate
    module = load_chi_module(model)
    curv = 0.0
    for xi in x:
        _, g = evaluate_chi(module, xi)
        curv = max(curv, float(((g * g).sum(axis=1) * inv_m).sum()))
    if not (curv > 0 and math.isfinite(curv)):
        raise ValueError("∇χ is zero or not finite at the given positions: no restraint "
                         "stiffness can be derived; check the model and positions")
    kT = BOLTZ * temp
    omega_max = 2.0 * math.pi / (steps_per_period * dt)
    k_min = kT / chi_tolerance ** 2
    k_max = omega_max ** 2 / curv
    kappa = math.sqrt(k_min * k_max) if k_min <= k_max else float("nan")
    return KappaWindow(kappa_min=k_min, kappa_max=k_max, kappa=kappa,
                       max_timestep=2.0 * math.pi / (steps_per_period * math.sqrt(k_min * curv)),
                       best_tolerance=math.sqrt(kT / k_max), curvature=curv, kT=kT)


def md_kappa(model: ModelLike, positions: Any, temperature: Any, timestep: Any,
             masses: Any = None, chi_tolerance: float = 0.02, steps_per_period: float = 5.0,
             on_empty: str = "raise") -> float:
    """κ (kJ/mol) for ``ChiRestraintForce`` in MD: the geometric mean of the window
    [kT/chi_tolerance², (2π/(steps_per_period·Δt))²/max Σ_i‖∇_iχ‖²/m_i] of
    :func:`kappa_window` (same arguments).

    With an empty window ``on_empty="raise"`` raises :class:`KappaWindowError` naming the
    timestep and the tolerance that would work; ``on_empty="warn"`` warns and returns the
    stiffest stable κ (κ_max), which holds χ only to ``best_tolerance``.
    """
    if on_empty not in ("raise", "warn"):
        raise ValueError(f"on_empty must be 'raise' or 'warn', got {on_empty!r}")
    w = kappa_window(model, positions, temperature, timestep, masses, chi_tolerance,
                     steps_per_period)
    if not w.empty:
        return w.kappa
    dt = as_float(timestep, unit.picosecond, "timestep")
    msg = (f"no restraint stiffness holds χ to ±{chi_tolerance:g} at timestep {dt:g} ps: "
           f"holding needs κ ≥ {w.kappa_min:.3g} kJ/mol, stability ({steps_per_period:g} steps "
           f"per restraint period) needs κ ≤ {w.kappa_max:.3g}. Use a timestep ≤ "
           f"{w.max_timestep:.3g} ps, or chi_tolerance ≥ {w.best_tolerance:.3g}")
    if on_empty == "raise":
        raise KappaWindowError(msg)
    warnings.warn(msg + f"; using κ = κ_max = {w.kappa_max:.3g}", RuntimeWarning, stacklevel=2)
    return w.kappa_max
