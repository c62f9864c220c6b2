"""The state of one BurstSampler.run: which starts are done, kept or dropped, and why.

Also the memory side of a run: which atoms its ``y`` keeps (:func:`resolve_store_atoms`) and
how many bytes it will hold (:func:`estimate_run_bytes`, checked against the budget by
:func:`check_run_memory` before anything large is allocated).
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from amore_openmm.data import KoopmanData, MemoryBudgetError, memory_budget_bytes
from amore_openmm.systems import MolecularSystem, make_whole, select_atoms

from . import checkpoint as ckpt
from .engine import BurstFailureWarning
from .sanity import RECOVERED

log = logging.getLogger("amore_openmm.sampling")


def resolve_store_atoms(system: MolecularSystem, store_atoms: Any) -> np.ndarray:
    """The atoms whose burst end points a run keeps (sorted 0-based indices).

    ``None`` or ``"selection"``: the system's :attr:`~MolecularSystem.selection` (the solute
    of a water box; every atom of a vacuum system); ``"all"``: every atom; another string: an
    mdtraj selection; else an array of 0-based indices.
    """
    n = system.n_atoms
    if store_atoms is None or (isinstance(store_atoms, str) and store_atoms == "selection"):
        return np.asarray(system.selection, dtype=np.int64)
    if isinstance(store_atoms, str) and store_atoms == "all":
        return np.arange(n, dtype=np.int64)
    if isinstance(store_atoms, str):
        return select_atoms(system.topology, store_atoms, 1, where="store_atoms")
    idx = np.asarray(store_atoms)
    if idx.ndim != 1 or not idx.size or not np.issubdtype(idx.dtype, np.integer) or \
            idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"store_atoms must be None, 'selection', 'all', an mdtraj selection "
                         f"or 0-based atom indices in 0..{n - 1}, got {store_atoms!r:.80}")
    return np.unique(idx.astype(np.int64))


def estimate_run_bytes(n_starts: int, n_koopman: int, n_atoms: int, n_stored: int) -> int:
    """Bytes a ``BurstSampler.run`` holds at its peak: ``y`` (float32, N·K·n_stored·3·4) twice
    (the run's buffer and the returned data) plus ``x`` (N·n_atoms·3) as float64 (the run) and
    float32 (the data)."""
    y = n_starts * n_koopman * n_stored * 3 * 4
    return int(2 * y + n_starts * n_atoms * 3 * (8 + 4))


def check_run_memory(n_starts: int, n_koopman: int, n_atoms: int, n_stored: int,
                     budget_gb: float | None) -> int:
    """Raise :class:`~amore_openmm.data.MemoryBudgetError` (a ValueError) when the run would
    exceed the budget; returns the estimate in bytes."""
    need = estimate_run_bytes(n_starts, n_koopman, n_atoms, n_stored)
    budget = memory_budget_bytes(budget_gb)
    if need <= budget:
        return need
    per_start = max(1, estimate_run_bytes(1, n_koopman, n_atoms, n_stored))
    tip = ("store y for the molecule of interest only (store_atoms=None with a selection "
           "such as load_system(..., atoms='not water'))" if n_stored == n_atoms and n_atoms > 1
           else "store fewer atoms (store_atoms)")
    y_gb = 2 * 12 * n_starts * n_koopman * n_stored / 1e9
    raise MemoryBudgetError(
        f"BurstSampler.run: {n_starts} starts × {n_koopman} bursts × {n_stored} stored atoms "
        f"(of {n_atoms}) would need ≈ {need / 1e9:.3g} GB (y {y_gb:.3g} GB, "
        f"x {n_starts * n_atoms * 36 / 1e9:.3g} GB), over the memory budget of "
        f"{budget / 1e9:.3g} GB (memory_budget_gb / $AMORE_MEMORY_BUDGET_GB). Use fewer starts "
        f"(at most {budget // per_start} fit) or fewer bursts, {tip}, or raise the budget")


class RunState:
    """Arrays of one run (all starts, input order) and the bookkeeping of finished chunks."""

    def __init__(self, system: MolecularSystem, x: np.ndarray, idx: np.ndarray,
                 gen: np.ndarray, org: np.ndarray, seed: int, K: int, lag: int,
                 task_base: dict[str, Any], replicas: int, platform: str,
                 atoms: np.ndarray | None = None) -> None:
        self.system, self.x, self.idx, self.gen, self.org = system, x, idx, gen, org
        self.atoms = np.arange(system.n_atoms) if atoms is None else np.asarray(atoms)
        self.all_atoms = len(self.atoms) == system.n_atoms
        self.periodic = system.is_periodic
        # make_whole rebuilds the molecules of its system's selection: those of the stored atoms
        self._whole_system = system
        if self.periodic and not self.all_atoms and len(self.atoms) >= 2 and \
                not np.array_equal(self.atoms, system.selection):
            self._whole_system = system.with_overrides(atoms=self.atoms)
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
        if not self.all_atoms:  # (absent for all atoms: older checkpoints stay valid)
            self.run_key["atoms"] = hashlib.sha1(
                np.asarray(self.atoms, dtype=np.int64).tobytes()).hexdigest()[:16]
        self.y_all = np.zeros((self.N, K, len(self.atoms), 3), dtype=np.float32)
        self.done = np.zeros(self.N, dtype=bool)   # finished (kept or dropped)
        self.kept = np.zeros(self.N, dtype=bool)
        self.dropped: list[dict[str, Any]] = []
        self.retried = 0
        self.pending: dict[cf.Future, np.ndarray] = {}
        self.checkpoint_path: Path | None = None
        self.checkpoint_interval = 10.0
        self._last_commit = time.monotonic()

    def restore(self, path: Path) -> None:
        """Mark the starts that the checkpoint ``path`` of this run finished as done."""
        kept, dropped = ckpt.load_finished(path, self.run_key, self.idx, self.x)
        for r, y in kept.items():
            self.y_all[r] = y
            self.done[r] = self.kept[r] = True
        for r, entry in dropped:
            self.done[r] = True
            self.dropped.append(entry)

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
                           self.system.timestep, self.system.name, extra, atoms=self.atoms)

    def result(self) -> KoopmanData:
        """The kept starts so far, with ``dropped``/``drop_counts``/... in ``extra``."""
        return self.part(np.nonzero(self.kept)[0], full=True)

    def absorb(self, out: dict[str, Any], members: np.ndarray) -> np.ndarray:
        """Take a chunk result in; returns the rows kept."""
        ok = out["ok"]
        self.y_all[members[ok]] = self.stored_ends(out["y"][ok],
                                                   None if "box" not in out else out["box"][ok])
        self.done[members] = True
        self.kept[members[ok]] = True
        for start, k, attempt, code, _detail in out["events"]:
            if code == RECOVERED:
                self.retried += 1
                log.info("start %d burst %d succeeded on retry %d", start, k, attempt)
        for j in np.nonzero(~ok)[0]:
            self._drop(int(self.idx[members[j]]), int(members[j]), out["events"])
        return members[ok]

    def stored_ends(self, y: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
        """Burst ends (m, K, n, 3) of every atom → what the data keep: periodic systems made
        whole along the bonds of the selection's molecules (``box`` (m, K, 3, 3): per-burst
        box vectors, default the System's), then cut to ``atoms``."""
        if self.periodic and y.size:
            m, k, n = y.shape[:3]
            flat_box = None if box is None else np.asarray(box).reshape(m * k, 3, 3)
            whole = make_whole(y.reshape(m * k, n, 3), self._whole_system, flat_box)
            y = whole.reshape(m, k, n, 3)
        return y if self.all_atoms else y[:, :, self.atoms]

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
