"""FIRE for many independent minimisations that share one force evaluation.

:class:`CopyFIRE` is the Fast Inertial Relaxation Engine (Bitzek, Koskinen, Gähler, Moseler
& Gumbsch, PRL 97, 170201, 2006) for up to P copies at once, each with its own velocity, time
step Δt, mixing factor α and convergence test. It has the driving interface of
:class:`~amore_openmm.mep.copy_lbfgs.CopyLBFGS` (:meth:`~CopyFIRE.start`,
:meth:`~CopyFIRE.pending`, :meth:`~CopyFIRE.update`, :meth:`~CopyFIRE.result`), so the
streaming server of :mod:`.batched` runs either: a copy is *masked out* the moment its own
RMS force meets its tolerance, and the slot is refilled with the next node of its path at the
next force call.

One step of a copy at force F (unit masses, so v and F share units up to Δt):

1. P = F·v. If P > 0 (or the copy is at rest): v ← (1 − α)v + α‖v‖F̂, and once more than
   ``n_min`` steps have had P > 0 in a row, Δt ← min(1.1 Δt, Δt_max) and α ← 0.99 α. If
   P ≤ 0 (a *restart*): v ← 0, Δt ← max(Δt/2, Δt_min), α ← α_start, the count restarts.
2. Semi-implicit Euler: v ← v + Δt F, x ← x + Δt v, the displacement capped at
   ``max_step`` nm for the copy's fastest atom (v scaled with it).

Why FIRE here. It needs forces only (the packed Context gives the summed energy of all
copies, not each copy's), one force call per step, no line search; a step costs a few
vector operations per copy, and a copy never waits for a secant evaluation.

Why a preconditioner. The χ restraint adds a stiffness κ‖∇χ‖² along ∇χ (κ ~ 10⁵–10⁶ and
‖∇χ‖² ~ 50 nm⁻² measured on alanine nodes: ~10⁷–10⁸ kJ/mol/nm², a hundred times a bond),
which alone would force Δt ~ 10⁻⁴ and thousands of steps per node (measured: ~1,200 force
calls per node against L-BFGS's ~180). With a stiff direction w = √(κ/k_ref)·∇χ per copy
the step uses (I + wwᵀ)⁻¹F = F − w(w·F)/(1 + w·w) (a rank-one mass matrix: the copy is heavy
along ∇χ), so the restraint mode is no stiffer than ~k_ref (:data:`K_REF`). Bonds are the
next stiffest modes (k ~ 2–3·10⁵ against torsions ~10–10³): a copy may also carry a mass
matrix A (:func:`bond_metric`: the Gauss–Newton bond Hessian plus a floor), and the step then
uses (A + wwᵀ)⁻¹F (Sherman–Morrison on a per-node A⁻¹). Measured on 4 alanine paths of 12
nodes (quick χ): 205 force calls per node with unit masses, 127 with the bond metric (floor
0.3; floor 0.1: 142, 0.5: 120 but one path's energies 0.5 kJ/mol higher, 1.0: a path lost).

Why unit masses and a per-copy Δt. Minimisation needs no physical dynamics; with unit masses
the stiffest mode (bonds with H, a stiff χ restraint κ‖∇χ‖²) decides the stable Δt, and each
copy finds its own through the halving on P ≤ 0. A copy keeps its last Δt for its next
minimisation (the next node of a path is a nearby problem), bounded below by ``dt_start``/4
so one bad node does not slow the rest of the path.

Creases: why FIRE alone fails on a trained χ, and what is done. The symmetry-aware
featurizer sorts distances (:mod:`amore_openmm.chi.symmetry`), so χ is continuous but its
gradient jumps where two sorted distances cross (a methyl group's H's), and the restrained
force jumps by κ(χ − z)·Δ∇χ there. Measured on the χ of ``benchmarks/mep_batched.py``
(20,000 frames, 1,000 iterations; 8 paths of ≤ 100 nodes, 1,855 relaxations): 1,323 ran
out of steps (1,000, and 4,000 on the retry) with a best RMS force of 6–28 kJ/mol/nm
(median 13), against 387 that converged (median 62 steps); 1,816 force calls per node
in all. Every stuck copy sits on such a crease (two sorted distances equal to 1e-16 nm,
RMS force flipping between 11.7 and 18.0 under a 1e-9 nm move): each crossing turns the
force against the velocity, the halvings drive Δt to 1e-10 and the copy freezes. OpenMM's
and the per-copy L-BFGS cross it (their curvature pairs and line search model the kink as
a steep valley): on the first stuck node, :class:`~amore_openmm.mep.copy_lbfgs.CopyLBFGS`
converged in 342 calls to within 0.01 kJ/mol of OpenMM's minimum. Hence
:class:`CopyFIREThenLBFGS`: FIRE for the smooth bulk of the relaxations, and a copy
restarted ``max_restarts`` times goes on with L-BFGS from its best point (on that node:
104 FIRE + 275 L-BFGS calls, same energy). Δt_min keeps a copy from freezing meanwhile.

The stall test and best-point return are the ones of :mod:`.copy_lbfgs` (a force floor of
round-off and kinks near a level set; see there): a copy also stops when its best RMS force is
within ``STALL_BAND`` × tolerance and has not dropped by 1 % for ``patience`` steps, and a copy
that stops unconverged returns the point of lowest RMS force it has seen.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .copy_lbfgs import K_REF, STALL_BAND, CopyLBFGS, CopyMinimization

__all__ = ["CopyFIRE", "CopyFIREThenLBFGS", "K_REF", "OUTCOMES", "bond_metric",
           "minimize_copies_fire"]

#: how a copy's minimisation ended (:attr:`CopyFIRE.outcome`)
OUTCOMES = ("converged", "stalled", "max_steps", "trapped")
CONVERGED, STALLED, MAX_STEPS, TRAPPED = range(4)


def _rms(g: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(g * g, axis=1)) if len(g) else np.zeros(0)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ad,ad->a", a, b)


class CopyFIRE:
    """Per-copy FIRE of up to ``copies`` copies of shape ``shape`` (n, 3), driven by
    :meth:`pending` / :meth:`update` (see the module docstring).

    Args:
        dt_start: Δt of a fresh copy (units: nm = Δt² · kJ/mol/nm, unit masses).
        dt_max: largest Δt.
        max_step: largest displacement of any atom in one step, nm.
        n_min: steps with P > 0 before Δt may grow (Bitzek et al.: 5).
        alpha_start: α after a restart (0.1); ``f_alpha``: its decay per step (0.99).
        patience: steps without a 1 % drop of the best RMS force after which a copy near its
            tolerance stops unconverged.
        steps_per_iteration: FIRE steps a copy may take per iteration of the caller's
            ``max_iterations`` (which is sized for L-BFGS iterations).
        dt_min: smallest Δt (default ``dt_start``/16): the halvings on P ≤ 0 stop there.
        max_restarts: a copy that has had this many restarts (P <= 0) stops as "trapped"
            and returns its best point (None: no limit); :class:`CopyFIREThenLBFGS` hands
            such copies to L-BFGS.

    :attr:`outcome` (one of :data:`OUTCOMES` by index) says how each copy's last
    minimisation ended.
    """

    def __init__(self, copies: int, shape: tuple[int, ...], *, dt_start: float = 1e-3,
                 dt_max: float = 1e-2, max_step: float = 0.01, n_min: int = 5,
                 alpha_start: float = 0.1, f_alpha: float = 0.99, patience: int = 100,
                 steps_per_iteration: int = 4, dt_min: float | None = None,
                 max_restarts: int | None = None) -> None:
        dt_min = dt_start / 16 if dt_min is None else dt_min
        if not (0 < dt_min <= dt_start <= dt_max and max_step > 0):
            raise ValueError(f"need 0 < dt_min <= dt_start <= dt_max and max_step > 0, got "
                             f"dt_min={dt_min}, dt_start={dt_start}, dt_max={dt_max}, "
                             f"max_step={max_step}")
        self.dt_min = float(dt_min)
        self.max_restarts = np.inf if max_restarts is None else int(max_restarts)
        self.shape, self.dim = tuple(shape), int(np.prod(shape))
        self.dt_start, self.dt_max, self.max_step = float(dt_start), float(dt_max), \
            float(max_step)
        self.n_min, self.alpha_start, self.f_alpha = int(n_min), float(alpha_start), \
            float(f_alpha)
        self.patience, self.per_it = int(patience), int(steps_per_iteration)
        self.active = np.zeros(copies, dtype=bool)
        self.x = np.zeros((copies, self.dim))        # where forces are needed next
        self.v = np.zeros((copies, self.dim))
        self.f = np.zeros((copies, self.dim))        # force at the last evaluated point
        self.outcome = np.zeros(copies, dtype=np.int8)
        self.restarts = np.zeros(copies, dtype=np.int64)   # P <= 0 events (diagnostics)
        self.dt = np.full(copies, self.dt_start)
        self.alpha = np.full(copies, self.alpha_start)
        self.n_pos = np.zeros(copies, dtype=np.int64)
        self.tol = np.zeros(copies)
        self.max_steps = np.zeros(copies, dtype=np.int64)
        self.evaluations = np.zeros(copies, dtype=np.int64)
        self.best_x = np.zeros((copies, self.dim))   # lowest RMS force seen, and where
        self.best_f = np.zeros((copies, self.dim))
        self.best_rms = np.full(copies, np.inf)
        self.stall_ref = np.full(copies, np.inf)
        self.stalled = np.zeros(copies, dtype=np.int64)
        self.done_x = np.zeros((copies, self.dim))   # result of the last minimisation
        self.done_f = np.zeros((copies, self.dim))
        self.has_metric = np.zeros(copies, dtype=bool)
        self.ainv: np.ndarray | None = None        # (copies, d, d) inverse mass matrices

    def start(self, c: int, x: np.ndarray, tolerance: float, max_iterations: int,
              keep_memory: bool = False, metric: np.ndarray | None = None) -> None:
        """Begin minimising copy ``c`` from ``x`` (n, 3) at rest; ``keep_memory``: keep the
        copy's last Δt (at least ``dt_start``/4), else start from ``dt_start``. ``metric``
        (3n, 3n), optional: the copy's mass matrix for this minimisation (symmetric positive
        definite, in units of the unit mass, e.g. :func:`bond_metric`); default: unit
        masses."""
        if metric is not None:
            if self.ainv is None:
                self.ainv = np.zeros((len(self.active), self.dim, self.dim))
            self.ainv[c] = np.linalg.inv(np.asarray(metric, dtype=np.float64))
        self.has_metric[c] = metric is not None
        self.active[c] = True
        self.x[c] = np.asarray(x, dtype=np.float64).reshape(-1)
        self.v[c] = 0.0
        self.dt[c] = max(self.dt[c], 0.25 * self.dt_start) if keep_memory else self.dt_start
        self.alpha[c], self.n_pos[c] = self.alpha_start, 0
        self.restarts[c] = 0
        self.tol[c] = float(tolerance)
        self.max_steps[c] = max(1, int(max_iterations) * self.per_it)
        self.evaluations[c] = self.stalled[c] = 0
        self.best_rms[c] = self.stall_ref[c] = np.inf

    @property
    def busy(self) -> bool:
        """True while some copy is being minimised."""
        return bool(self.active.any())

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies that need forces and where: (k,) indices, (k, n, 3) positions."""
        idx = np.flatnonzero(self.active)
        return idx, self.x[idx].reshape((len(idx),) + self.shape)

    def result(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 3) and total force (n, 3) of copy ``c``'s last minimisation."""
        return self.done_x[c].reshape(self.shape), self.done_f[c].reshape(self.shape)

    def update(self, idx: np.ndarray, forces: np.ndarray,
               stiff: np.ndarray | None = None) -> np.ndarray:
        """Forces (k, n, 3) at :meth:`pending` ``idx``; returns the copies that finished
        (converged, stalled near the tolerance, or out of steps), now masked out.

        ``stiff`` (k, n, 3), optional: per copy a vector w along which the energy is stiff
        (w = √(κ/k_ref)·∇χ for the χ restraint); the step then uses the preconditioned force
        (I + wwᵀ)⁻¹F (see the module docstring). Convergence is judged on F itself."""
        idx = np.asarray(idx, dtype=np.int64)
        f = np.asarray(forces, dtype=np.float64).reshape(len(idx), self.dim)
        self.evaluations[idx] += 1
        self.f[idx] = f
        rms = _rms(f)
        better = rms < self.best_rms[idx]
        b = idx[better]
        self.best_rms[b], self.best_x[b], self.best_f[b] = rms[better], self.x[b], f[better]
        dropped = rms < 0.99 * self.stall_ref[idx]
        self.stall_ref[idx[dropped]], self.stalled[idx[dropped]] = rms[dropped], 0
        self.stalled[idx[~dropped]] += 1
        converged = rms <= self.tol[idx]
        floor = (self.stalled[idx] >= self.patience) & \
            (self.best_rms[idx] <= STALL_BAND * self.tol[idx])
        out = self.evaluations[idx] >= self.max_steps[idx]
        trapped = self.restarts[idx] >= self.max_restarts
        done = converged | floor | out | trapped
        fin = idx[done]
        self.outcome[fin] = np.select([converged[done], floor[done], out[done]],
                                      [CONVERGED, STALLED, MAX_STEPS], TRAPPED)
        # a converged copy ends where it is; any other returns its best point
        self.done_x[fin] = np.where(converged[done, None], self.x[fin], self.best_x[fin])
        self.done_f[fin] = np.where(converged[done, None], f[done], self.best_f[fin])
        self.active[fin] = False
        keep = ~done
        self._step(idx[keep], self._precondition(idx[keep], f[keep], None if stiff is None
                                                 else np.asarray(stiff)[keep]))
        return fin

    def _precondition(self, idx: np.ndarray, f: np.ndarray, stiff: np.ndarray | None
                      ) -> np.ndarray:
        """M⁻¹F with M = A + wwᵀ (A: the copy's metric or the identity; w: ``stiff``), by
        Sherman–Morrison."""
        if not idx.size:
            return f
        y, w = f.copy(), None if stiff is None else stiff.reshape(len(idx), self.dim)
        u = None if w is None else w.copy()
        m = self.has_metric[idx]
        if m.any():
            a = self.ainv[idx[m]]
            y[m] = np.einsum("aij,aj->ai", a, f[m])
            if u is not None:
                u[m] = np.einsum("aij,aj->ai", a, w[m])
        if w is None:
            return y
        return y - u * (_dot(w, y) / (1.0 + _dot(w, u)))[:, None]

    def _step(self, idx: np.ndarray, f: np.ndarray) -> None:
        """One FIRE step of copies ``idx`` with forces ``f`` at their current points."""
        if not idx.size:
            return
        v = self.v[idx]
        power = _dot(f, v)
        fresh = ~np.any(v != 0.0, axis=1)     # at rest: a first step, not a restart
        up = (power > 0) | fresh
        self.restarts[idx[~up]] += 1
        fn = np.linalg.norm(f, axis=1)
        vn = np.linalg.norm(v, axis=1)
        a = self.alpha[idx]
        mix = np.where(up, a * vn / np.maximum(fn, 1e-300), 0.0)
        v = np.where(up[:, None], (1.0 - a)[:, None] * v + mix[:, None] * f, 0.0)
        n_pos = np.where(up, self.n_pos[idx] + 1, 0)
        grow = up & (n_pos > self.n_min)
        dt = np.where(grow, np.minimum(1.1 * self.dt[idx], self.dt_max),
                      np.where(up, self.dt[idx], np.maximum(0.5 * self.dt[idx], self.dt_min)))
        self.alpha[idx] = np.where(grow, a * self.f_alpha, np.where(up, a, self.alpha_start))
        self.n_pos[idx], self.dt[idx] = n_pos, dt
        v += dt[:, None] * f
        dx = dt[:, None] * v
        longest = np.linalg.norm(dx.reshape(len(idx), -1, 3), axis=-1).max(-1)
        scale = np.minimum(1.0, self.max_step / np.maximum(longest, 1e-300))
        self.v[idx] = v * scale[:, None]
        self.x[idx] += dx * scale[:, None]


class CopyFIREThenLBFGS:
    """Per-copy FIRE (:class:`CopyFIRE`) whose trapped copies go on with per-copy L-BFGS
    (:class:`~amore_openmm.mep.copy_lbfgs.CopyLBFGS`), behind CopyFIRE's driving interface.

    A copy starts in FIRE. If FIRE restarts it ``max_restarts`` times (the force keeps turning
    against the velocity: a crease of χ, see the module docstring) it continues from FIRE's
    best point with L-BFGS and ``max_iterations`` L-BFGS iterations; its result is the
    L-BFGS one. :attr:`evaluations` counts both; :attr:`handed` marks copies that went on.
    """

    def __init__(self, copies: int, shape: tuple[int, ...], max_restarts: int = 20,
                 fire: dict | None = None, lbfgs: dict | None = None) -> None:
        self.fire = CopyFIRE(copies, shape, max_restarts=max_restarts, **(fire or {}))
        self.lbfgs = CopyLBFGS(copies, shape, **(lbfgs or {}))
        self.evaluations = np.zeros(copies, dtype=np.int64)
        self.handed = np.zeros(copies, dtype=bool)
        self.tol = np.zeros(copies)
        self.max_it = np.zeros(copies, dtype=np.int64)

    def start(self, c: int, x: np.ndarray, tolerance: float, max_iterations: int,
              keep_memory: bool = False, metric: np.ndarray | None = None) -> None:
        """As :meth:`CopyFIRE.start`."""
        self.fire.start(c, x, tolerance, max_iterations, keep_memory=keep_memory,
                        metric=metric)
        self.handed[c], self.evaluations[c] = False, 0
        self.tol[c], self.max_it[c] = float(tolerance), int(max_iterations)

    @property
    def busy(self) -> bool:
        return self.fire.busy or self.lbfgs.busy

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        a, xa = self.fire.pending()
        b, xb = self.lbfgs.pending()
        return np.concatenate([a, b]), np.concatenate([xa, xb])

    def result(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        return self.lbfgs.result(c) if self.handed[c] else self.fire.result(c)

    def update(self, idx: np.ndarray, forces: np.ndarray,
               stiff: np.ndarray | None = None) -> np.ndarray:
        """As :meth:`CopyFIRE.update` (``stiff`` is used by FIRE only)."""
        idx = np.asarray(idx, dtype=np.int64)
        forces = np.asarray(forces, dtype=np.float64)
        self.evaluations[idx] += 1
        in_fire = self.fire.active[idx]
        done = []
        if in_fire.any():
            fin = self.fire.update(idx[in_fire], forces[in_fire],
                                   None if stiff is None else np.asarray(stiff)[in_fire])
            trapped = fin[self.fire.outcome[fin] == TRAPPED]
            for c in trapped:
                x, _ = self.fire.result(int(c))
                self.lbfgs.start(int(c), x, self.tol[c], self.max_it[c])
                self.handed[c] = True
            done.append(fin[self.fire.outcome[fin] != TRAPPED])
        if (~in_fire).any():
            done.append(self.lbfgs.update(idx[~in_fire], forces[~in_fire]))
        return np.concatenate(done) if done else np.zeros(0, dtype=np.int64)


def bond_metric(x: np.ndarray, pairs: np.ndarray, k: np.ndarray, floor: float = 0.1
                ) -> np.ndarray:
    """Mass matrix (3n, 3n) that makes bond stretching no stiffer than the rest: the
    Gauss–Newton bond Hessian Σ_b k_b (e_i − e_j)(e_i − e_j)ᵀ ⊗ û_b û_bᵀ at x (û_b the bond's
    unit vector) in units of :data:`K_REF`, plus ``floor`` × the identity.

    Args:
        x: (n, 3) positions, nm.
        pairs: (b, 2) bonded atoms; k: (b,) bond force constants, kJ/mol/nm².
        floor: the mass of motions that stretch no bond (angles, torsions, translations).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    m = np.zeros((n, 3, n, 3))
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        u = x[i] - x[j]
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        blk = (np.asarray(k, dtype=np.float64) / K_REF)[:, None, None] * \
            u[:, :, None] * u[:, None, :]
        np.add.at(m, (i, slice(None), i), blk)
        np.add.at(m, (j, slice(None), j), blk)
        np.add.at(m, (i, slice(None), j), -blk)
        np.add.at(m, (j, slice(None), i), -blk)
    return m.reshape(3 * n, 3 * n) + float(floor) * np.eye(3 * n)


def minimize_copies_fire(forces: Callable[[np.ndarray, np.ndarray], np.ndarray],
                         x: np.ndarray, tolerance, max_iterations, **options
                         ) -> CopyMinimization:
    """Minimise A independent copies to the end with per-copy FIRE (:class:`CopyFIRE`).

    Args:
        forces: ``forces(idx, x_idx)`` → (len(idx), n, 3) total forces (kJ/mol/nm) of copies
            ``idx`` at positions ``x_idx`` (nm); called with the copies still moving only.
        x: (A, n, 3) start positions, nm.
        tolerance: (A,) or scalar RMS force (kJ/mol/nm, per component) of convergence.
        max_iterations: (A,) or scalar; a copy takes at most ``steps_per_iteration`` × this
            many steps.
        options: the keyword arguments of :class:`CopyFIRE`.
    """
    x = np.asarray(x, dtype=np.float64)
    n_copies = len(x)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (n_copies,))
    max_it = np.broadcast_to(np.asarray(max_iterations, dtype=np.int64), (n_copies,))
    opt = CopyFIRE(n_copies, x.shape[1:], **options)
    for c in range(n_copies):
        opt.start(c, x[c], tol[c], max_it[c])
    while opt.busy:
        idx, points = opt.pending()
        opt.update(idx, forces(idx, points))
    xs = opt.done_x.reshape(x.shape).copy()
    f = opt.done_f.reshape(x.shape).copy()
    return CopyMinimization(x=xs, force=f, evaluations=opt.evaluations.copy(),
                            converged=_rms(f.reshape(n_copies, -1)) <= tol)
