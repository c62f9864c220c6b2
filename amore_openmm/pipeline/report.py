"""The run's report (``report.json``, ``report.md``) and its default figures.

Every barrier is shown with its path's certification count and comes only from certified
nodes (:meth:`~amore_openmm.mep.ChiPath.barrier`); every ranked atom carries its bootstrap
error and how often it lands in the top k."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..mep import JUMP_FACTOR, JUMP_MIN_RMSD
from .runio import load_chipaths
from .state import StageContext, stage_seed

__all__ = ["build_report", "report_markdown", "default_figures"]


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _paths_info(run: StageContext) -> list[dict[str, Any]]:
    out = []
    if not run.paths["paths"].is_file():
        return out
    for i, p in enumerate(load_chipaths(run.paths["paths"])):
        cert = np.asarray(p.certified, dtype=bool)
        out.append({"id": i, "n_nodes": len(p), "n_certified": int(p.n_certified),
                    "certified": bool(p.n_certified > 0),
                    "chi_min": float(np.min(p.chi)), "chi_max": float(np.max(p.chi)),
                    "energy_max_certified": float(np.max(p.energy[cert])) if cert.any()
                    else None,
                    "barrier": _finite(p.barrier()) if cert.any() else None,
                    "jumps": int(np.count_nonzero(p.jumps())),
                    "stop_reasons": dict(p.stop_reasons)})
    return out


def _top_features(run: StageContext, k: int) -> list[dict[str, Any]]:
    if not run.paths["features_csv"].is_file():
        return []
    with open(run.paths["features_csv"], newline="") as fh:
        return [{"feature": row["feature"], "saliency": float(row["saliency"])}
                for row in list(csv.DictReader(fh))[:k]]


# protein backbone (and capping-group) atom names: the "backbone atoms" table of the report
BACKBONE_NAMES = frozenset({"N", "CA", "C", "O", "H", "OXT"})


def _backbone_atoms(run: StageContext, k: int = 5) -> list[dict[str, Any]]:
    """The k most χ-sensitive backbone atoms, with their rank among all ranked atoms."""
    if not run.paths["atoms_csv"].is_file():
        return []
    with open(run.paths["atoms_csv"], newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("status", "featurized") == "featurized"]
    out = [{"rank": int(r["rank"]), "index_0based": int(r["atom_index_0based"]),
            "label": r["label"], "mean_grad_sq": float(r["mean_grad_sq_nm-2"])}
           for r in rows if r["label"].rpartition(":")[2] in BACKBONE_NAMES]
    return out[:k]


def build_report(run: StageContext) -> dict[str, Any]:
    """The report dictionary of a finished (or partly finished) run."""
    st = run.state or {}
    cfg = run.config
    skipped = set(st.get("skipped", []))
    gens = [st.get("generations", {}).get(str(g), {"generation": g})
            for g in range(0, cfg.generations + 1) if f"train_{g}" not in skipped]
    last = gens[-1] if gens else {}
    mses = st.get("path_mse", [])
    finite = [m for m in mses if m is not None and math.isfinite(m)]
    timings = st.get("timings", {})
    drops: dict[str, int] = {}
    for g in gens:
        for k, v in (g.get("drop_counts") or {}).items():
            drops[k] = drops.get(k, 0) + int(v)
    return {
        "system": st.get("system", {}),
        "periodic": bool(run.system.system.usesPeriodicBoundaryConditions()),
        "settings": cfg.to_toml_dict(),
        "platform": st.get("platform") or cfg.platform,
        "generations": gens,
        "data_size": last.get("n_data"),
        "exit_rates": last.get("exit_rates"),
        "dropped_bursts": drops,
        "paths": _paths_info(run),
        "free_energy": st.get("free_energy"),
        "transitions": st.get("transitions"),
        "generation_starts": cfg.generation_starts,
        "top_atoms": st.get("top_atoms", []),
        "sensitivity_fits": int(st.get("sensitivity_fits", 1)),
        "top_features": _top_features(run, cfg.top_k),
        "backbone_atoms": _backbone_atoms(run),
        "path_vs_ensemble_mse": mses,
        "path_vs_ensemble_mse_mean": float(np.mean(finite)) if finite else None,
        "timings_s": timings,
        "total_time_s": round(sum(timings.values()), 2),
        "figures": st.get("figures", []) + ([st["channel_figure"]]
                                            if st.get("channel_figure") else []) +
                   list((st.get("transitions") or {}).get("figures", [])),
        "science": {k: st[k] for k in ("equilibrium", "dihedral_saliency", "channels",
                                       "stopped", "stopped_after", "dihedral_val_loss",
                                       "dihedral_chi_corr")
                    if k in st},
        "files": {k: str(v.relative_to(run.out)) for k, v in run.paths.items()
                  if k not in ("checkpoint", "state", "trajectory", "mep_dir", "figures",
                               "lock")},
    }


def _fmt(v: Any, spec: str) -> str:
    """A number for a table cell; "—" for None/NaN (undefined), "" for absent."""
    if v is None:
        return ""
    return format(v, spec) if math.isfinite(float(v)) else "—"


def _md_generations(rep: dict[str, Any]) -> list[str]:
    lines = ["## Generations", "",
             "| gen | starts | new | dropped | iterations | loss | validation loss | "
             "χ timescale (ps) | new transitions | paths | certified nodes | path χ range | "
             "time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in rep["generations"]:
        rng = g.get("path_chi_range")
        cert = g.get("path_certified") or []
        lines.append(
            f"| {g.get('generation')} | {g.get('n_data', '')} | {g.get('new_starts', '')} | "
            f"{sum((g.get('drop_counts') or {}).values())} | {g.get('iterations', '')} | "
            f"{_fmt(g.get('loss'), '.3g')} | {_fmt(g.get('val_loss'), '.3g')} | "
            f"{_fmt(g.get('timescale_ps'), '.4g')} | {g.get('new_transitions', '')} | "
            f"{g.get('n_paths', '')} | "
            f"{', '.join(f'{c}/{n}' for c, n in cert)} | "
            f"{'' if not rng else f'{rng[0]:.2f}–{rng[1]:.2f}'} | {g.get('seconds', 0):.1f} |")
    first = rep["generations"][0] if rep["generations"] else {}
    if first.get("fit_attempt"):
        lr = first.get("lr_reduced_to")
        lines += ["", f"The first {first['fit_attempt'] - 1} fit(s) of χ collapsed to a "
                  f"constant (run.log lists them); the χ reported here is fit "
                  f"{first['fit_attempt']}"
                  + (f", at the reduced learning rate {lr:g}, which later generations kept."
                     if lr else ".")]
    drops = rep.get("dropped_bursts") or {}
    if sum(drops.values()):
        lines += ["", "Bursts dropped by the sanity checks (not in the data): "
                  + ", ".join(f"{k}: {v}" for k, v in drops.items()) + "."]
    return lines


def _md_paths(rep: dict[str, Any]) -> list[str]:
    lines = ["## χ-minimum-energy paths", "",
             "Barriers and energies come from certified nodes only (stationary level-set "
             "minima inside the energy window); a path without certified nodes is marked "
             "UNCERTIFIED and gives no barrier. A jump is a step between consecutive "
             f"nodes more than {JUMP_FACTOR:g}× the path's median step and "
             f"{JUMP_MIN_RMSD:g} nm (the level-set minimum switched "
             "valleys); the barrier is read only on the jump-free stretch around the "
             "transition state, as the highest node between the lowest node on each side "
             "of it, above the lower of the two (nodes past a basin, where χ saturates and "
             "the path climbs a wall, are not part of the transition).", "",
             *(["A periodic (solvated) system: a node's energy is the minimum of the whole "
                "box on the level set, and the water can settle into another local minimum "
                "from one node to the next (tens of kJ/mol in a small box), so a barrier here "
                "includes solvent rearrangement; it is not the solute's barrier.", ""]
               if rep.get("periodic") else []),
             "| path | certified / nodes | jumps | χ range | max energy, certified (kJ/mol) | "
             "barrier, certified (kJ/mol) | MSE vs ensemble (nm⁻⁴) |",
             "|---|---|---|---|---|---|---|"]
    mses = rep.get("path_vs_ensemble_mse") or []
    for p in rep["paths"]:
        m = mses[p["id"]] if p["id"] < len(mses) else None
        mark = "" if p["certified"] else " UNCERTIFIED"
        lines.append(f"| {p['id']}{mark} | {p['n_certified']}/{p['n_nodes']} | "
                     f"{p.get('jumps', 0)} | {p['chi_min']:.2f}–{p['chi_max']:.2f} | "
                     f"{_fmt(p['energy_max_certified'], '.1f') or '—'} | "
                     f"{_fmt(p['barrier'], '.1f') or '—'} | {_fmt(m, '.3g')} |")
    return lines


def _md_atoms(rep: dict[str, Any]) -> list[str]:
    k = rep["top_atoms"][0]["top_k"]
    fits = int(rep.get("sensitivity_fits", 1))
    over = (f" The mean over {fits} χ fits of the same data (training seeds); the error and "
            "the top-k frequency hold the fit-to-fit spread too." if fits > 1 else
            " One χ fit: the error holds the frames' noise, not the training variance "
            "(`--sensitivity-fits N` averages N fits).")
    lines = ["## Most χ-sensitive atoms", "",
             f"⟨‖∇ᵢχ‖²⟩_ρ over the weighted ensemble ± bootstrap standard error; \"in top-{k}\" "
             f"is how often the atom is among the {k} most sensitive across bootstrap "
             "resamples. Atoms the featurizer does not see are not ranked." + over, "",
             "| rank | index (0-based) | index (1-based) | atom | ⟨‖∇ᵢχ‖²⟩ (nm⁻²) | share | "
             f"in top-{k} |", "|---|---|---|---|---|---|---|"]
    for r, a in enumerate(rep["top_atoms"], start=1):
        lines.append(f"| {r} | {a['index_0based']} | {a['index_1based']} | {a['label']} | "
                     f"{a['mean_grad_sq']:.4g} ± {_fmt(a['mean_grad_sq_err'], '.2g')} | "
                     f"{a['fraction']:.3f} | {_fmt(a['top_k_frequency'], '.2f')} |")
    bb = rep.get("backbone_atoms") or []
    if bb:
        lines += ["", "Backbone atoms (N, CA, C, O, H, OXT) that drive the slow process most, "
                  "with their rank among all atoms: " + ", ".join(
                      f"{a['label']} (index {a['index_0based']}, rank {a['rank']})"
                      for a in bb) + "."]
    return lines


def report_markdown(rep: dict[str, Any]) -> str:
    """``report.md``: the report for a person, with the figures."""
    sysinfo = rep.get("system", {})
    lines = [f"# AMORE run: {sysinfo.get('name', '?')}", "",
             f"{sysinfo.get('n_atoms', '?')} atoms, source `{sysinfo.get('source', '?')}`, "
             f"preset `{rep['settings'].get('preset')}`, platform {rep.get('platform')}, "
             f"{rep.get('total_time_s', 0):.0f} s in completed stages (interrupted attempts "
             f"not counted).", ""]
    from .fes_stages import fes_markdown, starts_markdown
    fe = rep.get("free_energy") or {}
    if fe.get("headline"):   # periodic: ΔF‡ along χ is the barrier of the run
        lines += fes_markdown(fe, headline=True) + [""]
    lines += _md_generations(rep)
    if starts_markdown(rep):
        lines += [""] + starts_markdown(rep)
    sci = rep.get("science")
    if sci:
        from .science_stages import science_markdown
        stop = sci.get("stopped")
        lines += ["", "Stopping rule (no new transition in a generation's starts and χ "
                  "timescale change < 10 %): " + (f"fired: {stop}." if stop else
                                                  "did not fire; ran to the generation "
                                                  "limit."), ""] + science_markdown(sci)
        times = rep.get("timings_s") or {}
        if times:
            lines += ["## Time per stage", "", "| stage | s |", "|---|---|"] + [
                f"| {k} | {v:.1f} |" for k, v in times.items()] + [
                f"| total | {sum(times.values()):.1f} |"]
    rates = rep.get("exit_rates")
    if rates:
        lines += ["", "## Exit rates (final χ)", ""]
        for k, v in rates.items():
            if v in ("", None):
                continue
            lines.append(f"- {k}: {v:.4g}" if isinstance(v, (int, float)) and
                         not isinstance(v, bool) else f"- {k}: {v}")
    if rep.get("paths"):
        lines += [""] + _md_paths(rep)
    if fe.get("enabled") and not fe.get("headline"):
        lines += [""] + fes_markdown(fe)
    if rep.get("top_atoms"):
        lines += [""] + _md_atoms(rep)
    if rep.get("transitions"):
        from .multichi_stages import transitions_markdown
        lines += [""] + transitions_markdown(rep["transitions"])
    if rep.get("top_features"):
        lines += ["", "## Most salient features", "", "| rank | feature | ⟨‖∂ν/∂f‖²⟩ |",
                  "|---|---|---|"]
        for r, f in enumerate(rep["top_features"], start=1):
            lines.append(f"| {r} | {f['feature']} | {f['saliency']:.4g} |")
    if rep.get("figures"):
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in rep["figures"]]
    lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in rep.get("files", {}).items()]
    return "\n".join(lines) + "\n"


def default_figures(run: StageContext) -> list[Path]:
    """Figures from :mod:`amore_openmm.plots`; one failing figure is logged, not fatal."""
    from .. import plots
    from ..sensitivity import Sensitivity
    fig_dir = run.paths["figures"]
    model = run.load_model()
    data = run.load_data()
    paths = load_chipaths(run.paths["paths"]) if run.paths["paths"].is_file() else []
    sens = Sensitivity.load(run.paths["levelset"]) if run.paths["levelset"].is_file() else None
    rng = np.random.default_rng(stage_seed(run.config.seed, "figures"))
    x = data.x[np.sort(rng.choice(len(data), size=min(len(data), 5000), replace=False))]
    starts = np.stack([p.positions[p.start_index] for p in paths]) if paths else None
    jobs: list[tuple[str, Callable[[Path], Path]]] = []
    if run.system.coordinate_dims == (0, 1):
        jobs.append(("landscape.png", lambda f: plots.plot_muller_brown(
            f, model=model, samples=x, chi_paths=paths, starts=starts,
            title=f"{run.system.name}: data, ∇χ and χ-MEPs")))
    else:
        jobs.append(("ramachandran.png", lambda f: plots.plot_ramachandran(
            f, run.system.topology, x, chi=model.chi(x), chi_paths=paths, starts=starts)))
    if paths:
        jobs.append(("path_profiles.png", lambda f: plots.plot_path_profile(f, paths)))
    if sens is not None:
        sel = run.system.selection   # the molecule of interest, not its water box
        shown = sel if len(sel) <= 60 else None
        jobs.append(("levelset_sensitivity.png",
                     lambda f: plots.plot_levelset_heatmap(f, sens, atoms=shown)))
        jobs.append(("atom_ranking.png", lambda f: plots.plot_atom_ranking(
            f, sens, k=min(20, sens.n_atoms))))
    written = []
    for name, job in jobs:
        try:
            written.append(job(fig_dir / name))
        except Exception as exc:  # noqa: BLE001 - a figure must never lose a finished run
            run.log.warning("figure %s not written: %s: %s", name, type(exc).__name__, exc)
    return written
