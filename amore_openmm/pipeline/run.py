"""The AMORE pipeline end to end: adaptive generations in a resumable run directory.

Stages (each saved before the next starts, so a killed run loses at most the stage in flight):

``trajectory``     frames from the system's initial structures (``checkpoint/trajectory.npz``)
``initial_bursts`` K bursts from every frame, in chunks (``data/koopman.npz``, generation 0)
``train_0``        ISOKANN χ, oriented (``model/chi.pt``, ``model/chi_state.pt``)
per generation g = 1..G:
``paths_g``        χ-MEPs from transition states of the current χ (``checkpoint/paths_gXXX.npz``)
``bursts_g``       K bursts from certified path nodes, origin "mep", weight 0, merged into
                   ``data/koopman.npz``
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
While an :class:`AmoreRun` is open it holds an exclusive lock on ``RUN/.lock``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..config import (TRAINING_SETTINGS, ConfigError, RunConfig, apply_settings,
                      load_config_file, resolve_config)
from ..data import KoopmanData, write_json
from ..interrupt import check_interrupt
from ..systems import get_platform
from . import run_stages
from .multichi_stages import multichi_enabled
from .runio import read_data, read_model
from .state import (LOGGER_NAME, STATE_VERSION, RunDirError, RunLock, StageContext,
                    check_writable, stage_generation, system_identity, check_out_dir,
                    run_layout, sweep_temp_files, trained_generations)

__all__ = ["AmoreRun"]


class AmoreRun:
    """One AMORE run in a run directory: create, resume, run stages, report.

    Args:
        out: the run directory.
        system: anything :func:`~amore_openmm.systems.load_system` takes; optional when
            resuming (taken from ``config.toml``), and if given it must match the run's.
        preset: one of :data:`~amore_openmm.presets.PRESET_NAMES` (sizes; see
            :mod:`amore_openmm.config`).
        config_file: TOML file with settings (top level or ``[run]``).
        overrides: setting -> value (``None`` values are ignored), e.g. from CLI flags.
        resume: continue the run in ``out`` (its ``config.toml`` and checkpoint); settings in
            ``overrides``/``config_file`` must agree with it except
            :data:`~amore_openmm.config.RESUME_MUTABLE`.
        resume_if_exists: resume when ``out`` holds a run, start one otherwise.
        quiet: no progress bars and no log lines on stderr (``run.log`` is still written).

    Raises:
        ConfigError / SystemLoadError / RunDirError for bad input (the CLI exits with 2);
        RunDirError also when another process holds the run's lock.
    """

    def __init__(self, out: str | os.PathLike, system: Any = None, *, preset: str | None = None,
                 config_file: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None, resume: bool = False,
                 resume_if_exists: bool = False, quiet: bool = False) -> None:
        self.out = check_out_dir(Path(out).expanduser())
        self.paths = run_layout(self.out)
        self.quiet = bool(quiet)
        self._logger: logging.Logger | None = None
        self._system = None
        self._dask: Any = None
        self._lock = RunLock(self.paths["lock"])
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if self.out.is_dir():
            self._lock.acquire()  # before reading anything: another process may be writing
        try:
            self._open(system, preset, config_file, overrides, resume, resume_if_exists)
        except BaseException:
            self._lock.release()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _holds_run(self) -> bool:
        return self.paths["state"].is_file() or self.paths["config"].is_file()

    def _open(self, system: Any, preset: str | None, config_file: Any,
              overrides: dict[str, Any], resume: bool, resume_if_exists: bool) -> None:
        existing = self._holds_run()
        if resume_if_exists and existing:
            resume = True
        if resume:
            if not existing:
                raise RunDirError(f"--resume: {self.out} holds no run (no config.toml / "
                                  "checkpoint/state.json); start one without --resume")
            self.config, self.state = self._open_existing(system, preset, config_file,
                                                          overrides)
            return
        if system is None:
            raise ConfigError("no system given: pass SYSTEM (a bundled name such as "
                              "alanine_dipeptide, a folder, .pdb, .prmtop or System .xml)")
        self._refuse_non_empty(existing)
        self.config = resolve_config(str(system), preset or "default", config_file, overrides)
        self.state = None
        _ = self.system  # an unknown or broken system fails before anything is written

    def _refuse_non_empty(self, existing: bool) -> None:
        if self.out.is_dir() and any(p for p in self.out.iterdir()
                                     if not p.name.startswith(".")):
            if existing:
                raise RunDirError(f"{self.out} already holds a run; use --resume to "
                                  "continue it or choose another --out")
            raise RunDirError(f"{self.out} exists and is not empty; choose a new --out "
                              "folder (a run directory holds one run)")

    def _open_existing(self, system: Any, preset: str | None, config_file: Any,
                       overrides: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
        cfg_path = self.paths["config"]
        if not cfg_path.is_file():
            raise RunDirError(f"{self.out}: config.toml is missing; the run directory is "
                              "incomplete, start a new run")
        stored = RunConfig.read(cfg_path)
        state = self._read_state()
        if system is not None and str(system) != stored.system:
            self._check_same_system(system, stored, state)
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
            candidate = apply_settings(stored, changes, "resume settings")
        # before the first fit, the training settings shape nothing on disk yet (a collapsed
        # first fit's error suggests another --lr: that must not need a new run)
        free = TRAINING_SETTINGS if "train_0" not in (state or {}).get("completed", []) else ()
        bad = [b for b in stored.incompatibilities(candidate)
               if not b.startswith("system:") and b.split(":")[0] not in free]
        if bad:
            raise RunDirError(f"cannot resume {self.out} with different settings: "
                              f"{'; '.join(bad)}. Only platform, workers, generations, "
                              "figures and top_k may change (and, before the first χ is "
                              f"trained, {', '.join(TRAINING_SETTINGS)}); start a new run "
                              "for the rest")
        return candidate, state

    def _check_same_system(self, system: Any, stored: RunConfig,
                           state: dict[str, Any] | None) -> None:
        """The same system may be named differently (bundled name vs folder): compare."""
        from ..systems import load_system
        ident = state.get("system") if state else None
        theirs = system_identity(load_system(str(system), **stored.system_kwargs()))
        if ident is None or (theirs["name"], theirs["n_atoms"], theirs["atoms"]) != \
                (ident["name"], ident["n_atoms"], ident["atoms"]):
            what = f" ({ident['name']}, {ident['n_atoms']} atoms)" if ident else ""
            raise RunDirError(f"{self.out} holds a run of system {stored.system!r}{what}, not "
                              f"{str(system)!r}; resume without SYSTEM or choose another --out")

    def _read_state(self) -> dict[str, Any] | None:
        p = self.paths["state"]
        if not p.is_file():
            return None
        try:
            state = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{p} is unreadable ({exc}); the checkpoint is damaged: start "
                              "a new run") from exc
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise RunDirError(f"{p} has state version "
                              f"{state.get('version') if isinstance(state, dict) else '?'}; "
                              f"this amore_openmm writes version {STATE_VERSION}")
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
            from ..systems import load_system
            self._system = load_system(self.config.system, **self.config.system_kwargs())
        return self._system

    @property
    def platform(self) -> str:
        """The burst platform: the configured one, or for "auto" the one probed at the start
        of the run (kept in the checkpoint so that a resumed run uses the same)."""
        if self.config.platform != "auto":
            return self.config.platform
        if self.state is not None and self.state.get("platform"):
            return str(self.state["platform"])
        from ..sampling import choose_platform
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
        fes = ["free_energy"] if self.config.free_energy != "off" else []
        fes += ["transitions"] if multichi_enabled(self.config) else []
        if self.config.science:
            return s + ["dihedral_chi", "final_paths", "sensitivity", "channels", *fes,
                        "figures", "report"]
        return s + ["final_paths", "sensitivity", *fes, "figures", "report"]

    @property
    def skipped(self) -> list[str]:
        """Generation stages left out by the stopping rule (recorded as completed)."""
        return list(self.state.get("skipped", [])) if self.state else []

    def _skip_by_stop_rule(self, stage: str) -> bool:
        """After the stopping rule fired (``state["stopped_after"]``), the stages of later
        generations are recorded as completed and skipped."""
        assert self.state is not None
        after = self.state.get("stopped_after")
        g = stage_generation(stage)
        if after is None or g is None or g <= int(after):
            return False
        if stage not in self.state["completed"]:
            self.state["completed"].append(stage)
        self.state.setdefault("skipped", []).append(stage)
        self._save_state()
        self.log.info("stage %s skipped (stopping rule: %s)", stage, self.state.get("stopped"))
        return True

    @property
    def completed(self) -> list[str]:
        return list(self.state["completed"]) if self.state else []

    def is_complete(self) -> bool:
        done = set(self.completed)
        return all(s in done for s in self.stages())

    @property
    def progress(self) -> bool:
        return not self.quiet

    def context(self) -> StageContext:
        """What the stages get of this run (built per stage: the settings are current)."""
        return StageContext(self.config, self.out, self.paths, self.log, self.progress, self)

    # -- logging / closing -------------------------------------------------------------------
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
        """Close the log, the Dask client if one was opened, and release the run's lock."""
        if self._dask is not None:
            self._dask.client.close()
            self._dask = None
        if self._logger is not None:
            for h in list(self._logger.handlers):
                h.close()
                self._logger.removeHandler(h)
            self._logger = None
        self._lock.release()

    def __enter__(self) -> "AmoreRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    # -- state -------------------------------------------------------------------------------
    def _init_state(self) -> None:
        check_writable(self.out)
        if not self._lock.held:
            self._lock.acquire()
            self._refuse_non_empty(self._holds_run())  # another process may have been first
        self.paths["checkpoint"].mkdir(parents=True, exist_ok=True)
        self._record_defaults()
        self.config.write(self.paths["config"])
        self.state = {"version": STATE_VERSION, "system": system_identity(self.system),
                      "config_digest": self.config.digest(), "completed": [], "n_data": 0,
                      "generations": {}, "timings": {}, "created": time.time(),
                      "platform": None}
        self._save_state()

    def _record_defaults(self) -> None:
        """Settings left to the system's defaults become explicit in config.toml and run.log,
        so that a file input never runs with silently chosen values."""
        ms, cfg = self.system, self.config
        chosen = {}
        if cfg.temperature is None:
            chosen["temperature"] = float(ms.temperature)
        if cfg.lag_steps is None:
            chosen["lag_steps"] = int(ms.lag_steps)
        if cfg.featurizer == "auto":
            # the system's own default, or what "auto" gives for its selection's atom count
            from ..chi import featurizer_kind
            chosen["featurizer"] = featurizer_kind(ms, ms.featurizer)
            if ms.featurizer == "auto":
                self.log.info("featurizer auto -> %s (from the %d atoms of the selection)",
                              chosen["featurizer"], ms.n_selected)
        if chosen:
            self.config = apply_settings(cfg, chosen, "system defaults")
            self.log.info("settings from the system's defaults (no file or flag set them): %s",
                          ", ".join(f"{k}={v}" for k, v in chosen.items()))

    def _save_state(self) -> None:
        write_json(self.paths["state"], self.state)

    def _mark(self, stage: str, seconds: float, **info: Any) -> None:
        assert self.state is not None
        if stage not in self.state["completed"]:
            self.state["completed"].append(stage)
        self.state["timings"][stage] = round(float(seconds), 3)
        self.state.update(info)
        g = stage_generation(stage)
        if g is not None:
            gen_stages = (["trajectory", "initial_bursts", "train_0"] if g == 0 else
                          [f"paths_{g}", f"bursts_{g}", f"train_{g}"])
            self.gen_record(g)["seconds"] = round(sum(
                self.state["timings"].get(s, 0.0) for s in gen_stages), 3)
        self._save_state()

    def gen_record(self, g: int) -> dict[str, Any]:
        """The report record of generation ``g`` (created on first use)."""
        assert self.state is not None
        return self.state["generations"].setdefault(str(g), {"generation": g})

    # -- running -----------------------------------------------------------------------------
    def run(self, until: str | None = None) -> dict[str, Any]:
        """Run every stage not yet completed (up to and including ``until``); returns the
        report (or the state when stopped early)."""
        if self.config.platform != "auto":
            get_platform(self.config.platform)  # a missing platform is bad input, up front
        if self.state is None:
            self._init_state()
            self.log.info("new run of %s (%d atoms) in %s, preset %s", self.system.name,
                          self.system.n_atoms, self.out, self.config.preset)
        else:
            check_writable(self.out)
            for p in sweep_temp_files(self.out):
                self.log.info("removed %s left by a killed writer", p.relative_to(self.out))
            self.config.write(self.paths["config"])
            self._reconcile()
            self.log.info("resuming %s after %s", self.out,
                          self.completed[-1] if self.completed else "nothing")
        t_run = time.perf_counter()
        for stage in self.stages():
            if stage in self.completed or self._skip_by_stop_rule(stage):
                continue
            try:
                check_interrupt()  # a stop requested between stages
            except KeyboardInterrupt as exc:
                self.log.error("run interrupted (%s) before stage %s; completed stages are "
                               "saved: resume with --resume", exc or "Ctrl-C", stage)
                raise
            self._run_stage(stage)
            if until is not None and stage == until:
                break
        self.log.info("run finished in %.1f s; report: %s", time.perf_counter() - t_run,
                      self.paths["report_md"])
        if self.paths["report_json"].is_file():
            return json.loads(self.paths["report_json"].read_text())
        return dict(self.state or {})

    def _run_stage(self, stage: str) -> None:
        t0 = time.perf_counter()
        self.log.info("stage %s ...", stage)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                info = run_stages.dispatch(self.context(), stage) or {}
            for w in caught:  # a stage's warnings belong in run.log (not library noise)
                if not issubclass(w.category, (DeprecationWarning, FutureWarning,
                                               PendingDeprecationWarning)):
                    self.log.warning("%s: %s", w.category.__name__, w.message)
        except KeyboardInterrupt as exc:
            self.log.error("stage %s interrupted (%s) after %.1f s; completed stages are "
                           "saved: resume with --resume", stage, exc or "Ctrl-C",
                           time.perf_counter() - t0)
            raise
        except BaseException as exc:
            self.log.error("stage %s failed after %.1f s: %s: %s (completed stages are "
                           "saved; fix the cause and resume with --resume)", stage,
                           time.perf_counter() - t0, type(exc).__name__, exc)
            raise
        dt = time.perf_counter() - t0
        self._mark(stage, dt, **info)
        self.log.info("stage %s done in %.1f s", stage, dt)
        if stage.startswith("train_"):
            self.log.info(run_stages.summary_line(self.context(), int(stage.split("_")[1])))

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
        finals = {"final_paths", "sensitivity", "figures", "report", "dihedral_chi",
                  "channels", "free_energy"}
        if any(s not in expected for s in done) or (
                finals & set(done) and last_train < gens):
            self.state["completed"] = [s for s in done if s not in finals and s in expected]
        self.state["config_digest"] = self.config.digest()
        self._save_state()

    # -- files of completed stages -----------------------------------------------------------
    def load_data(self) -> KoopmanData:
        """The Koopman data of the completed stages."""
        data = read_data(self.paths["data"], n_atoms=self.system.n_atoms)
        n = int(self.state["n_data"]) if self.state else len(data)
        if len(data) < n:
            raise RunDirError(f"{self.paths['data']} holds {len(data)} starts but the "
                              f"checkpoint recorded {n}; the run directory was modified")
        # a killed stage may have written the merged file before recording it
        return data.subset(slice(0, n)) if len(data) > n else data

    def model_path(self, g: int) -> Path:
        """The χ snapshot after generation ``g``."""
        return self.paths["checkpoint"] / f"chi_g{g:03d}.pt"

    def load_model(self, g: int | None = None) -> Any:
        """χ after generation ``g`` (default: the latest trained)."""
        if g is None:
            trained = trained_generations(self.completed, self.skipped)
            if not trained:
                raise RunDirError(f"{self.out}: no χ trained yet; run `amore train` first")
            g = max(trained)
        return read_model(self.model_path(g))

    def executor(self) -> Any:
        """The Dask executor for ``scheduler`` (connected once per run), or None."""
        if not self.config.scheduler:
            return None
        if self._dask is None:
            from ..distributed import DaskExecutor
            try:
                from distributed import Client
            except ImportError as exc:
                raise ConfigError("scheduler is set but Dask is not installed: "
                                  "pip install -e '.[distributed]'") from exc
            self._dask = DaskExecutor(Client(self.config.scheduler))
        return self._dask

    def stage_report(self) -> dict[str, Any]:
        """Rewrite ``report.json`` and ``report.md`` from the completed stages."""
        return run_stages.dispatch(self.context(), "report") or {}
