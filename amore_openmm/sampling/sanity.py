"""Burst sanity: which starts may be used and which burst ends are physical.

A Koopman pair is a result only if the burst stayed within what thermal motion can reach in
one lag. The checks, each cheap next to a burst (one energy evaluation per start and per
burst end, a vectorised bond-length check on the end positions):

* **start refused** (no burst is run) when its potential energy is non-finite, or more than
  ``window`` above the *reference energy* ``E_ref``, or when a bond is longer than its limit;
* **burst failed** (retried with a new derived seed, the start dropped after the last retry)
  when its end energy is non-finite, its end energy exceeds its start energy by more than
  ``window``, or a bond at its end is longer than its limit.

Thresholds (physics, stated once here):

* ``E_ref`` is the potential energy of the system's reference structure (its first
  structure, the one every Context is checked with). It is fixed per system, so a start's
  verdict does not depend on the other starts, the chunking or the pool size (the lowest start
  energy of a batch would: chunks see different batches).
* ``window = (f/2 + 10·sqrt(f/2) + margin)·kT`` with ``f`` the degrees of freedom (3 per
  massive particle minus one per constraint, minus 3 for a ``CMMotionRemover``) and
  ``margin = 200`` by default. In the harmonic approximation the potential energy of a
  thermal state lies ``Gamma(f/2)·kT`` above its minimum (mean ``f/2·kT``, s.d.
  ``sqrt(f/2)·kT``), so the first two terms are ten standard deviations above the mean of
  what a burst can pick up from the thermostat; ``margin`` is far above any conformational
  barrier (200 kT ≈ 515 kJ/mol at 310 K; peptide backbone barriers are tens of kJ/mol).
  For alanine dipeptide in vacuum (f = 63) at 310 K the window is ≈ 290 kT ≈ 740 kJ/mol;
  in its TIP3P box (1,288 atoms, 1,278 constraints: f = 2,583) it is ≈ 1,850 kT, while
  thermal frames lie ≈ 800–950 kT above the minimised reference (measured).
  Bursts that blew up (energies of 10³–10⁹ kJ/mol) are far beyond it.
* A bond (every bond of the System's ``HarmonicBondForce`` objects and every constraint) may
  not be longer than ``max(bond_limit, bond_factor·r0)`` with ``bond_limit = 0.25 nm`` and
  ``bond_factor = 1.5``: a covalent bond (0.10–0.20 nm) fluctuates by ~0.004 nm at room
  temperature; 0.25 nm means it is broken. Constrained bonds (HBonds, the O–H and H–H
  distances of rigid water, r0 = 0.096/0.151 nm) are held to r0 by SHAKE/SETTLE and get the
  same limit. Lengths are taken from the raw (unwrapped) coordinates, as OpenMM's bonded forces
  and constraints see them: a molecule split by per-atom wrapping counts as broken (the
  sampler makes the selection's molecules whole before bursting). Systems without such forces
  (Müller–Brown) have no bond check.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import openmm
from openmm import unit

from amore_openmm.systems import BOLTZ

__all__ = ["BurstSanity"]

# reason codes of failed bursts and refused starts (keys of data.extra["drop_counts"])
START_ENERGY = "start_energy"
START_BOND = "start_bond"
ENERGY_JUMP = "energy_jump"
BOND = "bond"
NON_FINITE = "non_finite"
DISPLACEMENT = "displacement"
OPENMM_ERROR = "openmm_error"
GB_CUTOFF = "gb_cutoff"
RECOVERED = "recovered"  # an event, not a failure: the burst succeeded on a retry


@dataclass(frozen=True)
class BurstSanity:
    """Limits of the burst sanity checks (see the module docstring for the physics).

    Attributes:
        enabled: False switches the energy and bond checks off (the NaN/displacement guard
            stays).
        bond_limit: nm, the shortest length at which a bond counts as broken.
        bond_factor: a bond also may reach ``bond_factor·r0`` (long equilibrium bonds).
        energy_margin_kT: the ``margin`` of the energy window, in kT.
    """

    enabled: bool = True
    bond_limit: float = 0.25
    bond_factor: float = 1.5
    energy_margin_kT: float = 200.0

    def __post_init__(self) -> None:
        if not (self.bond_limit > 0 and self.bond_factor >= 1 and self.energy_margin_kT > 0):
            raise ValueError(f"BurstSanity needs bond_limit > 0 nm, bond_factor >= 1 and "
                             f"energy_margin_kT > 0, got {self}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def system_bonds(system: openmm.System) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (b, 2) int, r0 (b,) nm) of every HarmonicBondForce bond and constraint."""
    pairs: dict[tuple[int, int], float] = {}
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for b in range(force.getNumBonds()):
                i, j, r0, _k = force.getBondParameters(b)
                pairs[(min(i, j), max(i, j))] = r0.value_in_unit(unit.nanometer)
    for c in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(c)
        pairs[(min(i, j), max(i, j))] = d.value_in_unit(unit.nanometer)
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    keys = sorted(pairs)
    return np.array(keys, dtype=np.int64), np.array([pairs[k] for k in keys])


def degrees_of_freedom(system: openmm.System) -> int:
    """3 per massive particle, minus one per constraint (HBond constraints, rigid water: 3 per
    water), minus 3 when a ``CMMotionRemover`` holds the centre of mass still."""
    massive = sum(1 for i in range(system.getNumParticles())
                  if system.getParticleMass(i).value_in_unit(unit.dalton) > 0)
    cm = 3 if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()) else 0
    return max(1, 3 * massive - system.getNumConstraints() - cm)


class SanityChecker:
    """The checks of one system (single copy) at one temperature; see the module docstring.

    ``e_ref`` is the reference energy (kJ/mol); a non-finite one disables the start-energy
    check (the jump and bond checks stay).
    """

    def __init__(self, system: openmm.System, temperature: float, limits: BurstSanity,
                 e_ref: float) -> None:
        self.limits = limits
        self.pairs, r0 = system_bonds(system)
        self.bond_max = np.maximum(limits.bond_limit, limits.bond_factor * r0)
        self._i, self._j = self.pairs[:, 0].copy(), self.pairs[:, 1].copy()
        self._max2 = self.bond_max ** 2
        self.kT = BOLTZ * float(temperature)
        half = degrees_of_freedom(system) / 2.0
        self.window = (half + 10.0 * math.sqrt(half) + limits.energy_margin_kT) * self.kT
        self.e_ref = float(e_ref)

    @property
    def enabled(self) -> bool:
        return self.limits.enabled

    def bond_problem(self, pos: np.ndarray) -> str:
        """Empty if every bond is within its limit, else a description of the worst one."""
        if not len(self.pairs):
            return ""
        diff = pos[self._i] - pos[self._j]
        d2 = np.einsum("ij,ij->i", diff, diff)
        if np.all(d2 <= self._max2):  # the common case, ~5 µs for a peptide
            return ""
        d = np.sqrt(d2)
        over = d - self.bond_max
        worst = int(np.argmax(over))
        if over[worst] <= 0:
            return ""
        i, j = self.pairs[worst]
        return (f"bond {i}-{j} is {d[worst]:.3g} nm long (limit {self.bond_max[worst]:.3g} nm; "
                f"{int(np.sum(over > 0))} bond(s) over)")

    def start_problem(self, pos: np.ndarray, energy: float) -> tuple[str, str]:
        """(reason code, detail) why a start is refused, or ("", "")."""
        if not math.isfinite(energy):
            return START_ENERGY, f"start energy {energy} kJ/mol is not finite"
        if math.isfinite(self.e_ref) and energy - self.e_ref > self.window:
            return START_ENERGY, (f"start energy {energy:.6g} kJ/mol is "
                                  f"{(energy - self.e_ref) / self.kT:.4g} kT above the reference "
                                  f"structure's (window {self.window / self.kT:.4g} kT)")
        bond = self.bond_problem(pos)
        return (START_BOND, f"start: {bond}") if bond else ("", "")

    def end_problem(self, pos: np.ndarray, energy: float, e_start: float) -> tuple[str, str]:
        """(reason code, detail) why a burst end is unphysical, or ("", "")."""
        if not math.isfinite(energy):
            return NON_FINITE, f"end energy {energy} kJ/mol is not finite"
        if energy - e_start > self.window:
            return ENERGY_JUMP, (f"energy rose by {(energy - e_start) / self.kT:.4g} kT in one "
                                 f"burst (window {self.window / self.kT:.4g} kT)")
        bond = self.bond_problem(pos)
        return (BOND, bond) if bond else ("", "")


def displacement_problem(x: np.ndarray, end: np.ndarray, bound: float) -> tuple[str, str]:
    """The NaN / displacement guard: (code, detail) or ("", "")."""
    moved = float(np.max(np.abs(end - x))) if end.size else 0.0
    if moved <= bound:  # False for NaN
        return "", ""
    if not math.isfinite(moved):
        return NON_FINITE, "non-finite coordinates"
    return DISPLACEMENT, f"moved {moved:.3g} nm (> {bound:g} nm)"


def energy_of(context: openmm.Context) -> float:
    """Potential energy (kJ/mol) of the Context's current positions."""
    return float(context.getState(getEnergy=True).getPotentialEnergy()
                 .value_in_unit(unit.kilojoule_per_mole))
