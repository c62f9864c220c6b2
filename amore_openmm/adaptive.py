"""The AMORE pipeline end to end: adaptive generations in a resumable run directory.

Stages (each saved before the next starts, so a killed run loses at most the stage in flight):

``trajectory``     frames from the system's initial structures (``checkpoint/trajectory.npz``)
``initial_bursts`` K bursts from every frame, in chunks (``data/koopman.npz``, generation 0)
``train_0``        ISOKANN χ, oriented (``model/chi.pt``, ``model/chi_state.pt``)
per generation g = 1..G:
``paths_g``        χ-MEPs from transition states of the current χ (``checkpoint/paths_gXXX.npz``)
``bursts_g``       K bursts from path nodes, origin "mep", merged into ``data/koopman.npz``
``train_g``        ISOKANN continued from the current weights
then
``final_paths``    χ-MEPs of the final χ (``mep/paths.npz``)
``sensitivity``    ``sensitivity/atoms.csv``, ``levelset.npz``, ``features.csv``, ``mep/path_XXX.pdb``
``figures``        ``figures/*.png``
``report``         ``report.json``, ``report.md``

Every stage reads only files of completed stages (per-generation χ snapshots
``checkpoint/chi_gXXX.pt``, paths and bursts per generation) and derives its seed from the
run seed and the stage name, so a resumed run ends with the same files as an uninterrupted
one on the same platform. ``checkpoint/state.json`` records the completed stages, the number
of starts in the data after each (a merged file written just before a kill is cut back), the
per-generation records of the report and the timings. Burst stages also commit finished
starts to ``*.partial.npz`` so that even a killed burst stage resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .config import (ConfigError, RunConfig, atomic_write_text, load_config_file,
                     resolve_config)
from .data import KoopmanData, atomic_save_npz

__all__ = ["AmoreRun", "RunConfig", "RunDirError", "ConfigError", "run_layout",
           "sample_data", "train_chi", "trace_paths", "write_sensitivity", "save_paths",
           "load_paths", "load_chipaths", "build_report", "report_markdown", "STATE_VERSION"]

STATE_VERSION = 1
LOGGER_NAME = "amore_openmm.run"



class RunDirError(ValueError):
    """The run directory cannot be used as asked (unwritable, another system's run, ...)."""


def run_layout(out: str | os.PathLike) -> dict[str, Path]:
    """Paths of the run-directory layout (other tools read these)."""
    out = Path(out)
    return {
        "config": out / "config.toml",
        "log": out / "run.log",
        "data": out / "data" / "koopman.npz",
        "chi_script": out / "model" / "chi.pt",
        "chi_state": out / "model" / "chi_state.pt",
        "paths": out / "mep" / "paths.npz",
        "mep_dir": out / "mep",
        "atoms_csv": out / "sensitivity" / "atoms.csv",
        "levelset": out / "sensitivity" / "levelset.npz",
        "features_csv": out / "sensitivity" / "features.csv",
        "figures": out / "figures",
        "report_json": out / "report.json",
        "report_md": out / "report.md",
        "checkpoint": out / "checkpoint",
        "state": out / "checkpoint" / "state.json",
        "trajectory": out / "checkpoint" / "trajectory.npz",
    }


def _stage_seed(seed: int, stage: str) -> int:
    """A stable per-stage seed (independent of Python's hash randomisation)."""
    import zlib
    return (int(seed) * 1_000_003 + zlib.crc32(stage.encode())) % (2**31 - 1)


def _stage_generation(stage: str) -> int | None:
    """The generation a stage belongs to (None for the final stages)."""
    if stage in ("trajectory", "initial_bursts"):
        return 0
    kind, _, g = stage.partition("_")
    return int(g) if kind in ("paths", "bursts", "train") and g.isdigit() else None


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean_json(o: Any) -> Any:
    """Replace NaN/inf by None so report.json is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.ndarray)):
        return _clean_json(_json_default(o))
    return o


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_clean_json(obj), indent=2, sort_keys=False,
                                              default=_json_default) + "\n")


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".amore_write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"output directory {out} is not writable ({exc.strerror or exc}); "
                          "choose a writable --out folder") from exc


def _system_identity(ms: Any) -> dict[str, Any]:
    return {"name": ms.name, "n_atoms": int(ms.n_atoms), "source": str(ms.source),
            "atoms": ms.atom_labels()[:200] if ms.n_atoms <= 200 else ms.n_atoms}


class AmoreRun:
    """One AMORE run in a run directory: create, resume, run stages, report.

    Args:
        out: the run directory.
        system: anything :func:`~amore_openmm.systems.load_system` takes; optional when
            resuming (taken from ``config.toml``), and if given it must match the run's.
        preset: "default", "quick" or "paper" (sizes; see :mod:`amore_openmm.config`).
        config_file: TOML file with settings (top level or ``[run]``).
        overrides: setting -> value (``None`` values are ignored), e.g. from CLI flags.
        resume: continue the run in ``out`` (its ``config.toml`` and checkpoint); settings in
            ``overrides``/``config_file`` must agree with it except :data:`RESUME_MUTABLE`.
        resume_if_exists: resume when ``out`` holds a run, start one otherwise.
        quiet: no progress bars and no log lines on stderr (``run.log`` is still written).

    Raises:
        ConfigError / SystemLoadError / RunDirError for bad input (the CLI exits with 2).
    """

    def __init__(self, out: str | os.PathLike, system: Any = None, *, preset: str | None = None,
                 config_file: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None, resume: bool = False,
                 resume_if_exists: bool = False, quiet: bool = False) -> None:
        self.out = Path(out).expanduser()
        self.paths = run_layout(self.out)
        self.quiet = bool(quiet)
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        existing = self.paths["state"].is_file() or self.paths["config"].is_file()
        if resume_if_exists and existing:
            resume = True
        if resume:
            if not existing:
                raise RunDirError(f"--resume: {self.out} holds no run (no config.toml / "
                                  "checkpoint/state.json); start one without --resume")
            self.config, self.state = self._open_existing(system, preset, config_file,
                                                          overrides)
        else:
            if system is None:
                raise ConfigError("no system given: pass SYSTEM (a bundled name such as "
                                  "alanine_dipeptide, a folder, .pdb, .prmtop or System .xml)")
            if self.out.exists() and any(p for p in self.out.iterdir()
                                         if not p.name.startswith(".")):
                if existing:
                    raise RunDirError(f"{self.out} already holds a run; use --resume to "
                                      "continue it or choose another --out")
                raise RunDirError(f"{self.out} exists and is not empty; choose a new --out "
                                  "folder (a run directory holds one run)")
            self.config = resolve_config(str(system), preset or "default", config_file,
                                         overrides)
            self.state = None
        self._system = None
        if self.state is None:
            _ = self.system  # an unknown or broken system fails before anything is written
        self._logger: logging.Logger | None = None

    # -- opening -----------------------------------------------------------------------------
    def _open_existing(self, system: Any, preset: str | None, config_file: Any,
                       overrides: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
        cfg_path = self.paths["config"]
        if not cfg_path.is_file():
            raise RunDirError(f"{self.out}: config.toml is missing; the run directory is "
                              "incomplete, start a new run")
        stored = RunConfig.read(cfg_path)
        state = self._read_state()
        if system is not None and str(system) != stored.system:
            # the same system may be named differently (bundled name vs folder): compare
            from .systems import load_system
            ident = state.get("system") if state else None
            theirs = _system_identity(load_system(str(system)))
            if ident is None or (theirs["name"], theirs["n_atoms"], theirs["atoms"]) != \
                    (ident["name"], ident["n_atoms"], ident["atoms"]):
                raise RunDirError(
                    f"{self.out} holds a run of system {stored.system!r}"
                    f"{' (' + ident['name'] + ', ' + str(ident['n_atoms']) + ' atoms)' if ident else ''}"
                    f", not {str(system)!r}; resume without SYSTEM or choose another --out")
        changes: dict[str, Any] = {}
        if config_file is not None:
            file_settings = load_config_file(config_file)
            file_settings.pop("system", None)
            changes.update(file_settings)
        changes.update(overrides)
        if preset is not None and preset != stored.preset:
            changes["preset"] = preset
            # a different preset would change the sizes: compare the fully resolved config
            candidate = resolve_config(stored.system, preset, config_file, overrides)
        else:
            from .config import apply_settings
            candidate = apply_settings(stored, changes, "resume settings")
        bad = stored.incompatibilities(candidate)
        bad = [b for b in bad if not b.startswith("system:")]
        if bad:
            raise RunDirError(f"cannot resume {self.out} with different settings: "
                              f"{'; '.join(bad)}. Only platform, workers, generations, "
                              "figures and top_k may change; start a new run for the rest")
        return candidate, state

    def _read_state(self) -> dict[str, Any] | None:
        p = self.paths["state"]
        if not p.is_file():
            return None
        try:
            state = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{p} is unreadable ({exc}); the checkpoint is damaged") from exc
        if state.get("version") != STATE_VERSION:
            raise RunDirError(f"{p} has state version {state.get('version')}; this "
                              f"amore_openmm writes version {STATE_VERSION}")
        return state

    @classmethod
    def open(cls, out: str | os.PathLike, quiet: bool = True) -> "AmoreRun":
        """An existing run (for single-stage commands and reports)."""
        return cls(out, resume=True, quiet=quiet)

    # -- properties --------------------------------------------------------------------------
    @property
    def system(self) -> Any:
        """The loaded :class:`~amore_openmm.systems.MolecularSystem` (loaded once)."""
        if self._system is None:
            from .systems import load_system
            kw = {}
            if self.config.lag_steps is not None:
                kw["lag_steps"] = self.config.lag_steps
            self._system = load_system(self.config.system, **kw)
        return self._system

    @property
    def platform(self) -> str:
        """The burst platform: the configured one, or for "auto" the one probed at the start
        of the run (kept in the checkpoint so that a resumed run uses the same)."""
        if self.config.platform != "auto":
            return self.config.platform
        if self.state is not None and self.state.get("platform"):
            return str(self.state["platform"])
        from .sampling import choose_platform
        name, _ = choose_platform(self.system, verbose=False)
        self.log.info("platform auto -> %s", name)
        if self.state is not None:
            self.state["platform"] = name
            self._save_state()
        return name

    @property
    def lag_steps(self) -> int:
        return int(self.config.lag_steps or self.system.lag_steps)

    def stages(self) -> list[str]:
        """The ordered stage names of this run."""
        s = ["trajectory", "initial_bursts", "train_0"]
        for g in range(1, self.config.generations + 1):
            s += [f"paths_{g}", f"bursts_{g}", f"train_{g}"]
        return s + ["final_paths", "sensitivity", "figures", "report"]

    @property
    def completed(self) -> list[str]:
        return list(self.state["completed"]) if self.state else []

    def is_complete(self) -> bool:
        done = set(self.completed)
        return all(s in done for s in self.stages())

    # -- logging / progress ------------------------------------------------------------------
    @property
    def log(self) -> logging.Logger:
        if self._logger is None:
            logger = logging.getLogger(f"{LOGGER_NAME}.{id(self)}")
            logger.setLevel(logging.INFO)
            logger.propagate = False
            self.out.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.paths["log"], encoding="utf-8")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(fh)
            if not self.quiet:
                sh = logging.StreamHandler(sys.stderr)
                sh.setFormatter(logging.Formatter("amore: %(message)s"))
                logger.addHandler(sh)
            self._logger = logger
        return self._logger

    def close(self) -> None:
        """Close the log file handlers and the Dask client, if one was opened."""
        dask = getattr(self, "_dask", None)
        if dask is not None:
            dask.client.close()
            self._dask = None
        if self._logger is not None:
            for h in list(self._logger.handlers):
                h.close()
                self._logger.removeHandler(h)
            self._logger = None

    def __enter__(self) -> "AmoreRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def progress(self) -> bool:
        return not self.quiet

    # -- state -------------------------------------------------------------------------------
    def _init_state(self) -> None:
        _check_writable(self.out)
        for key in ("checkpoint",):
            self.paths[key].mkdir(parents=True, exist_ok=True)
        self.config.write(self.paths["config"])
        self.state = {"version": STATE_VERSION, "system": _system_identity(self.system),
                      "config_digest": self.config.digest(), "completed": [], "n_data": 0,
                      "generations": {}, "timings": {}, "created": time.time(),
                      "platform": None}
        self._save_state()

    def _save_state(self) -> None:
        write_json(self.paths["state"], self.state)

    def _mark(self, stage: str, seconds: float, **info: Any) -> None:
        assert self.state is not None
        if stage not in self.state["completed"]:
            self.state["completed"].append(stage)
        self.state["timings"][stage] = round(float(seconds), 3)
        for k, v in info.items():
            self.state[k] = v
        g = _stage_generation(stage)
        if g is not None:
            gen_stages = (["trajectory", "initial_bursts", "train_0"] if g == 0 else
                          [f"paths_{g}", f"bursts_{g}", f"train_{g}"])
            self._gen_record(g)["seconds"] = round(sum(
                self.state["timings"].get(s, 0.0) for s in gen_stages), 3)
        self._save_state()

    def _gen_record(self, g: int) -> dict[str, Any]:
        assert self.state is not None
        return self.state["generations"].setdefault(str(g), {"generation": g})

    # -- running -----------------------------------------------------------------------------
    def run(self, until: str | None = None) -> dict[str, Any]:
        """Run every stage not yet completed (up to and including ``until``); returns the
        report (or the state when stopped early)."""
        if self.state is None:
            self._init_state()
            self.log.info("new run of %s (%d atoms) in %s, preset %s", self.system.name,
                          self.system.n_atoms, self.out, self.config.preset)
        else:
            _check_writable(self.out)
            self.config.write(self.paths["config"])
            self._reconcile()
            self.log.info("resuming %s after %s", self.out,
                          self.completed[-1] if self.completed else "nothing")
        t_run = time.perf_counter()
        for stage in self.stages():
            if stage in self.completed:
                continue
            t0 = time.perf_counter()
            self.log.info("stage %s ...", stage)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    info = self._dispatch(stage) or {}
                for w in caught:  # a stage's warnings belong in run.log (not library noise)
                    if not issubclass(w.category, (DeprecationWarning, FutureWarning,
                                                   PendingDeprecationWarning)):
                        self.log.warning("%s: %s", w.category.__name__, w.message)
            except BaseException as exc:
                self.log.error("stage %s failed after %.1f s: %s: %s (completed stages are "
                               "saved; fix the cause and resume with --resume)", stage,
                               time.perf_counter() - t0, type(exc).__name__, exc)
                raise
            dt = time.perf_counter() - t0
            self._mark(stage, dt, **info)
            self.log.info("stage %s done in %.1f s", stage, dt)
            if stage.startswith("train_"):
                self._summary_line(int(stage.split("_")[1]))
            if until is not None and stage == until:
                break
        self.log.info("run finished in %.1f s; report: %s", time.perf_counter() - t_run,
                      self.paths["report_md"])
        if self.paths["report_json"].is_file():
            return json.loads(self.paths["report_json"].read_text())
        return dict(self.state or {})

    def _reconcile(self) -> None:
        """Bring state in line with the (possibly extended) settings after a resume."""
        assert self.state is not None
        gens = self.config.generations
        done = self.completed
        last_train = max([int(s.split("_")[1]) for s in done if s.startswith("train_")] or [-1])
        if last_train > gens:
            raise RunDirError(f"{self.out} already ran {last_train} generations; "
                              f"generations = {gens} cannot undo them (start a new run)")
        # more generations than before: the final stages belong to the old last χ
        expected = set(self.stages())
        finals = {"final_paths", "sensitivity", "figures", "report"}
        if any(s not in expected for s in done) or (
                finals & set(done) and last_train < gens):
            self.state["completed"] = [s for s in done if s not in finals and s in expected]
        self.state["config_digest"] = self.config.digest()
        self._save_state()

    def _dispatch(self, stage: str) -> dict[str, Any] | None:
        if stage == "trajectory":
            return self.stage_trajectory()
        if stage == "initial_bursts":
            return self.stage_initial_bursts()
        kind, _, g = stage.partition("_")
        if kind == "train":
            return self.stage_train(int(g))
        if kind == "paths" and g.isdigit():
            return self.stage_paths(int(g))
        if kind == "bursts":
            return self.stage_bursts(int(g))
        if stage == "final_paths":
            return self.stage_final_paths()
        if stage == "sensitivity":
            return self.stage_sensitivity()
        if stage == "figures":
            return self.stage_figures()
        if stage == "report":
            return self.stage_report()
        raise RunDirError(f"unknown stage {stage!r}")

    def _summary_line(self, g: int) -> None:
        rec = self._gen_record(g)
        parts = [f"generation {g}/{self.config.generations}:",
                 f"data {rec.get('n_data', '?')} starts"]
        if rec.get("new_starts"):
            parts.append(f"(+{rec['new_starts']} from {rec.get('n_paths', 0)} paths)")
        if rec.get("loss") is not None:
            parts.append(f"loss {rec['loss']:.3g}")
        if rec.get("path_chi_range"):
            lo, hi = rec["path_chi_range"]
            parts.append(f"paths χ {lo:.2f}→{hi:.2f}")
        parts.append(f"{rec.get('seconds', 0.0):.1f} s")
        self.log.info(" ".join(parts))

    # -- building blocks ---------------------------------------------------------------------
    def _pool(self) -> Any:
        from .sampling import ContextPool
        return ContextPool(self.system, size=self.config.workers, platform=self.config.platform)

    def load_data(self) -> KoopmanData:
        """The Koopman data of the completed stages."""
        data = KoopmanData.load(self.paths["data"], n_atoms=self.system.n_atoms)
        n = int(self.state["n_data"]) if self.state else len(data)
        if len(data) < n:
            raise RunDirError(f"{self.paths['data']} holds {len(data)} starts but the "
                              f"checkpoint recorded {n}; the run directory was modified")
        # a killed stage may have written the merged file before recording it
        return data.subset(slice(0, n)) if len(data) > n else data

    def _model_path(self, g: int) -> Path:
        return self.paths["checkpoint"] / f"chi_g{g:03d}.pt"

    def load_model(self, g: int | None = None) -> Any:
        """χ after generation ``g`` (default: the latest trained)."""
        from .chi import ChiModel
        if g is None:
            trained = [int(s.split("_")[1]) for s in self.completed if s.startswith("train_")]
            if not trained:
                raise RunDirError(f"{self.out}: no χ trained yet; run `amore train` first")
            g = max(trained)
        return ChiModel.load(self._model_path(g))

    def _executor(self) -> Any:
        """The Dask executor for ``scheduler`` (connected once per run), or None."""
        if not self.config.scheduler:
            return None
        if getattr(self, "_dask", None) is None:
            from .distributed import DaskExecutor
            try:
                from distributed import Client
            except ImportError as exc:
                raise ConfigError("scheduler is set but Dask is not installed: "
                                  "pip install -e '.[distributed]'") from exc
            self._dask = DaskExecutor(Client(self.config.scheduler))
        return self._dask

    def _bursts(self, starts: np.ndarray, seed: int, generation: int, origin: str,
                partial: Path) -> KoopmanData:
        """K bursts from ``starts``; finished starts are committed to ``partial`` as they
        come, so a killed stage resumes where it stopped (same seeds, same data)."""
        from .sampling import BurstSampler, ContextPool
        cfg = self.config
        with ContextPool(self.system, size=cfg.workers, platform=self.platform) as pool:
            sampler = BurstSampler(pool, executor=self._executor(), replicas=cfg.replicas)

            def go() -> KoopmanData:
                return sampler.run(starts, cfg.n_koopman, self.lag_steps, seed=seed,
                                              generation=generation, origin=origin,
                                              progress=self.progress, checkpoint=partial)
            try:
                data = go()
            except ValueError as exc:
                # a partial file from other settings/versions is only a cache: start over
                if not (partial.is_file() and str(partial) in str(exc)):
                    raise
                self.log.warning("discarding %s (%s)", partial.name, exc)
                partial.unlink()
                data = go()
        data.system_name = self.system.name
        return data

    @staticmethod
    def _drop(path: Path) -> None:
        """Remove a stage's partial file once its result is saved."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    # -- stages ------------------------------------------------------------------------------
    def stage_trajectory(self) -> dict[str, Any]:
        """Frames from each initial structure (split evenly), saved to the checkpoint."""
        cfg = self.config
        stride = int(cfg.stride_steps or self.lag_steps)
        frames = _trajectory_frames(self.system, cfg.n_starts, stride, cfg.seed, self.platform,
                                    self.progress)
        atomic_save_npz(self.paths["trajectory"], frames=frames, stride_steps=stride)
        return {}

    def stage_initial_bursts(self) -> dict[str, Any]:
        """K bursts from every trajectory frame, saved in chunks (resumable)."""
        with np.load(self.paths["trajectory"]) as f:
            frames = f["frames"]
        data = self._bursts(frames, _stage_seed(self.config.seed, "initial_bursts"), 0,
                            "trajectory", self.paths["checkpoint"] / "initial_bursts.partial.npz")
        data.system_name = self.system.name
        data.save(self.paths["data"])
        self._drop(self.paths["checkpoint"] / "initial_bursts.partial.npz")
        rec = self._gen_record(0)
        rec.update(n_data=len(data), new_starts=len(data), n_paths=0)
        return {"n_data": len(data)}

    def stage_train(self, g: int) -> dict[str, Any]:
        """ISOKANN on the data so far (continuing from generation g-1's weights), orient."""
        from .isokann import exit_rates
        cfg = self.config
        data = self.load_data()
        prev = None if g == 0 else self.load_model(g - 1)
        iters = cfg.iterations if g == 0 else cfg.iterations_per_generation
        model, losses = train_chi(data, self.system, iters, model=prev,
                                  featurizer=cfg.featurizer, minibatch=cfg.minibatch,
                                  optimizer=cfg.optimizer, lr=cfg.lr,
                                  weight_decay=cfg.weight_decay,
                                  seed=_stage_seed(cfg.seed, f"train/{g}"),
                                  progress=self.progress)
        rates = _plain(exit_rates(model, data, data.lag_time))
        model.metadata.update(system=self.system.name, generation=g, n_data=len(data),
                              lag_time_ps=data.lag_time)
        # the per-generation snapshot is what resuming reads; model/ holds the latest
        model.save(self._model_path(g))
        model.save(self.paths["chi_state"])
        model.export_torchscript(self.paths["chi_script"],
                                 training={"generation": g, "iterations": iters,
                                           "n_data": len(data),
                                           "loss": float(losses[-1]) if losses else None})
        chi = model.chi(data.x)
        rec = self._gen_record(g)
        rec.update(n_data=len(data), iterations=iters,
                   loss=float(losses[-1]) if losses else None,
                   loss_first=float(losses[0]) if losses else None,
                   exit_rates=rates, chi_range=[float(chi.min()), float(chi.max())])
        return {}

    def _mep_platform(self) -> str:
        # the χ-MEP Context holds a TorchForce: Reference/CPU here (CUDA when asked for)
        p = self.config.platform
        return p if p in ("CPU", "CUDA", "OpenCL") else "Reference"

    def _trace(self, model: Any, n: int, seed: int | None) -> list[Any]:
        cfg = self.config
        return trace_paths(self.system, model, self.load_data(), n,
                           window=(cfg.ts_low, cfg.ts_high), step=cfg.path_step,
                           kappa=cfg.kappa, max_nodes=cfg.path_max_nodes,
                           platform=self._mep_platform(), workers=cfg.workers, seed=seed,
                           progress=self.progress)

    def stage_paths(self, g: int) -> dict[str, Any]:
        """χ-MEPs from transition states of χ after generation g-1."""
        model = self.load_model(g - 1)
        paths = self._trace(model, self.config.paths_per_generation,
                            _stage_seed(self.config.seed, f"ts/{g}"))
        save_paths(self.paths["checkpoint"] / f"paths_g{g:03d}.npz", paths)
        rec = self._gen_record(g)
        chis = np.concatenate([p.chi for p in paths]) if paths else np.zeros(0)
        rec.update(n_paths=len(paths), path_nodes=[int(len(p.chi)) for p in paths],
                   path_chi_range=[float(chis.min()), float(chis.max())] if len(chis) else None)
        return {}

    def stage_bursts(self, g: int) -> dict[str, Any]:
        """K bursts from evenly spaced nodes of generation g's paths, merged into the data."""
        cfg = self.config
        part = self.paths["checkpoint"] / f"bursts_g{g:03d}.npz"
        data = self.load_data()
        if part.is_file():
            new = KoopmanData.load(part)
        else:
            paths = load_paths(self.paths["checkpoint"] / f"paths_g{g:03d}.npz")
            starts = []
            for p in paths:
                m = len(p["positions"])
                idx = np.unique(np.linspace(0, m - 1, min(cfg.starts_per_path, m)).round()
                                .astype(int))
                starts.append(p["positions"][idx])
            starts_arr = np.concatenate(starts).astype(np.float32)
            new = self._bursts(starts_arr, _stage_seed(cfg.seed, f"bursts/{g}"), g, "mep",
                               self.paths["checkpoint"] / f"bursts_g{g:03d}.partial.npz")
            new.save(part)
            self._drop(self.paths["checkpoint"] / f"bursts_g{g:03d}.partial.npz")
        merged = data.merge(new)
        merged.save(self.paths["data"])
        rec = self._gen_record(g)
        rec.update(n_data=len(merged), new_starts=len(new))
        return {"n_data": len(merged)}

    def stage_final_paths(self) -> dict[str, Any]:
        """χ-MEPs of the final χ → ``mep/paths.npz``."""
        n = self.config.final_paths
        model = self.load_model()
        if n == 0:
            paths: list[Any] = []
        else:
            paths = self._trace(model, n, None)
        save_paths(self.paths["paths"], paths)
        return {}

    def _ensemble(self) -> np.ndarray:
        data = self.load_data()
        x = data.x[data.origin == "trajectory"]
        if len(x) == 0:
            x = data.x
        n = self.config.sensitivity_samples
        if len(x) > n:
            rng = np.random.default_rng(_stage_seed(self.config.seed, "sensitivity"))
            x = x[np.sort(rng.choice(len(x), n, replace=False))]
        return x

    def stage_sensitivity(self) -> dict[str, Any]:
        """Ensemble/level-set sensitivity, feature saliency, path MSE, path PDBs."""
        paths = load_chipaths(self.paths["paths"])
        res = write_sensitivity(self.paths["atoms_csv"].parent, self.load_model(), self.system,
                                self._ensemble(), paths=paths,
                                bins=self.config.sensitivity_bins,
                                mep_dir=self.paths["mep_dir"])
        return {"path_mse": res["path_mse"]}

    def stage_figures(self) -> dict[str, Any]:
        """Figures into ``figures/`` (failures are logged, never fatal)."""
        if not self.config.figures:
            return {"figures": []}
        written = _default_figures(self)
        return {"figures": [str(Path(p).relative_to(self.out)) for p in written]}

    def stage_report(self) -> dict[str, Any]:
        """``report.json`` and ``report.md``."""
        rep = build_report(self)
        write_json(self.paths["report_json"], rep)
        atomic_write_text(self.paths["report_md"], report_markdown(rep))
        return {}


# --------------------------------------------------------------------------------------------
# single stages as plain functions (the `amore sample/train/mep/sensitivity` commands)
# --------------------------------------------------------------------------------------------
def sample_data(system: Any, n_starts: int, n_koopman: int, *, lag_steps: int | None = None,
                stride_steps: int | None = None, seed: int = 0, platform: str = "auto",
                workers: int | None = None, progress: bool = True) -> KoopmanData:
    """Initial Koopman data: a trajectory from each initial structure (frames every
    ``stride_steps``, default the lag) and ``n_koopman`` bursts of ``lag_steps`` from every
    frame. ``system``: a MolecularSystem or anything ``load_system`` takes."""
    from .sampling import BurstSampler, ContextPool
    from .systems import load_system
    ms = load_system(system)
    lag = int(lag_steps or ms.lag_steps)
    stride = int(stride_steps or lag)
    frames = _trajectory_frames(ms, n_starts, stride, seed, platform, progress)
    with ContextPool(ms, size=workers, platform=platform) as pool:
        data = BurstSampler(pool).run(frames, n_koopman, lag, seed=_stage_seed(seed, "bursts"),
                                      generation=0, origin="trajectory", progress=progress)
    data.system_name = ms.name
    return data


def _trajectory_frames(ms: Any, n_starts: int, stride: int, seed: int, platform: str,
                       progress: bool) -> np.ndarray:
    from .sampling import sample_trajectory
    n_struct = len(ms.positions)
    counts = [n_starts // n_struct + (1 if i < n_starts % n_struct else 0)
              for i in range(n_struct)]
    frames = []
    for i, (x0, n) in enumerate(zip(ms.positions, counts)):
        if n:
            frames.append(np.asarray(sample_trajectory(
                ms, n, stride, _stage_seed(seed, f"trajectory/{i}"), x0=x0, platform=platform,
                progress=progress), dtype=np.float32))
    return np.concatenate(frames)


def train_chi(data: KoopmanData, system: Any, iterations: int, *, model: Any = None,
              featurizer: str = "auto", minibatch: int = 100, optimizer: str = "adam",
              lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
              progress: bool = False) -> tuple[Any, list[float]]:
    """ISOKANN χ on ``data`` (continuing from ``model``'s weights when given), oriented so
    that χ ≈ 0 at the system's first initial structure. Returns (model, loss history)."""
    from .chi import ChiModel, make_featurizer
    from .isokann import Isokann, orient
    from .systems import load_system
    ms = load_system(system)
    est = Isokann(iterations=int(iterations), minibatch=minibatch, optimizer=optimizer, lr=lr,
                  weight_decay=weight_decay, seed=seed, progress=progress)
    if model is None:
        kind = ms.featurizer if featurizer == "auto" else featurizer
        model = ChiModel(make_featurizer(ms, kind), seed=seed)
    fitted = est.fit(data, model=model)
    fitted = orient(fitted, ms.positions[0])
    return fitted, [float(v) for v in (getattr(est, "loss_history", None) or [])]


def trace_paths(system: Any, model: Any, data: Any, n_paths: int, *,
                window: tuple[float, float] = (0.49, 0.51), step: float = 0.02,
                kappa: float | None = None, max_nodes: int = 100, platform: str = "Reference",
                workers: int | None = None, seed: int | None = None,
                progress: bool = True) -> list[Any]:
    """χ-MEPs from ``n_paths`` transition states of ``data`` (KoopmanData or positions):
    random ones when ``seed`` is given, otherwise the lowest-energy ones."""
    from .mep import trace_chi_meps, transition_states
    from .systems import load_system
    ms = load_system(system)
    try:
        ts = np.asarray(transition_states(model, data, ms, window=tuple(window),
                                          platform=platform))
    except ValueError as exc:
        # no sample in the window yet (early generations): start from the samples closest
        # to χ = 0.5; the paths then climb into the unsampled transition region
        x = np.asarray(getattr(data, "x", data), dtype=np.float64)
        chi = model.chi(x)
        if float(chi.max() - chi.min()) < 0.1:
            raise RuntimeError(
                f"χ is nearly constant over the data ({chi.min():.3f}..{chi.max():.3f}): "
                "ISOKANN found no slow process. Train longer (iterations) or sample longer "
                "(n_starts, stride_steps) so that the data contain transitions") from exc
        order = np.argsort(np.abs(chi - 0.5), kind="stable")[:max(n_paths, 1)]
        warnings.warn(f"{exc}; starting the χ-MEPs from the {len(order)} samples closest to "
                      f"χ = 0.5 (χ {', '.join(f'{c:.3f}' for c in chi[order])})",
                      RuntimeWarning, stacklevel=2)
        ts = x[order]
    if seed is not None and len(ts) > n_paths:
        rng = np.random.default_rng(seed)
        ts = ts[np.sort(rng.choice(len(ts), size=n_paths, replace=False))]
    ts = ts[:n_paths]
    return trace_chi_meps(ms, model, ts, pool_size=workers, platform=platform,
                          progress=progress, step=step, kappa=kappa, max_nodes=max_nodes)


def write_sensitivity(out: str | os.PathLike, model: Any, system: Any, positions: np.ndarray,
                      *, paths: list[Any] | None = None, bins: int = 100,
                      mep_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """χ-sensitivity files into ``out``: ``atoms.csv`` (0-based indices), ``levelset.npz``
    (bin edges, atoms × bins, counts), ``features.csv``; with ``paths`` also the
    path-vs-ensemble MSE per path and sensitivity-coloured ``path_XXX.pdb`` in ``mep_dir``.
    Returns {"path_mse": [...], "sensitivity": Sensitivity, "saliency": [...]}."""
    from .mep import write_path_pdb
    from .sensitivity import chi_sensitivity, feature_saliency, path_vs_ensemble_mse
    from .systems import load_system
    ms = load_system(system)
    out = Path(out)
    sens = chi_sensitivity(model, positions, bins=bins, labels=ms)
    write_atoms_csv(out / "atoms.csv", sens, ms)
    sens.save(out / "levelset.npz")
    sal = feature_saliency(model, positions)
    write_features_csv(out / "features.csv", sal)
    mses: list[float] = []
    for i, p in enumerate(paths or []):
        try:
            mses.append(float(path_vs_ensemble_mse(p, sens)))
        except ValueError:
            mses.append(float("nan"))
        if mep_dir is not None:
            write_path_pdb(Path(mep_dir) / f"path_{i:03d}.pdb", p, ms.topology,
                           sensitivity=sens)
    return {"path_mse": mses, "sensitivity": sens, "saliency": sal}


# --------------------------------------------------------------------------------------------
# files of the layout
# --------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def save_paths(path: Path, paths: list[Any]) -> Path:
    """All χ-MEPs in one ``.npz``: nodes concatenated, ``path_id`` per node.

    Per node: positions (M, n, 3) nm, chi (M,), energy (M,) kJ/mol (no restraint),
    grad_norm (M,) ‖∇χ‖ nm⁻¹, atom_grad_sq (M, n) ‖∇ᵢχ‖² nm⁻², z (M,), kappa (M,),
    path_id (M,), node (M,). Per path: start_index (P,), stop_reasons (P,) JSON strings.
    """
    if not paths:
        return atomic_save_npz(path, positions=np.zeros((0, 0, 3)), chi=np.zeros(0),
                               energy=np.zeros(0), grad_norm=np.zeros(0),
                               atom_grad_sq=np.zeros((0, 0)), z=np.zeros(0),
                               kappa=np.zeros(0), path_id=np.zeros(0, dtype=np.int64),
                               node=np.zeros(0, dtype=np.int64), n_paths=np.int64(0),
                               start_index=np.zeros(0, dtype=np.int64),
                               stop_reasons=np.zeros(0, dtype=str))

    def cat(attr: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(p, attr), dtype=np.float64) for p in paths])

    return atomic_save_npz(
        path, positions=cat("positions"), chi=cat("chi"), energy=cat("energy"),
        grad_norm=cat("grad_norm"), atom_grad_sq=cat("atom_grad_sq"), z=cat("z"),
        kappa=cat("kappa"),
        path_id=np.concatenate([np.full(len(p.chi), i, dtype=np.int64)
                                for i, p in enumerate(paths)]),
        node=np.concatenate([np.arange(len(p.chi), dtype=np.int64) for p in paths]),
        n_paths=np.int64(len(paths)),
        start_index=np.asarray([int(p.start_index) for p in paths], dtype=np.int64),
        stop_reasons=np.asarray([json.dumps(dict(p.stop_reasons), sort_keys=True)
                                 for p in paths], dtype=str))


_PER_PATH = ("start_index", "stop_reasons", "n_paths")


def load_paths(path: Path) -> list[dict[str, Any]]:
    """The paths of a file written by :func:`save_paths`, one dict of arrays per path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path file {path} does not exist; run the paths stage "
                                "(`amore mep`) first")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    out = []
    for i in range(int(arrays["n_paths"])):
        sel = arrays["path_id"] == i
        d: dict[str, Any] = {k: v[sel] for k, v in arrays.items() if k not in _PER_PATH}
        d["start_index"] = int(arrays["start_index"][i])
        d["stop_reasons"] = json.loads(str(arrays["stop_reasons"][i]))
        out.append(d)
    return out


def load_chipaths(path: Path) -> list[Any]:
    """:class:`~amore_openmm.mep.ChiPath` objects from a :func:`save_paths` file."""
    from .mep import ChiPath
    return [ChiPath(positions=d["positions"], chi=d["chi"], energy=d["energy"],
                    grad_norm=d["grad_norm"], atom_grad_sq=d["atom_grad_sq"], z=d["z"],
                    kappa=d["kappa"], start_index=d["start_index"],
                    stop_reasons=d["stop_reasons"]) for d in load_paths(path)]


def write_atoms_csv(path: Path, sens: Any, system: Any) -> Path:
    """Per-atom ⟨‖∇ᵢχ‖²⟩ ranked, with 0-based atom indices (column header says so)."""
    import csv
    import io
    atoms = list(system.topology.atoms())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "atom_index_0based", "atom_name", "residue", "residue_id",
                "mean_grad_sq_nm-2", "fraction"])
    frac = sens.fraction
    for r, i in enumerate(sens.ranking, start=1):
        a = atoms[int(i)]
        w.writerow([r, int(i), a.name, a.residue.name, a.residue.id,
                    f"{sens.per_atom[i]:.6g}", f"{frac[i]:.6g}"])
    return atomic_write_text(path, buf.getvalue())


def write_features_csv(path: Path, saliency: list[tuple[str, float]]) -> Path:
    """Feature saliency ⟨‖∂ν/∂f_j‖²⟩ ranked."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "feature", "saliency"])
    for r, (name, v) in enumerate(saliency, start=1):
        w.writerow([r, name, f"{v:.6g}"])
    return atomic_write_text(path, buf.getvalue())


def _default_figures(run: AmoreRun) -> list[Path]:
    """Figures from :mod:`amore_openmm.plots`; one failing figure is logged, not fatal."""
    from . import plots
    from .sensitivity import Sensitivity
    fig_dir = run.paths["figures"]
    model = run.load_model()
    data = run.load_data()
    paths = load_chipaths(run.paths["paths"]) if run.paths["paths"].is_file() else []
    sens = Sensitivity.load(run.paths["levelset"]) if run.paths["levelset"].is_file() else None
    rng = np.random.default_rng(_stage_seed(run.config.seed, "figures"))
    idx = np.sort(rng.choice(len(data), size=min(len(data), 5000), replace=False))
    x = data.x[idx]
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
        jobs.append(("levelset_sensitivity.png",
                     lambda f: plots.plot_levelset_heatmap(f, sens)))
        jobs.append(("atom_ranking.png", lambda f: plots.plot_atom_ranking(
            f, sens, k=min(20, sens.n_atoms))))
    written = []
    for name, job in jobs:
        try:
            written.append(job(fig_dir / name))
        except Exception as exc:  # noqa: BLE001 - a figure must never lose a finished run
            run.log.warning("figure %s not written: %s: %s", name, type(exc).__name__, exc)
    return written


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def build_report(run: AmoreRun) -> dict[str, Any]:
    """The report dictionary of a finished (or partly finished) run."""
    import csv
    st = run.state or {}
    cfg = run.config
    gens = [st.get("generations", {}).get(str(g), {"generation": g})
            for g in range(0, cfg.generations + 1)]
    top_atoms, top_features = [], []
    if run.paths["atoms_csv"].is_file():
        with open(run.paths["atoms_csv"], newline="") as fh:
            for row in list(csv.DictReader(fh))[:cfg.top_k]:
                top_atoms.append({"index_0based": int(row["atom_index_0based"]),
                                  "name": row["atom_name"], "residue": row["residue"],
                                  "residue_id": row["residue_id"],
                                  "mean_grad_sq": float(row["mean_grad_sq_nm-2"]),
                                  "fraction": float(row["fraction"])})
    if run.paths["features_csv"].is_file():
        with open(run.paths["features_csv"], newline="") as fh:
            for row in list(csv.DictReader(fh))[:cfg.top_k]:
                top_features.append({"feature": row["feature"],
                                     "saliency": float(row["saliency"])})
    paths_info = []
    if run.paths["paths"].is_file():
        for i, p in enumerate(load_paths(run.paths["paths"])):
            e = p["energy"]
            paths_info.append({"id": i, "nodes": int(len(p["chi"])),
                               "chi_min": float(p["chi"].min()),
                               "chi_max": float(p["chi"].max()),
                               "energy_max": float(e.max()),
                               "barrier": float(e.max() - e.min())})
    last = gens[-1] if gens else {}
    mses = st.get("path_mse", [])
    finite = [m for m in mses if m is not None and math.isfinite(m)]
    timings = st.get("timings", {})
    figures = st.get("figures", [])
    return {
        "system": st.get("system", {}),
        "settings": cfg.to_toml_dict(),
        "platform": st.get("platform") or cfg.platform,
        "generations": gens,
        "data_size": last.get("n_data"),
        "exit_rates": last.get("exit_rates"),
        "paths": paths_info,
        "top_atoms": top_atoms,
        "top_features": top_features,
        "path_vs_ensemble_mse": mses,
        "path_vs_ensemble_mse_mean": float(np.mean(finite)) if finite else None,
        "timings_s": timings,
        "total_time_s": round(sum(timings.values()), 2),
        "figures": figures,
        "files": {k: str(v.relative_to(run.out)) for k, v in run.paths.items()
                  if k not in ("checkpoint", "state", "trajectory", "mep_dir", "figures")},
    }


def report_markdown(rep: dict[str, Any]) -> str:
    """``report.md``: the report for a person, with the figures."""
    sysinfo = rep.get("system", {})
    lines = [f"# AMORE run: {sysinfo.get('name', '?')}", "",
             f"{sysinfo.get('n_atoms', '?')} atoms, source `{sysinfo.get('source', '?')}`, "
             f"preset `{rep['settings'].get('preset')}`, platform {rep.get('platform')}, "
             f"total {rep.get('total_time_s', 0):.0f} s.", "",
             "## Generations", "",
             "| gen | starts | new | iterations | loss | paths | path χ range | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for g in rep["generations"]:
        rng = g.get("path_chi_range")
        loss = g.get("loss")
        lines.append(f"| {g.get('generation')} | {g.get('n_data', '')} | "
                     f"{g.get('new_starts', '')} | {g.get('iterations', '')} | "
                     f"{'' if loss is None else f'{loss:.3g}'} | {g.get('n_paths', '')} | "
                     f"{'' if not rng else f'{rng[0]:.2f}–{rng[1]:.2f}'} | "
                     f"{g.get('seconds', 0):.1f} |")
    rates = rep.get("exit_rates")
    if rates:
        lines += ["", "## Exit rates (final χ)", ""]
        for k, v in rates.items():
            if v in ("", None):
                continue
            lines.append(f"- {k}: {v:.4g}" if isinstance(v, (int, float)) and
                         not isinstance(v, bool) else f"- {k}: {v}")
    if rep.get("paths"):
        lines += ["", "## χ-minimum-energy paths", "",
                  "| path | nodes | χ range | max energy (kJ/mol) | barrier (kJ/mol) | MSE vs ensemble (nm⁻⁴) |",
                  "|---|---|---|---|---|---|"]
        mses = rep.get("path_vs_ensemble_mse") or []
        for p in rep["paths"]:
            m = mses[p["id"]] if p["id"] < len(mses) else None
            lines.append(f"| {p['id']} | {p['nodes']} | {p['chi_min']:.2f}–{p['chi_max']:.2f} | "
                         f"{p['energy_max']:.1f} | {p['barrier']:.1f} | "
                         f"{'' if m is None else f'{m:.3g}'} |")
    if rep.get("top_atoms"):
        lines += ["", "## Most χ-sensitive atoms (0-based indices)", "",
                  "| rank | index (0-based) | atom | residue | ⟨‖∇ᵢχ‖²⟩ (nm⁻²) | share |",
                  "|---|---|---|---|---|---|"]
        for r, a in enumerate(rep["top_atoms"], start=1):
            lines.append(f"| {r} | {a['index_0based']} | {a['name']} | "
                         f"{a['residue']}{a['residue_id']} | {a['mean_grad_sq']:.4g} | "
                         f"{a['fraction']:.3f} |")
    if rep.get("top_features"):
        lines += ["", "## Most salient features", "", "| rank | feature | ⟨‖∂ν/∂f‖²⟩ |",
                  "|---|---|---|"]
        for r, f in enumerate(rep["top_features"], start=1):
            lines.append(f"| {r} | {f['feature']} | {f['saliency']:.4g} |")
    if rep.get("figures"):
        lines += ["", "## Figures", ""]
        for f in rep["figures"]:
            lines.append(f"![{Path(f).stem}]({f})")
    lines += ["", "## Files", ""]
    for k, v in rep.get("files", {}).items():
        lines.append(f"- {k}: `{v}`")
    return "\n".join(lines) + "\n"
