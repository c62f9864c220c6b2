"""Pieces of the ``science`` reproduction (VGVAPG, paper Fig. 3) that do not need a run.

- :func:`equilibrium_trajectories`: an equilibrium ensemble from R packed replicas (one
  Context, :func:`~amore_openmm.sampling.packing.pack_replicas`), each replica's
  equilibration discarded; :func:`koopman_pairs` turns it into Koopman data (x_t, x_{t+τ})
  with Boltzmann weight 1 (path nodes added later carry weight 0).
- :func:`halves_check`: convergence of the ensemble, first versus second half of every
  replica, per backbone dihedral (total-variation distance of the histograms).
- :func:`count_transitions`, :func:`stop_decision`: the adaptive loop's per-generation
  "new transitions seen" and its stopping rule.
- :func:`channel_summaries`: per-channel share, barrier, certified nodes, sensitivity
  profile and path-vs-ensemble agreement.
- :func:`choose_residue`, :func:`comparison_rows`, :func:`comparison_markdown`: the residue
  whose (φ, ψ) plane is drawn, and the table against the paper's numbers.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["equilibrium_trajectories", "remd_frames", "burst_starts_of", "koopman_pairs",
           "halves_check", "integrated_autocorrelation", "stationary_tv", "halves_diagnosis", "count_transitions",
           "stop_decision", "channel_summaries", "choose_residue", "comparison_rows",
           "comparison_markdown", "PAPER", "HALVES_TOLERANCE", "TIMESCALE_TOLERANCE",
           "CHANNEL_LEVELS", "SAME_PROCESS_CORR", "chi_correlation"]

#: largest total-variation distance between the halves' dihedral histograms called converged
#: (issue 23's criterion; 36 bins, so a stationary run needs thousands of independent frames)
HALVES_TOLERANCE = 0.05
#: relative change of the χ timescale below which a generation adds nothing (stopping rule)
TIMESCALE_TOLERANCE = 0.1

#: χ levels at which final paths are compared for channels: the transition region (paths
#: capped at path_max_nodes often stop short of χ = 0.1 or 0.9 on one side)
CHANNEL_LEVELS = np.linspace(0.2, 0.8, 13)

#: correlation over the ensemble above which the dihedral χ and the run's χ are called one
#: process (below it the dihedral saliency does not describe the run's slow coordinate)
SAME_PROCESS_CORR = 0.8

#: the paper's VGVAPG numbers (seeds/001, "VGVAPG" and Fig. 3); atoms 0-based here
PAPER = {"top_dihedral": "VAL3 ψ", "top_saliency": 0.0162, "ratio": 10.0,
         "atoms": (26, 28, 40, 42), "atoms_needed": 2, "top_n_atoms": 6, "channels": 4,
         "channels_needed": 2, "mse": 0.01}


# --------------------------------------------------------------------------------------------
# equilibrium ensemble
# --------------------------------------------------------------------------------------------
def equilibrium_trajectories(ms: Any, replicas: int, steps: int, equilibration_steps: int,
                             stride: int, seed: int, platform: str = "CPU",
                             progress: bool = False, checkpoint: Any = None) -> np.ndarray:
    """(R, F, n, 3) float32 frames, every ``stride`` steps, of R replicas run side by side.

    Replica r starts from the system's conformation r mod (number of conformations), all R
    copies in one packed Context. The first ``equilibration_steps`` of every replica are run
    but not returned; F = ``steps // stride`` frames follow. ``checkpoint``: a ``.npz`` path
    to checkpoint and resume the run (:func:`~amore_openmm.sampling.sample_trajectory`).
    """
    from ..sampling import sample_trajectory
    from ..sampling.packing import pack_replicas
    for name, v, lo in (("equilibrium_replicas", replicas, 1), ("steps", steps, stride),
                        ("stride", stride, 1), ("equilibration_steps", equilibration_steps, 0)):
        if int(v) < lo:
            raise ValueError(f"equilibrium_trajectories: {name} = {v} must be >= {lo}")
    psys = pack_replicas(ms, int(replicas))
    x0 = np.stack([ms.positions[r % len(ms.positions)] for r in range(int(replicas))])
    packed, shifts = psys.pack_positions(x0)
    n_eq = int(math.ceil(equilibration_steps / stride))
    n_frames = n_eq + int(steps) // int(stride)
    frames = sample_trajectory(psys.molecular_system(), n_frames, int(stride), seed,
                               x0=packed, platform=platform, progress=progress,
                               checkpoint=checkpoint)
    out = frames.reshape(n_frames, replicas, ms.n_atoms, 3) - shifts[None, :, None, :]
    return np.ascontiguousarray(out[n_eq:].transpose(1, 0, 2, 3), dtype=np.float32)


def remd_frames(ms: Any, n_exchanges: int, *, n_replicas: int = 4, t_max: Any = None,
                ps_per_exchange: float = 1.0, hmr: bool = True, equilibration_ps: float = 0.0,
                seed: int = 0, platform: str = "CPU", threads: int | None = None,
                checkpoint: Any = None, progress: bool = False
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(1, F, n, 3) float32 base-temperature frames of temperature replica exchange
    (:func:`~amore_openmm.sampling.replica_exchange.equilibrium_ensemble`, HMR at 4 fs with
    ``hmr``), one per exchange after the first ``equilibration_ps`` (discarded), and the
    run's record: ladder, neighbour acceptance, round trips. Replica r starts from the
    system's conformation r mod (number of conformations). Only the configurations are an
    ensemble at the base temperature: exchanges and HMR change the dynamics, so Koopman data
    must come from bursts of the original system (:func:`burst_starts_of`). ``checkpoint``:
    npz path, resumed from when it exists."""
    import os
    from ..sampling.replica_exchange import equilibrium_ensemble
    n_ex = int(n_exchanges)
    n_eq = int(math.ceil(float(equilibration_ps) / float(ps_per_exchange) - 1e-9))
    if n_ex - n_eq < 2:
        raise ValueError(f"remd_frames: remd_exchanges = {n_ex} leaves {n_ex - n_eq} frames "
                         f"after {n_eq} exchanges of equilibration; need >= 2 (raise "
                         "remd_exchanges or lower equilibration_steps)")
    cores = os.cpu_count() or 1
    threads = int(threads or min(int(n_replicas), cores))
    props = {"Threads": str(max(1, cores // threads))} if platform == "CPU" else None
    res = equilibrium_ensemble(ms, n_ex, t_max=t_max, n_replicas=int(n_replicas),
                               ps_per_exchange=float(ps_per_exchange), hmr=bool(hmr),
                               checkpoint=checkpoint, seed=int(seed), platform=platform,
                               properties=props, threads=threads if platform != "Reference"
                               else 1, progress=progress)
    frames = np.asarray(res.frames[n_eq:], dtype=np.float32)[None]
    info = {"method": "remd", "temperatures_K": [float(t) for t in res.temperatures],
            "acceptance": [None if not math.isfinite(a) else float(a) for a in res.acceptance],
            "n_attempted": res.n_attempted.tolist(), "n_accepted": res.n_accepted.tolist(),
            "round_trips": int(res.round_trips), "exchanges": int(res.n_exchanges),
            "exchanges_discarded": n_eq, "ps_per_exchange": float(ps_per_exchange),
            "steps_per_exchange": int(res.steps_per_exchange),
            "timestep_ps": float(res.timestep), "hmr": bool(hmr),
            "ns_per_replica": float(res.simulated_time_ps) / 1000.0,
            "base_energy_mean_kj": float(np.mean(res.frame_energies[n_eq:])),
            "base_energy_std_kj": float(np.std(res.frame_energies[n_eq:])),
            "threads": threads}
    return frames, info


def burst_starts_of(frames: np.ndarray, n_starts: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n_starts`` evenly spaced frames of (R, F, n, 3) ``frames`` as (S, n, 3)
    float32 burst starts, and their flat frame indices."""
    flat = np.asarray(frames, dtype=np.float32).reshape(-1, *np.shape(frames)[2:])
    pick = np.unique(np.linspace(0, len(flat) - 1, min(int(n_starts), len(flat))).round()
                     .astype(np.int64))
    return flat[pick], pick


def koopman_pairs(traj: np.ndarray, n_pairs: int, *, lag_steps: int, timestep: float,
                  system_name: str = "") -> Any:
    """Koopman data from equilibrium trajectories (R, F, n, 3) saved every lag: starts
    x_t and one end point x_{t+1} per start (K = 1), at most ``n_pairs`` evenly spaced
    pairs over all replicas, each with Boltzmann weight 1. The trajectory's own next frame is
    a burst of the same dynamics, so no extra sampling is needed."""
    from ..data import KoopmanData
    traj = np.asarray(traj, dtype=np.float32)
    if traj.ndim != 4 or traj.shape[1] < 2:
        raise ValueError(f"koopman_pairs: traj must be (replicas, frames >= 2, n, 3), got "
                         f"{traj.shape}")
    r, f = traj.shape[:2]
    idx = [(i, t) for i in range(r) for t in range(f - 1)]
    pick = np.unique(np.linspace(0, len(idx) - 1, min(int(n_pairs), len(idx))).round()
                     .astype(int))
    ri = np.array([idx[k][0] for k in pick])
    ti = np.array([idx[k][1] for k in pick])
    data = KoopmanData(traj[ri, ti], traj[ri, ti + 1][:, None], lag_steps=int(lag_steps),
                       timestep=float(timestep), system_name=system_name,
                       weights=np.ones(len(pick)))
    data.extra.update(replica=ri.astype(np.int64), frame=ti.astype(np.int64))
    data.extra["drop_counts"] = {}
    return data


def integrated_autocorrelation(series: np.ndarray, cutoff: float = 0.05) -> float:
    """Integrated autocorrelation time τ = 1 + 2 Σ ρ(t) in frames of a (replicas, frames)
    series, ρ summed until it first drops below ``cutoff`` (averaged over replicas)."""
    s = np.asarray(series, dtype=float)
    s = s - s.mean(axis=1, keepdims=True)
    n = s.shape[1]
    var = float((s ** 2).mean())
    if n < 3 or var <= 0.0:
        return 1.0
    # FFT autocovariance with zero padding (no circular wrap), mean over replicas
    f = np.fft.rfft(s, 2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n].mean(axis=0) / np.arange(n, 0, -1)
    rho = acov / acov[0]
    below = np.flatnonzero(rho[1:] < cutoff)
    stop = int(below[0]) + 1 if below.size else n
    return float(max(1.0, 1.0 + 2.0 * rho[1:stop].sum()))


def stationary_tv(p: np.ndarray, n1: float, n2: float,
                  tau: np.ndarray | float = 1.0) -> float:
    """Expected total-variation distance between two histograms of ``n1`` and ``n2``
    samples of one distribution ``p`` (normal approximation per bin); ``tau``: each bin's
    integrated autocorrelation time in samples (1: independent samples)."""
    q = np.asarray(p, dtype=float)
    sd = np.sqrt(q * (1.0 - q) * np.asarray(tau, dtype=float) * (1.0 / n1 + 1.0 / n2))
    return float(0.5 * math.sqrt(2.0 / math.pi) * sd.sum())


def halves_check(angles: np.ndarray, names: Sequence[str], bins: int = 36,
                 tolerance: float = HALVES_TOLERANCE) -> dict[str, Any]:
    """Compare the first and second half of every replica: (R, F, D) angles in radians.

    For each dihedral, the total-variation distance ½Σ|p₁ − p₂| between the histograms
    (``bins`` over (−π, π]) of the pooled first halves and the pooled second halves. The
    ensemble is called converged when the largest distance is below ``tolerance``.

    Why a run is not converged is reported too, per dihedral: the integrated autocorrelation
    time τ (frames; of cos and sin, the larger) and the effective sample size 2F·R/τ; the
    chance TV of this many *independent* frames (``tv_floor``, a lower bound: above the
    tolerance, even uncorrelated frames of this count could not pass); and ``frames_needed``,
    the frames at which the observed TV would reach the tolerance if it falls as 1/√N (an
    extrapolation, a lower bound when part of the TV is drift).
    """
    a = np.asarray(angles, dtype=float)
    if a.ndim != 3 or a.shape[1] < 2:
        raise ValueError(f"halves_check: angles must be (replicas, frames >= 2, dihedrals), "
                         f"got {a.shape}")
    if len(names) != a.shape[2]:
        raise ValueError(f"halves_check: {len(names)} names for {a.shape[2]} dihedrals")
    half = a.shape[1] // 2
    n_half = half * a.shape[0]
    edges = np.linspace(-np.pi, np.pi, int(bins) + 1)
    tv, tau, floor, needed = [], [], [], []
    for d in range(a.shape[2]):
        h1 = np.histogram(a[:, :half, d], edges)[0].astype(float)
        h2 = np.histogram(a[:, half:, d], edges)[0].astype(float)
        tv.append(0.5 * float(np.abs(h1 / h1.sum() - h2 / h2.sum()).sum()))
        tau.append(max(integrated_autocorrelation(np.cos(a[:, :, d])),
                       integrated_autocorrelation(np.sin(a[:, :, d]))))
        floor.append(stationary_tv((h1 + h2) / (h1 + h2).sum(), n_half, n_half))
        needed.append(int(math.ceil(2 * n_half * max(1.0, (tv[-1] / tolerance) ** 2))))
    worst = int(np.argmax(tv))
    slowest = int(np.argmax(tau))
    return {"tv": dict(zip(names, tv)), "max_tv": tv[worst], "worst": names[worst],
            "tolerance": float(tolerance), "converged": bool(tv[worst] < tolerance),
            "frames_per_half": int(n_half),
            "tau_frames": dict(zip(names, tau)),
            "n_eff": {n: n_half * 2 / t for n, t in zip(names, tau)},
            "tv_floor": dict(zip(names, floor)),
            "frames_needed": dict(zip(names, needed)),
            "slowest": names[slowest], "max_frames_needed": int(max(needed))}


def halves_diagnosis(halves: dict[str, Any], ps_per_frame: float) -> str:
    """One sentence on what limits the halves check: the slowest dihedral's τ, its effective
    samples and the sampling (ns per replica) a stationary run would need to pass."""
    slow = halves.get("slowest")
    if slow is None:  # a check written before the autocorrelation was recorded
        return ""
    tau_ps = halves["tau_frames"][slow] * ps_per_frame
    worst = halves["worst"]
    need_ns = halves["frames_needed"][worst] * ps_per_frame / 1000.0
    have_ns = halves["frames_per_half"] * 2 * ps_per_frame / 1000.0
    text = (f"slowest dihedral {slow}: τ {tau_ps:.3g} ps, {halves['n_eff'][slow]:.0f} "
            f"independent frames; chance TV of independent frames at {worst} "
            f"{halves['tv_floor'][worst]:.3f}")
    if not halves["converged"]:
        text += (f"; at 1/√N the worst TV reaches {halves['tolerance']:g} after "
                 f"≈ {need_ns:.3g} ns of frames (have {have_ns:.3g} ns)")
    return text


# --------------------------------------------------------------------------------------------
# adaptive generations
# --------------------------------------------------------------------------------------------
def count_transitions(chi_x: np.ndarray, chi_y: np.ndarray, level: float = 0.5) -> int:
    """Starts whose bursts crossed χ = ``level``: χ(x) (N,) and χ at the end points (N, K);
    a start counts once when any of its bursts ends on the other side."""
    cx = np.asarray(chi_x, dtype=float).reshape(-1, 1)
    cy = np.asarray(chi_y, dtype=float).reshape(len(cx), -1)
    return int(np.count_nonzero(((cx < level) != (cy < level)).any(axis=1)))


def stop_decision(records: Sequence[dict[str, Any]],
                  tolerance: float = TIMESCALE_TOLERANCE) -> tuple[bool, str]:
    """The stopping rule after the last of ``records`` (per-generation dicts with
    ``new_transitions`` and ``timescale_ps``): stop when the last generation's new starts saw
    no transition and the χ timescale changed by less than ``tolerance`` (relative)."""
    if len(records) < 2:
        return False, "needs two generations"
    prev, last = records[-2], records[-1]
    t0, t1 = prev.get("timescale_ps"), last.get("timescale_ps")
    if t0 is None or t1 is None or not (math.isfinite(t0) and math.isfinite(t1)) or t0 <= 0:
        return False, "χ timescale undefined"
    change = abs(t1 / t0 - 1.0)
    new = int(last.get("new_transitions") or 0)
    if new == 0 and change < tolerance:
        return True, (f"generation {last.get('generation')}: no new transition and χ "
                      f"timescale changed by {100 * change:.1f} % (< {100 * tolerance:.0f} %)")
    return False, f"{new} new transitions, timescale change {100 * change:.1f} %"


# --------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------
def _agreement(path: Any, sens: Any) -> tuple[float, float]:
    from ..sensitivity import path_agreement
    try:
        a = path_agreement(path, sens)
    except ValueError:
        return float("nan"), float("nan")
    return a.mse_nm4, a.mse_normalized


def _nanmean(values: Sequence[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def channel_summaries(channels: Sequence[Any], paths: Sequence[Any], sens: Any = None,
                      labels: Sequence[str] | None = None, top: int = 6
                      ) -> list[dict[str, Any]]:
    """One dict per channel (:class:`~amore_openmm.channels.Channel`, ranked) of ChiPaths
    ``paths``: share, density, member paths, barrier (largest certified-node barrier of its
    members, kJ/mol), certified-node count, the ``top`` atoms of its mean per-atom ‖∇ᵢχ‖²
    over certified nodes, and, with a Sensitivity ``sens``, the path-vs-ensemble agreement
    (mean over members: MSE of the ‖∇ᵢχ‖² profiles, nm⁻⁴ — the paper's "nm⁻²" — and the
    scale-free MSE of the normalised profiles)."""
    out = []
    for rank, ch in enumerate(channels):
        mem = [paths[i] for i in ch.members]
        cert = [np.asarray(p.certified, dtype=bool) for p in mem]
        barriers = [p.barrier() for p, c in zip(mem, cert) if c.any()]
        g2 = [np.asarray(p.atom_grad_sq)[c] for p, c in zip(mem, cert) if c.any()]
        prof = np.concatenate(g2).mean(axis=0) if g2 else None
        order = [] if prof is None else [int(i) for i in np.argsort(-prof)[:top]]
        agree = [_agreement(p, sens) for p in mem] if sens is not None else []
        out.append({
            "rank": rank + 1, "members": [int(i) for i in ch.members],
            "share": float(ch.share), "density": float(ch.density),
            "barrier_kj": _nanmean(barriers), "barrier_max_kj": (
                float(np.nanmax(barriers)) if barriers else None),
            "certified_nodes": int(sum(int(c.sum()) for c in cert)),
            "nodes": int(sum(len(c) for c in cert)),
            "top_atoms": [{"index_0based": i, "label": labels[i] if labels else f"atom{i}",
                           "grad_sq": float(prof[i])} for i in order],
            "mse_nm4": _nanmean([a[0] for a in agree]),
            "mse_normalized": _nanmean([a[1] for a in agree])})
    return out


def choose_residue(angle_saliency: Sequence[tuple[str, float]], dihedral_names: Sequence[str]
                   ) -> tuple[str, int, int]:
    """(residue label, φ index, ψ index) of the residue of the most salient dihedral that has
    both φ and ψ (names like "VAL3 ψ"); indices into ``dihedral_names``."""
    for name, _ in angle_saliency:
        res = name.rsplit(" ", 1)[0]
        phi, psi = f"{res} φ", f"{res} ψ"
        if phi in dihedral_names and psi in dihedral_names:
            return res, list(dihedral_names).index(phi), list(dihedral_names).index(psi)
    raise ValueError("choose_residue: no residue with both φ and ψ among the salient "
                     "dihedrals; the featurizer must be 'dihedrals' on a peptide")


def chi_correlation(a: Any, b: Any) -> float:
    """Pearson correlation of two χ over the same samples (nan when either is constant)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"chi_correlation: two χ over the same samples needed, got "
                         f"{a.shape} and {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------------------------
# comparison with the paper
# --------------------------------------------------------------------------------------------
def comparison_rows(angle_sal: Sequence[tuple[str, float]], top_atoms: Sequence[int],
                    channels: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (quantity, paper, ours, agrees, note) for ``paper_comparison.md`` from the ranked
    per-dihedral saliency, the ranked 0-based top atoms and :func:`channel_summaries`."""
    rows = []
    top_name, top_val = angle_sal[0] if angle_sal else ("—", float("nan"))
    second = angle_sal[1][1] if len(angle_sal) > 1 else float("nan")
    ratio = top_val / second if second and second > 0 else float("inf")
    rows.append({"quantity": "top dihedral feature (saliency, rad⁻²)",
                 "paper": f"{PAPER['top_dihedral']} ({PAPER['top_saliency']})",
                 "ours": f"{top_name} ({top_val:.3g})",
                 "agrees": top_name == PAPER["top_dihedral"]})
    rows.append({"quantity": "top / second dihedral saliency",
                 "paper": f"> {PAPER['ratio']:.0f}", "ours": f"{ratio:.3g}",
                 "agrees": bool(top_name == PAPER["top_dihedral"] and ratio >= PAPER["ratio"])})
    top6 = [int(i) for i in top_atoms[:PAPER["top_n_atoms"]]]
    hits = sorted(set(top6) & set(PAPER["atoms"]))
    rows.append({"quantity": f"paper atoms {list(PAPER['atoms'])} (0-based) in top "
                 f"{PAPER['top_n_atoms']}",
                 "paper": "4 (atoms 27, 29, 41, 43 1-based)",
                 "ours": f"{len(hits)} {hits} of top 6 {top6}",
                 "agrees": _graded(len(hits), len(PAPER["atoms"]), PAPER["atoms_needed"])})
    rows.append({"quantity": "transition channels", "paper": f"≥ {PAPER['channels']}",
                 "ours": str(len(channels)),
                 "agrees": _graded(len(channels), PAPER["channels"],
                                   PAPER["channels_needed"])})
    mse = channels[0].get("mse_nm4") if channels else None
    rows.append({"quantity": "dominant channel path-vs-ensemble MSE",
                 "paper": f"< {PAPER['mse']} (\"nm⁻²\"; the unit of a squared nm⁻² is nm⁻⁴)",
                 "ours": "—" if mse is None else f"{mse:.3g} nm⁻⁴ (normalised "
                 f"{channels[0].get('mse_normalized') or float('nan'):.3g})",
                 "agrees": None if mse is None else bool(mse < PAPER["mse"])})
    return rows


#: the agreement column: "partly" = the reduced count a 2-core run is held to, not the paper's
_VERDICT = {True: "agrees", "partly": "partly (fewer than the paper)", False: "disagrees",
            None: "not measured"}


def _graded(ours: int, paper: int, needed: int) -> bool | str:
    """True when ``ours`` reaches the paper's count, "partly" when it reaches only the
    smaller count a 2-core run is held to (``needed``), else False."""
    return True if ours >= paper else ("partly" if ours >= needed else False)


def comparison_markdown(rows: Sequence[dict[str, Any]], context: Sequence[str] = ()) -> str:
    """``paper_comparison.md``: the table, then one "disagrees, because ..." line per row
    that does not agree (its ``note``), then the ``context`` lines (run size, convergence)."""
    lines = ["# VGVAPG: this run against the paper", "",
             "Paper: seeds/001 (AMORE-MD), VGVAPG section and Fig. 3 (1 µs implicit-solvent "
             "trajectory, 20,000 iterations, 100 generations). Ours: `amore run vgvapg "
             "--preset science`.", "",
             "| quantity | paper | ours | agreement |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['quantity']} | {r['paper']} | {r['ours']} | "
                     f"{_VERDICT[r['agrees']]} |")
    bad = [r for r in rows if r["agrees"] is not True]
    if bad:
        lines += ["", "## Disagreements", ""]
        for r in bad:
            why = r.get("note", "")
            lines.append(f"- {r['quantity']}: {_VERDICT[r['agrees']]}"
                         f"{', because ' + why if why else ''}.")
    if context:
        lines += ["", "## This run", ""] + [f"- {c}" for c in context]
    return "\n".join(lines) + "\n"
