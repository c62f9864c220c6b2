"""Many χ-MEPs at once: P packed copies of the molecule in one OpenMM Context.

:func:`trace_chi_meps_batched` traces one path per start, all in one Context that holds P
non-interacting copies (:func:`~amore_openmm.sampling.pack_replicas`; vacuum and implicit
solvent) plus one ``openmm.PythonForce``
(:class:`~amore_openmm.forces.pythonforce.BatchedChiRestraint`) that evaluates χ and ∇χ of all
P copies in one batched model pass per force call, with a level z_p and a stiffness κ_p per
copy.

How the work is shared. Every path runs the unchanged single-path algorithm
(:func:`~amore_openmm.mep.trace_chi_mep`: Euler steps, κ control, retries, certificates) in
its own Python thread, on a :class:`_CopyTracer` that stands in for the
:class:`~amore_openmm.mep.LevelSetTracer`. Everything except the minimisation is per copy;
``minimize`` posts the copy's request (start positions, z, κ) and waits. When every live path
has posted one, the main thread runs one *round*: it writes all requests into the packed
Context and calls ``LocalEnergyMinimizer.minimize`` once for all copies together. Rounds are
lockstep (a round starts only when every live path has asked), so which copies minimise
together, and hence the result, does not depend on thread scheduling.

Per-copy convergence. The minimiser judges convergence on the RMS force of the whole packed
System, while a node's certificate needs each copy's own RMS force ≤ ``tolerance``. A round
therefore runs up to ``passes`` joint minimisations: the first to the joint tolerance
``tolerance·√(A/P)``·``joint_factor`` (A copies active), after which copies whose own RMS force
meets ``tolerance`` are *held* and the rest are minimised again. A copy gets at most
``passes`` × ``max_iterations`` iterations per request where the single-path tracer gets one
``max_iterations``; its other retries (non-converged node: 4× iterations; |χ − z| too large:
stiffer κ; failed certificate: step halved) are the single-path ones, unchanged.

Parking. A copy that is not minimised in a pass (its path has ended, or it is waiting while
others converge) is *held*: the batched force replaces its χ restraint by a term whose force
exactly cancels the copy's physical force at its current positions (plus a stiff spring), so
its total force is zero and L-BFGS, which builds its steps from gradients, does not move it.
No particle masses change and the Context is never rebuilt. (Zero masses would also freeze
particles in OpenMM's minimiser, but need ``Context.reinitialize`` at every change.)

Measurements per node are the single-path ones (:meth:`LevelSetTracer.measure`): energy and
physical force of the copy alone (a single-copy helper Context), χ and ∇χ from the batched
model pass, the certificate of :mod:`.certify`.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import openmm
from openmm import unit

from ..systems import MolecularSystem
from .certify import ConstraintProjector, rms
from .path import ChiPath
from .trace import trace_chi_mep
from .tracer import LevelSetTracer, RelaxSettings, free_force_group, as_chi_model

__all__ = ["trace_chi_meps_batched"]

KJ = unit.kilojoule_per_mole
KJ_NM = unit.kilojoule_per_mole / unit.nanometer


@dataclass
class _Request:
    """One copy's minimisation: from x (n, 3) on level z with stiffness κ."""

    x: np.ndarray
    z: float
    kappa: float
    tolerance: float
    max_iterations: int


@dataclass
class _Snapshot:
    """A copy after its minimisation (forces kJ/mol/nm, energy kJ/mol)."""

    x: np.ndarray
    energy: float
    force: np.ndarray        # physical force
    total: np.ndarray        # physical + χ restraint (what the minimiser minimised)
    chi: float
    grad: np.ndarray
    evaluations: int


class _Aborted(Exception):
    """Another path failed: the batch stops."""


class _PackedLevelSets:
    """The packed Context with the batched χ restraint, and one joint round of minimisations.

    Also owns a single-copy helper Context (energies of single copies, constraints, the
    physical force at positions that are not in the packed Context), shared under a lock by
    the path threads.
    """

    def __init__(self, system: MolecularSystem, model: Any, copies: int, platform: str,
                 properties: dict | None, passes: int, joint_factor: float,
                 gb_cutoff: float) -> None:
        from ..forces.pythonforce import BatchedChiRestraint
        from ..sampling import pack_replicas
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
        plat = openmm.Platform.getPlatformByName(platform)
        self.context = openmm.Context(omm, openmm.VerletIntegrator(0.001), plat,
                                      properties or {})
        self.has_constraints = omm.getNumConstraints() > 0
        self.projector = ConstraintProjector.from_system(system.system)
        self.single = system.make_context(platform, properties)
        self.lock = threading.Lock()
        self.current = np.zeros((self.copies, self.n_atoms, 3))

    # -- packed Context ----------------------------------------------------------------------
    def load(self, x: np.ndarray) -> None:
        """Put (P, n, 3) positions into the packed Context (fixing the per-copy shifts)."""
        packed, shifts = self.packed.pack_positions(x)
        self.restraint.shifts = shifts
        self.context.setPositions(packed)
        self.current = np.array(x, dtype=np.float64)

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

    def run_round(self, requests: dict[int, _Request]) -> dict[int, _Snapshot]:
        """Minimise every requested copy on its level set, all in one Context."""
        x = self.current.copy()
        for p, req in requests.items():
            x[p] = req.x
            self.restraint.z[p], self.restraint.kappa[p] = req.z, req.kappa
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
        return self._snapshots(done)

    def _snapshots(self, done: dict[int, tuple]) -> dict[int, _Snapshot]:
        order = sorted(done)
        xs = np.stack([done[p][0] for p in order])
        chi, grad = self.restraint.chi_and_grad(xs)       # one batched pass
        out = {}
        for k, p in enumerate(order):
            x, f, total, n_eval = done[p]
            energy, _ = self.physical(x)
            out[p] = _Snapshot(x=x, energy=energy, force=f, total=total, chi=float(chi[k]),
                               grad=grad[k], evaluations=int(n_eval))
        return out

    # -- single-copy helper Context -------------------------------------------------------------
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


class _Rounds:
    """Lockstep rendezvous of the path threads: a round runs when every live path has posted
    a request (or ended)."""

    def __init__(self, levels: _PackedLevelSets, slots: int) -> None:
        self.levels, self.slots = levels, slots
        self.cond = threading.Condition()
        self.requests: dict[int, _Request] = {}
        self.results: dict[int, _Snapshot] = {}
        self.finished: set[int] = set()
        self.error: BaseException | None = None
        self.rounds = 0

    def submit(self, slot: int, request: _Request) -> _Snapshot:
        with self.cond:
            if self.error is not None:
                raise _Aborted()
            self.requests[slot] = request
            self.cond.notify_all()
            self.cond.wait_for(lambda: slot in self.results or self.error is not None)
            if slot not in self.results:
                raise _Aborted()
            return self.results.pop(slot)

    def finish(self, slot: int, error: BaseException | None = None) -> None:
        with self.cond:
            self.finished.add(slot)
            if error is not None and not isinstance(error, _Aborted) and self.error is None:
                self.error = error
            self.cond.notify_all()

    def serve(self) -> None:
        """Run rounds until every slot has finished (main thread)."""
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.error is not None or
                                   len(self.requests) + len(self.finished) == self.slots)
                if self.error is not None or not self.requests:
                    return
                requests, self.requests = self.requests, {}
            try:
                snaps = self.levels.run_round(requests)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                with self.cond:
                    self.error = exc
                    self.cond.notify_all()
                return
            with self.cond:
                self.rounds += 1
                self.results.update(snaps)
                self.cond.notify_all()


class _CopyTracer(LevelSetTracer):
    """A :class:`LevelSetTracer` for copy ``slot`` of the packed Context: ``minimize`` is one
    request of a joint round; positions, forces and χ come from the round's snapshot."""

    def __init__(self, slot: int, rounds: _Rounds, model: Any, kT: float) -> None:
        levels = rounds.levels
        self.slot, self.rounds, self.levels = slot, rounds, levels
        self.model = model
        self.settings = RelaxSettings()
        self.n_atoms, self.kT = levels.n_atoms, float(kT)
        self.projector, self.has_constraints = levels.projector, levels.has_constraints
        self._counter = levels.restraint       # evaluations are counted (see measure)
        self._x = np.zeros((self.n_atoms, 3))
        self._snap: _Snapshot | None = None
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None

    def set_positions(self, x: np.ndarray) -> np.ndarray:
        self._x, self._snap = self.levels.constrain(x), None
        return self._x.copy()

    def positions(self) -> np.ndarray:
        return self._x

    def physical(self) -> tuple[float, np.ndarray]:
        if self._snap is not None:
            return self._snap.energy, self._snap.force
        return self.levels.physical(self._x)

    def total_force(self) -> np.ndarray:
        if self._snap is None:
            raise RuntimeError("total_force() is only known after a minimisation")
        return self._snap.total

    def chi_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        snap = self._snap
        if snap is not None and (x is snap.x or np.array_equal(x, snap.x)):
            return snap.chi, snap.grad
        if self._last is not None and np.array_equal(x, self._last[0]):
            return self._last[1], self._last[2]
        chi, g = self.model.chi_and_grad(np.asarray(x)[None])
        self._last = (np.array(x), float(chi[0]), g[0])
        return float(chi[0]), g[0]

    def minimize(self, z: float, kappa: float, tolerance: float, max_iterations: int) -> int:
        snap = self.rounds.submit(self.slot, _Request(self._x.copy(), float(z), float(kappa),
                                                      float(tolerance), int(max_iterations)))
        self._snap, self._x = snap, snap.x
        return snap.evaluations


def trace_chi_meps_batched(system: MolecularSystem, model: Any, starts: Any, *,
                           copies: int | None = None, platform: str = "Reference",
                           properties: dict | None = None, passes: int = 3,
                           joint_factor: float = 1.0, gb_cutoff: float = 5.0,
                           **kwargs: Any) -> list[ChiPath]:
    """Trace one certified χ-MEP from each of ``starts`` (S, n, 3), all in one packed Context.

    Args:
        system: the single-copy :class:`MolecularSystem` (vacuum or implicit solvent,
            non-periodic: whatever :func:`~amore_openmm.sampling.pack_replicas` packs).
        model: χ (a ChiModel or the path of a saved/exported one).
        starts: (S, n, 3) nm (or KoopmanData, whose ``x`` are used).
        copies: copies in the Context (default: S). With fewer, copy c traces starts c,
            c + copies, … one after another.
        platform, properties: OpenMM platform of the Contexts ("Reference" or "CPU").
        passes: joint minimisations per round at most (see the module docstring).
        joint_factor: scales the joint tolerance ``tolerance·√(A/P)``.
        gb_cutoff: nm, the packed implicit-solvent cutoff (see ``pack_replicas``).
        kwargs: the options of :func:`~amore_openmm.mep.trace_chi_mep` (step, kappa,
            tolerance, max_iterations, chi_range, max_nodes, certificate, ...).

    Returns:
        One :class:`ChiPath` per start, in order, each certified node by node as
        :func:`trace_chi_mep` does. ``iterations`` counts the joint minimiser's evaluations in
        the passes the copy took part in.
    """
    if not isinstance(system, MolecularSystem):
        raise TypeError(f"system must be a MolecularSystem (load_system(...)), got "
                        f"{type(system).__name__}")
    for name in ("tracer", "pool_size"):
        if name in kwargs:
            raise TypeError(f"trace_chi_meps_batched() does not take {name}=")
    starts = np.asarray(getattr(starts, "x", starts), dtype=np.float64)
    if starts.ndim == 2:
        starts = starts[None]
    if starts.ndim != 3 or starts.shape[1:] != (system.n_atoms, 3) or len(starts) == 0:
        raise ValueError(f"starts must be (S, {system.n_atoms}, 3) in nm with S >= 1, got "
                         f"{starts.shape}")
    slots = len(starts) if copies is None else int(copies)
    if not 1 <= slots:
        raise ValueError(f"copies must be >= 1, got {copies}")
    slots = min(slots, len(starts))
    if passes < 1 or not joint_factor > 0:
        raise ValueError(f"passes must be >= 1 and joint_factor > 0, got {passes}, "
                         f"{joint_factor}")
    model = as_chi_model(model)
    levels = _PackedLevelSets(system, model, slots, platform, properties, passes,
                              joint_factor, gb_cutoff)
    levels.load(np.stack([starts[c] for c in range(slots)]))
    rounds = _Rounds(levels, slots)
    paths: list[ChiPath | None] = [None] * len(starts)

    def work(slot: int) -> None:
        tracer = _CopyTracer(slot, rounds, model, system.kT)
        try:
            for i in range(slot, len(starts), slots):
                paths[i] = trace_chi_mep(system, model, starts[i], tracer=tracer, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            rounds.finish(slot, exc)
        else:
            rounds.finish(slot)

    threads = [threading.Thread(target=work, args=(s,), name=f"chi-mep-copy{s}", daemon=True)
               for s in range(slots)]
    for t in threads:
        t.start()
    rounds.serve()
    for t in threads:
        t.join()
    if rounds.error is not None:
        raise rounds.error
    return [p for p in paths if p is not None]
