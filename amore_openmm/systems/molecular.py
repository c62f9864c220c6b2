"""MolecularSystem: an OpenMM System with its topology, starts, dynamics settings and selection.

Everything downstream (bursts, χ, paths) works on the :class:`MolecularSystem` that
:func:`~amore_openmm.systems.load_system` returns. Units: nm, ps, kJ/mol, K; ``openmm.unit``
quantities are accepted by the constructor and :meth:`MolecularSystem.from_openmm`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import openmm
from openmm import app, unit

from .common import BOLTZ, SystemLoadError, as_positions_nm, get_platform, strip_units
from .selection import check_selection, default_selection, select_atoms

__all__ = ["MolecularSystem", "INTEGRATORS", "DEFAULT_TEMPERATURE"]

INTEGRATORS = ("langevin_middle", "langevin", "brownian")
#: K, of a system that does not say (the one home of this default)
DEFAULT_TEMPERATURE = 300.0


@dataclass
class MolecularSystem:
    """An OpenMM System with its topology, initial structures and dynamics settings.

    Attributes:
        system: the physical OpenMM ``System`` (no χ forces attached).
        topology: the OpenMM ``Topology``.
        positions: one or more initial structures, each an (n_atoms, 3) float64 array in nm.
        temperature: K. timestep: ps. friction: 1/ps.
        integrator: "langevin_middle" (default), "langevin" or "brownian" (overdamped).
        lag_steps: integrator steps per Koopman burst (the lag time τ = lag_steps·timestep).
        featurizer: default χ featurizer: "auto", "pairwise_sym", "pairwise_all", "pairwise_heavy",
            "pairwise_polar", "dihedrals" or "coordinates".
        name: short name used in run directories and reports.
        source: where the system came from (for reports and resume checks).
        coordinate_dims: for toy systems the coordinates that carry the dynamics ((0, 1) for
            Müller–Brown); None for molecules.
        metadata: free-form notes (the loader keeps the manifest under "manifest" and a
            selection string under "atoms").
        selection: the molecule of interest as sorted 0-based atom indices. The constructor
            also takes an mdtraj selection string (kept in ``metadata["atoms"]``) or None:
            every atom that is not water or a monatomic ion (see
            :func:`~amore_openmm.systems.default_selection`).
    """

    system: openmm.System
    topology: app.Topology
    positions: list[np.ndarray]
    temperature: float = DEFAULT_TEMPERATURE
    timestep: float = 0.002
    friction: float = 1.0
    integrator: str = "langevin_middle"
    lag_steps: int = 100
    featurizer: str = "auto"
    name: str = "system"
    source: str = "user"
    coordinate_dims: tuple[int, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    selection: Any = None

    def __post_init__(self) -> None:
        self.temperature = float(strip_units(self.temperature, unit.kelvin))
        self.timestep = float(strip_units(self.timestep, unit.picosecond))
        self.friction = float(strip_units(self.friction, unit.picosecond**-1))
        self.lag_steps = int(self.lag_steps)
        self.positions = [as_positions_nm(p) for p in (self.positions if isinstance(
            self.positions, (list, tuple)) else [self.positions])]
        if not self.positions:
            raise SystemLoadError("a MolecularSystem needs at least one initial structure")
        n = self.system.getNumParticles()
        for i, p in enumerate(self.positions):
            if p.shape[0] != n:
                raise SystemLoadError(
                    f"initial structure {i} has {p.shape[0]} atoms but the System has {n}; "
                    "positions and System must describe the same atoms in the same order")
        if self.topology.getNumAtoms() != n:
            raise SystemLoadError(
                f"the Topology has {self.topology.getNumAtoms()} atoms but the System has {n}")
        if self.integrator not in INTEGRATORS:
            raise SystemLoadError(
                f"integrator {self.integrator!r} is not known; use one of {', '.join(INTEGRATORS)}")
        for key in ("temperature", "timestep", "friction"):
            if not getattr(self, key) > 0:
                raise SystemLoadError(f"{key} must be positive, got {getattr(self, key)}")
        if self.lag_steps < 1:
            raise SystemLoadError(f"lag_steps must be >= 1, got {self.lag_steps}")
        self._resolve_selection()

    def _resolve_selection(self) -> None:
        """Turn ``selection`` (None, mdtraj string or indices) into checked indices."""
        # a 1-particle toy may select its one particle; χ of a molecule needs two atoms
        min_atoms = 1 if (self.coordinate_dims is not None or self.n_atoms == 1) else 2
        sel = self.selection
        if sel is None:
            sel = default_selection(self.topology)
        elif isinstance(sel, str):
            self.metadata = {**self.metadata, "atoms": sel}
            where = f"atoms (selection of {self.name!r})"
            sel = select_atoms(self.topology, sel, min_atoms, where=where)
        self.selection = check_selection(sel, self.n_atoms, min_atoms,
                                         f"selection of {self.name!r}")
        self.selection.setflags(write=False)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_openmm(cls, system: openmm.System, topology: app.Topology, positions: Any, *,
                    temperature: Any = DEFAULT_TEMPERATURE, timestep: Any = 0.002,
                    friction: Any = 1.0, integrator: str = "langevin_middle",
                    lag_steps: int = 100, featurizer: str = "auto", name: str = "system",
                    atoms: Any = None, check: bool = True) -> "MolecularSystem":
        """Wrap a System built in the user's own OpenMM script.

        ``positions`` may be one structure (Quantity, list of Vec3, (n, 3) array in nm) or a
        list of structures. ``atoms``: the molecule of interest (mdtraj selection string or
        0-based indices; default: not water, not ions). With ``check`` every structure's
        energy and forces must be finite.
        """
        if isinstance(positions, np.ndarray) and positions.ndim == 3:
            positions = list(positions)
        elif not (isinstance(positions, (list, tuple)) and len(positions) and
                  _looks_like_structure(positions[0])):
            positions = [positions]
        ms = cls(system=system, topology=topology, positions=list(positions),
                 temperature=temperature, timestep=timestep, friction=friction,
                 integrator=integrator, lag_steps=lag_steps, featurizer=featurizer, name=name,
                 source="openmm", selection=atoms)
        if check:
            ms.check_finite()
        return ms

    # -- properties --------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    @property
    def kT(self) -> float:
        """Thermal energy in kJ/mol."""
        return BOLTZ * self.temperature

    @property
    def lag_time(self) -> float:
        """Lag time τ in ps."""
        return self.lag_steps * self.timestep

    @property
    def has_constraints(self) -> bool:
        return self.system.getNumConstraints() > 0

    @property
    def is_periodic(self) -> bool:
        """True when the System uses periodic boundary conditions (e.g. PME in a water box)."""
        return bool(self.system.usesPeriodicBoundaryConditions())

    @property
    def has_implicit_solvent(self) -> bool:
        """True when the System has a generalized-Born force (``implicit_solvent=`` of the
        app layer: a CustomGBForce, or a GBSAOBCForce)."""
        return any(isinstance(f, (openmm.CustomGBForce, openmm.GBSAOBCForce))
                   for f in self.system.getForces())

    @property
    def n_selected(self) -> int:
        """Number of atoms in :attr:`selection`."""
        return int(len(self.selection))

    def atom_labels(self) -> list[str]:
        """Labels such as ``ALA2:CA`` (residue name, 1-based residue number as in the PDB)."""
        return [f"{a.residue.name}{a.residue.id}:{a.name}" for a in self.topology.atoms()]

    def heavy_atoms(self, selected: bool = True) -> list[int]:
        """Atoms that are not hydrogen (0-based); with ``selected`` only those in
        :attr:`selection`."""
        keep = set(self.selection.tolist()) if selected else None
        return [a.index for a in self.topology.atoms()
                if (a.element is None or a.element.symbol != "H") and
                (keep is None or a.index in keep)]

    def polar_atoms(self, selected: bool = True) -> list[int]:
        """Heavy atoms plus hydrogens bonded to N, O or S (amide, hydroxyl, thiol H); with
        ``selected`` only those in :attr:`selection`.

        Leaves out C-bound hydrogens: methyl and methylene rotations permute chemically
        equivalent atoms, which labelled distance features would see as slow processes.
        """
        polar_h = set()
        for a, b in self.topology.bonds():
            for h, x in ((a, b), (b, a)):
                if h.element is not None and h.element.symbol == "H" and \
                        x.element is not None and x.element.symbol in ("N", "O", "S"):
                    polar_h.add(h.index)
        if selected:
            polar_h &= set(self.selection.tolist())
        return sorted(set(self.heavy_atoms(selected)) | polar_h)

    # -- OpenMM objects ----------------------------------------------------------------------
    def make_integrator(self, seed: int | None = None) -> openmm.Integrator:
        """A fresh integrator with this system's settings (seeded when ``seed`` is given)."""
        T, g, dt = self.temperature, self.friction, self.timestep
        if self.integrator == "langevin_middle":
            integ = openmm.LangevinMiddleIntegrator(T, g, dt)
        elif self.integrator == "langevin":
            integ = openmm.LangevinIntegrator(T, g, dt)
        else:
            integ = openmm.BrownianIntegrator(T, g, dt)
        if seed is not None:
            integ.setRandomNumberSeed(_openmm_seed(seed))
        return integ

    def make_context(self, platform: str | openmm.Platform = "Reference",
                     properties: dict[str, str] | None = None, seed: int | None = None,
                     system: openmm.System | None = None) -> openmm.Context:
        """A Context on ``platform`` at the first initial structure."""
        plat = platform if isinstance(platform, openmm.Platform) else \
            get_platform(platform)
        ctx = openmm.Context(system or self.system, self.make_integrator(seed), plat,
                             properties or {})
        ctx.setPositions(self.positions[0])
        return ctx

    def energy(self, positions: Any | None = None, platform: str = "Reference") -> float:
        """Potential energy (kJ/mol) of ``positions`` (default: first initial structure)."""
        ctx = self.make_context(platform)
        if positions is not None:
            ctx.setPositions(as_positions_nm(positions))
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)

    def check_finite(self) -> None:
        """Raise :class:`SystemLoadError` if an initial structure has non-finite energy/forces."""
        ctx = self.make_context("Reference")
        for i, pos in enumerate(self.positions):
            ctx.setPositions(pos)
            st = ctx.getState(getEnergy=True, getForces=True)
            e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            if not (math.isfinite(e) and np.all(np.isfinite(f))):
                raise SystemLoadError(
                    f"initial structure {i} of {self.source} has non-finite energy ({e}) or "
                    "forces: atoms overlap or coordinates are corrupt; minimise the structure "
                    "or check its units (OpenMM reads PDB coordinates in Å)")

    def with_overrides(self, **overrides: Any) -> "MolecularSystem":
        """A copy with settings replaced (temperature, timestep, friction, integrator,
        lag_steps, featurizer, name, and ``atoms``: a new selection, an mdtraj string or
        0-based indices)."""
        allowed = {"temperature", "timestep", "friction", "integrator", "lag_steps",
                   "featurizer", "name", "atoms"}
        bad = set(overrides) - allowed
        if bad:
            raise SystemLoadError(
                f"unknown override(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        if "atoms" in overrides:
            overrides["selection"] = overrides.pop("atoms")
            metadata = {k: v for k, v in self.metadata.items() if k != "atoms"}
            overrides["metadata"] = metadata
        return replace(self, **overrides)


def _looks_like_structure(obj: Any) -> bool:
    """True if ``obj`` is one whole structure rather than one atom's position."""
    if unit.is_quantity(obj):
        obj = obj._value
    if isinstance(obj, openmm.Vec3):
        return False
    try:
        return np.asarray(obj, dtype=float).ndim == 2
    except (TypeError, ValueError):
        return False


def _openmm_seed(seed: int) -> int:
    """Map any integer to a valid non-zero OpenMM seed (0 would mean 'pick one randomly')."""
    return int(seed) % 2147483646 + 1
