"""The ``transitions`` stage of a run with ``n_chi = k > 1``: k memberships, the rate matrix
and paths, sensitivities and channels per transition (:mod:`amore_openmm.multichi`).

The adaptive generations stay driven by the one χ of the slowest process (their bursts
restart from its χ-MEPs); the k memberships are fitted once, on all the data those
generations collected, so that every transition is analysed on the same data. Files go to
``transitions/`` (see :func:`~amore_openmm.multichi.transitions`) and the k-membership
model to ``model/multichi.pt`` (TorchScript: ``model/multichi_script.pt``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .state import StageContext

__all__ = ["multichi_enabled", "transitions_stage", "TRANSITIONS_DIR", "MULTICHI_MODEL"]

TRANSITIONS_DIR = "transitions"
MULTICHI_MODEL = Path("model") / "multichi.pt"
MULTICHI_SCRIPT = Path("model") / "multichi_script.pt"


def multichi_enabled(config: Any) -> bool:
    """Whether a run with this configuration has the ``transitions`` stage."""
    return int(getattr(config, "n_chi", 1) or 1) > 1


def _fit(ctx: StageContext, data: Any) -> Any:
    """The k memberships on the run's data (reused when the stage resumes)."""
    from ..isokann import Isokann
    from ..multichi import MultiChiModel, check_n_chi
    cfg = ctx.config
    k = check_n_chi(cfg.n_chi, data.n_starts)
    path = ctx.out / MULTICHI_MODEL
    if path.is_file():
        model = MultiChiModel.load(path)
        if model.n_chi == k:
            ctx.log.info("transitions: reusing %s (%d memberships)", path, k)
            return model
    est = Isokann(cfg.training, seed=ctx.seed("multichi"), progress=ctx.progress, n_chi=k,
                  iterations=cfg.iterations)
    model = est.fit(data, system=ctx.system)
    model.metadata.update(system=ctx.system.name, n_data=len(data),
                          lag_time_ps=data.lag_time)
    model.save(path)
    model.export_torchscript(ctx.out / MULTICHI_SCRIPT,
                             training={"iterations": cfg.iterations, "n_data": len(data),
                                       "final_loss": est.summary_.get("final_loss")})
    return model


def transitions_stage(ctx: StageContext) -> dict[str, Any]:
    """k memberships on all data, then :func:`~amore_openmm.multichi.transitions` into
    ``transitions/``: the rate matrix with errors and its certificate, per pair of states
    the χ-MEPs of the pair's level sets (certified as every path), sensitivities and
    channels, the simplex and rate figures. The ensemble of minima, sensitivities and
    figures is the Boltzmann samples (weight > 0); path-node bursts count only for the
    Koopman fit."""
    from ..multichi import transitions
    cfg = ctx.config
    data = ctx.load_data()
    model = _fit(ctx, data)
    w = np.asarray(data.weights, dtype=float)
    ens = np.asarray(data.x)[w > 0] if np.any(w > 0) else np.asarray(data.x)
    n_pairs = model.n_chi * (model.n_chi - 1) // 2
    summary = transitions(model, data, ctx.system, ctx.out / TRANSITIONS_DIR,
                          n_paths=max(1, int(cfg.final_paths)),
                          step=cfg.mep.step, platform=ctx.platform, workers=cfg.workers,
                          bins=cfg.sensitivity.bins, top_k=cfg.top_k,
                          figures=bool(cfg.figures), ensemble=ens)
    pairs = {}
    for key, p in summary["pairs"].items():
        pairs[key] = {"certified_nodes": p["certified_nodes"], "nodes": p["nodes"],
                      "barrier_kj_mol": p["barrier_kj_mol"],
                      "rate_ij_per_ps": p["rate_ij_per_ps"],
                      "rate_ji_per_ps": p["rate_ji_per_ps"],
                      "top_atoms": p.get("top_atoms", [])[:cfg.top_k],
                      "note": p.get("note")}
        certified = sum(1 for c in p["certified_nodes"] if c > 0)
        (ctx.log.info if certified == len(p["nodes"]) else ctx.log.warning)(
            "transition %s: %d of %d paths certified, barrier(s) %s kJ/mol", key, certified,
            len(p["nodes"]), ", ".join(f"{b:.3g}" for b in p["barrier_kj_mol"]))
    ctx.log.info("transitions: %d memberships, %d pairs, rate matrix %s%s", model.n_chi,
                 n_pairs, "valid" if summary["rates_valid"] else "INVALID",
                 "" if summary["rates_valid"] else ": " + "; ".join(summary["rates_notes"]))
    return {"transitions": {"n_chi": model.n_chi, "dir": TRANSITIONS_DIR,
                            "rates_valid": bool(summary["rates_valid"]),
                            "rates_notes": list(summary["rates_notes"]),
                            "timescales_ps": summary["timescales_ps"],
                            "rates_per_ps": summary["rates"]["rates"],
                            "rates_err_per_ps": summary["rates"]["rates_err"],
                            "pairs": pairs,
                            "figures": [str(Path(f).relative_to(ctx.out))
                                        for f in summary.get("figures", [])]}}


def transitions_markdown(tr: dict[str, Any]) -> list[str]:
    """The report section of the ``transitions`` stage."""
    if not tr:
        return []
    lines = [f"## Transitions between {tr['n_chi']} states (n_chi = {tr['n_chi']})", "",
             f"Files: `{tr['dir']}/` (rates.json, states.json, pair_I_J/ with paths, PDBs, "
             "atoms.csv, channels). Rate matrix "
             + ("valid" if tr["rates_valid"] else
                "**INVALID** (" + "; ".join(tr["rates_notes"]) + "): the rates below are not "
                "results") + "; timescales " +
             ", ".join(f"{t:.3g}" for t in tr.get("timescales_ps") or []) + " ps.", "",
             "| pair | rate i→j /ps | rate j→i /ps | certified paths | barrier kJ/mol | "
             "top atoms |", "|---|---|---|---|---|---|"]
    for key, p in tr["pairs"].items():
        cert = sum(1 for c in p["certified_nodes"] if c > 0)
        bars = [b for b, c in zip(p["barrier_kj_mol"], p["certified_nodes"]) if c > 0]
        atoms = ", ".join(str(a.get("label", a)) if isinstance(a, dict) else str(a)
                          for a in p.get("top_atoms", [])[:5]) or (p.get("note") or "—")
        lines.append(f"| {key} | {p['rate_ij_per_ps']:.3g} | {p['rate_ji_per_ps']:.3g} | "
                     f"{cert} of {len(p['nodes'])} | "
                     f"{', '.join(f'{b:.3g}' for b in bars) or '—'} | {atoms} |")
    return lines + [""]
