"""Stages of a ``science`` run (``science = true``, the vgvapg ``science`` preset).

``trajectory``      with ``equilibrium_replicas`` > 0: an equilibrium ensemble of packed
                    replicas, equilibration discarded, halves checked
                    (``checkpoint/equilibrium.npz``)
                    or, with ``equilibrium_method = remd``, the base-temperature frames of
                    temperature replica exchange (HMR), resumable (``checkpoint/remd.npz``)
``initial_bursts``  then: Koopman pairs (x_t, x_t+τ) of that ensemble, weight 1 (remd:
                    bursts of the original system from the frames; exchanges and HMR
                    change the dynamics, so consecutive frames are no Koopman pairs)
``dihedral_chi``    a second χ on the backbone dihedrals, its per-dihedral saliency
                    (``sensitivity/dihedrals.csv``, ``model/chi_dihedrals.pt``)
``channels``        the final χ-MEPs clustered into channels (``sensitivity/channels.json``)
                    and the (φ, ψ) figure of the residue the dihedral saliency picks
report              ``paper_comparison.md`` beside ``report.md``

The functions take the :class:`~amore_openmm.pipeline.AmoreRun` and return the entries to
record in its checkpoint, like :mod:`amore_openmm.pipeline.run_stages`.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..data import atomic_save_npz, atomic_write_text, write_json
from . import science
from .runio import load_chipaths, read_npz
from .state import StageContext, stage_seed

__all__ = ["equilibrium", "equilibrium_remd", "equilibrium_data", "remd_bursts",
           "uses_equilibrium", "dihedral_chi", "channels", "paper_comparison",
           "generation_transitions", "science_paths", "science_markdown"]


def science_paths(run: StageContext) -> dict[str, Path]:
    """Files of the science stages."""
    out = run.out
    return {"equilibrium": out / "checkpoint" / "equilibrium.npz",
            "equilibrium_partial": out / "checkpoint" / "equilibrium.partial.npz",
            "remd": out / "checkpoint" / "remd.npz",
            "dihedral_model": out / "model" / "chi_dihedrals.pt",
            "dihedrals_csv": out / "sensitivity" / "dihedrals.csv",
            "channels_json": out / "sensitivity" / "channels.json",
            "comparison": out / "paper_comparison.md",
            "figure": out / "figures" / "channels_phi_psi.png"}


def _dihedrals(run: StageContext) -> tuple[np.ndarray, list[str]]:
    from ..chi.featurizers import backbone_quads
    quads, names = backbone_quads(run.system.topology)
    return np.asarray(quads, dtype=np.int64), list(names)


def _angles(run: StageContext, x: np.ndarray) -> np.ndarray:
    from ..systems.geometry import dihedral_angles
    quads, _ = _dihedrals(run)
    return dihedral_angles(np.asarray(x, dtype=np.float64), quads)


# --------------------------------------------------------------------------------------------
# equilibrium ensemble
# --------------------------------------------------------------------------------------------
def uses_equilibrium(cfg: Any) -> bool:
    """Whether a run's initial data come from an equilibrium ensemble (these stages)."""
    return bool(cfg.equilibrium_replicas) or cfg.equilibrium_method == "remd"


def equilibrium(run: StageContext) -> dict[str, Any]:
    """Packed replicas from the bundled conformations; frames every lag after each replica's
    equilibration; halves check per backbone dihedral. With ``equilibrium_method = remd``:
    :func:`equilibrium_remd`."""
    cfg, files = run.config, science_paths(run)
    if cfg.equilibrium_method == "remd":
        return equilibrium_remd(run)
    lag = run.lag_steps
    platform = run.platform if run.platform != "Reference" else "CPU"
    traj = science.equilibrium_trajectories(
        run.system, cfg.equilibrium_replicas, cfg.equilibrium_steps, cfg.equilibration_steps,
        lag, stage_seed(cfg.seed, "equilibrium"), platform=platform, progress=run.progress,
        checkpoint=files["equilibrium_partial"])
    _, names = _dihedrals(run)
    ang = _angles(run, traj.reshape(-1, *traj.shape[2:])).reshape(*traj.shape[:2], -1)
    dt = float(run.system.timestep)
    halves = science.halves_check(ang, names)
    halves["ps_per_frame"] = lag * dt
    ns = cfg.equilibrium_replicas * traj.shape[1] * lag * dt / 1000.0
    ns_eq = cfg.equilibrium_replicas * cfg.equilibration_steps * dt / 1000.0
    atomic_save_npz(files["equilibrium"], traj=traj, stride_steps=lag)
    files["equilibrium_partial"].unlink(missing_ok=True)
    run.log.info("equilibrium: %d replicas, %.3f ns kept (%.3f ns equilibration discarded); "
                 "halves: largest TV %.3f (%s), %s; %s", cfg.equilibrium_replicas, ns, ns_eq,
                 halves["max_tv"], halves["worst"],
                 "converged" if halves["converged"] else "NOT converged",
                 science.halves_diagnosis(halves, halves["ps_per_frame"]))
    info = {"ns_sampled": ns, "ns_discarded": ns_eq, "replicas": cfg.equilibrium_replicas,
            "frames_per_replica": int(traj.shape[1]), "platform": platform, "halves": halves}
    return {"equilibrium": info}


def equilibrium_remd(run: StageContext) -> dict[str, Any]:
    """Temperature replica exchange (HMR at 4 fs with ``hmr``) from the bundled
    conformations: base-temperature frames after the equilibration, halves check per
    backbone dihedral, neighbour acceptance (``checkpoint/remd.npz`` to resume)."""
    cfg, files = run.config, science_paths(run)
    platform = run.platform if run.platform != "Reference" else "CPU"
    dt = float(run.system.timestep)
    frames, remd = science.remd_frames(
        run.system, cfg.remd_exchanges, n_replicas=cfg.remd_replicas, t_max=cfg.remd_t_max,
        ps_per_exchange=cfg.remd_ps_per_exchange, hmr=cfg.hmr,
        equilibration_ps=cfg.equilibration_steps * dt, seed=stage_seed(cfg.seed, "remd"),
        platform=platform, checkpoint=files["remd"], progress=run.progress)
    _, names = _dihedrals(run)
    ang = _angles(run, frames.reshape(-1, *frames.shape[2:])).reshape(*frames.shape[:2], -1)
    halves = science.halves_check(ang, names)
    halves["ps_per_frame"] = float(cfg.remd_ps_per_exchange)
    ns = frames.shape[1] * cfg.remd_ps_per_exchange / 1000.0
    ns_eq = remd["exchanges_discarded"] * cfg.remd_ps_per_exchange / 1000.0
    atomic_save_npz(files["equilibrium"], traj=frames, stride_steps=remd["steps_per_exchange"])
    files["remd"].unlink(missing_ok=True)
    run.log.info("equilibrium (replica exchange): %d temperatures %s K, %d exchanges of %g ps"
                 "%s; neighbour acceptance %s, %d round trips; %.3f ns kept at %.1f K "
                 "(%.3f ns discarded); halves: largest TV %.3f (%s), %s; %s",
                 cfg.remd_replicas, ", ".join(f"{t:.1f}" for t in remd["temperatures_K"]),
                 remd["exchanges"], cfg.remd_ps_per_exchange, ", HMR 4 fs" if cfg.hmr else "",
                 ", ".join("—" if a is None else f"{a:.2f}" for a in remd["acceptance"]),
                 remd["round_trips"], ns, remd["temperatures_K"][0], ns_eq, halves["max_tv"],
                 halves["worst"], "converged" if halves["converged"] else "NOT converged",
                 science.halves_diagnosis(halves, halves["ps_per_frame"]))
    info = {"ns_sampled": ns, "ns_discarded": ns_eq, "replicas": cfg.remd_replicas,
            "frames_per_replica": int(frames.shape[1]), "platform": platform,
            "halves": halves, "remd": remd}
    return {"equilibrium": info}


def equilibrium_data(run: StageContext) -> Any:
    """Koopman data of the equilibrium ensemble (``n_starts`` pairs, weight 1). After
    replica exchange: K bursts of the original system (no HMR) from ``n_starts`` evenly
    spaced base-temperature frames (:func:`remd_bursts`)."""
    if run.config.equilibrium_method == "remd":
        return remd_bursts(run)
    if run.config.n_koopman != 1:
        raise ValueError(f"n_koopman = {run.config.n_koopman}: an equilibrium ensemble gives "
                         "one end point per start (the next frame); set n_koopman = 1")
    traj = read_npz(science_paths(run)["equilibrium"])["traj"]
    data = science.koopman_pairs(traj, run.config.n_starts, lag_steps=run.lag_steps,
                                 timestep=float(run.system.timestep),
                                 system_name=run.system.name)
    return data


def remd_bursts(run: StageContext) -> Any:
    """K bursts of ``lag_steps`` of the run's own system (its masses, constraints and time
    step: the dynamics the Koopman operator is of) from evenly spaced replica-exchange frames,
    weight 1; finished starts are committed to ``checkpoint/initial_bursts.partial.npz``."""
    from ..sampling import BurstSampler, ContextPool
    cfg = run.config
    traj = read_npz(science_paths(run)["equilibrium"])["traj"]
    starts, _ = science.burst_starts_of(traj, cfg.n_starts)
    partial = run.out / "checkpoint" / "initial_bursts.partial.npz"
    with ContextPool(run.system, size=cfg.workers, platform=run.platform) as pool:
        sampler = BurstSampler(pool, executor=run.executor(), replicas=cfg.replicas)
        data = sampler.run(starts, cfg.n_koopman, run.lag_steps,
                           seed=stage_seed(cfg.seed, "initial_bursts"), generation=0,
                           origin="trajectory", progress=run.progress, checkpoint=partial)
    data.system_name = run.system.name
    data.weights = np.ones(len(data))
    return data


def generation_transitions(model: Any, data: Any, g: int) -> int | None:
    """Starts of generation ``g`` whose bursts crossed χ = 0.5 (None when ``y`` holds only
    some atoms, so χ of the end points cannot be evaluated)."""
    if not data.all_atoms:
        return None
    sel = np.flatnonzero(np.asarray(data.generation) == g)
    if len(sel) == 0:
        return 0
    x = data.x[sel]
    y = data.y[sel]
    cy = model.chi(y.reshape(-1, *y.shape[2:])).reshape(len(sel), -1)
    return science.count_transitions(model.chi(x), cy)


# --------------------------------------------------------------------------------------------
# dihedral χ
# --------------------------------------------------------------------------------------------
def _ensemble_x(run: StageContext) -> np.ndarray:
    data = run.load_data()
    idx = np.flatnonzero(np.asarray(data.weights) > 0)
    n = run.config.sensitivity_samples
    if len(idx) > n:
        rng = np.random.default_rng(stage_seed(run.config.seed, "sensitivity"))
        idx = np.sort(rng.choice(idx, n, replace=False))
    return data.x[idx]


def dihedral_chi(run: StageContext) -> dict[str, Any]:
    """A second χ on the backbone dihedrals (sin, cos), trained on the same data; its
    saliency per dihedral angle (rad⁻², chain rule) and per component.

    Why it starts from the run's χ. ISOKANN is a power iteration, and at a lag of 0.5 ps the
    slow processes of VGVAPG (ns) have eigenvalues within 10⁻³ of each other, so a few hundred
    iterations from random weights converge to whichever process the weights favour: on the
    1 ns ensemble of seed 2 a fresh dihedral χ followed GLY2 φ (195 flips) with a correlation
    of 0.15 to the run's χ, which follows VAL3 ψ (3 flips). The paper ran 20,000 iterations.
    So the dihedral χ is first regressed onto the run's χ over the same starts, then runs as
    many ISOKANN iterations as the run's χ had: the power iteration continues in the dihedral
    basis, and the correlation of the two χ over the ensemble (reported) says whether they
    still describe one process."""
    from ..sensitivity import angle_saliency, feature_saliency
    from .stages import train_chi
    cfg = run.config
    data = run.load_data()
    run_chi = run.load_model()
    trained = (run_chi.metadata.get("training") or {}).get("iterations_total")
    isokann_iterations = int(trained or cfg.iterations)
    # a first fit that collapses to a constant χ is refitted inside train_chi (logged)
    model, _ = train_chi(data, run.system, isokann_iterations, featurizer="dihedrals",
                         minibatch=cfg.minibatch, optimizer=cfg.optimizer, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, seed=stage_seed(cfg.seed, "dihedral_chi"),
                         progress=run.progress, initial_target=run_chi.chi(data.x),
                         initial_iterations=cfg.iterations, restore_best=cfg.restore_best)
    files = science_paths(run)
    files["dihedral_model"].parent.mkdir(parents=True, exist_ok=True)
    model.save(files["dihedral_model"])
    x = _ensemble_x(run)
    corr = science.chi_correlation(model.chi(x), run_chi.chi(x))
    corr = corr if math.isfinite(corr) else None      # a constant χ: no correlation
    ang = angle_saliency(model, x)
    comp = dict(feature_saliency(model, x))
    rows = [{"dihedral": n, "saliency_rad2": v, "sin": comp.get(f"sin({n})"),
             "cos": comp.get(f"cos({n})")} for n, v in ang]
    files["dihedrals_csv"].parent.mkdir(parents=True, exist_ok=True)
    with open(files["dihedrals_csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    val = model.metadata.get("training", {}).get("val_loss")
    val = float(np.atleast_1d(val)[-1]) if val is not None and np.size(val) else None
    run.log.info("dihedral χ: top %s; correlation with the run's χ %.3f",
                 ", ".join(f"{r['dihedral']} {r['saliency_rad2']:.3g}" for r in rows[:3]), corr)
    return {"dihedral_saliency": rows, "dihedral_val_loss": val, "dihedral_chi_corr": corr}


# --------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------
def _certified_angles(run: StageContext, paths: list[Any]
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    chis, angs = [], []
    for p in paths:
        c = np.asarray(p.certified, dtype=bool)
        chis.append(np.asarray(p.chi)[c])
        angs.append(_angles(run, np.asarray(p.positions)[c]) if c.any()
                    else np.zeros((0, len(_dihedrals(run)[1]))))
    return chis, angs


def channels(run: StageContext) -> dict[str, Any]:
    """Final χ-MEPs (certified nodes) clustered into channels; per-channel summary; figure."""
    from ..channels import find_channels
    from ..sensitivity import Sensitivity
    paths = load_chipaths(run.paths["paths"]) if run.paths["paths"].is_file() else []
    data = run.load_data()
    w = np.asarray(data.weights, dtype=float)
    ens = data.x[w > 0]
    ens_ang = _angles(run, ens)
    chis, angs = _certified_angles(run, paths)
    levels = science.CHANNEL_LEVELS
    usable = [i for i, c in enumerate(chis) if len(c) >= 2]  # ≥ 2 certified nodes
    chans, info = (find_channels([chis[i] for i in usable], [angs[i] for i in usable],
                                 ens_ang, w[w > 0], levels=levels) if usable else ([], {}))
    for ch in chans:  # back to indices of all final paths
        ch.members = [usable[m] for m in ch.members]
        ch.representative = usable[ch.representative]
    info["skipped"] = sorted(set(range(len(paths))) - set(usable)
                             | {usable[m] for m in info.get("skipped", [])})
    sens = Sensitivity.load(run.paths["levelset"]) if run.paths["levelset"].is_file() else None
    labels = [f"{a.residue.name}{a.residue.id}-{a.name}" for a in run.system.topology.atoms()]
    summ = science.channel_summaries(chans, paths, sens, labels)
    result = {"channels": summ, "silhouette": info.get("silhouette"),
              "criterion": info.get("criterion"), "skipped_paths": info.get("skipped", []),
              "n_paths": len(paths), "levels": [float(levels[0]), float(levels[-1])]}
    write_json(science_paths(run)["channels_json"], result)
    fig = _channel_figure(run, chans, angs, ens_ang, w[w > 0])
    return {"channels": result, "channel_figure": fig}


def _channel_figure(run: StageContext, chans: list[Any], angs: list[np.ndarray],
                    ens_ang: np.ndarray, weights: np.ndarray) -> str | None:
    """(φ, ψ) of the residue of the most salient dihedral: ensemble density in grey,
    channels' certified path nodes in colour. Failures are logged, not fatal."""
    if not run.config.figures:
        return None
    try:
        from ..plots import plot_channels_phi_psi
        _, names = _dihedrals(run)
        sal = [(r["dihedral"], r["saliency_rad2"])
               for r in (run.state or {}).get("dihedral_saliency", [])]
        res, i_phi, i_psi = science.choose_residue(sal, names)
        groups = [[angs[m] for m in ch.members] for ch in chans]
        inside = {m for ch in chans for m in ch.members}
        others = [a[:, [i_phi, i_psi]] for i, a in enumerate(angs) if i not in inside]
        path = science_paths(run)["figure"]
        plot_channels_phi_psi(path, ens_ang[:, [i_phi, i_psi]], weights,
                              [[a[:, [i_phi, i_psi]] for a in g] for g in groups],
                              [ch.share for ch in chans], residue=res, others=others)
        return str(path.relative_to(run.out))
    except Exception as exc:  # noqa: BLE001 - a figure must never lose a finished run
        run.log.warning("channel figure not written: %s: %s", type(exc).__name__, exc)
        return None


# --------------------------------------------------------------------------------------------
# comparison with the paper
# --------------------------------------------------------------------------------------------
def _notes(rows: list[dict[str, Any]], st: dict[str, Any]) -> None:
    eq = st.get("equilibrium") or {}
    ns = eq.get("ns_sampled")
    short = (f"the ensemble is {ns:.2g} ns, not the paper's 1 µs" if ns is not None
             else "the data are not an equilibrium ensemble")
    conv = (eq.get("halves") or {}).get("converged")
    ch = st.get("channels") or {}
    n_p, n_skip = ch.get("n_paths", 0), len(ch.get("skipped_paths", []))
    reasons = {
        0: f"{short}; a χ trained on few Val3 ψ rotations can follow another slow dihedral",
        1: f"{short}; with few transitions several dihedrals correlate with χ",
        2: "the Cartesian χ (pairwise distances) spreads its gradient over the atoms of "
           "every correlated motion in a short ensemble",
        3: (f"{n_skip} of {n_p} final paths have too few certified nodes across the "
            "compared χ levels (capped at path_max_nodes, or uncertified), and clustering "
            "needs ≥ 3 comparable paths whose routes differ by ≥ 0.5 rad") if n_skip else
           (f"all {n_p} final paths were comparable and their routes form no more groups "
            "that differ by ≥ 0.5 rad; the paper traced paths from 11 initial states over "
            "100 generations, this run from a few transition states of 2 generations"),
        4: "the MSE of ‖∇ᵢχ‖² profiles (nm⁻⁴) scales with ‖∇χ‖⁴, so it depends on how "
           "steep our χ is, not only on the agreement of the shapes (see the normalised "
           "value)"}
    for i, r in enumerate(rows):
        if r["agrees"] is not True:
            r["note"] = reasons.get(i, "") + ("" if conv else
                                              "; the halves check did not converge")


def _final_starts(run: StageContext) -> list[str]:
    """Where the final paths started, and whether those were transition states (a χ that is
    nearly binary over the data leaves the window empty: the paths then start at the edge of
    a basin and climb into the transition region)."""
    if not run.paths["paths"].is_file():
        return []
    starts = [float(p.chi[p.start_index]) for p in load_chipaths(run.paths["paths"])]
    if not starts:
        return []
    lo, hi = run.config.ts_low, run.config.ts_high
    outside = sum(not lo - 0.01 <= c <= hi + 0.01 for c in starts)
    line = (f"final paths: {len(starts)}, started at χ "
            f"{', '.join(f'{c:.2f}' for c in starts)}")
    if outside:
        line += (f"; {outside} of them outside the transition-state window [{lo}, {hi}] "
                 "(too few samples had χ there: χ is nearly binary over the data), topped up "
                 "with the samples closest to χ = 0.5; the farther a start is from 0.5, the "
                 "more its route through the transition region is extrapolated")
    return [line]


def paper_comparison(run: StageContext) -> Path:
    """Write ``paper_comparison.md`` from the completed stages."""
    st = run.state or {}
    sal = [(r["dihedral"], r["saliency_rad2"]) for r in st.get("dihedral_saliency", [])]
    atoms = [a["index_0based"] for a in st.get("top_atoms", [])]
    chans = (st.get("channels") or {}).get("channels", [])
    rows = science.comparison_rows(sal, atoms, chans)
    _notes(rows, st)
    eq = st.get("equilibrium") or {}
    ctx = []
    if eq:
        h = eq.get("halves", {})
        ctx.append(f"equilibrium ensemble: {_ensemble_kind(eq)}, "
                   f"{eq.get('ns_sampled', 0):.3g} ns kept after "
                   f"{eq.get('ns_discarded', 0):.3g} ns equilibration; halves check "
                   f"largest TV {h.get('max_tv', float('nan')):.3f} ({h.get('worst')}), "
                   f"{'converged' if h.get('converged') else 'not converged'} (tolerance "
                   f"{h.get('tolerance')})")
    corr = st.get("dihedral_chi_corr")
    if corr is not None:
        same = ("one process" if float(corr) >= science.SAME_PROCESS_CORR else
                "NOT one process: the dihedral rows describe another process")
        ctx.append(f"dihedral χ vs the run's χ: correlation {float(corr):.3f} over the "
                   f"ensemble ({same})")
    ctx += _final_starts(run)
    stop = st.get("stopped")
    ctx.append(f"adaptive loop: {stop}" if stop else
               f"adaptive loop: ran to the generation limit ({run.config.generations})")
    total = sum((st.get("timings") or {}).values())
    ctx.append(f"total time {total / 60:.1f} min on platform "
               f"{st.get('platform') or run.config.platform}")
    text = science.comparison_markdown(rows, ctx)
    path = science_paths(run)["comparison"]
    atomic_write_text(path, text)
    return path


def _ensemble_kind(eq: dict[str, Any]) -> str:
    """How the equilibrium ensemble was made, in words (with the REMD acceptance)."""
    r = eq.get("remd")
    if not r:
        return f"{eq.get('replicas')} packed replicas"
    acc = ", ".join("—" if a is None else f"{a:.2f}" for a in r["acceptance"])
    temps = ", ".join(f"{t:.0f}" for t in r["temperatures_K"])
    return (f"temperature replica exchange, {len(r['temperatures_K'])} temperatures ({temps} K"
            f"{', HMR 4 fs' if r.get('hmr') else ''}), {r['exchanges']} exchanges of "
            f"{r['ps_per_exchange']:g} ps, neighbour acceptance {acc}, {r['round_trips']} "
            "round trips; frames at the base temperature, Koopman bursts of the original "
            "system from them")


def science_markdown(st: dict[str, Any]) -> list[str]:
    """Report sections of a science run (equilibrium, dihedral saliency, channels)."""
    lines: list[str] = []
    eq = st.get("equilibrium")
    if eq:
        h = eq["halves"]
        lines += ["## Equilibrium ensemble", "",
                  f"{_ensemble_kind(eq)}; on {eq['platform']}: "
                  f"{eq['ns_sampled']:.3g} ns kept, {eq['ns_discarded']:.3g} ns of "
                  f"equilibration discarded. Halves check (first vs second half of every "
                  f"replica, total-variation distance of each backbone dihedral's "
                  f"histogram): largest {h['max_tv']:.3f} at {h['worst']}, "
                  f"{'converged' if h['converged'] else 'NOT converged'} (tolerance "
                  f"{h['tolerance']}). These frames carry Boltzmann weight 1; path-node "
                  "starts carry weight 0.", "",
                  "Halves distance per dihedral: " + ", ".join(
                      f"{k} {v:.3f}" for k, v in h["tv"].items()) + ".", ""]
        why = science.halves_diagnosis(h, h.get("ps_per_frame", 0.0))
        if why:
            lines += [why[0].upper() + why[1:] + ". Autocorrelation time per dihedral (ps): "
                      + ", ".join(f"{k} {v * h['ps_per_frame']:.3g}"
                                  for k, v in h["tau_frames"].items()) + ".", ""]
    rows = st.get("dihedral_saliency")
    if rows:
        lines += ["## Dihedral χ: saliency per backbone dihedral", "",
                  "⟨(∂ν/∂θ)²⟩ in rad⁻² (chain rule through sin and cos), with the "
                  "per-component ⟨(∂ν/∂sin θ)²⟩ and ⟨(∂ν/∂cos θ)²⟩.", ""]
        lines += _same_process_lines(st.get("dihedral_chi_corr"))
        lines += ["| rank | dihedral | rad⁻² | sin | cos |", "|---|---|---|---|---|"]
        for r, row in enumerate(rows, start=1):
            lines.append(f"| {r} | {row['dihedral']} | {row['saliency_rad2']:.4g} | "
                         f"{_num(row['sin'])} | {_num(row['cos'])} |")
        lines.append("")
    ch = st.get("channels")
    if ch is not None:
        lines += _channel_lines(ch)
    return lines


def _same_process_lines(corr: Any) -> list[str]:
    """Whether the dihedral χ describes the run's slow process (its correlation with the
    run's χ over the ensemble)."""
    if corr is None:
        return []
    c = float(corr)
    same = math.isfinite(c) and c >= science.SAME_PROCESS_CORR
    verdict = ("one process: the saliency names the dihedral of the run's slow process" if same
               else "NOT one process: this saliency describes another process than the "
               "run's χ, its paths and its atoms")
    return [f"The dihedral χ was started from the run's χ (regressed onto it, then the same "
            f"number of ISOKANN iterations). Correlation with the run's χ over the ensemble: "
            f"{c:.3f} ({verdict}; threshold {science.SAME_PROCESS_CORR}).", ""]


def _num(v: Any) -> str:
    return "—" if v is None or not math.isfinite(float(v)) else f"{float(v):.4g}"


def _channel_lines(ch: dict[str, Any]) -> list[str]:
    lo, hi = ch.get("levels", (0.1, 0.9))
    lines = ["## Transition channels", "",
             f"{ch['n_paths']} final paths, {len(ch['skipped_paths'])} left out (certified "
             f"nodes do not span χ {lo:.1f}–{hi:.1f}, the levels where paths are compared). "
             f"Criterion: {ch['criterion']}; silhouette "
             f"{_num(ch['silhouette'])}. Ranked by the stationary density around them. "
             "Barrier: mean (max) over member paths, certified nodes only. MSE: path vs "
             "level-set ‖∇ᵢχ‖² profiles, nm⁻⁴ (the paper's \"nm⁻²\"), and scale-free.", "",
             "| channel | share | density | paths | barrier kJ/mol | certified nodes | top "
             "atoms | MSE nm⁻⁴ | MSE normalised |", "|---|---|---|---|---|---|---|---|---|"]
    for c in ch["channels"]:
        atoms = ", ".join(f"{a['index_0based']} {a['label']}" for a in c["top_atoms"])
        lines.append(f"| {c['rank']} | {c['share']:.2f} | {c['density']:.3f} | "
                     f"{c['members']} | {_num(c['barrier_kj'])} ({_num(c['barrier_max_kj'])})"
                     f" | {c['certified_nodes']}/{c['nodes']} | {atoms} | "
                     f"{_num(c['mse_nm4'])} | {_num(c['mse_normalized'])} |")
    return lines + [""]
