"""The bodies of :class:`~amore_openmm.pipeline.AmoreRun`'s stages. Each takes the run's
:class:`~amore_openmm.pipeline.state.StageContext`, reads only files of completed stages and
returns the entries to record in the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..data import KoopmanData, atomic_save_npz, atomic_write_text, to_jsonable, write_json
from .report import build_report, default_figures, report_markdown
from .runio import file_digest, load_chipaths, read_data, read_npz, save_paths
from .stages import (TRAJECTORY_PARTIAL, choose_path_tracer, train_chi, trace_paths,
                     trajectory_frames, write_sensitivity)
from .state import StageContext, stage_seed

__all__ = ["dispatch", "summary_line"]


def dispatch(ctx: StageContext, stage: str) -> dict[str, Any] | None:
    """Run one stage by name."""
    from . import fes_stages, multichi_stages, science_stages
    simple = {"trajectory": trajectory, "initial_bursts": initial_bursts,
              "final_paths": final_paths, "sensitivity": sensitivity, "figures": figures,
              "report": report, "dihedral_chi": science_stages.dihedral_chi,
              "channels": science_stages.channels, "free_energy": fes_stages.free_energy,
              "transitions": multichi_stages.transitions_stage}
    if stage in simple:
        return simple[stage](ctx)
    kind, _, g = stage.partition("_")
    per_gen = {"train": train, "paths": paths, "bursts": bursts}
    if kind in per_gen and g.isdigit():
        return per_gen[kind](ctx, int(g))
    from .state import RunDirError
    raise RunDirError(f"unknown stage {stage!r}")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _drop_file(path: Path) -> None:
    """Remove a stage's partial file once its result is saved."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _sample(ctx: StageContext, starts: np.ndarray, seed: int, generation: int, origin: str,
            partial: Path) -> KoopmanData:
    """K bursts from ``starts``; finished starts are committed to ``partial`` as they
    come, so a killed stage resumes where it stopped (same seeds, same data)."""
    from ..sampling import BurstSampler, ContextPool
    cfg = ctx.config
    # periodic boxes on the CPU: re-seeding is about one step there, and per-burst seeds let
    # the few starts of a generation spread over every slot (a reseed block is one task)
    reseed = "burst" if ctx.system.is_periodic and ctx.platform == "CPU" else "auto"
    settings = cfg.sampling.replace(lag_steps=ctx.lag_steps, reseed=reseed)
    with ContextPool(ctx.system, size=cfg.workers, platform=ctx.platform) as pool:
        report = getattr(pool, "layout_report", None)
        if report:   # the measured (or given) Contexts × threads choice, into run.log
            ctx.log.info("burst pool layout on %s (reseed %s): %s", ctx.platform, reseed,
                         json.dumps(to_jsonable(report), sort_keys=True))
        sampler = BurstSampler(pool, executor=ctx.executor(), replicas=cfg.replicas)

        def go() -> KoopmanData:
            return sampler.run(starts, settings=settings, seed=seed, generation=generation,
                               origin=origin, progress=ctx.progress, checkpoint=partial)
        try:
            data = go()
        except ValueError as exc:
            # a partial file from other settings/versions is only a cache: start over
            if not (partial.is_file() and str(partial) in str(exc)):
                raise
            ctx.log.warning("discarding %s (%s)", partial.name, exc)
            partial.unlink()
            data = go()
    data.system_name = ctx.system.name
    return data


def _drops(ctx: StageContext, data: KoopmanData, what: str) -> dict[str, int]:
    """The bursts dropped by the sampler's sanity checks, logged (never silently lost)."""
    counts = {str(k): int(v) for k, v in data.extra["drop_counts"].items()}
    if sum(counts.values()):
        ctx.log.warning("%s: %d burst(s) dropped by the sanity checks (%s); they are not in "
                        "the data", what, sum(counts.values()),
                        ", ".join(f"{k}: {v}" for k, v in counts.items()))
    else:
        ctx.log.info("%s: no burst dropped by the sanity checks", what)
    return counts


def _last(value: Any) -> float | None:
    """The final entry of a per-iteration history, or the value itself."""
    if value is None:
        return None
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    return float(arr[-1]) if arr.size else None


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
def trajectory(ctx: StageContext) -> dict[str, Any]:
    """Frames from each initial structure (split evenly), saved to the checkpoint."""
    cfg = ctx.config
    from .science_stages import equilibrium, uses_equilibrium
    if uses_equilibrium(cfg):
        return equilibrium(ctx)
    stride = int(cfg.stride_steps or ctx.lag_steps)
    frames = trajectory_frames(ctx.system, cfg.n_starts, stride, cfg.seed, ctx.platform,
                               ctx.progress, checkpoint_dir=ctx.paths["checkpoint"])
    atomic_save_npz(ctx.paths["trajectory"], frames=frames, stride_steps=stride)
    for partial in ctx.paths["checkpoint"].glob(TRAJECTORY_PARTIAL.format("*")):
        partial.unlink()
    return {}


def initial_bursts(ctx: StageContext) -> dict[str, Any]:
    """K bursts from every trajectory frame, saved in chunks (resumable)."""
    partial = ctx.paths["checkpoint"] / "initial_bursts.partial.npz"
    from .science_stages import equilibrium_data, uses_equilibrium
    if uses_equilibrium(ctx.config):
        data = equilibrium_data(ctx)
    else:
        frames = read_npz(ctx.paths["trajectory"])["frames"]
        data = _sample(ctx, frames, stage_seed(ctx.config.seed, "initial_bursts"), 0,
                       "trajectory", partial)
    data.save(ctx.paths["data"])
    _drop_file(partial)
    ctx.gen_record(0).update(n_data=len(data), new_starts=len(data), n_paths=0,
                             drop_counts=_drops(ctx, data, "initial bursts"))
    return {"n_data": len(data)}


def train(ctx: StageContext, g: int) -> dict[str, Any]:
    """ISOKANN on the data so far (continuing from generation g-1's weights), orient."""
    from ..isokann import exit_rates
    cfg = ctx.config
    data = ctx.load_data()
    prev = None if g == 0 else ctx.load_model(g - 1)
    iters = cfg.iterations if g == 0 else cfg.iterations_per_generation
    model, losses = train_chi(data, ctx.system, iters, model=prev, featurizer=cfg.featurizer,
                              minibatch=cfg.minibatch, optimizer=cfg.optimizer, lr=cfg.lr,
                              weight_decay=cfg.weight_decay, restore_best=cfg.restore_best,
                              seed=stage_seed(cfg.seed, f"train/{g}"), progress=ctx.progress)
    rates = exit_rates(model, data, data.lag_time)
    val_loss = _last(model.metadata["training"]["val_loss"])
    model.metadata.update(system=ctx.system.name, generation=g, n_data=len(data),
                          lag_time_ps=data.lag_time)
    # the per-generation snapshot is what resuming reads; model/ holds the latest
    model.save(ctx.model_path(g))
    model.save(ctx.paths["chi_state"])
    model.export_torchscript(ctx.paths["chi_script"],
                             training={"generation": g, "iterations": iters,
                                       "n_data": len(data), "loss": _last(losses),
                                       "val_loss": val_loss})
    chi = model.chi(data.x)
    ctx.gen_record(g).update(n_data=len(data), iterations=iters, loss=_last(losses),
                             loss_first=float(losses[0]) if losses else None,
                             val_loss=val_loss, timescale_ps=rates["timescale_ps"],
                             exit_rates=rates, chi_range=[float(chi.min()), float(chi.max())])
    training = model.metadata.get("training") or {}
    if g == 0 and training.get("first_fit_attempt", 1) > 1:   # the report says so
        ctx.gen_record(g).update(fit_attempt=training["first_fit_attempt"],
                                 lr_reduced_to=training.get("lr_reduced_to"))
    if cfg.science:
        return _stop_rule(ctx, model, data, g)
    return {}


def _stop_rule(ctx: StageContext, model: Any, data: KoopmanData, g: int) -> dict[str, Any]:
    """Science runs: the new transitions of generation g and the stopping rule."""
    from .science import stop_decision
    from .science_stages import generation_transitions
    rec = ctx.gen_record(g)
    rec["new_transitions"] = generation_transitions(model, data, g)
    if g == 0:
        return {}
    stop, why = stop_decision([ctx.gen_record(g - 1), rec])
    rec["stop_rule"] = why
    if stop and g < ctx.config.generations:
        ctx.log.info("stopping rule: %s; generations %d..%d are skipped", why, g + 1,
                     ctx.config.generations)
        return {"stopped_after": g, "stopped": why}
    return {}


def _trace(ctx: StageContext, model: Any, n: int, seed: int | None) -> list[Any]:
    cfg = ctx.config
    # resolved here to name it in the log (trace_paths warns should "batched" not apply)
    tracer = choose_path_tracer(ctx.system, model) if cfg.path_tracer == "auto" else \
        cfg.path_tracer
    ctx.log.info("tracing %d χ-MEP(s) with path_tracer = %s%s", n, tracer,
                 " (auto)" if cfg.path_tracer == "auto" else "")
    return trace_paths(ctx.system, model, ctx.load_data(), n,
                       window=(cfg.ts_low, cfg.ts_high), settings=cfg.mep,
                       platform=cfg.platform,
                       workers=cfg.workers, tracer=tracer, seed=seed,
                       progress=ctx.progress)


def _log_certificates(ctx: StageContext, chipaths: list[Any], what: str) -> list[list[int]]:
    counts = [[int(p.n_certified), len(p)] for p in chipaths]
    for i, (c, n) in enumerate(counts):
        (ctx.log.info if c == n else ctx.log.warning)(
            "%s path %d: %d of %d nodes certified%s", what, i, c, n,
            "" if c else " (UNCERTIFIED: no barrier, no burst starts)")
    return counts


def paths(ctx: StageContext, g: int) -> dict[str, Any]:
    """χ-MEPs from transition states of χ after generation g-1."""
    if ctx.config.generation_starts == "stratified":
        from .fes_stages import skip_paths
        return skip_paths(ctx, g)
    model = ctx.load_model(g - 1)
    chipaths = _trace(ctx, model, ctx.config.paths_per_generation,
                      stage_seed(ctx.config.seed, f"ts/{g}"))
    save_paths(ctx.paths["checkpoint"] / f"paths_g{g:03d}.npz", chipaths)
    chis = np.concatenate([p.chi for p in chipaths]) if chipaths else np.zeros(0)
    ctx.gen_record(g).update(
        n_paths=len(chipaths), path_nodes=[len(p) for p in chipaths],
        path_certified=_log_certificates(ctx, chipaths, f"generation {g}"),
        path_chi_range=[float(chis.min()), float(chis.max())] if len(chis) else None)
    return {}


def bursts(ctx: StageContext, g: int) -> dict[str, Any]:
    """K bursts from evenly spaced certified nodes of generation g's paths, merged into the
    data with weight 0 (path nodes are not samples of the Boltzmann ensemble)."""
    cfg = ctx.config
    part = ctx.paths["checkpoint"] / f"bursts_g{g:03d}.npz"
    data = ctx.load_data()
    if part.is_file():
        new = read_data(part)
    else:
        from .fes_stages import generation_starts
        # mep: certified path nodes; stratified: uniform in χ from umbrella windows
        starts, origin = generation_starts(ctx, g)
        partial = ctx.paths["checkpoint"] / f"bursts_g{g:03d}.partial.npz"
        if len(starts):
            new = _sample(ctx, starts, stage_seed(cfg.seed, f"bursts/{g}"), g, origin, partial)
        else:
            ctx.log.warning("generation %d: no certified path node, no new bursts", g)
            new = KoopmanData.empty(data.n_atoms, data.n_koopman, lag_steps=data.lag_steps,
                                    timestep=data.timestep, system_name=ctx.system.name)
            new.extra["drop_counts"] = {}
        new.weights = np.zeros(len(new))
        new.save(part)
        _drop_file(partial)
    merged = data.merge(new)
    merged.save(ctx.paths["data"])
    ctx.gen_record(g).update(n_data=len(merged), new_starts=len(new),
                             drop_counts=_drops(ctx, new, f"generation {g} bursts"))
    return {"n_data": len(merged)}


def final_paths(ctx: StageContext) -> dict[str, Any]:
    """χ-MEPs of the final χ → ``mep/paths.npz``."""
    n = ctx.config.final_paths
    # science runs: random distinct transition states (the lowest-energy ones crowd together)
    seed = stage_seed(ctx.config.seed, "final_ts") if ctx.config.science else None
    chipaths = _trace(ctx, ctx.load_model(), n, seed) if n else []
    save_paths(ctx.paths["paths"], chipaths)
    return {"final_path_certified": _log_certificates(ctx, chipaths, "final")}


def _ensemble(ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
    """Positions and weights of the ensemble ρ: the samples with weight > 0 (at most
    ``sensitivity_samples``, a seeded subsample)."""
    data = ctx.load_data()
    w = np.asarray(data.weights, dtype=float)
    idx = np.flatnonzero(w > 0)
    if len(idx) == 0:
        raise ValueError(f"{ctx.paths['data']}: every sample has weight 0; the sensitivity "
                         "needs ensemble samples (trajectory frames)")
    n = ctx.config.sensitivity.samples
    if len(idx) > n:
        rng = np.random.default_rng(stage_seed(ctx.config.seed, "sensitivity"))
        idx = np.sort(rng.choice(idx, n, replace=False))
    return data.x[idx], w[idx]


def sensitivity(ctx: StageContext) -> dict[str, Any]:
    """Ensemble/level-set sensitivity with error bars, feature saliency, path MSE, PDBs;
    with ``sensitivity_fits`` > 1 the ranking is the mean over that many χ fits."""
    x, w = _ensemble(ctx)
    res = write_sensitivity(ctx.paths["atoms_csv"].parent, ctx.load_model(), ctx.system, x,
                            weights=w, paths=load_chipaths(ctx.paths["paths"]),
                            settings=ctx.config.sensitivity, mep_dir=ctx.paths["mep_dir"],
                            fits=_extra_fits(ctx))
    return {"path_mse": res["path_mse"], "top_atoms": res["top_atoms"],
            "sensitivity_fits": int(res["sensitivity"].fits)}


def _extra_fits(ctx: StageContext) -> list[Any]:
    """``sensitivity_fits`` − 1 more χ fits of the final data from scratch (seeds
    ``fit/j``), each with as many iterations as the final χ had over all generations;
    ``model/chi_fit{j}.pt``, reused on resume while it belongs to the same final χ."""
    from ..chi import ChiModel
    cfg = ctx.config
    n = int(cfg.sensitivity.fits)
    if n <= 1:
        return []
    trained = ctx.trained_generations
    digest = file_digest(ctx.model_path(max(trained)))
    iters = cfg.iterations + (len(trained) - 1) * cfg.iterations_per_generation
    data, fits = ctx.load_data(), []
    for j in range(1, n):
        path = ctx.paths["chi_state"].parent / f"chi_fit{j}.pt"
        if path.is_file():
            model = ChiModel.load(path)
            if model.metadata.get("fit_of") == digest:
                fits.append(model)
                continue
        ctx.log.info("sensitivity: χ fit %d of %d (%d iterations, seed fit/%d)", j + 1, n,
                     iters, j)
        model, _ = train_chi(data, ctx.system, iters, featurizer=cfg.featurizer,
                             minibatch=cfg.minibatch, optimizer=cfg.optimizer, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, restore_best=cfg.restore_best,
                             seed=stage_seed(cfg.seed, f"fit/{j}"), progress=ctx.progress)
        model.metadata.update(fit_of=digest, fit=j)
        model.save(path)
        fits.append(model)
    return fits


def figures(ctx: StageContext) -> dict[str, Any]:
    """Figures into ``figures/`` (failures are logged, never fatal)."""
    if not ctx.config.figures:
        return {"figures": []}
    return {"figures": [str(Path(p).relative_to(ctx.out)) for p in default_figures(ctx)]}


def report(ctx: StageContext) -> dict[str, Any]:
    """``report.json`` and ``report.md``."""
    rep = build_report(ctx)
    write_json(ctx.paths["report_json"], rep)
    atomic_write_text(ctx.paths["report_md"], report_markdown(rep))
    if ctx.config.science:
        from .science_stages import paper_comparison
        paper_comparison(ctx)
    return {}


def summary_line(ctx: StageContext, g: int) -> str:
    """One log line per generation."""
    rec = ctx.gen_record(g)
    parts = [f"generation {g}/{ctx.config.generations}:",
             f"data {rec.get('n_data', '?')} starts"]
    if rec.get("new_starts"):
        parts.append(f"(+{rec['new_starts']} from {rec.get('n_paths', 0)} paths)")
    if rec.get("loss") is not None:
        parts.append(f"loss {rec['loss']:.3g}")
    if rec.get("val_loss") is not None:
        parts.append(f"validation loss {rec['val_loss']:.3g}")
    if rec.get("timescale_ps") is not None and np.isfinite(rec["timescale_ps"]):
        parts.append(f"χ timescale {rec['timescale_ps']:.3g} ps")
    if rec.get("new_transitions") is not None:
        parts.append(f"new transitions {rec['new_transitions']}")
    if rec.get("path_chi_range"):
        lo, hi = rec["path_chi_range"]
        parts.append(f"paths χ {lo:.2f}→{hi:.2f}")
    parts.append(f"{rec.get('seconds', 0.0):.1f} s")
    return " ".join(parts)
