"""Run-directory state shared by the pipeline modules: layout, errors, lock, stage seeds,
and :class:`StageContext`, what a stage gets of its run."""
from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:  # typing only: the config is not needed to read a run directory
    from ..config import RunConfig
    from ..data import KoopmanData

__all__ = ["RunDirError", "DamagedFileError", "RunLock", "run_layout", "STATE_VERSION",
           "LOGGER_NAME", "sweep_temp_files", "StageContext", "RunStore",
           "trained_generations"]

STATE_VERSION = 1
LOGGER_NAME = "amore_openmm.run"


class RunDirError(ValueError):
    """The run directory cannot be used as asked (unwritable, another system's run, locked by
    another process, ...)."""


class DamagedFileError(RunDirError):
    """A file of a run (or given on the command line) exists but cannot be read."""


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
        "lock": out / ".lock",
    }


def stage_seed(seed: int, stage: str) -> int:
    """A stable per-stage seed (independent of Python's hash randomisation)."""
    return (int(seed) * 1_000_003 + zlib.crc32(stage.encode())) % (2**31 - 1)


class RunStore(Protocol):
    """The run's state and files as a stage reads them (an
    :class:`~amore_openmm.pipeline.AmoreRun`)."""

    state: dict[str, Any] | None

    @property
    def system(self) -> Any: ...
    @property
    def platform(self) -> str: ...
    @property
    def completed(self) -> list[str]: ...
    @property
    def skipped(self) -> list[str]: ...
    def gen_record(self, g: int) -> dict[str, Any]: ...
    def load_data(self) -> KoopmanData: ...
    def load_model(self, g: int | None = None) -> Any: ...
    def model_path(self, g: int) -> Path: ...
    def executor(self) -> Any: ...


@dataclass(frozen=True)
class StageContext:
    """What a pipeline stage gets of its run: the resolved settings, the run directory and
    its layout, the log, whether to show progress, and the run's state and files
    (``store``). The system is loaded and the "auto" platform probed once, by the run."""

    config: RunConfig
    out: Path
    paths: Mapping[str, Path]
    log: logging.Logger
    progress: bool
    store: RunStore

    @property
    def system(self) -> Any:
        """The run's :class:`~amore_openmm.systems.MolecularSystem`."""
        return self.store.system

    @property
    def platform(self) -> str:
        """The burst platform (the configured one, or the one probed for "auto")."""
        return self.store.platform

    @property
    def lag_steps(self) -> int:
        return int(self.config.lag_steps or self.system.lag_steps)

    @property
    def state(self) -> dict[str, Any] | None:
        return self.store.state

    @property
    def completed(self) -> list[str]:
        return self.store.completed

    @property
    def skipped(self) -> list[str]:
        return self.store.skipped

    @property
    def trained_generations(self) -> list[int]:
        return trained_generations(self.completed, self.skipped)

    def seed(self, stage: str) -> int:
        """The stage's seed (:func:`stage_seed` of the run seed)."""
        return stage_seed(self.config.seed, stage)

    def gen_record(self, g: int) -> dict[str, Any]:
        return self.store.gen_record(g)

    def load_data(self) -> KoopmanData:
        return self.store.load_data()

    def load_model(self, g: int | None = None) -> Any:
        return self.store.load_model(g)

    def model_path(self, g: int) -> Path:
        return self.store.model_path(g)

    def executor(self) -> Any:
        return self.store.executor()


def trained_generations(completed: list[str], skipped: list[str]) -> list[int]:
    """The generations whose χ was trained (``train_g`` done, not skipped by a stop rule)."""
    return [int(st.split("_")[1]) for st in completed
            if st.startswith("train_") and st not in skipped]


def stage_generation(stage: str) -> int | None:
    """The generation a stage belongs to (None for the final stages)."""
    if stage in ("trajectory", "initial_bursts"):
        return 0
    kind, _, g = stage.partition("_")
    return int(g) if kind in ("paths", "bursts", "train") and g.isdigit() else None


def check_out_dir(out: Path, what: str = "--out") -> Path:
    """``out`` must be a directory or not exist yet (a file there is bad input)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{what} {out} is a file, not a folder; choose a folder name "
                          "(it is created if missing)")
    return out


def check_writable(out: Path) -> None:
    check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".amore_write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"output directory {out} is not writable ({exc.strerror or exc}); "
                          "choose a writable --out folder") from exc


def system_identity(ms: Any) -> dict[str, Any]:
    return {"name": ms.name, "n_atoms": int(ms.n_atoms), "source": str(ms.source),
            "atoms": ms.atom_labels()[:200] if ms.n_atoms <= 200 else ms.n_atoms}


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock``, held while a process works on the run.

    The lock belongs to the open file: it is released by :meth:`release`, when the process
    exits, or when it is killed, so a crashed run never leaves a stale lock. The holder's pid
    is written into the file so that a second process can say who holds it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: Any = None

    def acquire(self) -> "RunLock":
        import fcntl
        check_writable(self.path.parent)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunDirError(f"{self.path.parent} is in use by another amore process (pid "
                              f"{holder}); wait for it to finish or choose another --out"
                              ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the flock
            self._fh = None


#: temporary files of :func:`amore_openmm.data.atomic_path`: ".<name>.<8 random><suffix>"
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|png|npz|pdb|dcd|pt)$")


def sweep_temp_files(out: Path) -> list[Path]:
    """Remove temporary files that a killed writer left in the run directory (only call it
    while holding the run's lock: then nobody else is writing)."""
    removed = []
    for p in Path(out).rglob(".*"):
        if p.is_file() and _TEMP_RE.match(p.name):
            p.unlink()
            removed.append(p)
    return removed
