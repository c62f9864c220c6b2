"""Shared fixtures: the bundled alanine dipeptide and short trajectories from it."""
from typing import Callable

import numpy as np
import pytest

from amore_openmm.systems import MolecularSystem, load_system


@pytest.fixture(scope="module")
def ala() -> MolecularSystem:
    """The bundled alanine dipeptide (systems/alanine_dipeptide)."""
    return load_system("alanine_dipeptide")


def short_trajectory(system: MolecularSystem, n_frames: int, stride: int,
                     seed: int) -> np.ndarray:
    """Frames (n_frames, n, 3) nm of one seeded trajectory from the first structure."""
    ctx = system.make_context("Reference", seed=seed)
    ctx.setVelocitiesToTemperature(system.temperature, seed)
    out = []
    for _ in range(n_frames):
        ctx.getIntegrator().step(stride)
        out.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)._value)
    return np.array(out)


@pytest.fixture(scope="session")
def trajectory() -> Callable[..., np.ndarray]:
    """``trajectory(system, n_frames, stride, seed)``: see :func:`short_trajectory`."""
    return short_trajectory
