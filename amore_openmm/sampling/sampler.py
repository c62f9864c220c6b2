"""BurstSampler: K bursts from each of N starts on a ContextPool → KoopmanData.

Reproducibility. With ``reseed="burst"`` (the default on Reference) burst k of start i uses the
random stream ``burst_seed(seed, i, k)`` for the integrator noise and a sibling seed for the
initial velocities, so it depends on nothing else: not on pool size, chunking, scheduling or
the other starts of the run. OpenMM applies an integrator seed only when a Context is
(re)initialised, so every burst re-seeds its Context:

* Reference: the Langevin/Brownian random generator is a process-global static shared by all
  Reference Contexts of a process. Pool slots are therefore separate worker processes (one
  Reference Context each). Re-seeding calls OpenMM's own ``SimTKOpenMMUtilities::
  setRandomNumberSeed`` (the function Context initialisation calls; ~1 µs instead of a 0.3 ms
  ``reinitialize``). Each worker verifies at start-up that this gives bit-identical bursts to
  ``reinitialize`` and falls back to ``reinitialize`` otherwise.
* CPU / CUDA / OpenCL: each Context has its own generator; slots are threads (OpenMM releases
  the GIL inside ``step``), re-seeded with ``Context.reinitialize`` after
  ``Integrator.setRandomNumberSeed``. On CPU each Context gets one OpenMM thread (periodic or
  large systems: the measured layout of :mod:`.layout`, possibly fewer multi-thread
  Contexts). Because ``reinitialize`` is expensive there (it recompiles custom forces such as
  OBC implicit solvent: ~20–80 ms, plus kernel builds on GPUs; ~7 ms, about one step, for the
  1,288-atom PME water box, so ``reseed="burst"`` is cheap there), these platforms re-seed
  once per *block* of consecutive start indices by default (``reseed="block"``); a burst then
  depends on (seed, its block, the block's starts before it), still not on pool size,
  chunking or scheduling. A run of at most ``reseed_block`` starts is then one task (one
  slot): give solvated runs ``reseed="burst"`` or a smaller ``reseed_block``.

Robustness. A start with absurd energy or a broken bond is refused; a burst whose end point is
not finite, moved more than ``max_displacement`` nm, or is unphysical (a bond stretched past
its limit, an energy jump of hundreds of kT: :mod:`amore_openmm.sampling.sanity`) is retried
with a new derived seed (``attempt`` 1, 2, ...); after ``max_retries`` failures its start is
dropped with a warning naming the start: the returned data keep complete starts only, and
``extra["dropped"]`` / ``extra["drop_counts"]`` say what was dropped and why. Work is done in
chunks of starts; after an exception or Ctrl-C the finished chunks are kept (``exc.partial`` /
``BurstSampler.partial``, and the ``checkpoint`` file or callback).
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from amore_openmm.data import ORIGINS, KoopmanData
from amore_openmm.interrupt import check_interrupt
from amore_openmm.progress import progress_bar
from amore_openmm.settings import SamplingSettings, SettingsError, merge_settings
from amore_openmm.systems import make_whole

from . import checkpoint as ckpt
from .engine import as_starts, cached_chunk
from .packed_engine import PackedSpec
from .pool import ContextPool
from .run_state import RunState, check_run_memory, resolve_store_atoms
from .sanity import BurstSanity

__all__ = ["BurstSampler"]

def _start_metadata(N: int, start_indices: Any, generation: Any, origin: Any
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start indices, generation, origin) of N starts, checked."""
    idx = (np.arange(N, dtype=np.int64) if start_indices is None
           else np.asarray(start_indices, dtype=np.int64).reshape(-1))
    if idx.shape != (N,):
        raise ValueError(f"start_indices must have one entry per start ({N}), got "
                         f"{idx.shape[0]}")
    if len(np.unique(idx)) != N:
        raise ValueError("start_indices must be unique: two starts with the same index "
                         "would share a random stream")
    gen = _per_start(generation, N, "generation", np.int64)
    org = _per_start(origin, N, "origin", "<U10")
    bad_origin = sorted(set(org.tolist()) - set(ORIGINS))
    if bad_origin:
        raise ValueError(f"origin {bad_origin} is not known; use one of {ORIGINS}")
    return idx, gen, org


def _per_start(value: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(n, arr.item(), dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one entry per start ({n}), got "
                         f"shape {arr.shape}")
    return arr


def _work_units(rows: np.ndarray, idx: np.ndarray, block: int) -> list[np.ndarray]:
    """Rows to run, as units of work: one per start, or one per block (in start order)."""
    if not block:
        return [np.array([r], dtype=np.int64) for r in rows]
    rows = rows[np.lexsort((idx[rows], idx[rows] // block))]
    cuts = np.nonzero(np.diff(idx[rows] // block))[0] + 1
    return [u.astype(np.int64) for u in np.split(rows, cuts)] if len(rows) else []


class BurstSampler:
    """Runs Koopman bursts on a :class:`ContextPool`.

    Args:
        pool: the Context pool (it fixes the system and platform).
        executor: optional ``concurrent.futures.Executor`` (e.g. a Dask client's
            ``get_executor()`` or :class:`~amore_openmm.distributed.DaskExecutor`) to run
            chunks on instead of the pool's own slots. Each executor worker builds and caches
            one Context per thread; on Reference use process workers (the Reference random
            generator is per process; bursts inside one process are serialised).
        replicas: run M > 1 bursts per Context step in a System of M non-interacting copies
            (:func:`~amore_openmm.sampling.pack_replicas`; exact for vacuum, see there). Chunks
            then hold a fixed number of starts, so results depend on (seed, M) but not on pool
            size; the statistics equal the unpacked sampler's.

    After :meth:`run` returns or raises, ``partial`` holds the data of the finished chunks.
    """

    def __init__(self, pool: ContextPool, executor: cf.Executor | None = None,
                 replicas: int = 1) -> None:
        if int(replicas) < 1:
            raise ValueError(f"BurstSampler(replicas={replicas}): need at least 1 copy")
        self.pool = pool
        self.executor = executor
        self.replicas = int(replicas)
        self._runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        if self.replicas > 1:
            spec = PackedSpec.from_system(pool.system, self.replicas, pool.platform_name,
                                          pool.properties)
            self._runner = functools.partial(cached_chunk, spec)
        self.partial: KoopmanData | None = None
        self.last_stats: dict[str, Any] = {}

    def _submit(self, task: dict[str, Any]) -> cf.Future:
        if self.executor is not None:
            if self._runner is not None:
                return self.executor.submit(self._runner, task)
            return self.executor.submit(cached_chunk, self.pool.spec, task)
        return self.pool.submit(task, self._runner)

    def run(self, starts: Any, n_koopman: int | None = None, lag_steps: int | None = None,
            seed: int = 0, *, settings: SamplingSettings | None = None,
            start_indices: Sequence[int] | np.ndarray | None = None, generation: Any = 0,
            origin: Any = "trajectory", progress: bool = True,
            checkpoint: str | os.PathLike | Callable[[KoopmanData], None] | None = None,
            resume: bool = True, on_chunk: Callable[[KoopmanData], None] | None = None,
            sanity: BurstSanity | None = None, store_atoms: Any = None,
            **overrides: Any) -> KoopmanData:
        """K bursts of ``lag_steps`` steps from every start; returns the Koopman pairs.

        The knobs are a :class:`~amore_openmm.settings.SamplingSettings` (``settings``,
        default ``SamplingSettings()``); a keyword of the same name (``n_koopman``,
        ``lag_steps``, ``max_retries``, ...) overrides its field, an unknown keyword is an
        :class:`~amore_openmm.settings.UnknownSettingError` (a TypeError and ValueError).

        Args:
            starts: (N, n_atoms, 3) positions in nm (or one (n_atoms, 3) structure).
            n_koopman: bursts per start, K (None: the settings').
            lag_steps: steps per burst (None: the settings', default the system's).
            seed: run seed; burst k of start i uses ``burst_seed(seed, start_indices[i], k)``.
            start_indices: the stream index of each start (default 0..N-1). Give globally
                unique indices when adding starts to an existing data set so that no two
                starts share a random stream.
            generation, origin: per-start metadata (scalar or one entry per start).
            progress: show progress on stderr (a tqdm bar on a terminal, a few lines otherwise).
            max_retries: retries with a new derived seed per failing burst before the start is
                dropped (warning :class:`BurstFailureWarning` names the start).
            max_displacement: nm; a burst that moves any coordinate further fails.
            chunk_size: starts per task sent to a slot (default: adaptive, ~0.2 s of work);
                with block re-seeding a task is one block.
            checkpoint: a ``.npz`` path to which the finished starts are committed atomically
                (at most every ``checkpoint_interval`` s and at the end, also after an error
                or Ctrl-C), or a callable that gets each finished chunk as ``KoopmanData``.
                The file is readable with ``KoopmanData.load``.
            resume: with a checkpoint path that exists, reuse its starts (same run settings,
                same start index and coordinates) instead of recomputing them. Because a
                burst's stream does not depend on chunking or scheduling, a resumed run gives
                the same data as an uninterrupted one.
            on_chunk: called in the calling thread with each finished chunk (``KoopmanData``
                of its kept starts); an exception it raises stops the run like any other.
            reseed: how random streams are keyed. ``"burst"``: every burst re-seeds its
                Context with ``burst_seed(seed, start index, k)``; a burst depends on nothing
                else. ``"block"``: a Context is re-seeded once per block of ``reseed_block``
                consecutive start indices (``start_index // reseed_block``) and runs the
                block's bursts in order on that stream (velocities stay seeded per burst);
                results depend on (seed, block, the block's starts), still not on pool size,
                chunking or scheduling. ``"auto"``: "burst" on Reference (re-seeding costs
                ~1 µs there), "block" on CPU/CUDA/OpenCL, where re-seeding means
                ``Context.reinitialize`` (tens of ms on CPU with custom forces such as OBC
                implicit solvent; kernel rebuilds on GPUs).
            reseed_block: starts per block for ``reseed="block"``.
            sanity: limits of the burst sanity checks (default :class:`BurstSanity()`;
                ``BurstSanity(enabled=False)`` keeps only the NaN/displacement guard).
            store_atoms: the atoms whose end points ``y`` keeps: None (default) or
                ``"selection"``: ``system.selection`` (the solute of a water box, every atom
                of a vacuum system); ``"all"``; an mdtraj selection; or 0-based indices. ``x``
                always keeps every atom (restarts need the solvent).
            memory_budget_gb: refuse (:class:`~amore_openmm.data.MemoryBudgetError`, a
                ValueError, before anything runs) a run whose data would exceed this many GB
                (:func:`~amore_openmm.sampling.run_state.estimate_run_bytes`); default
                ``$AMORE_MEMORY_BUDGET_GB`` or 4.

        Periodic systems: starts are made whole along the bonds of the selection's molecules
        (:func:`~amore_openmm.systems.make_whole`; whole-box-vector shifts, the same physics)
        before bursting, positions are read without wrapping into the box, and the stored
        ends are made whole again, so a solute that crosses a box face stays in one piece.

        Returns:
            ``KoopmanData`` of the complete starts, in input order (``atoms``: the stored
            atoms). ``extra`` holds
            ``start_index`` (the stream index of each kept start), ``dropped`` (one dict per
            dropped start: ``start_index``, ``k`` (the failing burst, -1 for a refused
            start), ``reason`` (a code of :mod:`~amore_openmm.sampling.sanity`) and
            ``detail``), ``drop_counts`` ({reason: dropped starts}), ``retried`` (bursts that
            needed a retry), ``reseed`` ("burst" or "block:<size>") and ``replicas``.

        Raises:
            Whatever stopped the run (an exception or ``KeyboardInterrupt``) after the finished
            chunks were collected; the exception carries them as ``.partial`` (also in
            ``self.partial``) and they were committed to ``checkpoint``.
        """
        given = {k: v for k, v in (("n_koopman", n_koopman), ("lag_steps", lag_steps))
                 if v is not None}
        cfg = merge_settings(SamplingSettings, settings, {**given, **overrides},
                             "BurstSampler.run")
        st = self._setup(starts, cfg, seed, start_indices, generation, origin, sanity,
                         store_atoms)
        ck_path = ckpt.as_path(checkpoint)
        if ck_path is not None and resume and ck_path.exists():
            st.restore(ck_path)
        st.checkpoint_path, st.checkpoint_interval = ck_path, float(cfg.checkpoint_interval)
        hooks = [h for h in (checkpoint, on_chunk) if callable(h)]
        units = _work_units(np.nonzero(~st.done)[0], st.idx, st.block)
        bar = self._progress_bar(st, progress)
        t_start = time.perf_counter()
        try:
            n_chunks, busy_s = self._dispatch(st, units, cfg.chunk_size, hooks, bar)
        except BaseException as exc:
            self._stop(st, exc, bar)
            raise
        if bar is not None:
            bar.close()
        data = st.result()
        self.partial = data
        st.commit(force=True)
        n_run = int(sum(len(u) for u in units))
        self.last_stats = {"wall_s": time.perf_counter() - t_start, "busy_s": busy_s,
                           "bursts": n_run * st.K, "steps": n_run * st.K * st.lag,
                           "n_starts": st.N, "chunks": n_chunks, "reseed": st.reseed_tag}
        return data

    # -- the steps of run ----------------------------------------------------------------------
    def _setup(self, starts: Any, cfg: SamplingSettings, seed: int, start_indices: Any,
               generation: Any, origin: Any, sanity: BurstSanity | None,
               store_atoms: Any = None) -> RunState:
        """Check the arguments of :meth:`run`; the run's state with nothing done yet."""
        ms = self.pool.system
        x = as_starts(starts, ms.n_atoms)
        N, K = len(x), int(cfg.n_koopman)
        if K < 1:
            raise SettingsError(f"n_koopman must be >= 1, got {cfg.n_koopman}")
        lag = int(ms.lag_steps if cfg.lag_steps is None else cfg.lag_steps)
        if lag < 1:
            raise SettingsError(f"lag_steps must be >= 1, got {cfg.lag_steps}")
        if cfg.max_retries < 0:
            raise SettingsError(f"max_retries must be >= 0, got {cfg.max_retries}")
        atoms = resolve_store_atoms(ms, store_atoms)
        check_run_memory(N, K, ms.n_atoms, len(atoms), cfg.memory_budget_gb)
        idx, gen, org = _start_metadata(N, start_indices, generation, origin)
        reseed = cfg.reseed
        if reseed == "auto":
            reseed = "burst" if self.pool.platform_name == "Reference" else "block"
        if reseed not in ("burst", "block"):
            raise SettingsError(f"reseed must be 'auto', 'burst' or 'block', got {reseed!r}")
        if reseed == "block" and int(cfg.reseed_block) < 1:
            raise SettingsError(f"reseed_block must be >= 1, got {cfg.reseed_block}")
        sanity = BurstSanity() if sanity is None else sanity
        task_base = {"n_koopman": K, "lag_steps": lag, "seed": int(seed),
                     "max_retries": int(cfg.max_retries),
                     "max_displacement": float(cfg.max_displacement),
                     "reseed_block": int(cfg.reseed_block) if reseed == "block" else 0,
                     "sanity": sanity.as_dict()}
        if ms.is_periodic:  # a solute split by wrapping would start with broken bonds
            x = make_whole(x, ms)
        return RunState(ms, x, idx, gen, org, int(seed), K, lag, task_base, self.replicas,
                        self.pool.platform_name, atoms)

    @staticmethod
    def _progress_bar(st: RunState, progress: bool) -> Any:
        if not progress:
            return None
        return progress_bar(st.N * st.K, desc=f"bursts {st.system.name}", unit="burst",
                            initial=int(st.done.sum()) * st.K)

    def _dispatch(self, st: RunState, units: list[np.ndarray], chunk_size: int | None,
                  hooks: list[Callable[[KoopmanData], None]], bar: Any) -> tuple[int, float]:
        """Send the units as chunk tasks, absorb the results; (chunks sent, busy seconds)."""
        slots = self.pool.size if self.executor is None else max(self.pool.size, 4)
        sizer = _ChunkSizer(chunk_size, self.replicas, st.K, st.block, slots, len(units))
        pending = st.pending
        pos = n_chunks = 0
        busy_s = 0.0
        while pos < len(units) or pending:
            while pos < len(units) and len(pending) < 2 * slots:
                m = sizer.next_size(pos)
                members = np.concatenate(units[pos:pos + m])
                pos += m
                pending[self._submit(st.task(n_chunks, members))] = members
                n_chunks += 1
                if sizer.measuring and len(pending) >= slots:
                    break
            check_interrupt()  # a requested stop: _stop keeps the finished chunks
            finished, _ = cf.wait(list(pending), timeout=0.25, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                members = pending.pop(fut)
                out = fut.result()  # re-raises a worker's exception
                kept = st.absorb(out, members)
                busy_s += out["seconds"]
                sizer.observe(out["seconds"] / len(members))
                if bar is not None:
                    bar.update(len(members) * st.K)
                if hooks:
                    part = st.part(kept)
                    for hook in hooks:
                        hook(part)
                st.commit()
        return n_chunks, busy_s

    def _stop(self, st: RunState, exc: BaseException, bar: Any) -> None:
        """After an exception or Ctrl-C: keep the finished chunks, commit, attach them."""
        st.drain()
        data = st.result()
        self.partial = data
        try:
            st.commit(force=True)
        finally:
            if bar is not None:
                bar.close()
        try:
            exc.partial = data  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exotic exception types
            pass


class _ChunkSizer:
    """Starts per chunk: fixed when asked (or packed/blocked), else ~0.2 s of measured work,
    small enough near the end to keep every slot busy."""

    def __init__(self, chunk_size: int | None, replicas: int, K: int, block: int,
                 slots: int, n_units: int) -> None:
        self.chunk_size, self.replicas, self.K = chunk_size, replicas, K
        self.block, self.slots, self.n_units = block, slots, n_units
        self.per_start_s: float | None = None

    @property
    def measuring(self) -> bool:
        """True until the first chunk has been timed (adaptive size only)."""
        return self.per_start_s is None and self.chunk_size is None

    def observe(self, seconds_per_start: float) -> None:
        s = seconds_per_start
        self.per_start_s = s if self.per_start_s is None else 0.7 * self.per_start_s + 0.3 * s

    def next_size(self, pos: int) -> int:
        if self.replicas > 1:  # packed streams depend on the grouping: keep it fixed
            return max(int(self.chunk_size or 1), -(-self.replicas // self.K))
        if self.block:
            return 1  # one block per task
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        if self.per_start_s is None:
            return 1  # first round: measure
        target = max(1, int(0.2 / max(self.per_start_s, 1e-6)))
        return max(1, min(target, -(-(self.n_units - pos) // (2 * self.slots))))
