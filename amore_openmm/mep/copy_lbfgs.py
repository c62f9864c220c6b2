"""L-BFGS for many independent minimisations that share one force evaluation.

:class:`CopyLBFGS` minimises up to P copies at once, each with its own L-BFGS memory, step
and convergence test. It is driven from outside: :meth:`CopyLBFGS.pending` gives the points
at which the copies being minimised need forces, one per copy, and :meth:`CopyLBFGS.update`
takes the forces there, advances every such copy by one phase and returns the copies that
have finished. In :mod:`.batched` one packed OpenMM Context plus one batched χ pass gives those
forces, and a copy may start (:meth:`CopyLBFGS.start`) while others are half-way: no copy waits
for, or is dragged along by, the slowest one, as under one joint ``LocalEnergyMinimizer`` of
the packed System, whose line search and convergence test are shared. A copy's iterates do not
depend on which other copies are being minimised. :func:`minimize_copies` runs a fixed set
of copies to the end.

Why no energies. The packed Context gives the summed energy of all copies, not each copy's,
so the line search is force-only: a step s is accepted when the force along it has not
turned against it; when it has (g₁·s > 0, the 1-D minimum lies inside the step) the secant
point α = g₀·s / (g₀·s − g₁·s) of the directional derivative is evaluated and taken instead.
Steps are capped at ``max_step`` nm per atom, and a pair with non-positive curvature
(y·s ≤ 0) is not stored, so every direction is a descent direction. A converged copy is a
stationary point by the RMS-force test; the χ-MEP certificate (:mod:`.certify`) then checks
each node as it checks the single-path minimiser's.

Why a stall test. Near a level set the restrained energy can have a floor of round-off and
kinks (the sorted distances of the symmetric featurizer) below which the RMS force does not
go: measured on alanine χ-MEP nodes at χ ≈ 0.6, RMS 1.1–1.5 kJ/mol/nm against a tolerance of
1, where scipy's L-BFGS-B also stops ("abnormal line search") and OpenMM's minimiser returns
early when its line search fails. Without energies this L-BFGS cannot see that floor, and
spent the whole 250 + 1000 iterations of a node and its retry there (~1,750 evaluations). So
a copy also stops when its best RMS force is within ``STALL_BAND`` × tolerance and has not
dropped by 1 % for ``patience`` iterations; a copy that stops unconverged returns the point of
lowest RMS force it has seen. Measured on the 72 minimisations of one such alanine path:
evaluations 32,494 → 16,202, node energies within 0.02 kJ/mol of running to the limit (a band
of 3 and a patience of 50: 12,016, but up to 0.44 kJ/mol higher, and on another path a start
node 3.5 kJ/mol above the single-path one).

Why a nonsmooth stationarity test. That floor is a crease: the symmetric featurizer sorts
distances, so ∇χ jumps where two of them cross, and a level-set minimum often lies on such a
crease. There the energy is minimal but no point has a small gradient: the gradients on the
two sides point against each other. The test of gradient-sampling methods (Burke, Lewis &
Overton, SIAM J. Optim. 15, 751, 2005) sees such a minimum: the smallest vector in the convex
hull of the gradients at the copy's recent points within ``kink_radius`` of its current point.
When its RMS meets the tolerance, the copy has converged; :meth:`CopyLBFGS.result` then gives
that vector as the copy's total force (the stationarity the certificate checks), and
:attr:`CopyLBFGS.kinked` marks it. For a smooth energy this vector can be smaller than the
force at the point only by the force change across the ball, so the energy is within
½·λ·r² of the minimum along the stiffest mode λ: with the χ restraint's κ‖∇χ‖² ~ 5·10⁶
kJ/mol/nm² and r = 10⁻⁴ nm, 0.025 kJ/mol. Measured on 6 alanine paths of the χ of
``benchmarks/mep_batched.py`` (with the preconditioner below): 190 → ~80 evaluations per node
(r = 10⁻⁵ nm: 158; r = 10⁻³ nm: 51, but that radius allows 2.5 kJ/mol), ~30 % of the
minimisations ending by this test; OpenMM's minimiser run from 40 such nodes lowered their
restrained energy by a median 0.0002 and at most 0.010 kJ/mol, as from nodes that met the RMS
test (0.001, 0.006). The test runs only for a copy whose best RMS force has stopped dropping
(every ``KINK_EVERY`` iterations without a 1 % drop), so converging copies pay nothing.

Why a preconditioner. The χ restraint adds a stiffness κ‖∇χ‖² along ∇χ, ~10⁶ times a
torsion's, and bonds are the next stiffest modes. A copy may carry a mass matrix A
(``metric=``, e.g. :func:`~amore_openmm.mep.fire.bond_metric`, in units of :data:`K_REF`) and
per force call a stiff direction w (``stiff=``, w = √(κ/K_REF)·∇χ); L-BFGS then starts its
two-loop recursion from H₀ = γ·(A + wwᵀ)⁻¹/K_REF (Sherman–Morrison on a per-node A⁻¹) instead
of γ·I, with γ = s·y / y·H₀y from the newest pair. Measured on the same 6 paths: 240 → 190
evaluations per node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["CopyLBFGS", "CopyMinimization", "K_REF", "KINK_RADIUS", "minimize_copies",
           "min_norm_combination"]

# the first step of a copy moves its largest-force atom by this much (nm)
FIRST_STEP_NM = 0.002
IDLE, INIT, TRIAL, SECANT = 0, 1, 2, 3
# the stall test applies once the best RMS force is within this factor of the tolerance
STALL_BAND = 2.0
#: kJ/mol/nm², the stiffness a preconditioner leaves along ∇χ (about a bond's)
K_REF = 1e5
#: nm, radius of the ball whose gradients the nonsmooth stationarity test combines
KINK_RADIUS = 1e-4
#: recent accepted points per copy that test looks at, and how often it runs: every this many
#: iterations without a 1 % drop of the copy's best RMS force
KINK_POINTS, KINK_EVERY = 10, 5


@dataclass
class CopyMinimization:
    """Result of :func:`minimize_copies` (A copies)."""

    x: np.ndarray            # (A, n, 3) final positions
    force: np.ndarray        # (A, n, 3) total force at x
    evaluations: np.ndarray  # (A,) force evaluations of the copy
    converged: np.ndarray    # (A,) RMS force ≤ tolerance


def _rms(f: np.ndarray) -> np.ndarray:
    f = f.reshape(len(f), -1) if len(f) else f.reshape(0, 1)
    return np.sqrt(np.mean(f * f, axis=1))


if hasattr(np, "vecdot"):           # numpy >= 2: half the call overhead of einsum
    _dot = np.vecdot
else:
    def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ad,ad->a", a, b)


def min_norm_combination(g: np.ndarray, mask: np.ndarray, sweeps: int = 30
                         ) -> np.ndarray:
    """Per row a, the shortest vector Σⱼ θⱼ g[a, j] with θ on the simplex over the j where
    ``mask[a, j]`` (Frank–Wolfe with exact line search; any θ it stops at is feasible, so the
    vector is never shorter than the true minimum). g: (k, m, d); mask: (k, m), each row
    with at least one True. Returns (k, d)."""
    q = np.matmul(g, g.transpose(0, 2, 1))                     # (k, m, m) Gram matrices
    theta = mask / mask.sum(1, keepdims=True)
    rows = np.arange(len(g))
    for _ in range(sweeps):
        grad = np.matmul(q, theta[:, :, None])[:, :, 0]
        vertex = np.zeros_like(theta)
        vertex[rows, np.where(mask, grad, np.inf).argmin(1)] = 1.0
        step = vertex - theta
        curv = np.matmul(step[:, None, :], np.matmul(q, step[:, :, None]))[:, 0, 0]
        slope = _dot(step, grad)
        t = np.clip(np.where(curv > 0, -slope / np.maximum(curv, 1e-300), 1.0), 0.0, 1.0)
        theta += t[:, None] * step
    return np.matmul(theta[:, None, :], g)[:, 0, :]


class _Memory:
    """Per-copy L-BFGS pairs (s, y), newest first: (P, m, d)."""

    def __init__(self, copies: int, dim: int, size: int) -> None:
        self.s = np.zeros((copies, size, dim))
        self.y = np.zeros((copies, size, dim))
        self.rho = np.zeros((copies, size))
        self.used = np.zeros(copies, dtype=np.int64)       # valid pairs per copy
        self.size = size

    def add(self, idx: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
        """Store (s, y) for copies ``idx`` where the curvature y·s is positive."""
        sy = _dot(s, y)
        ok = sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)
        a = idx[ok]
        if not a.size:
            return
        for arr in (self.s, self.y, self.rho):
            arr[a, 1:] = arr[a, :-1]
        self.s[a, 0], self.y[a, 0], self.rho[a, 0] = s[ok], y[ok], 1.0 / sy[ok]
        self.used[a] = np.minimum(self.used[a] + 1, self.size)

    def direction(self, idx: np.ndarray, g: np.ndarray,
                  h0: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """−H·g for copies ``idx`` (two-loop recursion, vectorised over copies); copies
        without pairs get −g, or −h0(g) with a preconditioner ``h0`` (rows ↦ H₀·rows)."""
        used = self.used[idx]
        depth = int(used.max(initial=0))
        s, y = self.s[idx, :depth], self.y[idx, :depth]
        rho = np.where(np.arange(depth)[None, :] < used[:, None], self.rho[idx, :depth], 0.0)
        q = g.copy()
        alpha = np.zeros((len(idx), depth))
        for j in range(depth):                             # newest first
            alpha[:, j] = rho[:, j] * _dot(s[:, j], q)
            q -= alpha[:, j, None] * y[:, j]
        gamma = np.ones(len(idx))
        if depth:
            yy = _dot(y[:, 0], y[:, 0] if h0 is None else h0(y[:, 0]))
            gamma = np.where(used > 0, _dot(s[:, 0], y[:, 0]) / np.maximum(yy, 1e-300), 1.0)
        r = gamma[:, None] * (q if h0 is None else h0(q))
        for j in reversed(range(depth)):
            b = rho[:, j] * _dot(y[:, j], r)
            r += (alpha[:, j] - b)[:, None] * s[:, j]
        return -r


class CopyLBFGS:
    """Per-copy L-BFGS of up to ``copies`` copies of shape ``shape`` (n, 3), driven by
    :meth:`pending` / :meth:`update` (see the module docstring).

    Args:
        memory: L-BFGS pairs kept per copy.
        max_step: largest displacement of any atom in one step, nm.
        patience: iterations without a 1 % drop of the copy's best RMS force after which it
            stops unconverged (see the module docstring).
        kink_radius: nm, ball of the nonsmooth stationarity test (None: no such test).

    :attr:`kinked` marks the copies whose last minimisation ended by that test.
    """

    def __init__(self, copies: int, shape: tuple[int, ...], memory: int = 10,
                 max_step: float = 0.02, patience: int = 100,
                 kink_radius: float | None = KINK_RADIUS) -> None:
        self.shape, self.dim = tuple(shape), int(np.prod(shape))
        self.max_step, self.patience = float(max_step), int(patience)
        if kink_radius is not None and not kink_radius > 0:
            raise ValueError(f"kink_radius must be > 0 nm or None, got {kink_radius!r}")
        self.kink_radius = kink_radius
        self.kinked = np.zeros(copies, dtype=bool)
        self.kink_g = np.zeros((copies, self.dim))       # the combined gradient of a kink stop
        self.recent_x = np.zeros((copies, KINK_POINTS, self.dim))
        self.recent_g = np.zeros((copies, KINK_POINTS, self.dim))
        self.recent_n = np.zeros(copies, dtype=np.int64)
        self.has_metric = np.zeros(copies, dtype=bool)
        self.ainv: np.ndarray | None = None              # (copies, d, d) inverse metrics
        self.w = np.zeros((copies, self.dim))            # stiff direction at the last call
        self.mem = _Memory(copies, self.dim, memory)
        self.phase = np.full(copies, IDLE)
        self.x = np.zeros((copies, self.dim))        # accepted point
        self.g = np.zeros((copies, self.dim))        # gradient (−force) there
        self.s = np.zeros((copies, self.dim))        # current step
        self.point = np.zeros((copies, self.dim))    # where forces are needed next
        self.tol = np.zeros(copies)
        self.max_it = np.zeros(copies, dtype=np.int64)
        self.iterations = np.zeros(copies, dtype=np.int64)
        self.evaluations = np.zeros(copies, dtype=np.int64)
        self.best_x = np.zeros((copies, self.dim))   # lowest RMS force seen, and where
        self.best_g = np.zeros((copies, self.dim))
        self.best_rms = np.full(copies, np.inf)
        self.stall_ref = np.full(copies, np.inf)     # best RMS at the last 1 % drop
        self.stalled = np.zeros(copies, dtype=np.int64)  # iterations since that drop

    def start(self, c: int, x: np.ndarray, tolerance: float, max_iterations: int,
              keep_memory: bool = False, metric: np.ndarray | None = None) -> None:
        """Begin minimising copy ``c`` from ``x`` (n, 3); ``keep_memory``: start from the
        curvature pairs of its last minimisation (a nearby problem, e.g. the previous node
        of a path), else forget them. ``metric`` (3n, 3n), optional: a symmetric positive
        definite mass matrix in units of :data:`K_REF` for the preconditioner (see the
        module docstring)."""
        if metric is not None:
            if self.ainv is None:
                self.ainv = np.zeros((len(self.phase), self.dim, self.dim))
            self.ainv[c] = np.linalg.inv(np.asarray(metric, dtype=np.float64))
        self.has_metric[c] = metric is not None
        self.w[c] = 0.0
        self.kinked[c], self.recent_n[c] = False, 0
        self.phase[c] = INIT
        self.point[c] = np.asarray(x, dtype=np.float64).reshape(-1)
        self.tol[c], self.max_it[c] = float(tolerance), int(max_iterations)
        self.iterations[c] = self.evaluations[c] = self.stalled[c] = 0
        self.best_rms[c] = self.stall_ref[c] = np.inf
        if not keep_memory:
            self.mem.used[c] = 0

    @property
    def busy(self) -> bool:
        """True while some copy is being minimised."""
        return bool((self.phase != IDLE).any())

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies that need forces and where: (k,) indices, (k, n, 3) positions."""
        idx = np.flatnonzero(self.phase != IDLE)
        return idx, self.point[idx].reshape((len(idx),) + self.shape)

    def result(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions (n, 3) and total force (n, 3) of copy ``c``'s accepted point (after a
        kink stop: the smallest combination of the forces around it, see the module
        docstring)."""
        g = self.kink_g[c] if self.kinked[c] else self.g[c]
        return self.x[c].reshape(self.shape), -g.reshape(self.shape)

    def update(self, idx: np.ndarray, forces: np.ndarray,
               stiff: np.ndarray | None = None) -> np.ndarray:
        """Forces (k, n, 3) at :meth:`pending` ``idx``; returns the copies that finished
        (converged, or out of iterations), now idle. ``stiff`` (k, n, 3), optional: per copy
        the stiff direction w at these points, for the preconditioner."""
        g_new = -np.asarray(forces, dtype=np.float64).reshape(len(idx), self.dim)
        if stiff is not None:
            self.w[idx] = np.asarray(stiff, dtype=np.float64).reshape(len(idx), self.dim)
        self.evaluations[idx] += 1
        phase = self.phase[idx]
        accept = phase == INIT
        trial = phase == TRIAL
        if trial.any():
            t = idx[trial]
            # the minimum along s is inside the step, and the trial point has not met the
            # tolerance anyway (at an exact minimum the sign of g·s is round-off)
            over = (-_dot(g_new[trial], self.s[t]) > 0) & (_rms(g_new[trial]) > self.tol[t])
            if over.any():
                o = t[over]
                g0s = _dot(self.g[o], self.s[o])
                g1s = _dot(g_new[trial][over], self.s[o])
                alpha = np.clip(g0s / (g0s - g1s), 0.05, 0.95)
                self.s[o] *= alpha[:, None]
                self.point[o] = self.x[o] + self.s[o]
                self.phase[o] = SECANT
            accept[np.flatnonzero(trial)[~over]] = True
        accept |= phase == SECANT
        moved = accept & (phase != INIT)
        if moved.any():
            m = idx[moved]
            self.mem.add(m, self.s[m], g_new[moved] - self.g[m])
            self.iterations[m] += 1
        a = idx[accept]
        self.x[a], self.g[a] = self.point[a], g_new[accept]
        rms = _rms(self.g[a])
        better = rms < self.best_rms[a]
        b = a[better]
        self.best_rms[b], self.best_x[b], self.best_g[b] = rms[better], self.x[b], self.g[b]
        dropped = rms < 0.99 * self.stall_ref[a]
        self.stall_ref[a[dropped]], self.stalled[a[dropped]] = rms[dropped], 0
        self.stalled[a[~dropped]] += 1
        converged = rms <= self.tol[a]
        if self.kink_radius is not None:
            converged |= self._kink_test(a, converged)
        floor = (self.stalled[a] >= self.patience) & \
            (self.best_rms[a] <= STALL_BAND * self.tol[a])
        done = converged | (self.iterations[a] >= self.max_it[a]) | floor
        back = a[done & ~converged]                       # unconverged: the best point seen
        self.x[back], self.g[back] = self.best_x[back], self.best_g[back]
        self.phase[a[done]] = IDLE
        self._propose(a[~done])
        return a[done]

    def _kink_test(self, a: np.ndarray, converged: np.ndarray) -> np.ndarray:
        """Remember the accepted points of copies ``a``; the nonsmooth stationarity test
        (module docstring) of those not ``converged`` whose best RMS force has not dropped
        by 1 % for a multiple of KINK_EVERY iterations. True where a copy passed it."""
        slot = self.recent_n[a] % KINK_POINTS
        self.recent_x[a, slot], self.recent_g[a, slot] = self.x[a], self.g[a]
        self.recent_n[a] += 1
        hit = np.zeros(len(a), dtype=bool)
        stalled = self.stalled[a]
        due = ~converged & (stalled > 0) & (stalled % KINK_EVERY == 0) & \
            (self.recent_n[a] >= 2)
        if not due.any():
            return hit
        t = a[due]
        n_recent = np.minimum(self.recent_n[t], KINK_POINTS)
        mask = np.arange(KINK_POINTS)[None, :] < n_recent[:, None]
        apart = (self.recent_x[t] - self.x[t][:, None]).reshape(len(t), KINK_POINTS, -1, 3)
        mask &= np.linalg.norm(apart, axis=-1).max(-1) <= self.kink_radius
        some = np.flatnonzero(mask.sum(1) >= 2)
        ok = np.zeros(len(t), dtype=bool)
        if some.size:
            v = min_norm_combination(self.recent_g[t[some]], mask[some])
            small = np.sqrt(np.mean(v * v, axis=1)) <= self.tol[t[some]]
            ok[some[small]] = True
            self.kink_g[t[ok]], self.kinked[t[ok]] = v[small], True
        hit[np.flatnonzero(due)[ok]] = True
        return hit

    def _h0(self, idx: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        """The preconditioner rows ↦ (A + wwᵀ)⁻¹·rows/K_REF of copies ``idx``, or None where
        none of them has a metric or a stiff direction."""
        metric = self.has_metric[idx]
        w = self.w[idx]
        has_metric = bool(metric.any())
        if not has_metric and not w.any():
            return None
        # the copies' inverse metrics, gathered once: h0 is applied up to three times a call
        ainv = self.ainv[idx[metric]] if has_metric else None

        def inverse_metric(rows: np.ndarray) -> np.ndarray:
            out = rows.copy()
            if has_metric:
                out[metric] = np.matmul(ainv, rows[metric][:, :, None])[:, :, 0]
            return out

        u = inverse_metric(w)
        denom = 1.0 + _dot(w, u)

        def h0(q: np.ndarray) -> np.ndarray:
            y = inverse_metric(q)
            return (y - u * (_dot(w, y) / denom)[:, None]) / K_REF
        return h0

    def _propose(self, idx: np.ndarray) -> None:
        """Next trial points of copies ``idx`` from their accepted points."""
        if not idx.size:
            return
        g = self.g[idx]
        h0 = self._h0(idx)
        d = self.mem.direction(idx, g, h0)
        bad = _dot(d, g) >= 0                             # stale memory: steepest descent
        if bad.any():
            self.mem.used[idx[bad]] = 0
            d[bad] = -(g if h0 is None else h0(g))[bad]
        longest = np.maximum(np.linalg.norm(d.reshape((len(idx), -1, 3)), axis=-1).max(-1),
                             1e-300)
        # a fresh copy's first step: a short steepest-descent one, or the preconditioned
        # (Newton-like) step itself
        fresh = (self.mem.used[idx] == 0) & (h0 is None)
        scale = np.minimum(np.where(fresh, FIRST_STEP_NM / longest, 1.0),
                           self.max_step / longest)
        self.s[idx] = d * scale[:, None]
        self.point[idx] = self.x[idx] + self.s[idx]
        self.phase[idx] = TRIAL


def minimize_copies(forces: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray,
                    tolerance: np.ndarray, max_iterations: np.ndarray, *,
                    memory: int = 10, max_step: float = 0.02, patience: int = 100,
                    kink_radius: float | None = KINK_RADIUS) -> CopyMinimization:
    """Minimise A independent copies to the end with per-copy L-BFGS (:class:`CopyLBFGS`).

    Args:
        forces: ``forces(idx, x_idx)`` → (len(idx), n, 3) total forces (kJ/mol/nm) of copies
            ``idx`` at positions ``x_idx`` (nm).
        x: (A, n, 3) start positions, nm.
        tolerance: (A,) RMS force (kJ/mol/nm, per component) at which a copy has converged.
        max_iterations: (A,) L-BFGS iterations per copy at most.
        memory, max_step, patience, kink_radius: see :class:`CopyLBFGS`.

    ``force`` of the result is :meth:`CopyLBFGS.result`'s (after a kink stop: the smallest
    combination of the forces around the point).
    """
    x = np.asarray(x, dtype=np.float64)
    n_copies = len(x)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), (n_copies,))
    max_it = np.broadcast_to(np.asarray(max_iterations, dtype=np.int64), (n_copies,))
    opt = CopyLBFGS(n_copies, x.shape[1:], memory=memory, max_step=max_step,
                    patience=patience, kink_radius=kink_radius)
    for c in range(n_copies):
        opt.start(c, x[c], tol[c], max_it[c])
    while True:
        idx, points = opt.pending()
        if not idx.size:
            break
        opt.update(idx, forces(idx, points))
    xs = opt.x.reshape(x.shape)
    f = np.stack([opt.result(c)[1] for c in range(n_copies)]).reshape(x.shape)
    return CopyMinimization(x=xs.copy(), force=f, evaluations=opt.evaluations.copy(),
                            converged=_rms(f) <= tol)
