"""The packed Context of :mod:`.batched`: P non-interacting copies of one molecule with a
batched χ restraint (one level z_p and stiffness κ_p per copy), a single-copy helper Context,
and the two ways of minimising copies on their level sets: :meth:`PackedLevelSets.forces` for
the per-copy L-BFGS (:mod:`.copy_lbfgs`) and :meth:`PackedLevelSets.run_round` for the joint
``LocalEnergyMinimizer`` with held copies (see :mod:`.batched`)."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import openmm
from openmm import unit

from ..systems import MolecularSystem, get_platform
from .certify import ConstraintProjector, rms
from .tracer import LevelSetTracer, free_force_group

__all__ = ["EVALUATORS", "PackedLevelSets", "Request", "Snapshot"]

#: how :meth:`PackedLevelSets.forces` gets the physical forces of the k moving copies:
#: "packed" (one call of the packed Context: cost ~ P, whatever k), "serial" (k calls of a
#: single-copy Reference Context: cost ~ k), "auto" (the cheaper by costs measured at start)
EVALUATORS = ("auto", "packed", "serial")
KJ = unit.kilojoule_per_mole
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


@dataclass
class Request:
    """One copy's minimisation: from x (n, 3) on level z with stiffness κ; ``same_path``:
    the copy's previous request was of the same path (a streamed minimiser may start from
    what it learnt there; a new path starts afresh, so it does not depend on the path the
    copy traced before)."""

    x: np.ndarray
    z: float
    kappa: float
    tolerance: float
    max_iterations: int
    same_path: bool = False


@dataclass
class Snapshot:
    """A copy after its minimisation (forces kJ/mol/nm, energy kJ/mol)."""

    x: np.ndarray
    energy: float
    force: np.ndarray        # physical force
    total: np.ndarray        # physical + χ restraint (what the minimiser minimised)
    chi: float
    grad: np.ndarray
    evaluations: int


class PackedLevelSets:
    """The packed Context with the batched χ restraint, and one joint round of minimisations.

    Also owns a single-copy helper Context (energies of single copies, constraints, the
    physical force at positions that are not in the packed Context), shared under a lock by
    the path threads.
    """

    def __init__(self, system: MolecularSystem, model: Any, copies: int, platform: str,
                 properties: dict | None, passes: int, joint_factor: float,
                 gb_cutoff: float, evaluator: str = "auto") -> None:
        if evaluator not in EVALUATORS:
            raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
        from ..forces.pythonforce import BatchedChiRestraint
        from ..sampling import pack_replicas
        self.system, self.model = system, model
        self.n_atoms, self.copies = system.n_atoms, int(copies)
        self.passes, self.joint_factor = int(passes), float(joint_factor)
        self.packed = pack_replicas(system, self.copies, gb_cutoff=gb_cutoff)
        omm = self.packed.system          # built fresh by pack_replicas: ours to extend
        group = free_force_group(omm)
        if group is None:
            raise ValueError("all 32 force groups of the System are in use; free one so the "
                             "batched χ restraint can be evaluated separately")
        self.physical_groups = sum(1 << g for g in range(32) if g != group)
        self.restraint = BatchedChiRestraint(model, self.copies, self.n_atoms)
        omm.addForce(self.restraint.force(group))
        plat = get_platform(platform)
        self.context = openmm.Context(omm, openmm.VerletIntegrator(0.001), plat,
                                      properties or {})
        self.has_constraints = omm.getNumConstraints() > 0
        self.projector = ConstraintProjector.from_system(system.system)
        # the helper's energies and forces enter every path (a node's energy, the force of
        # the κ estimate): a CPU Context with several threads sums forces in an order set by
        # thread timing (measured under load: 5 of 300 calls differed, by up to 3e-5
        # kJ/mol/nm, and 2 of 17 batched paths changed), so serial paths take Reference
        serial = evaluator == "serial"
        self.single = system.make_context("Reference" if serial else platform,
                                          None if serial else properties)
        self.lock = threading.Lock()
        self.alone: LevelSetTracer | None = None     # see relax_alone
        self.alone_lock = threading.Lock()
        self.evaluator = evaluator
        self.serial: openmm.Context | None = None   # single-copy Reference Context (serial)
        self.serial_below = 0                        # serial when fewer copies than this move
        self.current = np.zeros((self.copies, self.n_atoms, 3))
        self.last_physical = np.zeros((self.copies, self.n_atoms, 3))
        self.last_grad = np.zeros((self.copies, self.n_atoms, 3))

    # -- packed Context ----------------------------------------------------------------------
    def load(self, x: np.ndarray) -> None:
        """Put (P, n, 3) positions into the packed Context (fixing the per-copy shifts)."""
        packed, shifts = self.packed.pack_positions(x)
        self.restraint.shifts = shifts
        self.context.setPositions(packed)
        self.current = np.array(x, dtype=np.float64)
        if self.serial is None and self.evaluator != "packed" and not self.has_constraints:
            self._calibrate()

    def _calibrate(self, repeats: int = 10) -> None:
        """Open the serial Context and set :attr:`serial_below` from one packed call's and
        one copy's measured cost (``evaluator="serial"``: always serial). Measured on
        alanine dipeptide, 34 copies, 2 cores: packed 0.72 ms per call on CPU and Reference
        alike, serial 0.02–0.03 ms per copy; a streamed batch has half its calls with fewer
        than 16 copies moving."""
        self.serial = self.system.make_context("Reference")
        if self.evaluator == "serial":
            self.serial_below = self.copies + 1
            return

        def cost(call) -> float:
            call()
            t0 = time.perf_counter()
            for _ in range(repeats):
                call()
            return (time.perf_counter() - t0) / repeats

        packed = cost(lambda: self.context.getState(getForces=True, groups=self.physical_groups))
        one = cost(lambda: self._serial_forces(self.current[:1]))
        self.serial_below = int(math.ceil(packed / max(one, 1e-9)))

    def _serial_forces(self, xs: np.ndarray) -> np.ndarray:
        out = np.empty_like(xs)
        ctx = self.serial
        for k, x in enumerate(xs):
            ctx.setPositions(x)
            out[k] = ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(KJ_NM)
        return out

    def _write(self, x: np.ndarray) -> None:
        self.context.setPositions((x + self.restraint.shifts[:, None, :]).reshape(-1, 3))
        if self.has_constraints:
            self.context.applyConstraints(1e-6)

    def _read(self, groups: int) -> tuple[np.ndarray, np.ndarray]:
        st = self.context.getState(getPositions=True, getForces=True, groups=groups)
        x = self.packed.unpack_positions(st.getPositions(asNumpy=True).value_in_unit(
            unit.nanometer), self.restraint.shifts)
        return x, self.packed.unpack(st.getForces(asNumpy=True).value_in_unit(KJ_NM))

    def _hold(self, held: np.ndarray) -> None:
        """Hold the copies in mask ``held`` at their current positions (zero total force)."""
        x, f = self._read(self.physical_groups)
        self.current = x
        r = self.restraint
        r.held[:] = held
        r.hold_x[held] = (x + r.shifts[:, None, :])[held]
        r.hold_f[held] = f[held]

    def run_round(self, requests: dict[int, Request]) -> dict[int, Snapshot]:
        """Minimise every requested copy on its level set, all in one Context."""
        x = self.current.copy()
        for p, req in requests.items():
            x[p] = req.x
            self.set_level(p, req.z, req.kappa)
        self._write(x)
        tol = min(r.tolerance for r in requests.values())
        max_it = max(r.max_iterations for r in requests.values())
        active = sorted(requests)
        done: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        evals = dict.fromkeys(active, 0)
        for _ in range(self.passes):
            held = np.ones(self.copies, dtype=bool)
            held[active] = False
            self._hold(held)
            before = self.restraint.count
            joint = tol * math.sqrt(len(active) / self.copies) * self.joint_factor
            openmm.LocalEnergyMinimizer.minimize(self.context, joint, max_it)
            used = self.restraint.count - before
            x, f_phys = self._read(self.physical_groups)
            _, f_total = self._read(-1)
            self.current = x
            still = []
            for p in active:
                evals[p] += used
                done[p] = (x[p], f_phys[p], f_total[p], evals[p])
                total = self.projector(x[p], f_total[p][None])[0]
                if rms(total) > requests[p].tolerance * (1 + 1e-9):
                    still.append(p)
            active = still
            if not active:
                break
        return self.snapshots(done)

    # -- per-copy minimisation (minimizer="copies") ------------------------------------------
    def set_level(self, copy: int, z: float, kappa: float) -> None:
        """The χ level and stiffness of copy ``copy``'s restraint."""
        self.restraint.z[copy], self.restraint.kappa[copy] = z, kappa

    def forces(self, idx: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Total forces (k, n, 3) kJ/mol/nm of copies ``idx`` at ``xs`` (k, n, 3): one
        physical-force call of the packed Context (the other copies stay where they are) and
        one batched χ pass over these copies. Their physical forces are kept
        (:attr:`last_physical`) for the snapshot of a copy whose minimisation ends here."""
        r = self.restraint
        self.current[idx] = xs
        if len(idx) < self.serial_below:
            f_phys = self._serial_forces(np.asarray(xs, dtype=np.float64))
        else:
            self.context.setPositions((self.current + r.shifts[:, None, :]).reshape(-1, 3))
            st = self.context.getState(getForces=True, groups=self.physical_groups)
            f_phys = self.packed.unpack(st.getForces(asNumpy=True).value_in_unit(KJ_NM))[idx]
        f_phys[:, self.projector.fixed] = 0.0
        self.last_physical[idx] = f_phys
        chi, grad = r.chi_and_grad(xs)
        self.last_grad[idx] = grad
        total = f_phys - (r.kappa[idx] * (chi - r.z[idx]))[:, None, None] * grad
        total[:, self.projector.fixed] = 0.0
        return total

    def stiff_directions(self, idx: np.ndarray, k_ref: float) -> np.ndarray:
        """√(κ_p/k_ref)·∇χ_p (k, n, 3) of copies ``idx`` at their last :meth:`forces` call:
        the direction and size of the restraint's stiffness relative to ``k_ref``
        (kJ/mol/nm²), for the preconditioner of :mod:`.fire`."""
        w = np.sqrt(self.restraint.kappa[idx] / float(k_ref))[:, None, None] * \
            self.last_grad[idx]
        w[:, self.projector.fixed] = 0.0
        return w

    def bond_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(pairs (b, 2), force constants (b,) kJ/mol/nm²) of the single copy's
        ``HarmonicBondForce`` bonds (for the FIRE mass matrix, :func:`.fire.bond_metric`)."""
        pairs, k = [], []
        for f in self.system.system.getForces():
            if isinstance(f, openmm.HarmonicBondForce):
                for b in range(f.getNumBonds()):
                    i, j, _, kb = f.getBondParameters(b)
                    pairs.append((i, j))
                    k.append(kb.value_in_unit(KJ / unit.nanometer ** 2))
        return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(k, dtype=np.float64)

    def snapshots(self, done: dict[int, tuple]) -> dict[int, Snapshot]:
        order = sorted(done)
        xs = np.stack([done[p][0] for p in order])
        chi, grad = self.restraint.chi_and_grad(xs)       # one batched pass
        out = {}
        for k, p in enumerate(order):
            x, f, total, n_eval = done[p]
            energy, _ = self.physical(x)
            out[p] = Snapshot(x=x, energy=energy, force=f, total=total, chi=float(chi[k]),
                              grad=grad[k], evaluations=int(n_eval))
        return out

    # -- single-copy helper Context ---------------------------------------------------------
    def relax_alone(self, x: np.ndarray, z: float, kappa: float | None,
                    settings: Any) -> Any:
        """The node :meth:`LevelSetTracer.relax` makes from x on a single-copy Reference
        tracer (OpenMM's minimiser; opened on first use, shared under a lock)."""
        with self.alone_lock:
            if self.alone is None:
                self.alone = LevelSetTracer(self.system, self.model, "Reference")
            self.alone.settings = settings
            return self.alone.relax(x, z, kappa)

    def physical(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (kJ/mol) and physical force (n, 3) of one copy at x."""
        with self.lock:
            self.single.setPositions(x)
            st = self.single.getState(getEnergy=True, getForces=True)
        return (st.getPotentialEnergy().value_in_unit(KJ),
                st.getForces(asNumpy=True).value_in_unit(KJ_NM))

    def constrain(self, x: np.ndarray) -> np.ndarray:
        """x with the System's constraints applied (a copy)."""
        x = np.array(x, dtype=np.float64)
        if not self.has_constraints:
            return x
        with self.lock:
            self.single.setPositions(x)
            self.single.applyConstraints(1e-6)
            st = self.single.getState(getPositions=True)
        return np.array(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
