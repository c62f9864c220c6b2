"""Shared fixtures: the bundled alanine dipeptide, short trajectories from it, and the check
that a resumed run ended with an uninterrupted run's data and χ."""
from pathlib import Path
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


def muller_brown_starts(n: int = 3000, seed: int = 0) -> np.ndarray:
    """(n, 1, 3) Müller–Brown starts drawn uniformly over the low-energy region (V < 0)."""
    from amore_openmm.systems import muller_brown_energy
    rng = np.random.default_rng(seed)
    xy = rng.uniform([-1.5, -0.4], [1.1, 2.0], size=(20000, 2))
    xy = xy[muller_brown_energy(xy) < 0][:n]
    x = np.zeros((len(xy), 1, 3))
    x[:, 0, :2] = xy
    return x


def assert_same_data_and_chi(ref_out: Path, out: Path, atol: float) -> None:
    """Two run directories hold the same Koopman data (origins exactly, x and y to ``atol``
    nm) and the same χ on it (to 1e-4, training precision)."""
    from amore_openmm.chi import ChiModel
    from amore_openmm.data import KoopmanData
    d1 = KoopmanData.load(ref_out / "data" / "koopman.npz")
    d2 = KoopmanData.load(out / "data" / "koopman.npz")
    assert len(d1) == len(d2)
    np.testing.assert_array_equal(d1.origin, d2.origin)
    np.testing.assert_allclose(d1.x, d2.x, atol=atol)
    np.testing.assert_allclose(d1.y, d2.y, atol=atol)
    m1 = ChiModel.load(ref_out / "model" / "chi_state.pt")
    m2 = ChiModel.load(out / "model" / "chi_state.pt")
    np.testing.assert_allclose(m1.chi(d1.x), m2.chi(d1.x), atol=1e-4)


@pytest.fixture(scope="session")
def same_data_and_chi() -> Callable[[Path, Path, float], None]:
    """``same_data_and_chi(ref_out, out, atol)``: see :func:`assert_same_data_and_chi`."""
    return assert_same_data_and_chi
