"""sample_trajectory: one long seeded trajectory (the initial starts of a run)."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openmm

from amore_openmm.data import atomic_save_npz
from amore_openmm.interrupt import check_interrupt
from amore_openmm.progress import progress_bar
from amore_openmm.systems import MolecularSystem, get_platform, make_whole

from .engine import (DEFAULT_MAX_DISPLACEMENT, as_starts, box_vectors,
                     default_platform_properties, read_positions)
from .pool import choose_platform
from .seeds import REF_LOCK, TRAJ_TAG, stream_seeds

__all__ = ["sample_trajectory"]


def _step(integ: openmm.Integrator, steps: int, reference: bool) -> None:
    if reference:  # Reference's random generator is per process: no burst in between
        with REF_LOCK:
            integ.step(steps)
    else:
        integ.step(steps)


def sample_trajectory(system: MolecularSystem, n_frames: int, stride_steps: int, seed: int,
                      x0: Any | None = None, platform: str = "auto", progress: bool = True,
                      properties: dict[str, str] | None = None,
                      max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
                      checkpoint: str | os.PathLike | None = None,
                      checkpoint_interval: float = 60.0) -> np.ndarray:
    """One trajectory of ``n_frames`` frames, one every ``stride_steps`` steps.

    Starts at ``x0`` (default: the system's first structure) with Maxwell–Boltzmann velocities;
    frame 0 is the state after the first stride (x0 itself is not returned). The integrator
    and velocity seeds derive from ``seed``: the same seed gives the same frames on the same
    platform. Returns a float64 array (n_frames, n_atoms, 3) in nm. Raises ``RuntimeError``
    naming the frame if the dynamics blows up. CPU Contexts get the platform's default thread
    count unless ``properties`` says otherwise; GPUs default to mixed precision.

    Periodic systems: ``x0`` is made whole along the bonds of the selection's molecules,
    positions are read without wrapping into the box, and each frame's selection molecules
    are made whole (:func:`~amore_openmm.systems.make_whole`, with that frame's box), so a
    solute that crosses a box face is never split.

    ``checkpoint``: a ``.npz`` path to which the frames so far and the Context's checkpoint
    (``Context.createCheckpoint``: positions, velocities, the integrator's random state) are
    written atomically after a frame, at most every ``checkpoint_interval`` s, or less often
    where writing takes more than 5 % of the time (0: after every frame). An interruption
    loses the frames since the last write. If the file exists and was written for the same
    trajectory (frames, stride, seed, start, platform), the run continues from it, with the
    frames an uninterrupted run gives on that machine; a file for another trajectory, or a
    Context checkpoint this machine cannot load (they are platform- and hardware-specific),
    is ignored with a warning and the trajectory starts over. The caller removes the file
    when done.
    """
    if n_frames < 1 or stride_steps < 1:
        raise ValueError(f"n_frames and stride_steps must be >= 1, got {n_frames}, "
                         f"{stride_steps}")
    if platform == "auto":
        platform, _ = choose_platform(system)
    props = dict(properties or {})
    if platform != "CPU":  # a single trajectory may use every CPU thread
        props = default_platform_properties(platform, props)
    s_int, s_vel = stream_seeds(seed, 0, 0, 0, tag=TRAJ_TAG)
    integ = system.make_integrator()
    integ.setRandomNumberSeed(s_int)
    ctx = openmm.Context(system.system, integ, get_platform(platform),
                         props)
    x = np.asarray(system.positions[0] if x0 is None else as_starts(x0, system.n_atoms)[0],
                   dtype=np.float64)
    periodic = system.is_periodic
    if periodic:
        x = make_whole(x, system)
    ctx.setPositions(x)
    if system.integrator != "brownian":
        ctx.setVelocitiesToTemperature(system.temperature, s_vel)
    frames = np.empty((int(n_frames), system.n_atoms, 3), dtype=np.float64)
    key = np.array([int(n_frames), int(stride_steps), int(seed), system.n_atoms])
    ck = None if checkpoint is None else Path(checkpoint)
    first = _resume(ck, key, x, platform, ctx, frames) if ck is not None else 0
    bar = None
    if progress:
        bar = progress_bar(int(n_frames), desc=f"trajectory {system.name}", unit="frame",
                           initial=first)
    prev = None if first else x   # (a restored frame may have been made whole: not compared)
    done, saved_at, interval = first, time.monotonic(), float(checkpoint_interval)

    def save() -> None:
        atomic_save_npz(ck, key=key, x0=x, platform=platform, frames=frames[:done],
                        context=np.frombuffer(ctx.createCheckpoint(), dtype=np.uint8))
    try:
        for i in range(first, int(n_frames)):
            check_interrupt()
            try:
                _step(integ, int(stride_steps), platform == "Reference")
            except openmm.OpenMMException as exc:
                raise RuntimeError(f"trajectory of {system.name} blew up before frame {i}: "
                                   f"{exc}; minimise x0 or reduce the timestep") from exc
            state = ctx.getState(getPositions=True, enforcePeriodicBox=False)
            pos = read_positions(state, (system.n_atoms, 3))
            if not np.all(np.isfinite(pos)) or (prev is not None and
                                                np.max(np.abs(pos - prev)) > max_displacement):
                raise RuntimeError(f"trajectory of {system.name} blew up at frame {i} "
                                   "(non-finite or exploding coordinates); minimise x0 or "
                                   "reduce the timestep")
            frames[i] = make_whole(pos, system, box_vectors(state)) if periodic else pos
            prev, done = pos, i + 1
            if ck is not None and time.monotonic() - saved_at >= interval:
                t0 = time.monotonic()
                save()
                saved_at = time.monotonic()
                # a large system's frames take long to write: spend ≤ 5 % of the time on it
                if checkpoint_interval > 0:
                    interval = max(float(checkpoint_interval), 20.0 * (saved_at - t0))
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        if ck is not None and done > first:
            save()  # a stop keeps the frames made so far
        raise
    finally:
        if bar is not None:
            bar.close()
    return frames


def _resume(path: Path, key: np.ndarray, x0: np.ndarray, platform: str,
            ctx: openmm.Context, frames: np.ndarray) -> int:
    """Frames restored from a :func:`sample_trajectory` checkpoint into ``frames`` (and the
    Context's state), or 0 when there is none for this trajectory."""
    if not path.is_file():
        return 0
    try:
        with np.load(path) as f:
            same = (np.array_equal(f["key"], key) and np.array_equal(f["x0"], x0)
                    and str(f["platform"]) == platform)
            done = f["frames"] if same else None
            blob = f["context"].tobytes() if same else b""
    except Exception as exc:  # noqa: BLE001 - an unreadable file is ignored, not fatal
        warnings.warn(f"{path}: unreadable trajectory checkpoint ({exc}); starting over",
                      RuntimeWarning, stacklevel=3)
        return 0
    if done is None:
        warnings.warn(f"{path}: a checkpoint of another trajectory (frames, stride, seed, start "
                      f"or platform differ); starting over", RuntimeWarning, stacklevel=3)
        return 0
    try:
        ctx.loadCheckpoint(blob)
    except openmm.OpenMMException as exc:
        warnings.warn(f"{path}: this machine cannot load the Context checkpoint ({exc}); "
                      "starting over", RuntimeWarning, stacklevel=3)
        return 0
    frames[:len(done)] = done
    return len(done)
