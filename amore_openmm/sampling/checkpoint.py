"""Checkpoint files of BurstSampler.run: a KoopmanData ``.npz`` plus the run's key and drops."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from amore_openmm.data import FORMAT_VERSION, KoopmanData, atomic_save_npz


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


def load_finished(path: Path, run_key: dict[str, Any], idx: np.ndarray, x: np.ndarray
                  ) -> tuple[dict[int, np.ndarray], list[tuple[int, dict[str, Any]]]]:
    """The starts a checkpoint of the same run (same key) finished: ({row: burst ends y} for
    kept starts, [(row, dropped entry)] in file order), rows of ``idx`` whose coordinates
    ``x`` match."""
    with np.load(path, allow_pickle=False) as f:
        if "run_key" not in f.files or "dropped_json" not in f.files:
            raise ValueError(f"checkpoint {path} was not written by this version of "
                             "BurstSampler.run; delete it or pass another checkpoint path")
        old_key = json.loads(str(f["run_key"]))
        if old_key != run_key:
            diff = {k: (old_key.get(k), v) for k, v in run_key.items()
                    if old_key.get(k) != v}
            raise ValueError(f"checkpoint {path} belongs to a different run (differs in "
                             f"{diff} as (file, now)); delete it, pass resume=False, or "
                             "use the same settings")
        c_idx, c_x, c_y = f["start_index"], f["x"], f["y"]
        c_drop = json.loads(str(f["dropped_json"]))
    where = {int(s): j for j, s in enumerate(idx)}
    kept: dict[int, np.ndarray] = {}
    for j, s in enumerate(c_idx):
        r = where.get(int(s))
        if r is not None and np.allclose(c_x[j], x[r].astype(np.float32), atol=1e-6):
            kept[r] = c_y[j]
    dropped = [(where[int(e["start_index"])], e) for e in c_drop
               if int(e["start_index"]) in where]
    return kept, dropped
