"""Stage 2 — data: Koopman pairs (x, y) from bursts, with per-start metadata.

``x`` holds N starting structures (N×n×3, nm, every atom: restarts need the solvent) and ``y``
the end points of K bursts from each, for the molecule of interest only (N×K×n_sel×3, nm; the
0-based atom indices are ``atoms``, by default every atom). Metadata per start: generation,
origin (:data:`ORIGINS`), seed and a weight for ensemble averages. Saved as one
``.npz`` file, written atomically (temp file, then rename). Also here: the atomic writers of
the run directory, the one JSON sanitiser (:func:`to_jsonable`, :func:`write_json`) and the
memory budget (:func:`memory_budget_bytes`, :class:`MemoryBudgetError`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["KoopmanData", "atomic_save_npz", "atomic_write_bytes", "atomic_write_text",
           "atomic_path", "ORIGINS", "FORMAT_VERSION", "to_jsonable", "write_json",
           "MemoryBudgetError", "memory_budget_bytes", "MEMORY_BUDGET_ENV",
           "DEFAULT_MEMORY_BUDGET_GB"]

#: where a start came from: a trajectory frame, a χ-MEP node, a draw uniform in χ from
#: umbrella windows (pipeline generation_starts = "stratified"), or given by the user
ORIGINS = ("trajectory", "mep", "stratified", "user")
#: 2: per-start ``weights`` and ``extra`` are saved; 3: ``atoms`` (the atoms ``y`` holds) is
#: saved (files of versions 1 and 2 still load, as data of every atom)
FORMAT_VERSION = 3
#: environment variable with the memory budget in GB (see :func:`memory_budget_bytes`)
MEMORY_BUDGET_ENV = "AMORE_MEMORY_BUDGET_GB"
DEFAULT_MEMORY_BUDGET_GB = 4.0
_EXTRA_ARRAY = "extra."  # npz key prefix of the array entries of KoopmanData.extra


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: mkstemp creates 0600 files; run directories are read by other people and tools
_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file beside ``path``; when the block succeeds it replaces ``path``.

    Readers never see a half-written file and an interrupted write leaves the old file intact.
    ``suffix`` lets writers that choose a format by extension (DCD, PNG) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Write an ``.npz`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


class MemoryBudgetError(ValueError):
    """A step would need more memory than the budget (:func:`memory_budget_bytes`)."""


def memory_budget_bytes(budget_gb: float | None = None) -> int:
    """The memory budget in bytes: ``budget_gb`` if given, else the environment variable
    ``AMORE_MEMORY_BUDGET_GB``, else 4 GB. Raises ``ValueError`` naming the source of a value
    that is not a positive number."""
    where = "memory budget"
    if budget_gb is None:
        text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
        if not text:
            return int(DEFAULT_MEMORY_BUDGET_GB * 1e9)
        where = f"environment variable {MEMORY_BUDGET_ENV}={text!r}"
        try:
            budget_gb = float(text)
        except ValueError:
            raise ValueError(f"{where} is not a number; give the budget in GB, e.g. 8") from None
    if not (math.isfinite(float(budget_gb)) and float(budget_gb) > 0):
        raise ValueError(f"{where}: {budget_gb!r} GB is not a positive number of GB")
    return int(float(budget_gb) * 1e9)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy scalars and arrays become numbers and (nested)
    lists, Paths strings, tuples and sets lists, dataclasses dicts, dict keys strings, and
    non-finite floats (NaN, ±inf) ``None`` (JSON has no NaN). Raises ``TypeError`` naming the
    type of anything else."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.str_):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"to_jsonable: cannot write a {type(obj).__name__} as JSON")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``to_jsonable(obj)`` to ``path`` atomically (indented, UTF-8, newline at end)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


@dataclass
class KoopmanData:
    """Starting structures and burst end points for ISOKANN.

    Attributes:
        x: (N, n_atoms, 3) starting positions of every atom, nm (float32).
        y: (N, K, n_sel, 3) burst end positions of the atoms ``atoms``, nm (float32).
        generation: (N,) int, adaptive generation that produced each start (0 = initial).
        origin: (N,) str, one of "trajectory", "mep", "stratified" (drawn uniformly in χ
            from umbrella windows), "user".
        seed: (N,) int64, the burst seed used for each start.
        lag_steps, timestep: burst settings (integrator steps, ps) for rate estimates.
        system_name: name of the system the data belong to. ``merge`` refuses data whose
            system_name, lag_steps or timestep differ (where both are set); ``load(path,
            n_atoms=...)`` checks the atom count.
        extra: run metadata (e.g. ``start_index``, ``dropped``). Arrays with one entry per
            start follow ``subset``/``merge``; saved and loaded with the data (arrays as
            arrays, the rest as JSON through :func:`to_jsonable`; entries JSON cannot hold are
            left out with a warning).
        weights: (N,) float64 ≥ 0, the weight of each start in ensemble averages (default 1;
            starts that are not Boltzmann samples, such as path nodes, get 0).
        atoms: (n_sel,) int64, the sorted 0-based indices (into the full system) of the atoms
            whose end points ``y`` holds, e.g. the solute of a water box (default: every atom).
            ``x_selected`` is ``x`` restricted to them; ``subset``/``merge``/``save``/``load``
            keep them and ``merge`` refuses data of other atoms.
    """

    x: np.ndarray
    y: np.ndarray
    generation: np.ndarray | None = None
    origin: np.ndarray | None = None
    seed: np.ndarray | None = None
    lag_steps: int = 0
    timestep: float = 0.0
    system_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    weights: np.ndarray | None = None
    atoms: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.float32)
        if self.x.ndim != 3 or self.x.shape[2] != 3:
            raise ValueError(f"KoopmanData.x must be (N, n_atoms, 3), got {self.x.shape}")
        self.atoms = _check_atoms(self.atoms, self.x.shape[1])
        if self.y.ndim == 3:  # one burst per start given as (N, n_sel, 3)
            self.y = self.y[:, None]
        if self.y.ndim != 4 or self.y.shape[0] != self.x.shape[0] or \
                self.y.shape[2:] != (len(self.atoms), 3):
            raise ValueError(f"KoopmanData.y must be (N, K, n_sel, 3) with N = {len(self.x)} "
                             f"starts and n_sel = len(atoms) = {len(self.atoms)}, got "
                             f"{self.y.shape}")
        n = len(self.x)
        self.generation = (np.zeros(n, dtype=np.int64) if self.generation is None
                           else np.asarray(self.generation, dtype=np.int64).reshape(n))
        self.origin = (np.full(n, "trajectory", dtype="<U10") if self.origin is None
                       else np.asarray(self.origin, dtype="<U10").reshape(n))
        self.seed = (np.zeros(n, dtype=np.int64) if self.seed is None
                     else np.asarray(self.seed, dtype=np.int64).reshape(n))
        if self.weights is None:
            self.weights = np.ones(n, dtype=np.float64)
        else:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"KoopmanData.weights must be {n} finite values >= 0 (one per "
                                 f"start), got shape {w.shape}")
            self.weights = w

    # -- shape ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_starts(self) -> int:
        return len(self.x)

    @property
    def n_koopman(self) -> int:
        return self.y.shape[1]

    @property
    def n_atoms(self) -> int:
        return self.x.shape[1]

    @property
    def n_selected(self) -> int:
        """Number of atoms whose end points ``y`` holds (``len(atoms)``)."""
        return len(self.atoms)

    @property
    def all_atoms(self) -> bool:
        """True when ``y`` holds every atom of ``x``."""
        return self.n_selected == self.n_atoms

    @property
    def x_selected(self) -> np.ndarray:
        """(N, n_sel, 3): the starts restricted to ``atoms`` (``x`` itself for all atoms)."""
        return self.x if self.all_atoms else self.x[:, self.atoms]

    @property
    def nbytes(self) -> int:
        """Bytes held by the coordinate arrays ``x`` and ``y``."""
        return int(self.x.nbytes + self.y.nbytes)

    @property
    def lag_time(self) -> float:
        """Lag time τ in ps (0 when unknown)."""
        return self.lag_steps * self.timestep

    def __repr__(self) -> str:
        gens = np.unique(self.generation).tolist() if len(self) else []
        return (f"KoopmanData({self.system_name or 'system'}: {self.n_starts} starts × "
                f"{self.n_koopman} bursts, {self.n_atoms} atoms"
                + ("" if self.all_atoms else f" ({self.n_selected} in y)")
                + f", generations {gens})")

    # -- combination ---------------------------------------------------------------------------
    def subset(self, index: Sequence[int] | np.ndarray | slice) -> "KoopmanData":
        """The starts selected by ``index`` (indices, boolean mask or slice)."""
        extra = {k: (v[index] if self._per_start(v) else v) for k, v in self.extra.items()}
        return KoopmanData(self.x[index], self.y[index], self.generation[index],
                           self.origin[index], self.seed[index], self.lag_steps,
                           self.timestep, self.system_name, extra, self.weights[index],
                           self.atoms)

    def _per_start(self, value: Any) -> bool:
        """True for ``extra`` entries holding one value per start (sliced with the data)."""
        return isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == len(self)

    def merge(self, other: "KoopmanData") -> "KoopmanData":
        """Concatenate two data sets of the same system, lag and burst count.

        Raises ``ValueError`` naming both values when the atom count, the atoms of ``y``, K,
        or (where both are set) the system name, lag_steps or timestep differ.
        """
        self._check_compatible(other)
        if len(self) == 0:
            return other
        if len(other) == 0:
            return self
        if other.n_atoms != self.n_atoms:
            raise ValueError(f"cannot merge data with {other.n_atoms} atoms into data with "
                             f"{self.n_atoms} atoms: they come from different systems")
        if not np.array_equal(self.atoms, other.atoms):
            raise ValueError(f"cannot merge data whose y holds atoms {_atoms_text(other.atoms)} "
                             f"into data whose y holds atoms {_atoms_text(self.atoms)}; sample "
                             "both with the same selection (store_atoms)")
        if other.n_koopman != self.n_koopman:
            raise ValueError(f"cannot merge data with K={other.n_koopman} bursts per start "
                             f"into data with K={self.n_koopman}; use the same n_koopman")
        return KoopmanData(np.concatenate([self.x, other.x]), np.concatenate([self.y, other.y]),
                           np.concatenate([self.generation, other.generation]),
                           np.concatenate([self.origin, other.origin]),
                           np.concatenate([self.seed, other.seed]),
                           self.lag_steps or other.lag_steps, self.timestep or other.timestep,
                           self.system_name or other.system_name, self._merged_extra(other),
                           np.concatenate([self.weights, other.weights]), self.atoms)

    def _check_compatible(self, other: "KoopmanData") -> None:
        for name, mine, theirs in (("system_name", self.system_name, other.system_name),
                                   ("lag_steps", self.lag_steps, other.lag_steps),
                                   ("timestep", self.timestep, other.timestep)):
            if mine and theirs and mine != theirs:
                raise ValueError(f"cannot merge data with {name}={theirs!r} into data with "
                                 f"{name}={mine!r}: Koopman pairs of different systems or lag "
                                 "times cannot be mixed")

    def _merged_extra(self, other: "KoopmanData") -> dict[str, Any]:
        # Per-start arrays are concatenated when both sides have them and dropped otherwise,
        # so they never go stale; scalar entries of ``self`` win.
        extra = {}
        for key, value in self.extra.items():
            if not self._per_start(value):
                extra[key] = value
            elif other._per_start(other.extra.get(key)):
                extra[key] = np.concatenate([value, other.extra[key]])
        return extra

    @classmethod
    def empty(cls, n_atoms: int, n_koopman: int, **kwargs: Any) -> "KoopmanData":
        """No starts; ``atoms=...`` (keyword) gives the atoms of ``y`` (default all)."""
        n_sel = n_atoms if kwargs.get("atoms") is None else len(kwargs["atoms"])
        return cls(np.zeros((0, n_atoms, 3)), np.zeros((0, n_koopman, n_sel, 3)), **kwargs)

    # -- I/O -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` file atomically (``extra`` included, see the class docstring)."""
        arrays, rest = {}, {}
        for key, value in self.extra.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biufU":
                arrays[_EXTRA_ARRAY + str(key)] = value
                continue
            try:
                rest[str(key)] = to_jsonable(value)
            except TypeError as exc:
                warnings.warn(f"KoopmanData.save: extra[{key!r}] is not saved ({exc})",
                              stacklevel=2)
        return atomic_save_npz(path, x=self.x, y=self.y, generation=self.generation,
                               origin=self.origin, seed=self.seed, weights=self.weights,
                               atoms=self.atoms, lag_steps=np.int64(self.lag_steps),
                               timestep=np.float64(self.timestep),
                               system_name=np.str_(self.system_name),
                               format_version=np.int64(FORMAT_VERSION),
                               extra_json=np.str_(json.dumps(rest, allow_nan=False)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, n_atoms: int | None = None) -> "KoopmanData":
        """Read a file written by :meth:`save`; ``n_atoms`` checks it fits the system.

        Files written before ``atoms`` existed (format 1 and 2) load as data of every atom.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Koopman data file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as f:
                extra = json.loads(str(f["extra_json"])) if "extra_json" in f.files else {}
                extra.update({k[len(_EXTRA_ARRAY):]: f[k] for k in f.files
                              if k.startswith(_EXTRA_ARRAY)})
                data = cls(f["x"], f["y"], f["generation"], f["origin"], f["seed"],
                           int(f["lag_steps"]), float(f["timestep"]), str(f["system_name"]),
                           extra, f["weights"] if "weights" in f.files else None,
                           f["atoms"] if "atoms" in f.files else None)
        except KeyError as exc:
            raise ValueError(f"{path} is not a KoopmanData file (missing {exc})") from exc
        except (zipfile.BadZipFile, EOFError, OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is damaged or not a KoopmanData .npz file ({exc}); "
                             "delete it and sample again") from exc
        if n_atoms is not None and data.n_atoms != n_atoms:
            raise ValueError(f"{path} holds data for {data.n_atoms} atoms but the system has "
                             f"{n_atoms}: it belongs to a different system")
        return data

    def to_mdtraj(self, topology: Any, which: str = "x", burst: int = 0) -> Any:
        """The starts (``which="x"``) or burst ends (``"y"``, burst index ``burst``) as an
        ``mdtraj.Trajectory`` (topology: OpenMM or mdtraj Topology of the full system; for
        ``"y"`` it is cut down to ``atoms``)."""
        import mdtraj

        top = topology if isinstance(topology, mdtraj.Topology) else \
            mdtraj.Topology.from_openmm(topology)
        if which == "x":
            return mdtraj.Trajectory(np.asarray(self.x, dtype=np.float32), top)
        if top.n_atoms == self.n_atoms and not self.all_atoms:
            top = top.subset(self.atoms)
        return mdtraj.Trajectory(np.asarray(self.y[:, burst], dtype=np.float32), top)


def _check_atoms(atoms: Any, n_atoms: int) -> np.ndarray:
    """``atoms`` as sorted unique int64 indices in 0..n_atoms-1 (None: every atom)."""
    if atoms is None:
        return np.arange(n_atoms, dtype=np.int64)
    arr = np.asarray(atoms)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"KoopmanData.atoms must be a 1-D array of 0-based atom indices, got "
                         f"shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size == 0 or arr[0] < 0 or arr[-1] >= n_atoms or np.any(np.diff(arr) <= 0):
        raise ValueError(f"KoopmanData.atoms must be sorted unique indices in 0..{n_atoms - 1} "
                         f"(at least one), got {_atoms_text(arr)}")
    return arr


def _atoms_text(atoms: np.ndarray) -> str:
    """A short description of an index array for messages."""
    a = np.asarray(atoms).tolist()
    body = str(a) if len(a) <= 8 else f"[{a[0]}, {a[1]}, {a[2]}, ..., {a[-1]}]"
    return f"{body} ({len(a)} atoms)"
