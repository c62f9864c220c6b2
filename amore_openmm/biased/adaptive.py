"""Window placement for a trained χ: short pilot rounds add windows and stiffen κ until
neighbouring windows overlap (:func:`plan_windows` → :class:`WindowPlan`).

A χ from ISOKANN is flat in the basins and steep at the saddle, so F(χ) is steep near χ = 0
and 1 and equally spaced windows with one κ slide into the basins and leave gaps. Each
round runs every window briefly and reads, per window, the mean χ m_k and the mean force
F'_k ≈ κ_k·(z_k − m_k) (umbrella integration); then

* a window whose mean is off its centre by more than the local spacing Δ_k gets
  κ_k ← 2|F'_k|/Δ_k clipped to [2κ_k, 4κ_k] (so the pull F'/κ goes within Δ/2);
* a neighbour pair that overlaps less than the target gets a window at its midpoint with
  the pair's larger κ (narrower spacing at the same width).

The stiffer restraint where χ is steep needs a finer integrator step: the windows run with
``substeps="auto"`` (see :class:`~amore_openmm.biased.UmbrellaSampler`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .umbrella import UmbrellaSampler, auto_kappa

__all__ = ["plan_windows", "WindowPlan", "pair_overlap"]

#: neighbour overlap the pilot asks for: above the certificate's MIN_OVERLAP (0.03) with
#: margin, because a pilot's few correlated frames make its overlap noisy
PILOT_OVERLAP = 0.1

#: closest two windows may get (χ units): below this a gap is not a placement problem
MIN_SPACING = 1.0 / 256


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


@dataclass
class WindowPlan:
    """Where the windows go and how stiff they are.

    Attributes:
        z: (K,) centres (sorted). kappa: (K,) stiffnesses (kJ/mol).
        substeps: (K,) substeps the last pilot needed (a start for the production run).
        overlap: (K−1,) neighbour overlap in the last pilot round.
        converged: every overlap ≥ the target and every window held within its spacing.
        rounds: pilot rounds run. pilot_frames: frames per window per round.
        note: where and why the plan falls short (empty when converged).
        history: per round (windows, min overlap).
    """

    z: np.ndarray
    kappa: np.ndarray
    substeps: np.ndarray
    overlap: np.ndarray
    converged: bool
    rounds: int
    pilot_frames: int
    note: str = ""
    history: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"windows": self.z.tolist(), "kappa_kJ_mol": self.kappa.tolist(),
                "pilot_substeps": self.substeps.tolist(), "pilot_overlap": self.overlap.tolist(),
                "converged": self.converged, "rounds": self.rounds,
                "pilot_frames": self.pilot_frames, "note": self.note,
                "history": [list(h) for h in self.history]}


def _spacing(z: np.ndarray) -> np.ndarray:
    gaps = np.diff(z)
    left = np.concatenate([[np.inf], gaps])
    right = np.concatenate([gaps, [np.inf]])
    return np.minimum(left, right)


def plan_windows(system: Any, model: Any, initial: int = 11, kappa: Any = "auto",
                 max_windows: int = 64, rounds: int = 8, pilot_frames: int = 100,
                 stride: int | None = None, target: float = PILOT_OVERLAP, seed: int = 0,
                 platform: str = "Reference", backend: str = "auto",
                 max_substeps: int = 64, log: Any = None) -> WindowPlan:
    """Pilot rounds that place windows on [0, 1] until neighbours overlap by ``target``.

    Args:
        system, model: as for :class:`UmbrellaSampler`.
        initial: equally spaced windows of the first round. kappa: their κ (kJ/mol, or
            "auto": :func:`auto_kappa` of that spacing).
        max_windows: window budget. rounds: most pilot rounds.
        pilot_frames: frames per window per round (a quarter of that again is equilibration).
        stride: steps per frame (default: the system's lag_steps). target: overlap wanted.
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
    z = np.linspace(0.0, 1.0, int(initial))
    kap = np.full(len(z), auto_kappa(z, system.kT)) if isinstance(kappa, str) else \
        np.broadcast_to(np.asarray(kappa, dtype=float), z.shape).copy()
    history: list[tuple[int, float]] = []
    sub = np.ones(len(z), dtype=np.int64)
    for r in range(int(rounds)):
        sampler = UmbrellaSampler(system, model, z, kappa=kap, platform=platform,
                                  backend=backend, substeps="auto", max_substeps=max_substeps,
                                  min_substeps=sub)
        s = sampler.run(frames=int(pilot_frames), stride=stride,
                        equilibration=max(1, int(pilot_frames) // 4), seed=seed + 7919 * r)
        chis = [s.chi[s.window == k] for k in range(len(z))]
        mean = np.array([c.mean() for c in chis])
        ov = np.array([pair_overlap(chis[k], chis[k + 1]) for k in range(len(z) - 1)])
        sub = s.substeps
        history.append((len(z), float(ov.min())))
        dz = _spacing(z)
        if log is not None:
            log(f"umbrella pilot round {r + 1}: {len(z)} windows, min overlap {ov.min():.3f}, "
                f"off-centre {int(np.sum(np.abs(mean - z) > dz))}, substeps ≤ {sub.max()}")
        # the ends: a window at 0 or 1 sitting inside [0, 1] short of its centre is in a
        # basin, where it belongs; it only has to reach its neighbour (the overlap test)
        off = np.abs(mean - z) > dz
        off[0] &= mean[0] < z[0]
        off[-1] &= mean[-1] > z[-1]
        too_stiff = s.stiffness > 2 * sampler.stiffness_limit
        gaps = np.flatnonzero(ov < target)
        if len(gaps) == 0 and not off.any():
            return WindowPlan(z, kap, sub, ov, True, r + 1, int(pilot_frames),
                              history=history)
        if r == int(rounds) - 1:
            break
        force = kap * (z - mean)
        new_kap = kap.copy()
        # at most ×4 a round: a window still walking in from its neighbour looks pulled off
        new_kap[off] = np.clip(2 * np.abs(force[off]) / dz[off], 2 * kap[off], 4 * kap[off])
        add_z, add_k, add_s = [], [], []
        for g in gaps:
            mid = 0.5 * (z[g] + z[g + 1])
            if z[g + 1] - z[g] < 2 * MIN_SPACING or len(z) + len(add_z) >= int(max_windows):
                continue
            add_z.append(mid)
            add_k.append(max(new_kap[g], new_kap[g + 1]))
            add_s.append(max(sub[g], sub[g + 1]))
        if not add_z and not off.any():
            break      # nothing left to change within the budget
        # a stiffer κ needs proportionally finer steps (Brownian; √ for Langevin): start there
        ratio = new_kap / kap if system.integrator == "brownian" else np.sqrt(new_kap / kap)
        sub = np.minimum(np.ceil(sub * ratio), max_substeps).astype(np.int64)
        z = np.concatenate([z, add_z])
        kap = np.concatenate([new_kap, add_k])
        order = np.argsort(z, kind="stable")
        z, kap = z[order], kap[order]
        sub = np.concatenate([sub, np.asarray(add_s, dtype=np.int64)])[order]
    bad = [f"[{z[g]:.3f}, {z[g + 1]:.3f}] (overlap {ov[g]:.3f})" for g in gaps]
    parts = []
    if bad:
        parts.append("neighbouring windows still do not overlap on " + ", ".join(bad[:6]))
    if off.any():
        parts.append("windows pulled off their centre at z = " +
                     ", ".join(f"{v:.3f}" for v in z[off][:6]))
    if too_stiff.any():
        parts.append(f"χ is too steep for the finest step (timestep/{max_substeps}) at z = " +
                     ", ".join(f"{v:.3f}" for v in z[too_stiff][:6]))
    note = "; ".join(parts) + (f" after {len(history)} pilot rounds, {len(z)} windows "
                               f"(budget {max_windows})")
    return WindowPlan(z, kap, sub, ov, False, len(history), int(pilot_frames), note=note,
                      history=history)
