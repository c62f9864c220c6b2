"""Window placement for a trained χ: pilot rounds estimate F(χ), and the windows are designed
on that estimate (:func:`plan_windows` → :class:`WindowPlan`).

A χ from ISOKANN is flat in the basins and steep between them, so F(χ) is *concave* at the
basin edges (it rises by several kT over a few hundredths of χ, then levels off). A window
0.5·κ·(χ − z)² with κ below the local |F''| is bimodal there: it slides into the basin and
leaves a gap, and stiffening it until it sits on z drives κ far above what the step can
integrate where χ is steep in space. Instead:

1. umbrella integration (Kästner & Thiel, JCP 123, 144104 (2005)) of every pilot window
   of every round gives F'(χ) from each well's χ mean and variance, with no overlap needed
   (a window that split between a basin and its centre counts as two wells,
   :func:`window_modes`); F'(χ) is integrated to F(χ) (:func:`mean_force_profile`);
2. :func:`design_windows` places windows on that F: their *predicted* χ means step along χ
   as far as a predicted neighbour overlap allows; each gets the least κ for which its
   predicted biased F is convex (one well: more κ only where F is concave, and the
   stiffest where no pilot has been yet), at most what the finest step integrates there;
   and its centre z is moved past the mean against the mean force so that the mean lands
   where wanted.

Rounds stop when the pilot's measured overlaps reach ``target`` and every χ bin between the
outer windows is visited (after one more round if those windows were designed stiff on
unvisited χ: the next design, on known F, is softer). The windows run with
``substeps="auto"`` (see :class:`~amore_openmm.biased.UmbrellaSampler`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .umbrella import UmbrellaSampler, chi_grad_metric

__all__ = ["plan_windows", "WindowPlan", "pair_overlap", "mean_force_profile",
           "design_windows", "window_modes", "PILOT_OVERLAP", "DESIGN_OVERLAP"]

#: neighbour overlap the pilot asks for: above the certificate's MIN_OVERLAP (0.03) with
#: margin, because a pilot's few correlated frames make its overlap noisy
PILOT_OVERLAP = 0.1

#: predicted neighbour overlap the design aims at: a pilot's histogram overlap of few frames
#: reads lower than the true one, so the design keeps a margin above PILOT_OVERLAP
DESIGN_OVERLAP = 0.3

#: χ grid of the pilot F(χ): wider than [0, 1] because a trained χ overshoots it a little
GRID = np.linspace(-0.1, 1.1, 1201)

#: bins of [0, 1] that every plan must visit (the certificate's default binning)
COVER_BINS = 50


def pair_overlap(a: np.ndarray, b: np.ndarray, bins: int = 30) -> float:
    """Σ min(p, q) of the χ histograms of two windows on ``bins`` bins spanning both."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if not hi > lo:
        return 1.0
    edges = np.linspace(lo, hi, int(bins) + 1)
    p = np.histogram(a, edges)[0] / len(a)
    q = np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(p, q).sum())


def mean_force_profile(mean: Any, var: Any, counts: Any, z: Any, kappa_kT: Any,
                       grid: np.ndarray = GRID) -> np.ndarray:
    """F(χ) in kT (min 0) on ``grid`` by umbrella integration: a well k (χ mean m_k,
    variance v_k, N_k frames, in a window of centre z_k and stiffness κ_k in kT) balances
    the mean force F'(m_k) = κ_k(z_k − m_k); F'(χ) is the local-linear regression of these
    on the wells near χ (weights N_k times their Gaussian χ density), integrated along the
    grid. Only the means set F' (a short pilot's variance reads too small, so the wells'
    own curvature 1/v_k − κ_k would make F too convex); the variances set the reach."""
    m, v = np.asarray(mean, float), np.asarray(var, float)
    n, zz, kap = np.asarray(counts, float), np.asarray(z, float), np.asarray(kappa_kT, float)
    dx = grid[1] - grid[0]
    v = np.maximum(v, (2 * dx) ** 2)                 # a frozen well: no narrower than cells
    force = kap * (zz - m)
    d = m[None, :] - grid[:, None]
    logp = np.log(n)[None, :] - 0.5 * np.log(v)[None, :] - 0.5 * d * d / v[None, :]
    w = np.exp(logp - logp.max(axis=1, keepdims=True))
    s0, s1 = w.sum(1), (w * d).sum(1)
    s2 = (w * d * d).sum(1) + s0 * dx ** 2            # a lone well: its own force, flat
    t0, t1 = w @ force, (w * d) @ force
    slope_free = (s2 * t0 - s1 * t1) / (s0 * s2 - s1 * s1)
    f = np.concatenate([[0.0], np.cumsum(0.5 * (slope_free[1:] + slope_free[:-1]) * dx)])
    return f - f.min()


def window_modes(chi: np.ndarray, width: float) -> list[np.ndarray]:
    """A window's frames split at gaps in χ wider than max(width/4, 10× the median gap): a
    window sliding off a concave edge holds two clusters (a basin and its centre), and
    umbrella integration treats each as one Gaussian well of the biased F."""
    c = np.sort(np.asarray(chi, dtype=float))
    if len(c) < 4:
        return [c]
    gaps = np.diff(c)
    cut = np.flatnonzero(gaps > max(0.25 * width, 10 * np.median(gaps)))
    parts = np.split(c, cut + 1)
    return [q for q in parts if len(q) >= 3] or [c]


def _window(f: np.ndarray, z: float, kap: float, grid: np.ndarray) -> np.ndarray:
    b = f + 0.5 * kap * (grid - z) ** 2
    p = np.exp(-(b - b.min()))
    return p / p.sum()


def _moments(p: np.ndarray, grid: np.ndarray) -> tuple[float, float]:
    m = float(p @ grid)
    return m, float(np.sqrt(max(p @ (grid - m) ** 2, 0.0)))


def _aim(f: np.ndarray, kap: float, mu: float, grid: np.ndarray) -> tuple[float, np.ndarray]:
    """Centre z ∈ [0, 1] whose predicted χ mean is ``mu`` (clipped to the ends); the mean
    grows with z (d⟨χ⟩/dz = κ·var), so bisection."""
    lo, hi = 0.0, 1.0
    if _moments(_window(f, lo, kap, grid), grid)[0] >= mu:
        return lo, _window(f, lo, kap, grid)
    if _moments(_window(f, hi, kap, grid), grid)[0] <= mu:
        return hi, _window(f, hi, kap, grid)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _moments(_window(f, mid, kap, grid), grid)[0] < mu:
            lo = mid
        else:
            hi = mid
    z = 0.5 * (lo + hi)
    return z, _window(f, z, kap, grid)


def _fit(f: np.ndarray, mu: float | None, z: float | None, ladder: np.ndarray, width: float,
         grid: np.ndarray, cap: np.ndarray | None, known: np.ndarray | None
         ) -> tuple[float, float, np.ndarray]:
    """Least κ of ``ladder`` for which the window (aimed at mean ``mu``, or at centre ``z``)
    is convex, F'' + κ ≥ 0.5/width² wherever 99 % of its frames fall, F'' taken over
    half the window's own χ spread or a quarter width (its scale, above the noise of F): it has
    one well about the design width or narrower. Where F is concave that takes more κ; a
    softer window there is bimodal (a basin and a far tail), and a short run need not
    equilibrate its two halves. The stiffest κ when none is enough (at most ``cap``, κ in kT per
    grid cell, wherever the window goes)."""
    best = None
    for kap in ladder:
        zz, p = _aim(f, kap, mu, grid) if z is None else (z, _window(f, z, kap, grid))
        cum = np.cumsum(p)
        near = (cum > 5e-3) & (cum < 1 - 5e-3)        # where 99 % of its frames fall
        if cap is not None and best is not None and kap > np.min(cap[near]):
            break                       # too stiff for the finest step: the stiffest that is not
        best = (float(zz), float(kap), p)
        h = max(0.5 * _moments(p, grid)[1], 0.25 * width)
        x = grid[near]
        fpp = (np.interp(x + h, grid, f) - 2 * f[near] + np.interp(x - h, grid, f)) / h ** 2
        if known is not None:
            fpp = np.where(known[near], fpp, -np.inf)  # no pilot frames there: the stiffest
        if np.min(fpp) + kap >= 0.5 / width ** 2:
            break
    return best


def design_windows(f_kT: np.ndarray, width: float, overlap: float = DESIGN_OVERLAP,
                   max_windows: int = 64, grid: np.ndarray = GRID, stiffen: float = 64.0,
                   kappa_cap: np.ndarray | None = None, known: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows for a free energy ``f_kT`` (kT on ``grid``): one at z = 0 and one at z = 1 (the
    basins), and between them windows whose predicted χ means step up as far as a predicted
    neighbour overlap Σ min(p, q) ≥ ``overlap`` allows. Each gets the least κ in
    kT/width² · 2^(j/2), up to ``stiffen``× that, that keeps it convex (one well), and no
    more than ``kappa_cap`` (kT, per grid cell: the stiffest κ the finest step integrates
    there) allows. ``known``: grid cells the pilots visited; elsewhere F is interpolated
    linearly between visited cells, and a window reaching there gets the stiffest κ (it
    holds its place whatever F is, and the next pilot round measures F there).

    Returns (z (K,), κ in kT (K,), predicted neighbour overlaps (K − 1,)).
    """
    if not 0 < float(overlap) < 1 or not float(width) > 0:
        raise ValueError(f"overlap must lie in (0, 1) and width be > 0; got {overlap}, {width}")
    f = np.asarray(f_kT, dtype=float)
    if known is not None:
        known = np.asarray(known, dtype=bool)
        f = np.interp(grid, grid[known], f[known]) if known.any() else np.zeros(len(grid))
    ladder = 1.0 / width ** 2 * 2.0 ** (np.arange(int(2 * np.log2(stiffen)) + 1) / 2)
    z_end, k_end, p_end = _fit(f, None, 1.0, ladder, width, grid, kappa_cap, known)
    zs, ks, ps = [0.0], [], []
    z0, k0, p0 = _fit(f, None, 0.0, ladder, width, grid, kappa_cap, known)
    ks.append(k0)
    ps.append(p0)
    while len(zs) < int(max_windows) - 1:
        prev = ps[-1]
        if np.minimum(prev, p_end).sum() >= overlap:
            break
        m_prev = _moments(prev, grid)[0]
        best = None
        for mu in m_prev + width * np.arange(0.25, 4.01, 0.25):
            cand = _fit(f, mu, None, ladder, width, grid, kappa_cap, known)
            if cand[0] >= 1.0:
                break                  # the mean cannot go further with z inside [0, 1]
            if cand[0] < zs[-1]:
                continue               # the centres stay ordered along χ
            if best is not None and np.minimum(prev, cand[2]).sum() < overlap:
                break
            best = cand
        if best is None or _moments(best[2], grid)[0] <= m_prev + 0.1 * width:
            break                      # no progress: the end window takes over
        zs.append(best[0])
        ks.append(best[1])
        ps.append(best[2])
    zs.append(z_end)
    ks.append(k_end)
    ps.append(p_end)
    z, k = np.asarray(zs), np.asarray(ks)
    order = np.argsort(z, kind="stable")
    ps = [ps[i] for i in order]
    ov = np.array([np.minimum(ps[i], ps[i + 1]).sum() for i in range(len(ps) - 1)])
    return z[order], k[order], ov


@dataclass
class WindowPlan:
    """Where the windows go and how stiff they are.

    Attributes:
        z: (K,) centres (sorted). kappa: (K,) stiffnesses (kJ/mol).
        substeps: (K,) substeps the last pilot needed (a start for the production run).
        overlap: (K−1,) neighbour overlap in the last pilot round.
        converged: every overlap ≥ the target and every χ bin between the outer windows
            visited in the last pilot round.
        rounds: pilot rounds run. pilot_frames: frames per window per round.
        note: where and why the plan falls short (empty when converged).
        history: per round (windows, min overlap, unvisited χ bins of COVER_BINS).
        chi, f_kT: the pooled pilots' F(χ) (umbrella integration) the windows were designed on.
    """

    z: np.ndarray
    kappa: np.ndarray
    substeps: np.ndarray
    overlap: np.ndarray
    converged: bool
    rounds: int
    pilot_frames: int
    note: str = ""
    history: list[tuple[int, float, int]] = field(default_factory=list)
    chi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    f_kT: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        return {"windows": self.z.tolist(), "kappa_kJ_mol": self.kappa.tolist(),
                "pilot_substeps": self.substeps.tolist(), "pilot_overlap": self.overlap.tolist(),
                "converged": self.converged, "rounds": self.rounds,
                "pilot_frames": self.pilot_frames, "note": self.note,
                "history": [list(h) for h in self.history],
                "pilot_chi": self.chi[::10].tolist(), "pilot_F_kT": self.f_kT[::10].tolist()}


def _uncovered(chi: np.ndarray, z: np.ndarray, bins: int = COVER_BINS) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    inside = (edges[1:] > z.min()) & (edges[:-1] < z.max())
    return np.flatnonzero(inside & (np.histogram(chi, edges)[0] == 0))


def _stiffness_per_kappa(sampler: UmbrellaSampler, g: np.ndarray, kT: float) -> np.ndarray:
    """Stiffness number per unit κ (kT) at the system's step for Σ‖∇ᵢχ‖²/mᵢ = ``g``."""
    dt = sampler.system.timestep
    per = dt / sampler.system.friction if sampler.system.integrator == "brownian" else dt * dt
    return per * kT * g


def _g_cells(chi: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Largest Σ‖∇ᵢχ‖²/mᵢ of the pilot frames per GRID cell (unseen cells: the largest)."""
    cell = np.clip(np.searchsorted(GRID, chi), 0, len(GRID) - 1)
    out = np.zeros(len(GRID))
    np.maximum.at(out, cell, g)
    seen = np.zeros(len(GRID), bool)
    seen[cell] = True
    return np.where(seen, out, g.max())


def _predicted_substeps(sampler: UmbrellaSampler, f: np.ndarray, z: np.ndarray,
                        kap_kT: np.ndarray, per_kappa: np.ndarray) -> np.ndarray:
    """Substeps each designed window will need where it is predicted to go."""
    out = []
    for zk, kk in zip(z, kap_kT):
        p = _window(f, zk, kk, GRID)
        s = per_kappa[p > 1e-3 * p.max()]
        out.append(sampler.needed_substeps(1.2 * kk * float(s.max())))
    return np.asarray(out, dtype=np.int64)


def plan_windows(system: Any, model: Any, initial: int = 11, kappa: Any = "auto",
                 max_windows: int = 64, rounds: int = 8, pilot_frames: int = 100,
                 stride: int | None = None, target: float = PILOT_OVERLAP, seed: int = 0,
                 platform: str = "Reference", backend: str = "auto",
                 max_substeps: int = 64, log: Any = None,
                 overlap: float = DESIGN_OVERLAP, width: float | None = None) -> WindowPlan:
    """Pilot rounds that design windows on [0, 1] until neighbours overlap by ``target``.

    Args:
        system, model: as for :class:`UmbrellaSampler`.
        initial: windows of the first (scout) round, equally spaced. width: the design's
            χ spread of a window where F is flat (default half the scout's spacing,
            0.5/(initial − 1)). kappa: the scout's κ (kJ/mol, or "auto": kT/width²).
        max_windows: window budget. rounds: most pilot rounds.
        pilot_frames: frames per window per round (a quarter of that again is equilibration).
        stride: steps per frame (default: the system's lag_steps). target: measured overlap
            wanted. overlap: predicted overlap the design aims at.
        max_substeps: finest integrator step allowed (timestep / max_substeps).
        log: optional callable taking one line per round (e.g. ``print``).
    """
    if int(initial) < 2 or int(max_windows) < int(initial) or int(rounds) < 1:
        raise ValueError(f"initial must be >= 2, max_windows >= initial and rounds >= 1; got "
                         f"{initial}, {max_windows}, {rounds}")
    if not 0 < float(target) < 1:
        raise ValueError(f"target overlap must lie in (0, 1), got {target}")
    if int(pilot_frames) < 10:
        raise ValueError(f"pilot_frames must be >= 10, got {pilot_frames}")
    kT = system.kT
    width = 0.5 / (int(initial) - 1) if width is None else float(width)
    if not 0 < width < 1:
        raise ValueError(f"width must lie in (0, 1) (χ units), got {width}")
    z = np.linspace(0.0, 1.0, int(initial))
    kap = np.full(len(z), kT / width ** 2) if isinstance(kappa, str) else \
        np.broadcast_to(np.asarray(kappa, dtype=float), z.shape).copy()
    history: list[tuple[int, float, int]] = []
    sub = np.ones(len(z), dtype=np.int64)
    pooled: list[np.ndarray] = []           # (mean, var, N, z, κ/kT) of every pilot well
    g_chi, g_val = [], []
    known = np.zeros(len(GRID), bool)      # cells inside some pilot well's χ range
    f = np.zeros(len(GRID))
    good, explored = None, True
    for r in range(int(rounds)):
        sampler = UmbrellaSampler(system, model, z, kappa=kap, platform=platform,
                                  backend=backend, substeps="auto", max_substeps=max_substeps,
                                  min_substeps=sub)
        s = sampler.run(frames=int(pilot_frames), stride=stride,
                        equilibration=max(1, int(pilot_frames) // 4), seed=seed + 7919 * r)
        chis = [s.chi[s.window == k] for k in range(len(z))]
        ov = np.array([pair_overlap(chis[k], chis[k + 1]) for k in range(len(z) - 1)])
        sub = s.substeps
        empty = _uncovered(s.chi, z)
        too_stiff = s.stiffness > 2 * sampler.stiffness_limit
        history.append((len(z), float(ov.min()), len(empty)))
        if log is not None:
            log(f"umbrella pilot round {r + 1}: {len(z)} windows, min overlap {ov.min():.3f}, "
                f"unvisited χ bins {len(empty)}, substeps ≤ {sub.max()}, "
                f"κ {kap.min():.3g}–{kap.max():.3g} kJ/mol")
        for c, zk, kk in zip(chis, z, kap):
            for q in window_modes(c, width):
                pooled.append(np.array([q.mean(), q.var(), len(q), zk, kk / kT]))
                known |= (GRID >= q.min()) & (GRID <= q.max())
        pk = np.array(pooled)
        f = mean_force_profile(pk[:, 0], pk[:, 1], pk[:, 2], pk[:, 3], pk[:, 4])
        g_chi.append(s.chi)
        g_val.append(chi_grad_metric(model, s.positions, sampler.masses))
        if ov.min() >= target and len(empty) == 0:
            good = WindowPlan(z, kap, sub, ov, True, r + 1, int(pilot_frames),
                              history=history.copy(), chi=GRID, f_kT=f)
            if not explored or r == int(rounds) - 1:
                return good
            # these windows were designed stiff where no pilot had been: with F known there
            # now, one more round may do with fewer, softer windows (else keep these)
        elif good is not None:
            good.rounds = r + 1
            good.history = history.copy()
            return good
        if r == int(rounds) - 1:
            break
        explored = bool(np.any(~known[(GRID >= 0) & (GRID <= 1)]))
        per_kappa = _stiffness_per_kappa(
            sampler, _g_cells(np.concatenate(g_chi), np.concatenate(g_val)), kT)
        # the stiffest κ whose finest step still meets the stiffness limit, per χ cell
        cap = sampler.stiffness_limit * max_substeps / (1.2 * np.maximum(per_kappa, 1e-300))
        z_new, k_new, _ = design_windows(f, width, overlap, max_windows, kappa_cap=cap,
                                         known=known)
        z, kap = z_new, k_new * kT
        sub = _predicted_substeps(sampler, f, z, k_new, per_kappa)
    bad = [f"[{z[g]:.3f}, {z[g + 1]:.3f}] (overlap {ov[g]:.3f})"
           for g in np.flatnonzero(ov < target)]
    parts = []
    if bad:
        parts.append("neighbouring windows still do not overlap on " + ", ".join(bad[:6]))
    if len(empty):
        parts.append(f"{len(empty)} χ bins of {COVER_BINS} between the outer windows unvisited")
    if too_stiff.any():
        parts.append(f"χ is too steep for the finest step (timestep/{max_substeps}) at z = " +
                     ", ".join(f"{v:.3f}" for v in z[too_stiff][:6]))
    note = "; ".join(parts) + (f" after {len(history)} pilot rounds, {len(z)} windows "
                               f"(budget {max_windows})")
    return WindowPlan(z, kap, sub, ov, False, len(history), int(pilot_frames), note=note,
                      history=history, chi=GRID, f_kT=f)
