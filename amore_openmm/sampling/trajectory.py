"""sample_trajectory: one long seeded trajectory (the initial starts of a run)."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
import openmm

from amore_openmm.systems import MolecularSystem, make_whole

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
                      max_displacement: float = DEFAULT_MAX_DISPLACEMENT) -> np.ndarray:
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
    ctx = openmm.Context(system.system, integ, openmm.Platform.getPlatformByName(platform),
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
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(n_frames), unit="frame", desc=f"trajectory {system.name}",
                   file=sys.stderr, dynamic_ncols=True)
    prev = x
    try:
        for i in range(int(n_frames)):
            try:
                _step(integ, int(stride_steps), platform == "Reference")
            except openmm.OpenMMException as exc:
                raise RuntimeError(f"trajectory of {system.name} blew up before frame {i}: "
                                   f"{exc}; minimise x0 or reduce the timestep") from exc
            state = ctx.getState(getPositions=True, enforcePeriodicBox=False)
            pos = read_positions(state, (system.n_atoms, 3))
            if not np.all(np.isfinite(pos)) or np.max(np.abs(pos - prev)) > max_displacement:
                raise RuntimeError(f"trajectory of {system.name} blew up at frame {i} "
                                   "(non-finite or exploding coordinates); minimise x0 or "
                                   "reduce the timestep")
            frames[i] = make_whole(pos, system, box_vectors(state)) if periodic else pos
            prev = pos
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return frames
