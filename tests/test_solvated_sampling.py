"""Bursts of solvated systems: y of the selection only, whole solutes across box faces,
constraints (HBonds, rigid water), the memory guard, the CPU pool layout and the platforms
that can minimise."""
import numpy as np
import pytest

from amore_openmm.data import MemoryBudgetError
from amore_openmm.sampling import BurstSampler, ContextPool, sample_trajectory
from amore_openmm.systems import load_system, periodic_box

CPU1 = {"Threads": "1"}


@pytest.fixture(scope="module")
def water_box():
    return load_system("alanine_dipeptide_tip3p")


@pytest.fixture(scope="module")
def cpu_pool(water_box):
    with ContextPool(water_box, size=1, platform="CPU", properties=CPU1) as pool:
        yield pool


def _solute_bonds(ms):
    sel = set(ms.selection.tolist())
    return np.array([(a.index, b.index) for a, b in ms.topology.bonds()
                     if a.index in sel and b.index in sel])


def _bond_lengths(y_sel, ms):
    """Lengths (..., b) of the solute bonds in stored end points of the selection."""
    where = {int(a): i for i, a in enumerate(ms.selection)}
    pairs = np.array([(where[i], where[j]) for i, j in _solute_bonds(ms)])
    return np.linalg.norm(y_sel[..., pairs[:, 0], :] - y_sel[..., pairs[:, 1], :], axis=-1)


def _straddling_starts(ms):
    """Two starts whose solute straddles the x = L box face: translated only (whole in raw
    coordinates), and also wrapped atom by atom into the box (the solute split in two)."""
    box = periodic_box(ms)
    L = box[0, 0]
    x = ms.positions[0].copy()
    sel = ms.selection
    x[:, 0] += L - x[sel, 0].mean()                 # the solute's centre onto the face
    split = x.copy()
    split[sel, 0] = np.mod(split[sel, 0], L)        # per atom: the solute is cut in two
    assert np.ptp(split[sel, 0]) > 0.5 * L           # (it really is split)
    return np.stack([x, split]), L


def test_vacuum_selection_is_every_atom_and_store_atoms_cuts_y():
    ms = load_system("alanine_dipeptide")
    assert ms.n_selected == ms.n_atoms  # nothing changes for vacuum systems
    with ContextPool(ms, size=1, platform="Reference") as pool:
        sampler = BurstSampler(pool)
        full = sampler.run(ms.positions[0], 2, lag_steps=10, seed=3, progress=False)
        cut = sampler.run(ms.positions[0], 2, lag_steps=10, seed=3, progress=False,
                          store_atoms="index 0 to 9")
    assert full.all_atoms and full.y.shape == (1, 2, ms.n_atoms, 3)
    assert cut.atoms.tolist() == list(range(10)) and cut.x.shape == full.x.shape
    np.testing.assert_array_equal(cut.y, full.y[:, :, :10])  # same bursts, fewer atoms kept


def test_memory_guard_refuses_before_running(water_box):
    pool = ContextPool(water_box, size=1, platform="CPU", properties=CPU1, local=False)
    starts = np.repeat(water_box.positions[0][None], 3, axis=0)
    with pytest.raises(MemoryBudgetError, match=r"3 starts × 1000 bursts.*GB.*fewer starts"):
        BurstSampler(pool).run(starts, 1000, lag_steps=10, progress=False,
                               store_atoms="all", memory_budget_gb=0.01)
    # the message suggests a selection when every atom is stored
    with pytest.raises(ValueError, match="selection"):
        BurstSampler(pool).run(starts, 1000, lag_steps=10, progress=False,
                               store_atoms="all", memory_budget_gb=0.01)


def test_constrained_bursts_in_water_run_clean(water_box, cpu_pool):
    ms = water_box
    assert ms.has_constraints and ms.is_periodic
    d = BurstSampler(cpu_pool).run(ms.positions[0], 4, lag_steps=15, seed=1, progress=False,
                                   store_atoms="all")
    assert d.extra["drop_counts"] == {} and d.extra["retried"] == 0  # no drop, no retry
    assert d.all_atoms and d.y.shape == (1, 4, ms.n_atoms, 3) and np.all(np.isfinite(d.y))
    # finite end energies, a thermal distance above the start (f/2·kT ≈ 3,300 kJ/mol is the
    # harmonic equilibrium excess of this box; 30 fs from a minimum picks up far less)
    ctx = ms.make_context("CPU", CPU1)
    e0 = ms.energy(platform="CPU")
    ends = []
    for y in d.y[0]:
        ctx.setPositions(y.astype(np.float64))
        ends.append(ctx.getState(getEnergy=True).getPotentialEnergy()._value)
    assert np.all(np.isfinite(ends)) and np.all(np.array(ends) - e0 < 3000.0)
    # the bursts moved (thermal motion over 30 fs), by far less than a bond
    moved = np.linalg.norm(d.y - d.x[:, None], axis=-1)
    assert 0.001 < moved.mean() < 0.1
    # constrained bonds (solute X-H, rigid water O-H and H-H) are at their lengths at the ends
    for c in range(0, ms.system.getNumConstraints(), 7):
        i, j, r0 = ms.system.getConstraintParameters(c)
        r = np.linalg.norm(d.y[0, :, i] - d.y[0, :, j], axis=-1)
        np.testing.assert_allclose(r, r0._value, atol=2e-4)


def test_solute_across_a_box_face_stays_whole(water_box, cpu_pool):
    ms = water_box
    starts, L = _straddling_starts(ms)
    d = BurstSampler(cpu_pool).run(starts, 2, lag_steps=10, seed=2, progress=False)
    assert d.n_starts == 2 and d.extra["drop_counts"] == {}
    assert d.atoms.tolist() == ms.selection.tolist() and d.y.shape == (2, 2, 22, 3)
    assert d.x.shape == (2, ms.n_atoms, 3)  # restarts keep the water
    lengths = _bond_lengths(d.y, ms)
    assert lengths.max() < 0.2 and lengths.min() > 0.08
    assert _bond_lengths(d.x_selected, ms).max() < 0.2  # the split start was made whole
    for y in d.y[:, 0]:  # and the stored solute really lies across a face
        assert np.floor(y[:, 0].min() / L) != np.floor(y[:, 0].max() / L)


def test_trajectory_frames_of_a_split_solute_are_whole(water_box):
    ms = water_box
    starts, _ = _straddling_starts(ms)
    frames = sample_trajectory(ms, 3, 5, seed=4, x0=starts[1], platform="CPU",
                               progress=False, properties=CPU1)
    assert frames.shape == (3, ms.n_atoms, 3)
    assert _bond_lengths(frames[:, ms.selection], ms).max() < 0.2


# -- the CPU pool layout ------------------------------------------------------------------------
def test_cpu_layout_is_measured_for_the_water_box_and_cached(water_box, caplog):
    from amore_openmm.sampling import choose_cpu_layout, layout_matters

    assert layout_matters(water_box)
    with caplog.at_level("INFO", logger="amore_openmm.sampling"):
        rep = choose_cpu_layout(water_box, cpus=2, budget_s=0.05)
    assert rep["measured"] and set(rep["layouts"]) == {"2x1", "1x2"}
    assert rep["chosen"] in rep["layouts"] and rep["slots"] * rep["threads"] == 2
    assert all(v > 0 for v in rep["layouts"].values())
    assert rep["steps_per_s"] == rep["layouts"][rep["chosen"]]
    assert "CPU pool layout" in caplog.text and rep["chosen"] in caplog.text
    again = choose_cpu_layout(water_box, cpus=2, budget_s=0.05)
    assert again["cached"] and again["layouts"] == rep["layouts"]


def test_pool_takes_the_measured_layout_only_where_it_can_matter(water_box):
    from amore_openmm.sampling import usable_cpus

    with ContextPool(water_box, platform="CPU") as pool:
        rep = pool.layout_report
        assert rep["measured"] and pool.size == rep["slots"] == pool.contexts_created
        assert pool.properties["Threads"] == str(rep["threads"])
        assert rep["slots"] * rep["threads"] == usable_cpus()
    small = ContextPool(load_system("alanine_dipeptide"), platform="CPU", local=False)
    assert not small.layout_report["measured"] and small.properties["Threads"] == "1"
    assert small.size == usable_cpus()
    given = ContextPool(water_box, size=1, platform="CPU", local=False)
    assert not given.layout_report["measured"] and given.properties["Threads"] == "1"


# -- platforms that can minimise ---------------------------------------------------------------
def test_minimizer_platforms_exclude_pocl_opencl():
    from amore_openmm.sampling import (available_platforms, minimizer_platforms,
                                       opencl_is_pocl, platform_can_minimize)

    assert platform_can_minimize("Reference") and platform_can_minimize("CPU")
    assert not platform_can_minimize("NoSuchPlatform")
    if "OpenCL" in available_platforms() and opencl_is_pocl():
        assert not platform_can_minimize("OpenCL")
    assert set(minimizer_platforms()) <= set(available_platforms())
    assert "Reference" in minimizer_platforms()
    assert all(platform_can_minimize(p) for p in minimizer_platforms())


def test_auto_platform_does_not_probe_pocl(water_box):
    from amore_openmm.sampling import available_platforms, choose_platform, opencl_is_pocl

    ms = load_system("alanine_dipeptide")
    name, rep = choose_platform(ms, budget_s=0.02, verbose=False)
    if "OpenCL" in available_platforms() and opencl_is_pocl():
        assert name != "OpenCL" and "OpenCL" in rep["skipped"]
        assert "OpenCL" not in rep["steps_per_s"]
