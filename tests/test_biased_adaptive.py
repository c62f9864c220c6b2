"""Window design on a pilot F(χ) (amore_openmm.biased.adaptive): umbrella integration and
the placement of windows and per-window κ, on analytic profiles (no MD), plus one tiny plan."""
import numpy as np
import pytest
import torch

from amore_openmm.biased import projection_chi
from amore_openmm.biased.adaptive import (GRID, design_windows, mean_force_profile,
                                          plan_windows)
from amore_openmm.systems import muller_brown_system

torch.set_num_threads(1)


def edge_profile(b=4.0, c=0.005):
    """F(χ) in kT shaped like a trained χ's: smooth basins at χ = 0 and 1, steep and concave
    at their edges (F'' ≈ −b/χ² for χ ≫ c), flat in between."""
    x = GRID
    f = 0.5 * b * (np.log1p((x / c) ** 2) + np.log1p(((1 - x) / c) ** 2))
    return f - f.min()


def window(f, z, kap):
    b = f + 0.5 * kap * (GRID - z) ** 2
    p = np.exp(-(b - b.min()))
    return p / p.sum()


def overlaps(f, z, kap):
    ps = [window(f, zk, kk) for zk, kk in zip(z, kap)]
    return np.array([np.minimum(ps[i], ps[i + 1]).sum() for i in range(len(ps) - 1)]), ps


def uncovered(ps, frames=100):
    """χ bins of 0.02 in [0, 1] where no window expects one of ``frames`` frames."""
    cover = np.max(ps, axis=0)
    edges = np.linspace(0, 1, 51)
    mass = [cover[(GRID >= lo) & (GRID < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])]
    return int(np.sum(np.array(mass) * frames < 1))


def test_umbrella_integration_recovers_a_quadratic_free_energy():
    """Windows on F = 20(χ − 0.3)² − 5χ are exactly Gaussian: mean (17 + κz)/(40 + κ),
    variance 1/(40 + κ) (kT units); umbrella integration then gives F back."""
    z = np.linspace(0, 1, 8)
    kap = np.full(8, 400.0)
    mean, var = (17 + kap * z) / (40 + kap), 1 / (40 + kap)
    f = mean_force_profile(mean, np.full(8, var), np.full(8, 50), z, kap)
    exact = 20 * (GRID - 0.3) ** 2 - 5 * GRID
    inside = (GRID >= 0) & (GRID <= 1)
    d = (f - exact)[inside]
    assert np.abs(d - d.mean()).max() < 0.01                        # kT


def test_equally_spaced_windows_fail_on_concave_edges_and_the_design_fixes_it():
    f = edge_profile()
    width = 0.05
    flat = np.linspace(0, 1, 11)
    _, ps_flat = overlaps(f, flat, np.full(11, 1 / width ** 2))
    # the windows next to the basins slide into them, and leave the edges unsampled
    assert ps_flat[1] @ GRID < 0.05 and uncovered(ps_flat) > 0
    z, kap, ov = design_windows(f, width)
    assert z[0] == 0 and z[-1] == 1 and np.all(np.diff(z) >= 0)
    ov_check, ps = overlaps(f, z, kap)
    assert np.allclose(ov, ov_check) and ov.min() >= 0.25
    # stiffer where F is concave (the edges) than where it is flat (the middle)
    mid = np.abs(z - 0.5) < 0.2
    edge = (np.abs(z - 0.5) > 0.4) & (z > 0) & (z < 1)
    assert kap[edge].max() >= 4 * kap[mid].max() and kap[mid].min() == pytest.approx(400)
    # every χ bin in [0, 1] is covered by some window's predicted frames
    assert uncovered(ps) == 0
    # each window has one well: where 99 % of its frames fall, no second well of its biased
    # free energy is deeper than 0.25 kT (a soft window at a concave edge has a deep one)
    for p in ps:
        cum = np.cumsum(p)
        b = -np.log(p[(cum > 5e-3) & (cum < 1 - 5e-3)])
        i = int(np.argmin(b))
        for side in (b[:i + 1][::-1], b[i:]):
            assert np.max(np.maximum.accumulate(side) - side) < 0.25


def test_design_respects_unvisited_cells_and_the_stiffness_cap():
    f = edge_profile()
    known = GRID < 0.05
    z, kap, _ = design_windows(f, 0.05, known=known)
    # beyond what the pilots visited, windows take the stiffest κ of the ladder (64×)
    assert np.all(kap[(z > 0.2) & (z < 0.9)] == pytest.approx(64 * 400))
    cap = np.full(len(GRID), 1000.0)
    z, kap, _ = design_windows(f, 0.05, kappa_cap=cap)
    assert kap.max() <= 1000.0


def test_design_and_plan_reject_bad_input():
    f = edge_profile()
    with pytest.raises(ValueError, match="overlap"):
        design_windows(f, 0.05, overlap=1.5)
    with pytest.raises(ValueError, match="width"):
        design_windows(f, -0.1)
    ms = muller_brown_system()
    chi = projection_chi((-0.558, 1.442), (0.623, 0.028))
    with pytest.raises(ValueError, match="width"):
        plan_windows(ms, chi, width=2.0)
    with pytest.raises(ValueError, match="pilot_frames"):
        plan_windows(ms, chi, pilot_frames=3)


def test_a_short_plan_on_a_projection_chi_runs_and_reports():
    """A linear χ on Müller–Brown: two short pilot rounds give a plan with a pilot F(χ),
    a history per round, and ordered centres in [0, 1]."""
    ms = muller_brown_system()
    chi = projection_chi((-0.558, 1.442), (0.623, 0.028))
    plan = plan_windows(ms, chi, initial=5, rounds=2, pilot_frames=10, stride=5, seed=1)
    assert 1 <= plan.rounds <= 2 and len(plan.history) == plan.rounds
    assert plan.z[0] == 0 and plan.z[-1] == 1 and np.all(np.diff(plan.z) >= 0)
    assert len(plan.kappa) == len(plan.z) == len(plan.substeps)
    assert np.all(np.isfinite(plan.f_kT)) and plan.f_kT.min() == 0
    d = plan.to_dict()
    assert d["converged"] == plan.converged and len(d["pilot_F_kT"]) == len(d["pilot_chi"])
    assert plan.converged or plan.note
