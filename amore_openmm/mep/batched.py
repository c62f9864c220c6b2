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
``minimize`` posts the copy's request (start positions, z, κ) and waits while the main thread
minimises it, in one of three ways (``minimizer=``):

- ``"copies"`` (the default): every copy runs its own L-BFGS (:mod:`.copy_lbfgs`) with its
  own steps and its own convergence test. Each force call evaluates the physical forces of
  the copies being minimised and one batched χ pass over them; a new request joins at the
  next call, and a copy's result goes back to its path as soon as its own RMS force
  meets its tolerance, so paths do not wait for each other's nodes. A copy's iterates do not
  depend on the other copies (they do not interact), so the paths equal the ones a lockstep
  schedule would give, to the bit (see "Reproducible" below). Each copy's L-BFGS is
  preconditioned by its bond metric and its χ restraint's stiff direction, and a copy whose
  node lies on a crease of the sorted-distance χ converges by the nonsmooth stationarity
  test (both in :mod:`.copy_lbfgs`).
- ``"fire"``: as ``"copies"`` (streamed, per-copy convergence, refilled with the path's
  next node), but every copy runs FIRE (:mod:`.fire`) with its own time step, mixing factor
  and velocity, preconditioned along its ∇χ: one force call per step, no line search; a
  copy that FIRE keeps restarting (trapped on a crease of a sorted-distance χ) goes on with
  per-copy L-BFGS (:class:`~amore_openmm.mep.fire.CopyFIREThenLBFGS`).
- ``"joint"`` (what Systems with constraints use: the per-copy minimisers move atoms
  freely):
  lockstep *rounds*, one when every live path has posted a request, each calling
  ``LocalEnergyMinimizer.minimize`` on the whole packed System, as follows.

Per-copy convergence, joint. The minimiser judges convergence on the RMS force of the whole
packed System, while a node's certificate needs each copy's own RMS force ≤ ``tolerance``. A
round therefore runs up to ``passes`` joint minimisations: the first to the joint tolerance
``tolerance·√(A/P)``·``joint_factor`` (A copies active), after which copies whose own RMS force
meets ``tolerance`` are *held* and the rest are minimised again. A copy gets at most
``passes`` × ``max_iterations`` iterations per request where the single-path tracer gets one
``max_iterations``; its other retries (non-converged node: 4× iterations; |χ − z| too large:
stiffer κ; failed certificate: step halved) are the single-path ones, unchanged.

Parking (joint). A copy that is not minimised in a pass (its path has ended, or it is waiting
while others converge) is *held*: the batched force replaces its χ restraint by a term whose
force exactly cancels the copy's physical force at its current positions (plus a stiff
spring), so its total force is zero and L-BFGS, which builds its steps from gradients, does
not move it.
No particle masses change and the Context is never rebuilt. (Zero masses would also freeze
particles in OpenMM's minimiser, but need ``Context.reinitialize`` at every change.)

Cost. A force call of the streamed minimisers costs the physical forces of the moving copies
plus one batched χ pass over them. The packed Context costs the same whether 1 or P copies
move (alanine dipeptide, 34 copies: 0.72 ms on CPU and Reference alike), and in a stream
half the calls have fewer than 16 copies moving (paths wait while their threads take Euler
steps, and the longest path sets the tail), so below a measured copy count the physical forces
come from a single-copy Reference Context, one copy after another (0.02–0.03 ms each;
``evaluator=``, :data:`~amore_openmm.mep.packed_levels.EVALUATORS`). The server is one Python
thread: ``workers=`` shares the starts among processes, one per core. After it returns nodes
it waits up to :data:`REJOIN_WAIT` for those paths' next requests, so that they join the next
force call instead of the call after it.

Reproducible. With the default ``evaluator="serial"`` a streamed path repeats to the bit, and
is the same path whichever other paths share its Context, in what order, on how many workers
or alone: the single-copy Reference Context computes a copy's physical forces from its
positions alone, and the numpy χ pass gives each structure the same bits in any batch
(:meth:`~amore_openmm.forces.pythonforce.BatchedChiRestraint.batch_invariant`), so which
copies share a force call (thread timing) changes nothing; the helper Context of a node's
energy and κ estimate is a Reference one as well (a multi-threaded CPU Context's force sums
depend on thread timing), so ``platform`` does not change a serial path either; a copy that
takes up a new path starts its L-BFGS afresh (:attr:`Request.same_path`).
``evaluator="auto"`` picks by a timing and ``"packed"`` rounds a copy's forces by the packed
sums: those paths repeat only up to round-off. A χ without the numpy pass (TorchScript)
does not repeat either.

Measurements per node are the single-path ones (:meth:`LevelSetTracer.measure`): energy and
physical force of the copy alone (a single-copy helper Context), χ and ∇χ from the batched
model pass, the certificate of :mod:`.certify`.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..progress import progress_bar
from ..systems import MolecularSystem
from ..threads import wait_threads_gone
from .copy_lbfgs import K_REF, CopyLBFGS
from .fire import CopyFIREThenLBFGS, bond_metric
from .packed_levels import PackedLevelSets, Request, Snapshot
from .path import ChiPath
from .trace import trace_chi_mep
from .tracer import LevelSetNode, LevelSetTracer, RelaxSettings, as_chi_model

__all__ = ["trace_chi_meps_batched"]


#: χ range where a streamed copy's uncertified node is relaxed again alone
#: (:meth:`_CopyTracer.relax`). Outside it ‖∇χ‖ → 0 and the level sets hold minima far
#: apart in energy: OpenMM's minimiser failed there as often (measured: 60 of 87 such
#: relaxations at χ < 0.07 or > 0.96 stayed uncertified, at ~0.3 s each).
FALLBACK_CHI = (0.1, 0.9)


#: seconds the streaming server waits for the paths whose nodes it has just returned to post
#: their next request, so that they share the next force call (their threads need the GIL
#: for the node's measurements and Euler step)
REJOIN_WAIT = 0.002


class _Aborted(Exception):
    """Another path failed: the batch stops."""


class _Rendezvous:
    """Path threads post minimisation requests and wait for their results; the main thread
    serves them (:meth:`serve`, by subclass)."""

    def __init__(self, levels: PackedLevelSets, slots: int) -> None:
        self.levels, self.slots = levels, slots
        self.cond = threading.Condition()
        self.requests: dict[int, Request] = {}
        self.results: dict[int, Snapshot] = {}
        self.finished: set[int] = set()
        self.error: BaseException | None = None

    def submit(self, slot: int, request: Request) -> Snapshot:
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

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            self.error = exc
            self.cond.notify_all()

    def _post(self, snaps: dict[int, Snapshot]) -> None:
        with self.cond:
            self.results.update(snaps)
            self.cond.notify_all()


class _Rounds(_Rendezvous):
    """Joint minimiser: lockstep rounds, one when every live path has posted a request (or
    ended)."""

    fallback = False

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
                self._fail(exc)
                return
            self._post(snaps)


class _Stream(_Rendezvous):
    """Per-copy minimiser: a request joins the running per-copy L-BFGS at the next force
    call, and a copy's result is posted as soon as its own minimisation ends."""

    optimizer: type = CopyLBFGS
    #: a node whose certificate fails is relaxed again by OpenMM's minimiser, alone
    fallback = True

    def serve(self) -> None:
        """Step the copies being minimised until every slot has finished (main thread)."""
        levels = self.levels
        opt = self.optimizer(self.slots, (levels.n_atoms, 3))
        returned: set[int] = set()            # slots whose results were just posted
        while True:
            with self.cond:
                if not opt.busy:
                    self.cond.wait_for(lambda: self.error is not None or bool(self.requests)
                                       or len(self.finished) == self.slots)
                elif returned and REJOIN_WAIT > 0:
                    self.cond.wait_for(lambda: self.error is not None or returned <= (
                        self.requests.keys() | self.finished), timeout=REJOIN_WAIT)
                returned = set()
                if self.error is not None:
                    return
                new, self.requests = self.requests, {}
            if not opt.busy and not new:
                return
            try:
                for p, req in new.items():
                    levels.set_level(p, req.z, req.kappa)
                    self._start(opt, p, req)
                idx, points = opt.pending()
                done = self._update(opt, idx, levels.forces(idx, points))
                if not done.size:
                    continue
                snaps = levels.snapshots({int(p): self._finished(opt, int(p)) for p in done})
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._fail(exc)
                return
            self._post(snaps)
            returned = set(snaps)

    #: bond preconditioning (:func:`.fire.bond_metric`) for molecules up to this many atoms
    #: (the mass matrices are (3n)² per copy)
    metric_atoms = 200
    #: the metric's mass of motions that stretch no bond, for the per-copy L-BFGS. Measured
    #: (17 alanine paths on one worker, the two halves of benchmarks/mep_batched.py's 34):
    #: 0.3 (FIRE's) 77-80 evaluations per node and 35-39 s, 2-3: 62-68 and 28-30 s, 5: 71;
    #: on the 38 hardest nodes (χ ≈ 0.03, κ ~ 10⁷) 0.3 converged 20 within 1,250 iterations,
    #: 3 converged 29 with 30 % fewer evaluations; VGVAPG in vacuum (8 paths of ≤ 30 nodes,
    #: a χ of one Cα distance): 0.3 194 evaluations per node and 107 s, 3: 110 and 61 s
    metric_floor = 3.0

    def _start(self, opt: Any, p: int, req: Request) -> None:
        metric = None
        if self.levels.n_atoms <= self.metric_atoms:
            if not hasattr(self, "_bonds"):
                self._bonds = self.levels.bond_terms()
            if len(self._bonds[0]):
                metric = bond_metric(req.x, *self._bonds, floor=self.metric_floor)
        opt.start(p, req.x, req.tolerance, req.max_iterations, keep_memory=req.same_path,
                  metric=metric)

    def _update(self, opt: Any, idx: np.ndarray, forces: np.ndarray) -> np.ndarray:
        # preconditioned along ∇χ: the restraint's stiffness does not set the step (see
        # .copy_lbfgs and .fire)
        return opt.update(idx, forces, self.levels.stiff_directions(idx, K_REF))

    def _finished(self, opt: Any, p: int) -> tuple:
        x, total = opt.result(p)
        return x.copy(), self.levels.last_physical[p].copy(), total.copy(), \
            int(opt.evaluations[p])


class _FireStream(_Stream):
    """Per-copy FIRE (:mod:`.fire`), streamed as :class:`_Stream`."""

    optimizer = CopyFIREThenLBFGS
    metric_floor = 0.3


class _CopyTracer(LevelSetTracer):
    """A :class:`LevelSetTracer` for copy ``slot`` of the packed Context: ``minimize`` is one
    request of a joint round; positions, forces and χ come from the round's snapshot."""

    def __init__(self, slot: int, rounds: _Rendezvous, model: Any, kT: float) -> None:
        levels = rounds.levels
        self.slot, self.rounds, self.levels = slot, rounds, levels
        self.model = model
        self.settings = RelaxSettings()
        self.n_atoms, self.kT = levels.n_atoms, float(kT)
        self.projector, self.has_constraints = levels.projector, levels.has_constraints
        self._counter = levels.restraint       # evaluations are counted (see measure)
        self._x = np.zeros((self.n_atoms, 3))
        self._snap: Snapshot | None = None
        self._last: tuple[np.ndarray, float, np.ndarray] | None = None
        self.same_path = False              # set after the path's first minimisation

    def begin_path(self) -> None:
        """The next minimisation starts a new path: its minimiser keeps nothing from the
        copy's previous path (:attr:`Request.same_path`)."""
        self.same_path = False

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
        # the batched restraint's pass (numpy where it can): as the snapshots', and cheaper
        # than a torch pass per node
        chi, g = self.levels.restraint.chi_and_grad(np.asarray(x, dtype=np.float64)[None])
        self._last = (np.array(x), float(chi[0]), g[0])
        return float(chi[0]), g[0]

    def relax(self, x: np.ndarray, z: float, kappa: float | None = None) -> LevelSetNode:
        node = super().relax(x, z, kappa)
        lo, hi = FALLBACK_CHI
        if node.local_ok or not self.rounds.fallback or not lo <= node.chi <= hi:
            return node
        # the per-copy minimiser missed this node's certificate inside χ's interior
        # (measured: runs of nodes near χ ≈ 0.7 on the 34-path benchmark, where 3-6 paths
        # then ended): OpenMM's own minimiser on a single copy, as the pool would relax it
        alone = self.levels.relax_alone(x, z, kappa, self.settings)
        alone.iterations += max(node.iterations, 0)
        return alone

    def minimize(self, z: float, kappa: float, tolerance: float, max_iterations: int) -> int:
        snap = self.rounds.submit(self.slot, Request(self._x.copy(), float(z), float(kappa),
                                                      float(tolerance), int(max_iterations),
                                                      same_path=self.same_path))
        self._snap, self._x, self.same_path = snap, snap.x, True
        return snap.evaluations


def trace_chi_meps_batched(system: MolecularSystem, model: Any, starts: Any, *,
                           copies: int | None = None, platform: str = "Reference",
                           properties: dict | None = None, passes: int = 3,
                           joint_factor: float = 1.0, gb_cutoff: float = 5.0,
                           minimizer: str = "copies", evaluator: str = "serial",
                           workers: int = 1, progress: bool | str = False, **kwargs: Any
                           ) -> list[ChiPath]:
    """Trace one certified χ-MEP from each of ``starts`` (S, n, 3), all in one packed Context.

    Args:
        system: the single-copy :class:`MolecularSystem` (vacuum or implicit solvent,
            non-periodic: whatever :func:`~amore_openmm.sampling.pack_replicas` packs).
        model: χ (a ChiModel or the path of a saved/exported one).
        starts: (S, n, 3) nm (or KoopmanData, whose ``x`` are used).
        copies: copies in the Context (default: S). With fewer, copy c traces starts c,
            c + copies, … one after another.
        platform, properties: OpenMM platform of the Contexts ("Reference" or "CPU").
        minimizer: "copies" (default): each copy has its own preconditioned L-BFGS, step
            and convergence test, with the nonsmooth test for nodes on a crease of χ
            (:mod:`.copy_lbfgs`), one force call per evaluation for all copies still moving;
            "joint": one ``LocalEnergyMinimizer`` of the packed System per pass, converged
            copies held; "fire": per-copy FIRE (:mod:`.fire`), streamed as "copies".
            Measured (``benchmarks/mep_batched.py --minimizer copies --workers 2
            --check-minima 60``: 34 alanine transition-state paths of ≤ 100 nodes, 2 shared
            cores, four runs): "copies" 2.40–2.51× one path alone against the pool's
            16–17×, 65 force evaluations per node against OpenMM's 257; 3,341 nodes against
            the pool's 3,354; inside χ ∈ [0.1, 0.9] energies as close to the pool's (max ΔE
            per path median 1.78, max 2.34 kJ/mol; median difference +0.003) as the pool's
            own paths are to those from starts moved by 1e-5 nm (1.72, 2.05); OpenMM's
            minimiser, run from 60 random nodes, lowers their restrained energy by a median
            0.0017 and at most 0.046 kJ/mol (the pool's nodes: 0.0002,
            0.003). Before the preconditioner and the nonsmooth test it took 5.6× (240
            evaluations per node); "joint" took 11.1×; FIRE froze on the creases (its copies
            hand over to L-BFGS, 11.7×, and its paths ended early near χ ≈ 0.7). Systems
            with constraints always use "joint".
        evaluator: physical forces of the moving copies ("copies", "fire"): "serial"
            (default: one call per moving copy of a single-copy Reference Context; the
            paths repeat to the bit, see the module docstring), "packed" (one call of the
            packed Context, cheaper for many copies of a large molecule) or "auto" (serial
            while fewer copies move than the measured cost ratio of the two; see
            :data:`~amore_openmm.mep.packed_levels.EVALUATORS`).
        workers: processes that share the starts (interleaved), each with its own packed
            Context of its share of the copies (a process per core: the streaming server
            is one Python thread); 1 (default): this process.
        progress: show the paths as they finish (a tqdm bar on a terminal, else a line now
            and then; a string: the bar's label); with several workers, those of this
            process's share.
        passes: joint minimisations per round at most ("joint"; see the module docstring).
        joint_factor: scales the joint tolerance ``tolerance·√(A/P)`` ("joint").
        gb_cutoff: nm, the packed implicit-solvent cutoff (see ``pack_replicas``).
        kwargs: the options of :func:`~amore_openmm.mep.trace_chi_mep` (step, kappa,
            tolerance, max_iterations, chi_range, max_nodes, certificate, ...).

    Returns:
        One :class:`ChiPath` per start, in order, each certified node by node as
        :func:`trace_chi_mep` does. ``iterations`` counts the force evaluations of the
        copy's own minimisation ("copies") or of the joint passes it took part in ("joint").
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
    if minimizer not in ("copies", "fire", "joint"):
        raise ValueError(f"minimizer must be 'joint', 'copies' or 'fire', got {minimizer!r}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    workers = min(int(workers), len(starts))
    label = progress if isinstance(progress, str) else "χ-MEPs" if progress else None
    options = dict(platform=platform, properties=properties, passes=passes,
                   joint_factor=joint_factor, gb_cutoff=gb_cutoff, minimizer=minimizer,
                   evaluator=evaluator, **kwargs)
    chi = as_chi_model(model)                   # a bad model fails here, not in a worker
    if workers > 1:
        from ..sampling.workers import call_in_processes
        # interleaved groups: neighbouring transition states (similar paths) are spread
        groups = [np.arange(w, len(starts), workers) for w in range(workers)]
        share = None if copies is None else max(1, -(-slots // workers))
        sent = model if isinstance(model, (str, os.PathLike)) else chi
        # the first share runs in this process (here=True): its bar shows the progress
        shown = {**options, "progress": label and f"{label} (worker 1 of {workers})"}
        parts = call_in_processes(_trace_group, [(system, sent, starts[g], share,
                                                  shown if k == 0 else options)
                                                 for k, g in enumerate(groups)], here=True)
        paths: list[ChiPath | None] = [None] * len(starts)
        for g, part in zip(groups, parts):
            for i, path in zip(g, part):
                paths[int(i)] = path
        return [p for p in paths if p is not None]
    return _trace_batched(system, chi, starts, slots, progress_label=label, **options)


def _trace_group(task: tuple) -> list[ChiPath]:
    """One worker's share of :func:`trace_chi_meps_batched` (``workers`` > 1)."""
    system, model, starts, copies, options = task
    return trace_chi_meps_batched(system, model, starts, copies=copies, **options)


def _trace_batched(system: MolecularSystem, model: Any, starts: np.ndarray, slots: int, *,
                   platform: str, properties: dict | None, passes: int, joint_factor: float,
                   gb_cutoff: float, minimizer: str, evaluator: str,
                   progress_label: str | None, **kwargs: Any) -> list[ChiPath]:
    levels = PackedLevelSets(system, model, slots, platform, properties, passes,
                             joint_factor, gb_cutoff, evaluator)
    levels.load(np.stack([starts[c] for c in range(slots)]))
    # the per-copy L-BFGS moves atoms freely: Systems with constraints take the joint one
    serve = _Rounds if minimizer == "joint" or levels.has_constraints else \
        _FireStream if minimizer == "fire" else _Stream
    rounds = serve(levels, slots)
    paths: list[ChiPath | None] = [None] * len(starts)

    native_ids: list[int] = []
    bar = None if progress_label is None else \
        progress_bar(len(starts), desc=progress_label, unit="path")
    bar_lock = threading.Lock()

    def work(slot: int) -> None:
        native_ids.append(threading.get_native_id())
        tracer = _CopyTracer(slot, rounds, model, system.kT)
        try:
            for i in range(slot, len(starts), slots):
                tracer.begin_path()
                paths[i] = trace_chi_mep(system, model, starts[i], tracer=tracer, **kwargs)
                if bar is not None:
                    with bar_lock:
                        bar.update(1)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            rounds.finish(slot, exc)
        else:
            rounds.finish(slot)

    threads = [threading.Thread(target=work, args=(s,), name=f"chi-mep-copy{s}", daemon=True)
               for s in range(slots)]
    for t in threads:
        t.start()
    try:
        rounds.serve()
        for t in threads:
            t.join()
    finally:
        if bar is not None:
            bar.close()
    wait_threads_gone(native_ids)   # their torch state is torn down after join
    if rounds.error is not None:
        raise rounds.error
    return [p for p in paths if p is not None]
