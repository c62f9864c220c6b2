"""Files of the run-directory layout: χ-MEP collections, feature tables, JSON, and readers
that turn a damaged file into a :class:`DamagedFileError` naming it."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import KoopmanData, atomic_save_npz, atomic_write_text, to_jsonable, write_json
from .state import DamagedFileError

__all__ = ["file_digest", "save_paths", "load_paths", "load_chipaths", "write_features_csv", "read_npz",
           "write_path_files",
           "read_data", "read_model", "write_json"]


# --------------------------------------------------------------------------------------------
# readers that name the damaged file
# --------------------------------------------------------------------------------------------
def _read(path: str | os.PathLike, what: str, fix: str, loader: Callable[[Path], Any]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return loader(path)
    except ValueError as exc:
        if str(path) in str(exc):  # the loader's own message already names the file
            raise
        raise DamagedFileError(f"{path} is not a readable {what} ({exc}); {fix}") from exc
    except Exception as exc:  # noqa: BLE001 - zip/pickle/torch errors: the file is damaged
        raise DamagedFileError(f"{path} is damaged or not a {what} ({type(exc).__name__}: "
                               f"{exc}); {fix}") from exc


def read_npz(path: str | os.PathLike, what: str = "checkpoint file",
             fix: str = "delete it and resume, or start a new run") -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (read eagerly; no pickles)."""
    def load(p: Path) -> dict[str, np.ndarray]:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    return _read(path, what, fix, load)


def read_data(path: str | os.PathLike, n_atoms: int | None = None) -> KoopmanData:
    """:meth:`KoopmanData.load` with a clear error for a damaged file."""
    return _read(path, "KoopmanData file", "regenerate it (`amore sample`, or resume the run "
                 "after deleting it)", lambda p: KoopmanData.load(p, n_atoms=n_atoms))


def read_model(path: str | os.PathLike) -> Any:
    """:meth:`ChiModel.load` with a clear error for a damaged file."""
    from ..chi import ChiModel
    return _read(path, "χ model file (chi_state.pt or chi.pt)", "retrain it with `amore "
                 "train` or use another model file", ChiModel.load)


# --------------------------------------------------------------------------------------------
# χ-MEP collections: all paths of a stage in one .npz
# --------------------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike) -> str:
    """16 hex digits of the SHA-256 of a file (what ties a derived file to its χ)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def save_paths(path: str | os.PathLike, paths: list[Any]) -> Path:
    """All χ-MEPs in one ``.npz``: the per-node arrays of every path
    (:meth:`~amore_openmm.mep.ChiPath.node_arrays`: positions nm, chi, energy kJ/mol without
    restraint, grad_norm nm⁻¹, atom_grad_sq nm⁻², z, kappa and the node certificates)
    concatenated, with ``path_id`` and ``node`` per node; per path ``start_index`` and
    ``path_meta`` (JSON: stop_reasons, certificate thresholds)."""
    if not paths:
        return atomic_save_npz(path, n_paths=np.int64(0), path_id=np.zeros(0, np.int64),
                               node=np.zeros(0, np.int64), start_index=np.zeros(0, np.int64),
                               path_meta=np.zeros(0, dtype=str))
    nodes = [p.node_arrays() for p in paths]
    arrays = {k: np.concatenate([n[k] for n in nodes]) for k in nodes[0]}
    meta = [json.dumps(to_jsonable({"stop_reasons": p.stop_reasons,
                                    "certificate": p.certificate}), sort_keys=True)
            for p in paths]
    return atomic_save_npz(
        path, **arrays,
        path_id=np.concatenate([np.full(len(p.chi), i, dtype=np.int64)
                                for i, p in enumerate(paths)]),
        node=np.concatenate([np.arange(len(p.chi), dtype=np.int64) for p in paths]),
        n_paths=np.int64(len(paths)),
        start_index=np.asarray([int(p.start_index) for p in paths], dtype=np.int64),
        path_meta=np.asarray(meta, dtype=str))


_PER_PATH = ("start_index", "path_meta", "n_paths", "path_id", "node")


def load_paths(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The paths of a file written by :func:`save_paths`, one dict per path: the per-node
    arrays, ``start_index``, ``stop_reasons`` and ``certificate``."""
    arrays = read_npz(path, "χ-MEP file (paths.npz)", "trace the paths again (`amore mep`, or "
                      "delete it and resume the run)")
    if "n_paths" not in arrays or "path_meta" not in arrays:
        raise DamagedFileError(f"{path} is not a χ-MEP collection written by save_paths "
                               "(no n_paths/path_meta); trace the paths again")
    out = []
    for i in range(int(arrays["n_paths"])):
        sel = arrays["path_id"] == i
        d: dict[str, Any] = {k: v[sel] for k, v in arrays.items() if k not in _PER_PATH}
        d.update(json.loads(str(arrays["path_meta"][i])))
        d["start_index"] = int(arrays["start_index"][i])
        out.append(d)
    return out


def load_chipaths(path: str | os.PathLike) -> list[Any]:
    """:class:`~amore_openmm.mep.ChiPath` objects from a :func:`save_paths` file."""
    from ..mep import ChiPath
    return [ChiPath.from_node_arrays(d, d["start_index"], d["stop_reasons"],
                                     d.get("certificate")) for d in load_paths(path)]


def write_path_files(out: str | os.PathLike, paths: list[Any], topology: Any,
                     sensitivity: Any = None, atoms: Any = None) -> Path:
    """``out/paths.npz`` (:func:`save_paths`, every atom) and one multi-model
    ``out/path_XXX.pdb`` per path (of ``atoms``, e.g. the selection; default every atom);
    returns the folder."""
    from ..mep import write_path_pdb
    from .state import check_out_dir
    out = check_out_dir(Path(out))
    save_paths(out / "paths.npz", paths)
    for i, p in enumerate(paths):
        write_path_pdb(out / f"path_{i:03d}.pdb", p, topology, sensitivity=sensitivity,
                       atoms=atoms)
    return out


def write_features_csv(path: str | os.PathLike, saliency: list[tuple[str, float]]) -> Path:
    """Feature saliency ⟨‖∂ν/∂f_j‖²⟩ ranked."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "feature", "saliency"])
    for r, (name, v) in enumerate(saliency, start=1):
        w.writerow([r, name, f"{v:.6g}"])
    return atomic_write_text(path, buf.getvalue())
