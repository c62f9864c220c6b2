"""Free energy along χ in the pipeline (issue 23): the ``free_energy`` stage and the
stratified starts of a generation (``generation_starts`` = "stratified" or "both").

``free_energy``: umbrella windows along the final χ, MBAR → ``fes/`` (fes.json, fes.csv,
fes.png, fes.npz, umbrella_samples.npz; :func:`~amore_openmm.biased.umbrella_free_energy`).
An interrupted stage resumes from ``fes/umbrella_partial.npz``; ``fes/chi.json`` names the χ
it belongs to, so a partial file of an older χ (a run extended by more generations) is
discarded rather than joined to the new χ's windows.

Stratified starts: short umbrella windows along χ of generation g − 1
(``checkpoint/umbrella_gXXX/``), then starts drawn uniformly in χ from their frames
(``checkpoint/stratified_gXXX.npz``). The bursts from them are plain MD, so the Koopman
data stay unbiased; only where the bursts start is chosen by the bias.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..data import atomic_save_npz, write_json
from .runio import file_digest, load_paths, read_npz
from .state import StageContext, stage_seed

__all__ = ["FES_DIR", "fes_enabled", "free_energy", "generation_starts", "skip_paths",
           "start_histogram", "fes_markdown", "starts_markdown", "STRATIFIED_ORIGIN",
           "HIST_BINS"]

#: folder of the free-energy stage in the run directory
FES_DIR = "fes"
#: the Koopman-data origin of stratified starts
STRATIFIED_ORIGIN = "stratified"
#: χ bins of the start histograms in the report
HIST_BINS = 10


def fes_enabled(run: StageContext) -> bool:
    """``free_energy`` on, or "auto" for a periodic system (its χ-MEP energies are
    whole-box energies: ΔF‡ along χ is the barrier to report)."""
    mode = run.config.free_energy
    return mode == "on" or (mode == "auto" and bool(run.system.is_periodic))


def _chi_tag(run: StageContext) -> dict[str, Any]:
    """The generation and file digest of the final χ (what the umbrella windows used)."""
    g = max(run.trained_generations)
    return {"generation": g, "digest": file_digest(run.model_path(g))}


def _fes_record(summary: dict[str, Any], tag: dict[str, Any], periodic: bool,
                min_overlap: float) -> dict[str, Any]:
    """What the report keeps: ΔF‡ ± error only when certified, else the reason."""
    rec: dict[str, Any] = {
        "enabled": True, "certified": bool(summary.get("certified")),
        "headline": bool(periodic), "chi_generation": tag["generation"],
        "effective_sample_size": float(summary["effective_sample_size"]),
        "n_samples": int(summary["n_samples"]), "windows": len(summary["windows"]),
        "frames_per_window": int(summary["frames_per_window"]),
        "stride_steps": int(summary["stride"]),
        "window_overlap_min": float(summary["window_overlap_min"]),
        "min_overlap_required": float(min_overlap),
        "wall_seconds": float(summary.get("wall_seconds", float("nan"))),
        "files": {k: f"{FES_DIR}/{k}" for k in ("fes.json", "fes.csv", "fes.png", "fes.npz",
                                                "umbrella_samples.npz")}}
    keys = ("barrier_kJ_mol", "barrier_err_kJ_mol", "barrier_kT", "barrier_err_kT")
    if rec["certified"]:
        rec.update({k: float(summary[k]) for k in keys})
    else:
        # no result without a certificate: the numbers stay in fes/fes.json only
        rec.update({k: None for k in keys})
        finite = all(math.isfinite(float(summary[k])) for k in ("barrier_kT", "barrier_err_kT"))
        rec["reason"] = (f"neighbouring windows overlap by {rec['window_overlap_min']:.3f} at "
                         f"least (need {min_overlap})" if finite else
                         "ΔF‡ or its bootstrap error is undetermined (no basin on one side "
                         "of χ = 0.5, or too few bootstrap resamples)")
        if finite and rec["window_overlap_min"] < min_overlap:
            rec["reason"] += "; give more fes_windows, more fes_frames or a softer fes_kappa"
        if summary.get("note"):
            # the certificate's own words (biased.certify): gaps, empty bins, too stiff a step
            rec["reason"] = str(summary["note"])
    # the windows' reweighted ranking stands or falls with the profile's certificate
    sens = summary.get("reweighted_sensitivity")
    if rec["certified"] and sens:
        rec["reweighted_sensitivity"] = sens
        rec["files"].update({k: f"{FES_DIR}/{k}" for k in (
            "reweighted_atoms.csv", "reweighted_sensitivity.npz", "window_levelsets.csv")})
    return rec


def free_energy(run: StageContext) -> dict[str, Any]:
    """Umbrella windows along the final χ and MBAR → ``fes/``; ΔF‡ into the report."""
    from ..biased import MIN_OVERLAP, umbrella_free_energy
    cfg = run.config
    if not fes_enabled(run):
        run.log.info("free energy along χ: off (free_energy = %s%s)", cfg.free_energy,
                     ", not a periodic system" if cfg.free_energy == "auto" else "")
        return {"free_energy": {"enabled": False}}
    out = run.out / FES_DIR
    out.mkdir(parents=True, exist_ok=True)
    tag = _chi_tag(run)
    tag_file = out / "chi.json"
    if tag_file.is_file() and json.loads(tag_file.read_text()) != tag:
        run.log.info("fes/: windows of another χ; starting over")
        (out / "umbrella_partial.npz").unlink(missing_ok=True)
    write_json(tag_file, tag)
    run.log.info("free energy along χ (generation %d): %d windows × %d frames", tag["generation"],
                 cfg.fes_windows, cfg.fes_frames)
    umbrella_free_energy(system=run.system, model=run.load_model(tag["generation"]),
                         out_dir=out, windows=cfg.fes_windows,
                         kappa="auto" if cfg.fes_kappa is None else cfg.fes_kappa,
                         frames=cfg.fes_frames, stride=cfg.fes_stride,
                         equilibration=cfg.fes_equilibration, bins=cfg.fes_bins,
                         bootstrap=cfg.fes_bootstrap,
                         seed=stage_seed(cfg.seed, "free_energy") % 100_000,
                         platform=run.platform, progress=run.progress)
    summary = json.loads((out / "fes.json").read_text())
    rec = _fes_record(summary, tag, bool(run.system.is_periodic), MIN_OVERLAP)
    if rec["certified"]:
        run.log.info("ΔF‡ along χ = %.2f ± %.2f kJ/mol (%.2f ± %.2f kT), effective sample "
                     "size %.0f, certified", rec["barrier_kJ_mol"], rec["barrier_err_kJ_mol"],
                     rec["barrier_kT"], rec["barrier_err_kT"], rec["effective_sample_size"])
    else:
        run.log.warning("ΔF‡ along χ NOT CERTIFIED: %s (fes/fes.json)", rec["reason"])
    return {"free_energy": rec}


# --------------------------------------------------------------------------------------------
# stratified starts
# --------------------------------------------------------------------------------------------
def start_histogram(chi: Any, bins: int = HIST_BINS) -> dict[str, Any]:
    """Counts of start χ in ``bins`` equal bins on [0, 1] and their flatness: the entropy of
    the histogram over ln(bins) (1: uniform in χ; 0: every start in one bin)."""
    chi = np.clip(np.asarray(chi, dtype=float).reshape(-1), 0.0, 1.0)
    counts = np.histogram(chi, bins=bins, range=(0.0, 1.0))[0]
    p = counts[counts > 0] / max(counts.sum(), 1)
    flat = float(abs((p * np.log(p)).sum()) / math.log(bins)) if len(p) else 0.0
    return {"counts": counts.tolist(), "flatness": flat}


def skip_paths(run: StageContext, g: int) -> dict[str, Any]:
    """The ``paths_g`` stage of a stratified-only run: no χ-MEP is needed for its starts."""
    from .runio import save_paths
    save_paths(run.paths["checkpoint"] / f"paths_g{g:03d}.npz", [])
    run.gen_record(g).update(n_paths=0, path_nodes=[], path_certified=[],
                             path_chi_range=None)
    run.log.info("generation %d: generation_starts = stratified, no χ-MEPs traced", g)
    return {}


def _window_starts(run: StageContext, model: Any, z: np.ndarray, seed: int) -> np.ndarray:
    """For each centre z_k a structure of the data with χ near z_k (one of the 5 nearest):
    a window started in its own χ range needs no walk out of a basin, where a trained χ is
    flat and the restraint barely pulls."""
    data = run.load_data()
    chi = model.chi(data.x)
    rng = np.random.default_rng(seed)
    near = [np.argsort(np.abs(chi - zk))[:5] for zk in z]
    return np.stack([data.x[rng.choice(idx)] for idx in near])


def _stratified(run: StageContext, g: int, n: int
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``n`` starts uniform in χ_{g−1} from short umbrella windows (each window checkpointed)."""
    from ..biased import UmbrellaSampler, UmbrellaSamples, auto_kappa, stratified_starts
    cfg = run.config
    ck = run.paths["checkpoint"]
    done = ck / f"stratified_g{g:03d}.npz"
    info = {"windows": cfg.stratified_windows, "frames_per_window": cfg.stratified_frames}
    if done.is_file():
        f = read_npz(done)
        return f["starts"], f["chi"], {**info, "window_chi_range": f["range"].tolist()}
    work = ck / f"umbrella_g{g:03d}"
    work.mkdir(parents=True, exist_ok=True)
    model = run.load_model(g - 1)
    z = np.linspace(0.0, 1.0, cfg.stratified_windows)
    kappa = auto_kappa(z, run.system.kT) if cfg.fes_kappa is None else float(cfg.fes_kappa)
    seed = stage_seed(cfg.seed, f"stratified/{g}")
    begin = _window_starts(run, model, z, seed)
    run.log.info("generation %d: stratified starts from %d umbrella windows × %d frames", g,
                 len(z), cfg.stratified_frames)
    parts = []
    for k, zk in enumerate(z):
        f = work / f"window_{k:03d}.npz"
        if not f.is_file():
            sampler = UmbrellaSampler(run.system, model, windows=[float(zk)], kappa=kappa,
                                      platform=run.platform)
            sampler.run(frames=cfg.stratified_frames, stride=cfg.fes_stride,
                        equilibration=cfg.stratified_frames // 2, seed=(seed + k) % 100_000,
                        start=begin[k]).save(f)
        parts.append(UmbrellaSamples.load(f))
    samples = UmbrellaSamples(
        positions=np.concatenate([p.positions for p in parts]),
        chi=np.concatenate([p.chi for p in parts]),
        energy=np.concatenate([p.energy for p in parts]),
        window=np.concatenate([np.full(p.n_samples, k) for k, p in enumerate(parts)]),
        z=z, kappa=np.full(len(z), kappa), kT=parts[0].kT, timestep=parts[0].timestep,
        stride=parts[0].stride)
    x, idx = stratified_starts(samples, n, rng=stage_seed(cfg.seed, f"stratified_pick/{g}"),
                               return_indices=True)
    chi = samples.chi[idx]
    rng = np.array([float(samples.chi.min()), float(samples.chi.max())])
    atomic_save_npz(done, starts=np.asarray(x, dtype=np.float32), chi=chi, range=rng)
    for f in work.glob("window_*.npz"):
        f.unlink()
    return np.asarray(x, dtype=np.float32), chi, {**info, "window_chi_range": rng.tolist()}


def generation_starts(run: StageContext, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts (S, n, 3) float32, origin (S,)) of generation g's bursts by
    ``generation_starts``; records the strategy and the χ histogram of the starts."""
    from .stages import burst_starts
    cfg = run.config
    mode = cfg.generation_starts
    parts, origins = [], []
    rec: dict[str, Any] = {"strategy": mode}
    if mode in ("mep", "both"):
        mep = burst_starts(load_paths(run.paths["checkpoint"] / f"paths_g{g:03d}.npz"),
                           cfg.starts_per_path)
        parts.append(mep)
        origins += ["mep"] * len(mep)
        rec["mep"] = len(mep)
    if mode in ("stratified", "both"):
        x, _, info = _stratified(run, g, cfg.starts_per_path * cfg.paths_per_generation)
        parts.append(x)
        origins += [STRATIFIED_ORIGIN] * len(x)
        rec.update(stratified=len(x), umbrella=info)
    parts = [p for p in parts if len(p)]
    starts = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0, 3),
                                                                               np.float32)
    if len(starts):
        # χ of the generation that chose them: how evenly the starts cover the transition
        chi = run.load_model(g - 1).chi(starts)
        rec["chi_histogram"] = start_histogram(chi)
        if mode == "both":
            mep_chi, strat_chi = chi[:rec["mep"]], chi[rec["mep"]:]
            rec["chi_histogram_mep"] = start_histogram(mep_chi)
            rec["chi_histogram_stratified"] = start_histogram(strat_chi)
    run.gen_record(g)["starts"] = rec
    return starts, np.asarray(origins, dtype="<U10")


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def _pm(v: Any, e: Any, spec: str = ".2f") -> str:
    return f"{v:{spec}} ± {e:{spec}}" if e is not None and math.isfinite(e) else f"{v:{spec}}"


def fes_markdown(fe: dict[str, Any] | None, headline: bool = False) -> list[str]:
    """The report's lines for the free-energy stage (``headline``: the top-of-report form)."""
    if not fe or not fe.get("enabled"):
        return []
    if headline:
        title = "## Headline barrier: ΔF‡ along χ"
        note = ["A periodic (solvated) system: the χ-MEP energies below are whole-box "
                "energies, so the barrier of this run is the free-energy barrier along χ "
                "from umbrella sampling and MBAR.", ""]
    else:
        title, note = "## Free energy along χ", []
    size = (f"{fe['windows']} umbrella windows × {fe['frames_per_window']} frames (every "
            f"{fe['stride_steps']} steps) along χ of generation {fe['chi_generation']}, "
            f"effective sample size {fe['effective_sample_size']:.0f} of {fe['n_samples']}, "
            f"least neighbour overlap {fe['window_overlap_min']:.3f} (need "
            f"{fe['min_overlap_required']:g}).")
    if fe.get("certified"):
        value = (f"**ΔF‡ = {_pm(fe['barrier_kJ_mol'], fe['barrier_err_kJ_mol'])} kJ/mol "
                 f"({_pm(fe['barrier_kT'], fe['barrier_err_kT'])} kT)**, certified; "
                 "error: the larger of a block bootstrap within windows (MBAR re-solved) "
                 "and batch means over 4 time segments.")
    else:
        value = (f"**ΔF‡ NOT CERTIFIED**: {fe.get('reason', '')}. No barrier is reported; the "
                 "uncertified profile is in `fes/`.")
    lines = [title, "", *note, value, "", size]
    if (fe.get("files") or {}).get("fes.png"):
        lines += ["", f"![F(χ)]({fe['files']['fes.png']})"]
    sens = fe.get("reweighted_sensitivity")
    if sens and sens.get("skipped"):
        lines += ["", f"The windows' χ-sensitivities were not computed: {sens['skipped']}."]
    elif sens and sens.get("top_atoms"):
        lines += ["", "Most χ-sensitive atoms of the unbiased ensemble from the windows "
                  f"(MBAR-reweighted ⟨‖∇ᵢχ‖²⟩ ± error, effective sample size "
                  f"{sens['effective_sample_size']:.0f}; level sets per window in "
                  f"`{FES_DIR}/window_levelsets.csv`): " + ", ".join(
                      f"{a['label']} (index {a['index_0based']}) "
                      f"{_pm(a['mean_grad_sq'], a['mean_grad_sq_err'], '.3g')} nm⁻²"
                      for a in sens["top_atoms"]) + "."]
    return lines


def starts_markdown(rep: dict[str, Any]) -> list[str]:
    """One line per generation with its start strategy and the χ histogram of its starts."""
    rows = [(g.get("generation"), g["starts"]) for g in rep.get("generations", [])
            if g.get("starts")]
    if not rows or all(s.get("strategy") == "mep" and "chi_histogram" not in s
                       for _, s in rows):
        return []
    lines = ["## Generation starts", "",
             "mep: evenly spaced certified χ-MEP nodes; stratified: drawn uniformly in χ from "
             "short umbrella windows along the generation's χ (the bursts are unbiased MD). "
             f"Flatness: entropy of the {HIST_BINS}-bin χ histogram of the starts over "
             f"ln {HIST_BINS} (1 = uniform in χ).", "",
             "| gen | strategy | mep starts | stratified starts | χ histogram | flatness |",
             "|---|---|---|---|---|---|"]
    for g, s in rows:
        h = s.get("chi_histogram") or {}
        lines.append(f"| {g} | {s.get('strategy')} | {s.get('mep', '')} | "
                     f"{s.get('stratified', '')} | {' '.join(map(str, h.get('counts', [])))} "
                     f"| {h.get('flatness', float('nan')):.2f} |")
    return lines
