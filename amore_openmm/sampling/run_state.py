"""The state of one BurstSampler.run: which starts are done, kept or dropped, and why."""
from __future__ import annotations

import concurrent.futures as cf
import logging
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from amore_openmm.data import KoopmanData
from amore_openmm.systems import MolecularSystem

from . import checkpoint as ckpt
from .engine import BurstFailureWarning
from .sanity import RECOVERED

log = logging.getLogger("amore_openmm.sampling")


class RunState:
    """Arrays of one run (all starts, input order) and the bookkeeping of finished chunks."""

    def __init__(self, system: MolecularSystem, x: np.ndarray, idx: np.ndarray,
                 gen: np.ndarray, org: np.ndarray, seed: int, K: int, lag: int,
                 task_base: dict[str, Any], replicas: int, platform: str) -> None:
        self.system, self.x, self.idx, self.gen, self.org = system, x, idx, gen, org
        self.seed, self.K, self.lag, self.task_base = seed, K, lag, task_base
        self.N = len(x)
        self.block = int(task_base["reseed_block"])
        self.reseed_tag = f"block:{self.block}" if self.block else "burst"
        self.replicas = replicas
        self.run_key = {"seed": seed, "n_koopman": K, "lag_steps": lag,
                        "n_atoms": system.n_atoms, "replicas": replicas,
                        "system": system.name, "platform": platform,
                        "max_displacement": task_base["max_displacement"],
                        "reseed": self.reseed_tag, "sanity": task_base["sanity"]}
        self.y_all = np.zeros((self.N, K, system.n_atoms, 3), dtype=np.float32)
        self.done = np.zeros(self.N, dtype=bool)   # finished (kept or dropped)
        self.kept = np.zeros(self.N, dtype=bool)
        self.dropped: list[dict[str, Any]] = []
        self.retried = 0
        self.pending: dict[cf.Future, np.ndarray] = {}
        self.checkpoint_path: Path | None = None
        self.checkpoint_interval = 10.0
        self._last_commit = time.monotonic()

    def task(self, chunk: int, members: np.ndarray) -> dict[str, Any]:
        """The chunk task (engine protocol) for the starts ``members`` (rows)."""
        return {"chunk": chunk, "x": self.x[members], "start_index": self.idx[members],
                **self.task_base}

    # -- results -------------------------------------------------------------------------------
    def part(self, sel: np.ndarray, full: bool = False) -> KoopmanData:
        """KoopmanData of the rows ``sel``; ``full`` adds the run-level extras."""
        extra: dict[str, Any] = {"start_index": self.idx[sel].copy()}
        if full:
            dropped = sorted(self.dropped, key=lambda d: d["start_index"])
            extra.update(dropped=dropped,
                         drop_counts=dict(Counter(d["reason"] for d in dropped)),
                         retried=self.retried, reseed=self.reseed_tag, replicas=self.replicas)
        return KoopmanData(self.x[sel], self.y_all[sel], self.gen[sel], self.org[sel],
                           np.full(len(sel), self.seed, dtype=np.int64), self.lag,
                           self.system.timestep, self.system.name, extra)

    def result(self) -> KoopmanData:
        """The kept starts so far, with ``dropped``/``drop_counts``/... in ``extra``."""
        return self.part(np.nonzero(self.kept)[0], full=True)

    def absorb(self, out: dict[str, Any], members: np.ndarray) -> np.ndarray:
        """Take a chunk result in; returns the rows kept."""
        ok = out["ok"]
        self.y_all[members[ok]] = out["y"][ok]
        self.done[members] = True
        self.kept[members[ok]] = True
        for start, k, attempt, code, _detail in out["events"]:
            if code == RECOVERED:
                self.retried += 1
                log.info("start %d burst %d succeeded on retry %d", start, k, attempt)
        for j in np.nonzero(~ok)[0]:
            self._drop(int(self.idx[members[j]]), int(members[j]), out["events"])
        return members[ok]

    def _drop(self, start: int, row: int, events: list) -> None:
        fails = [e for e in events if e[0] == start and e[3] != RECOVERED]
        _, k, _, code, _ = fails[-1]  # the failure that dropped the start
        details = list(dict.fromkeys(e[4] for e in fails))
        self.dropped.append({"start_index": start, "k": int(k), "reason": code,
                             "detail": details[-1]})
        what = "refused" if k < 0 else "dropped: its bursts failed after all retries"
        warnings.warn(f"start {start} (input row {row}) {what} ({'; '.join(details)[:300]}). "
                      "Check that structure (overlapping atoms? a high-energy path node?) or "
                      "reduce the timestep.", BurstFailureWarning, stacklevel=5)

    def drain(self) -> None:
        """Collect chunks already running (they finish in well under a second each)."""
        for fut in list(self.pending):
            fut.cancel()
        try:
            deadline = time.monotonic() + 30.0
            for fut, members in list(self.pending.items()):
                if fut.cancelled():
                    continue
                try:
                    out = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except BaseException:  # noqa: BLE001 - keep what we can
                    continue
                self.absorb(out, members)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            pass

    # -- checkpoints ---------------------------------------------------------------------------
    def commit(self, force: bool = False) -> None:
        """Write the checkpoint file (at most every ``checkpoint_interval`` s unless forced)."""
        if self.checkpoint_path is None or (
                not force and time.monotonic() - self._last_commit < self.checkpoint_interval):
            return
        ckpt.write(self.checkpoint_path, self.result(), self.run_key, self.dropped)
        self._last_commit = time.monotonic()
