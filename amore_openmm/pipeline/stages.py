"""The pipeline's stages as plain functions (also the ``amore sample/train/mep/sensitivity``
commands). Their defaults come from :class:`~amore_openmm.config.RunConfig` (the run
settings, whose stage defaults live in :mod:`amore_openmm.settings`); a ``None`` χ-MEP
step, κ or node limit leaves the :class:`~amore_openmm.settings.MEPSettings` value."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import RunConfig, check_settings
from ..data import KoopmanData
from ..settings import MEPSettings, SensitivitySettings
from .runio import write_features_csv
from .state import stage_seed, check_out_dir

__all__ = ["sample_data", "train_chi", "trace_paths", "path_starts", "write_sensitivity",
           "burst_starts", "trajectory_frames", "top_atoms", "TOP_FREQUENCY_K"]

_D = RunConfig()  # the one place the stage defaults come from
#: checkpoint of initial structure i's trajectory (:func:`trajectory_frames`)
TRAJECTORY_PARTIAL = "trajectory_{}.partial.npz"


def sample_data(system: Any, n_starts: int = _D.n_starts, n_koopman: int = _D.n_koopman, *,
                lag_steps: int | None = None, stride_steps: int | None = None,
                seed: int = _D.seed, platform: str = _D.platform, workers: int | None = None,
                progress: bool = True) -> KoopmanData:
    """Initial Koopman data: a trajectory from each initial structure (frames every
    ``stride_steps``, default the lag) and ``n_koopman`` bursts of ``lag_steps`` from every
    frame. ``system``: a MolecularSystem or anything ``load_system`` takes."""
    from ..sampling import BurstSampler, ContextPool
    from ..systems import load_system
    check_settings({"n_starts": n_starts, "n_koopman": n_koopman, "lag_steps": lag_steps,
                    "stride_steps": stride_steps, "workers": workers}, "sample_data")
    ms = load_system(system)
    lag = int(lag_steps or ms.lag_steps)
    stride = int(stride_steps or lag)
    frames = trajectory_frames(ms, n_starts, stride, seed, platform, progress)
    with ContextPool(ms, size=workers, platform=platform) as pool:
        data = BurstSampler(pool).run(frames, n_koopman, lag, seed=stage_seed(seed, "bursts"),
                                      generation=0, origin="trajectory", progress=progress)
    data.system_name = ms.name
    return data


def trajectory_frames(ms: Any, n_starts: int, stride: int, seed: int, platform: str,
                      progress: bool, checkpoint_dir: str | os.PathLike | None = None
                      ) -> np.ndarray:
    """``n_starts`` frames (float32, nm), split evenly over the initial structures.
    ``checkpoint_dir``: each structure's trajectory is checkpointed there
    (:data:`TRAJECTORY_PARTIAL`, see :func:`~amore_openmm.sampling.sample_trajectory`) and
    resumed from it; the caller removes the files when the frames are saved."""
    from ..sampling import sample_trajectory
    n_struct = len(ms.positions)
    counts = [n_starts // n_struct + (1 if i < n_starts % n_struct else 0)
              for i in range(n_struct)]
    frames = []
    for i, (x0, n) in enumerate(zip(ms.positions, counts)):
        if n:
            ck = None if checkpoint_dir is None else \
                Path(checkpoint_dir) / TRAJECTORY_PARTIAL.format(i)
            frames.append(np.asarray(sample_trajectory(
                ms, n, stride, stage_seed(seed, f"trajectory/{i}"), x0=x0, platform=platform,
                progress=progress, checkpoint=ck), dtype=np.float32))
    return np.concatenate(frames)


#: a first fit whose χ spans less than this over the data found no slow process (a flat χ:
#: the first ISOKANN iterations can collapse onto a constant from some initial weights)
MIN_CHI_SPAN = 0.1
#: fits of a fresh χ tried (other seeds) before a flat χ is reported as an error (on the 1 ns
#: VGVAPG ensemble the pairwise_sym χ collapsed for three seeds and not the fourth)
FIRST_FIT_TRIES = 4
#: ... then this many more at the learning rate divided by :data:`LR_REDUCTION`: a smaller
#: step keeps the network from saturating onto a constant (VGVAPG quick, seed 0: four fits
#: at lr 1e-3 collapsed, the same data at 1e-4 gave a χ spanning 0.92). Runs whose first fit
#: succeeds within FIRST_FIT_TRIES are unchanged by these.
REDUCED_LR_TRIES = 2
LR_REDUCTION = 10.0


def train_chi(data: KoopmanData, system: Any, iterations: int = _D.iterations, *,
              model: Any = None, featurizer: str = _D.featurizer,
              minibatch: int = _D.minibatch, optimizer: str = _D.optimizer, lr: float = _D.lr,
              weight_decay: float = _D.weight_decay, seed: int = _D.seed,
              progress: bool = False, initial_target: Any = None,
              initial_iterations: int = 0, restore_best: bool = _D.restore_best
              ) -> tuple[Any, list[float]]:
    """ISOKANN χ on ``data`` (continuing from ``model``'s weights when given), oriented so
    that χ ≈ 0 at the system's first initial structure. Returns (model, loss history); the
    model's ``training`` dict holds the validation loss.

    A fresh χ (``model=None``) that collapses to a constant (an ``IsokannError`` or a χ
    spanning less than :data:`MIN_CHI_SPAN` over the data) is refitted from other initial
    weights, up to :data:`FIRST_FIT_TRIES` fits, then :data:`REDUCED_LR_TRIES` more at
    ``lr / LR_REDUCTION``; each retry is a ``RuntimeWarning`` (a pipeline stage writes it to
    ``run.log``). A χ found at the reduced rate keeps it (``training["lr_reduced_to"]``) for
    its continued fits, which would otherwise saturate it again. When every fit collapses,
    the IsokannError names the tries and the remedies. A continued fit is never retried:
    its weights carry the previous generations. ``initial_target``, ``initial_iterations``:
    see :meth:`~amore_openmm.isokann.Isokann.fit` (a fresh χ first regressed onto another
    χ's values). ``restore_best``: every fit ends with the network of its lowest validation
    loss (:class:`~amore_openmm.settings.TrainingSettings`)."""
    from ..isokann import IsokannError
    check_settings({"iterations": iterations, "minibatch": minibatch, "optimizer": optimizer,
                    "lr": lr, "weight_decay": weight_decay, "featurizer": featurizer},
                   "train_chi")
    if model is not None:
        kept = (getattr(model, "metadata", {}).get("training") or {}).get("lr_reduced_to")
        if kept is not None and float(kept) < lr:
            lr = float(kept)
        fitted, losses = _fit_once(data, system, iterations, model, featurizer, minibatch,
                                   optimizer, lr, weight_decay, seed, progress,
                                   initial_target=initial_target,
                                   initial_iterations=initial_iterations,
                                   restore_best=restore_best)
        if kept is not None:
            fitted.metadata.setdefault("training", {})["lr_reduced_to"] = lr
        return fitted, losses
    plan = [(lr, attempt) for attempt in range(FIRST_FIT_TRIES)] + \
           [(lr / LR_REDUCTION, attempt) for attempt in range(REDUCED_LR_TRIES)]
    tries, last = len(plan), None
    for n, (fit_lr, attempt) in enumerate(plan):
        # the first fit at each rate starts from the run's seed: the reduced-rate fit is the
        # one `--resume --lr` would do
        fit_seed = seed if attempt == 0 else \
            int(np.random.SeedSequence([int(seed), attempt]).generate_state(1)[0])
        try:
            fitted, losses = _fit_once(data, system, iterations, None, featurizer, minibatch,
                                       optimizer, fit_lr, weight_decay, fit_seed, progress,
                                       initial_target=initial_target,
                                       initial_iterations=initial_iterations,
                                       restore_best=restore_best)
        except IsokannError as exc:
            problem, last = str(exc), exc
        else:
            chi = fitted.chi(np.asarray(data.x[:: max(1, len(data.x) // 2000)]))
            if float(np.ptp(chi)) >= MIN_CHI_SPAN:
                training = fitted.metadata.setdefault("training", {})
                training["first_fit_attempt"] = n + 1
                if fit_lr < lr:
                    training["lr_reduced_to"] = fit_lr
                return fitted, losses
            problem, last = (f"χ spans only {float(np.min(chi)):.3f}..{float(np.max(chi)):.3f}"
                             " over the data"), None
        if n + 1 < tries:
            next_lr = plan[n + 1][0]
            how = ("from other initial weights" if next_lr == fit_lr else
                   f"with the learning rate divided by {LR_REDUCTION:g} (lr={next_lr:g})")
            warnings.warn(f"ISOKANN fit {n + 1} of {tries} collapsed ({problem}); refitting "
                          f"{how}", RuntimeWarning, stacklevel=2)
    if last is not None:
        raise IsokannError(
            f"all {tries} ISOKANN fits collapsed ({FIRST_FIT_TRIES} from different initial "
            f"weights at lr={lr:g}, {REDUCED_LR_TRIES} at lr={lr / LR_REDUCTION:g}; last: "
            f"{last}). If the data do hold transitions, a still smaller learning rate may keep "
            f"the network from saturating (try --lr {lr / LR_REDUCTION ** 2:g}); otherwise "
            "sample more or longer (--n-starts, --stride-steps)") from last
    return fitted, losses   # flat after every try: the caller reports it (no slow process)


def _fit_once(data: KoopmanData, system: Any, iterations: int, model: Any, featurizer: str,
              minibatch: int, optimizer: str, lr: float, weight_decay: float, seed: int,
              progress: bool, *, initial_target: Any = None, initial_iterations: int = 0,
              restore_best: bool = False) -> tuple[Any, list[float]]:
    from ..chi import ChiModel, make_featurizer
    from ..chi.network import default_network_spec
    from ..isokann import Isokann, orient
    from ..isokann_memory import check_training_memory
    from ..systems import load_system
    ms = load_system(system)
    est = Isokann(iterations=int(iterations), minibatch=minibatch, optimizer=optimizer, lr=lr,
                  weight_decay=weight_decay, seed=seed, progress=progress,
                  restore_best=restore_best)
    if model is None:
        kind = ms.featurizer if featurizer == "auto" else featurizer
        feat = make_featurizer(ms, kind)
        # before the network is built: a pairnet over 10⁵ features alone is ~10⁹ weights
        check_training_memory(data.n_starts, data.n_koopman, feat, default_network_spec(feat),
                              minibatch, data.nbytes, where="train_chi")
        model = ChiModel(feat, seed=seed)
    fitted = est.fit(data, model=model, initial_target=initial_target,
                     initial_iterations=initial_iterations)
    fitted = orient(fitted, ms.positions[0])
    return fitted, [float(v) for v in est.loss_history]


def path_starts(ms: Any, model: Any, data: Any, n_paths: int, window: tuple[float, float],
                platform: str) -> np.ndarray:
    """Path starts: the transition states of ``data`` (χ in ``window``); when fewer than
    ``n_paths`` lie there, topped up with the samples closest to χ = 0.5 outside it (a
    warning says how many and their χ). A nearly binary χ leaves the window empty or thin:
    one path from the only sample in it, against the ``n_paths`` asked for, would leave the
    channels unexplored (VGVAPG science seed 1: 1 of 6 final paths)."""
    from ..mep import transition_states
    try:
        ts = np.asarray(transition_states(model, data, ms, window=tuple(window),
                                          platform=platform))
    except ValueError as exc:
        ts, why = None, str(exc)
    else:
        why = f"only {len(ts)} sample(s) with χ in window {tuple(window)}"
        if len(ts) >= max(n_paths, 1):
            return ts
    # the whole data set is read (and χ evaluated on it) only when the window is thin
    x = np.asarray(getattr(data, "x", data), dtype=np.float64)
    ts = x[:0] if ts is None else ts
    chi = model.chi(x)
    if float(chi.max() - chi.min()) < MIN_CHI_SPAN:
        raise RuntimeError(
            f"χ is nearly constant over the data ({chi.min():.3f}..{chi.max():.3f}): "
            "ISOKANN found no slow process. Train longer (iterations) or sample longer "
            "(n_starts, stride_steps) so that the data contain transitions")
    # the samples closest to χ = 0.5 outside the window; their paths climb into the
    # unsampled transition region
    outside = np.flatnonzero((chi < window[0]) | (chi > window[1]))
    order = outside[np.argsort(np.abs(chi[outside] - 0.5), kind="stable")]
    order = order[:max(n_paths, 1) - len(ts)]
    warnings.warn(f"{why}; starting {len(order)} χ-MEP(s) from the samples closest to "
                  f"χ = 0.5 outside it (χ {', '.join(f'{c:.3f}' for c in chi[order])})",
                  RuntimeWarning, stacklevel=3)
    return np.concatenate([ts, x[order]])


def trace_paths(system: Any, model: Any, data: Any, n_paths: int = _D.final_paths, *,
                window: tuple[float, float] = (_D.ts_low, _D.ts_high),
                settings: MEPSettings | None = None, step: float | None = None,
                kappa: float | None = None, max_nodes: int | None = None,
                platform: str = _D.platform,
                workers: int | None = None, tracer: str = _D.path_tracer,
                seed: int | None = None, progress: bool = True) -> list[Any]:
    """χ-MEPs from ``n_paths`` transition states of ``data`` (KoopmanData or positions):
    random ones when ``seed`` is given, otherwise the lowest-energy ones. ``settings``: the
    :class:`~amore_openmm.settings.MEPSettings` (default ``MEPSettings()``); ``step``,
    ``kappa``, ``max_nodes`` override them unless None.
    ``platform``: see :func:`mep_platform` (Reference, or CPU for a periodic or
    implicit-solvent System, unless CPU, CUDA or OpenCL is asked for). ``tracer``: "auto"
    (:func:`choose_path_tracer`), "pool" (one
    path at a time per worker, :func:`~amore_openmm.mep.trace_chi_meps`) or "batched" (the
    paths in Contexts of packed copies, one per worker process, each copy with its own
    L-BFGS, :func:`~amore_openmm.mep.trace_chi_meps_batched`, on the CPU platform unless
    another is asked for; a periodic System falls back to "pool" with a warning)."""
    from ..mep import trace_chi_meps, trace_chi_meps_batched
    from ..systems import load_system
    check_settings({"final_paths": n_paths, "path_step": step, "kappa": kappa,
                    "path_max_nodes": max_nodes, "ts_low": window[0], "ts_high": window[1],
                    "path_tracer": tracer}, "trace_paths")
    ms = load_system(system)
    if tracer == "auto":
        tracer = choose_path_tracer(ms, model)
    if tracer == "batched" and ms.is_periodic:
        warnings.warn("path_tracer = 'batched' packs copies of a molecule in vacuum or "
                      "implicit solvent, not a periodic box; tracing the paths one at a time "
                      "(path_tracer = 'pool')", RuntimeWarning, stacklevel=2)
        tracer = "pool"
    platform, properties = (batched_platform(platform) if tracer == "batched" else
                            mep_platform(ms, platform, workers))
    ts = path_starts(ms, model, data, n_paths, window, platform)
    order = np.arange(len(ts))
    if seed is not None and len(ts) > n_paths:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(ts), size=n_paths, replace=False))
        order = np.concatenate([chosen, rng.permutation(np.setdiff1d(order, chosen))])
    ts, spares = ts[order[:n_paths]], ts[order[n_paths:n_paths * (1 + SPARE_STARTS_PER_PATH)]]
    opts = (settings or MEPSettings()).replace(**{k: v for k, v in (
        ("step", step), ("kappa", kappa), ("max_nodes", max_nodes)) if v is not None})

    def trace(starts: np.ndarray) -> list[Any]:
        if tracer == "batched":
            # per-copy L-BFGS streamed, one process per core (the measured fastest; see
            # choose_path_tracer); a System with constraints takes the joint minimiser
            procs = max(1, min(int(workers or os.cpu_count() or 1), len(starts)))
            props = ({**properties, "Threads": "1"} if procs > 1 and properties and
                     "Threads" in properties else properties)
            return trace_chi_meps_batched(ms, model, starts, platform=platform,
                                          properties=props, minimizer="copies",
                                          workers=procs, settings=opts, progress=progress)
        return trace_chi_meps(ms, model, starts, pool_size=workers, platform=platform,
                              properties=properties, progress=progress, settings=opts)
    return replace_failed_starts(trace(ts), spares, trace)


#: further candidate starts per path (transition states not chosen): a path whose start node
#: fails its certificate is traced once more from the next one. Measured: alanine dipeptide
#: in TIP3P, default preset, seed 0: both generations' single path stopped at an unconverged
#: start (κ 6.9·10⁵, 3,313 evaluations) and added no bursts; with a spare, generation 2's
#: path is 59 of 60 nodes certified (χ 0.45–0.98), generation 1's spare fails too.
SPARE_STARTS_PER_PATH = 1


def replace_failed_starts(paths: list[Any], spares: np.ndarray,
                          trace: Callable[[np.ndarray], list[Any]]) -> list[Any]:
    """``paths`` with each path of no certified node (its start failed) traced again from the
    next of ``spares`` by ``trace``; the replacement is kept only when it has certified
    nodes, and a warning says which paths were replaced."""
    failed = [i for i, p in enumerate(paths) if not int(p.n_certified)]
    if not failed or not len(spares):
        return paths
    paths = list(paths)
    again = trace(spares[:len(failed)])
    kept = []
    for i, p in zip(failed, again):
        if int(p.n_certified):
            paths[i] = p
            kept.append(i)
    warnings.warn(f"{len(failed)} χ-MEP start(s) failed the certificate (no certified node); "
                  f"traced again from {len(again)} spare transition state(s): "
                  f"{len(kept)} replaced" + (f" (path(s) {kept})" if kept else ""),
                  RuntimeWarning, stacklevel=3)
    return paths


def choose_path_tracer(ms: Any, model: Any = None) -> str:
    """The run setting ``path_tracer = "auto"``: "batched" for a molecule in vacuum without
    constraints whose χ gives each structure the same bits in any batch
    (:meth:`~amore_openmm.forces.pythonforce.BatchedChiRestraint.batch_invariant`, checked
    on ``model`` when given: the distance featurizers' numpy pass), else "pool".

    Measured on alanine dipeptide, 2 shared cores (``benchmarks/mep_batched.py --minimizer
    copies --workers 2 --paths N``: transition states of its χ, ≤ 100 nodes per path), pool
    against batched: 1 path 9.2 s against 3.4 s, 2 paths 12.1 against 6.0 s, 4 paths 30.7
    against 21.7 s, 8 paths 58.2 against 26.6 s, 34 paths 263 against 43.6 s, with node
    counts and energies inside χ ∈ [0.1, 0.9] as the pool's (see
    :func:`~amore_openmm.mep.trace_chi_meps_batched`): the per-copy L-BFGS needs ~65 force
    evaluations per node against OpenMM's minimiser's ~257. Batched paths repeat to the bit
    (a resumed run's bursts from path nodes repeat the uninterrupted run's) only where χ is
    batch-invariant, hence the check; TorchScript χ (coordinate featurizers) stays on the
    pool. Implicit solvent goes to the pool: each copy's GB term is the expensive part
    there and packing saves none of it (VGVAPG, χ of a quick run, 2 paths of 60 nodes:
    batched 26.2 s, 65 evaluations per node on single-copy Reference GB, against the pool's
    24.4 s, 167 on the CPU platform); a periodic box cannot be packed, and constraints
    leave only the joint minimiser (slower than the pool)."""
    if ms.is_periodic or ms.has_implicit_solvent or ms.has_constraints:
        return "pool"
    if model is not None and not chi_batch_invariant(ms, model):
        return "pool"
    return "batched"


def chi_batch_invariant(ms: Any, model: Any, structures: int = 5) -> bool:
    """Whether χ (a ChiModel or a saved one) of ``structures`` perturbed copies of the
    system's first positions comes out the same to the bit alone and in batches (see
    :meth:`~amore_openmm.forces.pythonforce.BatchedChiRestraint.batch_invariant`)."""
    from ..forces.pythonforce import BatchedChiRestraint
    from ..mep import as_chi_model
    x0 = np.asarray(ms.positions[0], dtype=np.float64)
    x = x0 + 0.01 * np.random.default_rng(0).standard_normal((structures, *x0.shape))
    restraint = BatchedChiRestraint(as_chi_model(model), structures, ms.n_atoms)
    return restraint.batch_invariant(x)


def batched_platform(platform: str) -> tuple[str, dict[str, str] | None]:
    """(platform, properties) of the packed Context of batched χ-MEPs: the one asked for, or
    for "auto"/"Reference" the CPU platform with every core (its compiled custom forces
    evaluate the packed non-bonded and GB terms; measured on 34 alanine paths,
    benchmarks/mep_batched.py) where its minimiser works, else Reference."""
    from ..sampling import platform_can_minimize
    if platform in ("CPU", "CUDA", "OpenCL"):
        return platform, None
    if platform_can_minimize("CPU"):
        return "CPU", {"Threads": str(os.cpu_count() or 1)}
    return "Reference", None


def mep_platform(ms: Any, platform: str, workers: int | None = None
                 ) -> tuple[str, dict[str, str] | None]:
    """(platform, properties) of the χ-MEP Contexts for the run setting ``platform``.

    CPU (its cores shared among the ``workers`` threads), CUDA and OpenCL are used when asked
    for. "auto" (and "Reference") give Reference
    (fastest for a small molecule in vacuum), except for
    - a periodic (solvated) System: every node minimises the whole water box with PME, about
      5× faster on the CPU platform (measured on alanine dipeptide in TIP3P);
    - implicit solvent: the generalized-Born force is compiled on the CPU platform (VGVAPG,
      amber14 + OBC2: one force evaluation 1.2 ms on CPU with 1 thread, 3.1 ms on Reference;
      6 final χ-MEPs of a science run on 2 worker threads 129 s instead of 277 s);
    there "auto" gives CPU wherever the minimiser runs on it, with the cores shared among the
    ``workers`` threads.
    """
    from ..sampling import platform_can_minimize
    cores = os.cpu_count() or 1
    cpu = {"Threads": str(max(1, cores // max(1, int(workers or cores))))}
    if platform == "CPU":  # the cores shared among the worker threads, not each on all
        return platform, cpu
    if platform in ("CUDA", "OpenCL"):
        return platform, None
    if platform == "auto" and (ms.is_periodic or ms.has_implicit_solvent) and \
            platform_can_minimize("CPU"):
        return "CPU", cpu
    return "Reference", None


def burst_starts(paths: Sequence[dict[str, Any]], per_path: int) -> np.ndarray:
    """Up to ``per_path`` evenly spaced *certified* nodes of each path (dicts from
    :func:`~amore_openmm.pipeline.load_paths`) as (S, n, 3) float32 burst starts.
    Uncertified nodes are never used: they may be unphysical."""
    starts = []
    for p in paths:
        ok = np.flatnonzero(np.asarray(p["certified"], dtype=bool))
        if len(ok) == 0:
            continue
        pick = np.unique(np.linspace(0, len(ok) - 1, min(per_path, len(ok))).round()
                         .astype(int))
        starts.append(np.asarray(p["positions"])[ok[pick]])
    if not starts:
        return np.zeros((0,) + tuple(np.asarray(paths[0]["positions"]).shape[1:])
                        if paths else (0, 0, 3), dtype=np.float32)
    return np.concatenate(starts).astype(np.float32)


#: the k of the bootstrap top-k frequency in atoms.csv and the report
TOP_FREQUENCY_K = 5


def top_atoms(sens: Any, k: int) -> list[dict[str, Any]]:
    """The ``k`` most sensitive featurized atoms with their bootstrap standard error and how
    often they land in the top :data:`TOP_FREQUENCY_K` across bootstrap resamples."""
    freq = np.asarray(sens.top_frequency(TOP_FREQUENCY_K), dtype=float)
    out = []
    for i in sens.ranking:
        if len(out) == k:
            break
        if not np.isfinite(sens.per_atom[i]):
            continue  # not featurized: never ranked
        out.append({"index_0based": int(i), "index_1based": int(i) + 1,
                    "label": sens.labels[i] if sens.labels else f"atom{i}",
                    "mean_grad_sq": float(sens.per_atom[i]),
                    "mean_grad_sq_err": float(sens.per_atom_err[i]),
                    "fraction": float(sens.fraction[i]), "top_k": TOP_FREQUENCY_K,
                    "top_k_frequency": float(freq[i])})
    return out


def write_sensitivity(out: str | os.PathLike, model: Any, system: Any, positions: np.ndarray,
                      *, weights: np.ndarray | None = None, paths: list[Any] | None = None,
                      settings: SensitivitySettings | None = None, bins: int | None = None,
                      top_k: int | None = None, mep_dir: str | os.PathLike | None = None,
                      fits: Any = ()) -> dict[str, Any]:
    """χ-sensitivity files into ``out``: ``atoms.csv``
    (:meth:`~amore_openmm.sensitivity.Sensitivity.write_ranking_csv`), ``levelset.npz``,
    ``features.csv``; with ``paths`` also the path-vs-ensemble MSE per path and, when
    ``mep_dir`` is given, ``path_XXX.pdb`` there (B-factor: the level-set average
    ⟨‖∇ᵢχ‖²⟩_z at each node's χ). ``weights``: per-sample weights of the ensemble.
    ``settings``: :class:`~amore_openmm.settings.SensitivitySettings` (its ``bins`` and
    ``top_k``; ``bins``/``top_k`` override them unless None). ``fits``: more χ fits of the
    same data (other seeds): the ranking (``atoms.csv``, ``levelset.npz``, ``top_atoms``) is
    then their mean with ``model``'s (:func:`~amore_openmm.sensitivity.combine_fits`); the
    path MSE and the PDBs stay ``model``'s own, whose paths they are.
    Returns {"path_mse", "sensitivity", "saliency", "top_atoms"}."""
    from ..mep import write_path_pdb
    from ..sensitivity import (chi_sensitivity, combine_fits, feature_saliency,
                               path_vs_ensemble_mse)
    from ..systems import load_system
    s = settings or SensitivitySettings()
    bins = s.bins if bins is None else bins
    top_k = s.top_k if top_k is None else top_k
    check_settings({"sensitivity_bins": bins, "top_k": top_k}, "write_sensitivity")
    out = check_out_dir(Path(out))
    ms = load_system(system)
    own = chi_sensitivity(model, positions, bins=bins, labels=ms, weights=weights)
    sens = combine_fits([own] + [chi_sensitivity(m, positions, bins=bins, labels=ms,
                                                 weights=weights) for m in fits])
    sens.write_ranking_csv(out / "atoms.csv", k=TOP_FREQUENCY_K, atoms=ms.selection)
    sens.save(out / "levelset.npz")
    sal = feature_saliency(model, positions)
    write_features_csv(out / "features.csv", sal)
    mses: list[float] = []
    for i, p in enumerate(paths or []):
        try:
            mses.append(float(path_vs_ensemble_mse(p, own)))
        except ValueError:
            mses.append(float("nan"))
        if mep_dir is not None:
            write_path_pdb(Path(mep_dir) / f"path_{i:03d}.pdb", p, ms.topology,
                           sensitivity=own, atoms=ms.selection)
    return {"path_mse": mses, "sensitivity": sens, "saliency": sal,
            "top_atoms": top_atoms(sens, top_k)}
