"""Zero-temperature string method on Müller–Brown and polyline distances."""
import numpy as np
import pytest

from amore_openmm.systems import load_system, muller_brown_energy
from amore_openmm.strings import StringPath, path_distance, reparametrize, string_method

SADDLE = np.array([-0.822, 0.624])
MIN_A, MIN_B = (-0.558, 1.442), (0.623, 0.028)


@pytest.fixture(scope="module")
def mb_string():
    return string_method(load_system("muller_brown"), MIN_A, MIN_B, n_images=50)


def test_string_finds_muller_brown_saddle(mb_string):
    sp = mb_string
    assert sp.converged
    saddle = sp.saddle[0, :2]
    assert np.linalg.norm(saddle - SADDLE) < 1e-2
    assert sp.saddle_energy == pytest.approx(-40.66, abs=0.05)
    # energies from OpenMM agree with the analytic potential (z stays 0: spring energy 0)
    np.testing.assert_allclose(sp.energy, muller_brown_energy(sp.images[:, 0, :2]), atol=1e-6)
    assert np.all(sp.images[:, 0, 2] == 0.0)
    # end images slid into the two minima; the saddle is the highest point
    assert np.linalg.norm(sp.images[0, 0, :2] - MIN_A) < 5e-3
    assert np.linalg.norm(sp.images[-1, 0, :2] - MIN_B) < 5e-3
    assert sp.energy.max() == sp.saddle_energy
    assert sp.barrier == pytest.approx(-40.66 + 146.70, abs=0.1)


def test_string_images_equally_spaced_each_side(mb_string):
    xy = mb_string.images[:, 0, :2]
    k = mb_string.saddle_index
    for part in (xy[:k + 1], xy[k:]):
        seg = np.linalg.norm(np.diff(part, axis=0), axis=1)
        assert seg.max() / seg.min() < 1.01


def test_plain_string_is_limited_by_spacing():
    # without climbing the highest image sits next to, not on, the saddle: fewer images, worse
    sp = string_method(load_system("muller_brown"), MIN_A, MIN_B, n_images=12, climbing=False)
    assert sp.converged
    d = np.linalg.norm(sp.saddle[0, :2] - SADDLE)
    assert 1e-3 < d < 0.2
    assert sp.saddle_energy < -40.66 + 1e-6  # an image below the true saddle


def test_string_save_load(tmp_path, mb_string):
    mb_string.save(tmp_path / "s.npz")
    back = StringPath.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.images, mb_string.images)
    assert back.saddle_index == mb_string.saddle_index and back.converged


def test_string_rejects_bad_input():
    ms = load_system("muller_brown")
    with pytest.raises(ValueError, match="n_images"):
        string_method(ms, MIN_A, MIN_B, n_images=2)
    with pytest.raises(ValueError, match="a must have shape"):
        string_method(ms, np.zeros((2, 3)), MIN_B)


def test_path_distance_known_values():
    q = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    p = np.array([[0.5, 0.3], [1.5, -0.1]])
    mean, haus = path_distance(p, q)
    assert mean == pytest.approx(0.2)          # to the segments, not the vertices
    # q's vertices to polyline p: (0,0)->0.5831 (to (0.5,0.3)), (2,0) -> 0.5099
    assert haus == pytest.approx(np.hypot(0.5, 0.3))
    assert path_distance(q, q) == (0.0, 0.0)
    with pytest.raises(ValueError, match="different dimensions"):
        path_distance(p, np.zeros((3, 3)))


def test_reparametrize_equal_arc():
    t = np.linspace(0, 1, 7) ** 2
    pts = np.stack([t, 2 * t], axis=1)
    out = reparametrize(pts, 11)
    seg = np.linalg.norm(np.diff(out, axis=0), axis=1)
    np.testing.assert_allclose(seg, seg[0], rtol=1e-12)
    np.testing.assert_allclose(out[[0, -1]], pts[[0, -1]])
