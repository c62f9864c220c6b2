"""Transition channels: paths through distinct routes are told apart and ranked by density."""
import numpy as np

from amore_openmm.channels import find_channels, path_descriptor


def _family(rng, phi, n, m=40):
    """n paths whose ψ goes from 0 to π (χ 0 → 1) at a φ near ``phi``."""
    chis, angles = [], []
    for _ in range(n):
        chi = np.linspace(0, 1, m)
        psi = np.pi * chi + rng.normal(0, 0.05, m)
        ph = phi + rng.normal(0, 0.1) + 0.05 * np.sin(3 * chi)
        angles.append(np.stack([np.full(m, ph), psi], axis=1))
        chis.append(chi)
    return chis, angles


def test_two_routes_give_two_channels_ranked_by_density():
    rng = np.random.default_rng(0)
    ca, aa = _family(rng, -1.5, 6)
    cb, ab = _family(rng, 1.0, 3)
    # ensemble mostly along route A
    ens = np.concatenate([np.stack([rng.normal(-1.5, 0.2, 900), rng.uniform(0, np.pi, 900)], 1),
                          np.stack([rng.normal(1.0, 0.2, 100), rng.uniform(0, np.pi, 100)], 1)])
    channels, info = find_channels(ca + cb, aa + ab, ens)
    assert len(channels) == 2, info
    assert sorted(channels[0].members) == list(range(6))      # the dense route first
    assert channels[0].density > channels[1].density
    assert abs(channels[0].share - 6 / 9) < 1e-12
    assert np.allclose(channels[0].centroid[:, 0], -1.5, atol=0.2)


def test_one_route_is_one_channel_and_short_paths_are_skipped():
    rng = np.random.default_rng(1)
    c, a = _family(rng, -1.5, 6)
    c.append(np.linspace(0.4, 0.6, 5))            # does not span the χ levels
    a.append(np.zeros((5, 2)))
    channels, info = find_channels(c, a, np.zeros((10, 2)))
    assert len(channels) == 1 and info["skipped"] == [6]


def test_descriptor_is_periodic():
    chi = np.linspace(0, 1, 10)
    a = np.stack([np.full(10, np.pi - 1e-3), np.zeros(10)], 1)
    b = np.stack([np.full(10, -np.pi + 1e-3), np.zeros(10)], 1)
    assert np.abs(path_descriptor(chi, a) - path_descriptor(chi, b)).max() < 1e-2
