"""Checkpoint files of BurstSampler.run: a KoopmanData ``.npz`` plus the run's key and drops."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from amore_openmm.data import FORMAT_VERSION, KoopmanData, atomic_save_npz

if TYPE_CHECKING:  # pragma: no cover
    from .run_state import RunState


def as_path(checkpoint: str | os.PathLike | Callable[..., Any] | None) -> Path | None:
    """The checkpoint file, or None for no checkpoint or a callable one."""
    return None if checkpoint is None or callable(checkpoint) else Path(checkpoint)


def write(path: Path, data: KoopmanData, run_key: dict[str, Any],
          dropped: list[dict[str, Any]]) -> None:
    """Commit the kept starts (readable with ``KoopmanData.load``) and the drops atomically."""
    atomic_save_npz(path, x=data.x, y=data.y, generation=data.generation,
                    origin=data.origin, seed=data.seed, weights=data.weights, atoms=data.atoms,
                    lag_steps=np.int64(data.lag_steps), timestep=np.float64(data.timestep),
                    system_name=np.str_(data.system_name),
                    format_version=np.int64(FORMAT_VERSION),
                    start_index=np.asarray(data.extra["start_index"], dtype=np.int64),
                    dropped_json=np.str_(json.dumps(dropped)),
                    run_key=np.str_(json.dumps(run_key, sort_keys=True)))


def resume(path: Path, st: "RunState") -> None:
    """Mark the starts of ``st`` found in the checkpoint as done (same key and coordinates)."""
    with np.load(path, allow_pickle=False) as f:
        if "run_key" not in f.files or "dropped_json" not in f.files:
            raise ValueError(f"checkpoint {path} was not written by this version of "
                             "BurstSampler.run; delete it or pass another checkpoint path")
        old_key = json.loads(str(f["run_key"]))
        if old_key != st.run_key:
            diff = {k: (old_key.get(k), v) for k, v in st.run_key.items()
                    if old_key.get(k) != v}
            raise ValueError(f"checkpoint {path} belongs to a different run (differs in "
                             f"{diff} as (file, now)); delete it, pass resume=False, or "
                             "use the same settings")
        c_idx, c_x, c_y = f["start_index"], f["x"], f["y"]
        c_drop = json.loads(str(f["dropped_json"]))
    where = {int(s): j for j, s in enumerate(st.idx)}
    for j, s in enumerate(c_idx):
        r = where.get(int(s))
        if r is not None and np.allclose(c_x[j], st.x[r].astype(np.float32), atol=1e-6):
            st.y_all[r] = c_y[j]
            st.done[r] = st.kept[r] = True
    for entry in c_drop:
        r = where.get(int(entry["start_index"]))
        if r is not None:
            st.done[r] = True
            st.dropped.append(entry)
