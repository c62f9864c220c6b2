"""χ-biased umbrella sampling with MBAR reweighting (amore_openmm.biased) on Müller–Brown."""
import json

import numpy as np
import pytest
import torch

from amore_openmm.biased import (MIN_OVERLAP, STIFFNESS_LIMIT, ChiFreeEnergy,
                                 UmbrellaSampler, UmbrellaSamples, barrier_height, fit_mbar,
                                 grid_free_energy, projection_chi, reweighted_sensitivity,
                                 sigmoid_chi,
                                 stratified_starts, umbrella_free_energy, window_sensitivity)
from amore_openmm.biased.adaptive import PILOT_OVERLAP
from amore_openmm.systems import muller_brown_energy, muller_brown_system

torch.set_num_threads(1)
MIN_A, MIN_B = (-0.558, 1.442), (0.623, 0.028)


@pytest.fixture(scope="module")
def mb():
    return muller_brown_system()


@pytest.fixture(scope="module")
def chi():
    """Fixed χ: projection onto the segment A → B (its level lines cross one valley each,
    so restrained windows sample their level set without hidden barriers)."""
    return projection_chi(MIN_A, MIN_B)


@pytest.fixture(scope="module")
def umbrella(mb, chi):
    samples = UmbrellaSampler(mb, chi, np.linspace(0, 1, 21)).run(
        frames=400, stride=10, equilibration=30, seed=3)
    return samples, fit_mbar(samples, bootstrap=20, seed=1)


def test_samples_record_windows_and_roundtrip(umbrella, tmp_path):
    samples, _ = umbrella
    assert samples.n_windows == 21 and np.all(samples.counts == 400)
    assert samples.positions.shape == (21 * 400, 1, 3)
    # each window's χ sits near its centre (pulled off by at most F'(χ)·kT/κ) with about the
    # restraint's thermal width sqrt(kT/κ) = 0.05, and the windows move along χ
    means = np.array([samples.chi[samples.window == k].mean() for k in range(21)])
    stds = np.array([samples.chi[samples.window == k].std() for k in range(21)])
    assert np.all(np.diff(means) > 0)
    assert np.all(np.abs(means - samples.z) < 0.15)
    assert np.all(stds < 0.1) and np.median(stds) > 0.03
    # the physical energy excludes the restraint
    assert np.allclose(samples.energy, muller_brown_energy(samples.positions[:, 0, :2]) +
                       500.0 * samples.positions[:, 0, 2] ** 2, atol=1e-6)
    back = UmbrellaSamples.load(samples.save(tmp_path / "s.npz"))
    assert np.array_equal(back.chi, samples.chi) and np.array_equal(back.window, samples.window)


def test_mbar_free_energy_matches_grid_integration(mb, chi, umbrella, tmp_path):
    _, fes = umbrella
    edges = np.linspace(0.05, 0.95, 11)
    _, f, err = fes.profile(edges)
    _, exact = grid_free_energy(chi, muller_brown_energy, mb.kT, edges)
    dev = (f - f.mean()) - (exact - exact.mean())
    assert np.all(np.isfinite(f)) and np.all(err > 0)
    assert np.abs(dev).max() < 0.6                               # kT
    # the A basin side is the deep one; the barrier is several kT with an error bar
    bar = fes.barrier()
    full = np.linspace(0, 1, 51)
    c_full, exact_full = grid_free_energy(chi, muller_brown_energy, mb.kT, full)
    assert bar["barrier_kT"] == pytest.approx(barrier_height(c_full, exact_full), abs=1.0)
    assert 0 < bar["barrier_err_kT"] < 1.0
    assert bar["barrier_kJ_mol"] == pytest.approx(bar["barrier_kT"] * mb.kT)
    assert 50 < fes.effective_sample_size < len(fes.weights)
    assert fes.weights.sum() == pytest.approx(1.0)
    # files
    fes.write_csv(tmp_path / "f.csv", edges)
    assert (tmp_path / "f.csv").read_text().splitlines()[0].startswith("chi,F_kT,F_err_kT")
    assert fes.plot(tmp_path / "f.png", edges).stat().st_size > 1000
    back = ChiFreeEnergy.load(fes.save(tmp_path / "f.npz"))
    assert np.allclose(back.profile(edges)[1], f)


def test_mbar_grid_comparison_can_fail(mb, chi, umbrella):
    """The same comparison against a wrong temperature's exact F misses by far more."""
    _, fes = umbrella
    edges = np.linspace(0.05, 0.95, 11)
    _, f, _ = fes.profile(edges)
    _, wrong = grid_free_energy(chi, muller_brown_energy, 2 * mb.kT, edges)
    assert np.abs((f - f.mean()) - (wrong - wrong.mean())).max() > 1.0


def test_mbar_on_one_unbiased_window_reproduces_plain_averages(mb, chi):
    rng = np.random.default_rng(0)
    x = np.zeros((400, 1, 3))
    x[:, 0, :2] = rng.normal(MIN_A, 0.05, size=(400, 2))
    c = chi.chi(x)
    s = UmbrellaSamples(positions=x, chi=c, energy=np.zeros(400), window=np.zeros(400, int),
                        z=np.array([0.5]), kappa=np.array([1e-12]), kT=mb.kT)
    fes = fit_mbar(s, bootstrap=0, block=1)
    assert np.allclose(fes.weights, 1 / 400)
    assert fes.effective_sample_size == pytest.approx(400)
    sens, ess = reweighted_sensitivity(fes, chi, bootstrap=0)
    from amore_openmm.sensitivity import chi_sensitivity
    plain = chi_sensitivity(chi, x, bootstrap=0)
    assert np.allclose(sens.per_atom, plain.per_atom) and ess == pytest.approx(400)


def test_reweighted_sensitivity_and_level_sets(umbrella, chi):
    samples, fes = umbrella
    g2 = float(np.sum(chi.grad(samples.positions[:1])[0, 0] ** 2))   # constant for a projection
    sens, ess = reweighted_sensitivity(fes, chi, bootstrap=10, bins=10)
    assert sens.per_atom[0] == pytest.approx(g2, rel=1e-5) and ess == fes.effective_sample_size
    z, mean, err, used = window_sensitivity(samples, chi, bootstrap=5)
    assert np.allclose(mean[used >= 2, 0], g2, rtol=1e-5) and np.sum(used >= 20) >= 15
    # gradients handed in (computed once by write_window_sensitivities) give the same windows
    from amore_openmm.sensitivity import chi_gradients
    c, g = chi_gradients(chi, samples.positions)
    z2, mean2, _, used2 = window_sensitivity(samples, chi, bootstrap=5, gradients=(c, g))
    assert np.array_equal(used2, used) and np.allclose(mean2, mean, equal_nan=True)
    with pytest.raises(ValueError, match="gradients"):
        window_sensitivity(samples, chi, bootstrap=5, gradients=(c[:-1], g[:-1]))


def test_stratified_starts_are_flat_in_chi(umbrella):
    samples, fes = umbrella
    x, idx = stratified_starts(fes, 100, np.random.default_rng(0), bins=10,
                               return_indices=True)
    assert x.shape == (100, 1, 3)
    counts = np.histogram(samples.chi[idx], np.linspace(0, 1, 11))[0]
    assert counts.min() >= 9 and counts.max() <= 11
    assert np.allclose(x, samples.positions[idx])


def test_bad_input_raises_value_error(mb, chi):
    with pytest.raises(ValueError, match="windows"):
        UmbrellaSampler(mb, chi, [0.0, 0.5, 1.2])
    with pytest.raises(ValueError, match="kappa"):
        UmbrellaSampler(mb, chi, [0.0, 1.0], kappa=0.0)
    with pytest.raises(ValueError, match="kappa"):
        UmbrellaSampler(mb, chi, [0.0, 1.0], kappa=-5.0)
    with pytest.raises(ValueError, match="model"):
        UmbrellaSampler(mb, None, [0.0, 1.0])
    with pytest.raises(ValueError, match="model"):
        UmbrellaSampler(mb, "no_such_chi.pt", [0.0, 1.0])
    with pytest.raises(ValueError, match="model"):
        UmbrellaSampler(mb, np.zeros(3), [0.0, 1.0])
    with pytest.raises(ValueError, match="samples"):
        fit_mbar(np.zeros(3))
    with pytest.raises(ValueError, match="samples_or_fes"):
        stratified_starts(None, 5)


def test_umbrella_free_energy_writes_files_from_an_exported_chi(mb, chi, tmp_path):
    path = chi.export_torchscript(tmp_path / "chi.pt")          # what a run directory holds
    fes = umbrella_free_energy(mb, str(path), tmp_path / "fes", windows=5, frames=20, stride=5,
                               equilibration=2, bins=10, bootstrap=3)
    for name in ("umbrella_samples.npz", "fes.npz", "fes.csv", "fes.png", "fes.json"):
        assert (tmp_path / "fes" / name).is_file()
    assert len(fes.weights) == 100
    x = fes.samples.positions
    assert np.allclose(fes.chi, chi.chi(x), atol=1e-5)
    # the windows' sensitivities, from the TorchScript file: a projection χ has the same
    # ‖∇χ‖² everywhere, so the reweighted mean and every window's level set equal it
    g2 = float(np.sum(chi.grad(x[:1])[0, 0] ** 2))
    summary = json.loads((tmp_path / "fes" / "fes.json").read_text())
    info = summary["reweighted_sensitivity"]
    # the weights are certified with the profile, and say so when not
    assert info["certified"] == summary["certified"]
    assert summary["certified"] or "not a result" in info["note"]
    assert info["top_atoms"][0]["index_0based"] == 0
    assert info["top_atoms"][0]["mean_grad_sq"] == pytest.approx(g2, rel=1e-5)
    assert 0 < info["effective_sample_size"] <= 100
    rows = (tmp_path / "fes" / "window_levelsets.csv").read_text().splitlines()
    assert rows[0].startswith("z,atom_index_0based") and len(rows) >= 2   # windows near z
    assert all(float(r.split(",")[3]) == pytest.approx(g2, rel=1e-5) for r in rows[1:])
    assert (tmp_path / "fes" / "reweighted_atoms.csv").read_text().startswith("rank,")


def test_window_sensitivities_over_the_memory_budget_leave_the_profile(mb, chi, tmp_path,
                                                                        monkeypatch):
    from amore_openmm.data import MEMORY_BUDGET_ENV
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "1e-6")                 # 1 kB
    with pytest.warns(RuntimeWarning, match="memory budget"):
        umbrella_free_energy(mb, chi, tmp_path / "fes", windows=5, frames=20, stride=5,
                             equilibration=2, bins=10, bootstrap=3)
    info = json.loads((tmp_path / "fes" / "fes.json").read_text())
    assert "GB" in info["reweighted_sensitivity"]["skipped"] and "barrier_kT" in info
    assert (tmp_path / "fes" / "fes.csv").is_file()
    assert not (tmp_path / "fes" / "reweighted_atoms.csv").exists()


# -- a χ shaped like ISOKANN's (flat in the basins, steep at the saddle) ------------------
@pytest.fixture(scope="module")
def steep_chi():
    return sigmoid_chi(MIN_A, MIN_B, steepness=12.0)


def test_auto_substeps_keep_a_stiff_restraint_resolved(mb, steep_chi):
    """κ = 10000 kJ/mol at the saddle of a steep χ: dt·κ·‖∇χ‖² ≈ 2.6 at the system's step;
    "auto" divides the step until the stiffness number is below the limit, and the window
    then sits at its centre with about the restraint's thermal width."""
    s = UmbrellaSampler(mb, steep_chi, [0.5], kappa=10000.0, substeps="auto").run(
        frames=30, stride=10, equilibration=30, seed=1)
    assert s.substeps[0] > 4 and s.stiffness[0] <= STIFFNESS_LIMIT
    assert abs(s.chi.mean() - 0.5) < 0.03 and 0.01 < s.chi.std() < 0.07   # width 0.035
    plain = UmbrellaSampler(mb, steep_chi, [0.5], kappa=10000.0).run(
        frames=10, stride=10, equilibration=0, seed=1, start=s.positions[-1])
    assert plain.substeps[0] == 1 and plain.stiffness[0] > 2 * STIFFNESS_LIMIT


@pytest.mark.slow
def test_auto_windows_overlap_on_a_steep_chi_and_match_exact_f(mb, tmp_path):
    """A χ shaped like ISOKANN's (basins at χ ≈ 0.02 and 0.98, F concave at their edges):
    the scout's equally spaced windows leave gaps; the windows designed on the pilots' F
    overlap and give a certified F(χ) near the exact one. About 9 CPU-minutes."""
    chi = sigmoid_chi(MIN_A, MIN_B, steepness=8.0)
    fes = umbrella_free_energy(mb, chi, tmp_path / "auto", frames=150, stride=10,
                               equilibration=20, bins=20, bootstrap=5, pilot_frames=30,
                               pilot_rounds=5, max_windows=40, window_width=0.1, seed=2)
    info = json.loads((tmp_path / "auto" / "fes.json").read_text())
    plan = info["plan"]
    windows, min_overlap, unvisited = plan["history"][0]
    assert min_overlap < PILOT_OVERLAP or unvisited > 0
    assert plan["converged"] and info["window_overlap_min"] >= MIN_OVERLAP
    assert info["certified"], info["note"]
    edges = np.linspace(0.05, 0.95, 10)
    _, f, _ = fes.profile(edges)
    _, exact = grid_free_energy(chi, muller_brown_energy, mb.kT, edges)
    assert np.all(np.isfinite(f))
    assert np.abs((f - f.mean()) - (exact - exact.mean())).max() < 1.0     # kT


def test_uncovered_windows_are_not_certified(mb, steep_chi, tmp_path):
    """Two windows far apart on a steep χ, too short to walk from one basin to the other:
    χ between them is never sampled, so no certificate, and the note says so."""
    umbrella_free_energy(mb, steep_chi, tmp_path / "gap", windows=[0.05, 0.95], kappa=2000.0,
                         frames=30, stride=5, equilibration=2, bins=10, bootstrap=2)
    info = json.loads((tmp_path / "gap" / "fes.json").read_text())
    assert not info["certified"] and "no frames with χ" in info["note"]


def test_fes_cli_bad_input_exits_2(mb, chi, tmp_path, capsys):
    from amore_openmm.cli import main
    model = chi.export_torchscript(tmp_path / "chi.pt")
    base = ["fes", "--system", "muller_brown", "--frames", "5", "--quiet"]
    assert main(base + ["--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a")]) == 2
    for extra in (["--kappa", "0"], ["--kappa", "-3"], ["--kappa", "stiff"],
                  ["--windows", "1"], ["--windows", "many"], ["--max-windows", "1"]):
        assert main(base + ["--model", str(model), "--out", str(tmp_path / "b")] + extra) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "kappa" in err and "windows" in err
    with pytest.raises(ValueError, match="substeps"):
        UmbrellaSampler(mb, chi, [0.5], substeps=0)
    with pytest.raises(ValueError, match="substeps"):
        UmbrellaSampler(mb, chi, [0.5], substeps="fast")
    with pytest.raises(ValueError, match="windows"):
        umbrella_free_energy(mb, chi, tmp_path / "c", windows="some")


def _iid_windows(chi, seed, shift=0.0, n=200, z=np.linspace(0.1, 0.9, 5), kappa_kT=60.0):
    """Independent frames drawn exactly from five biased densities of a 1-D double well
    V/kT = 8((x − ½)² − ¼)² under a sigmoid χ(x); with ``shift`` the second half of every
    window is drawn from the window at z + shift (a window that has not stopped drifting)."""
    kT, grid = 2.494, np.linspace(-1.0, 2.0, 6001)
    gx = np.zeros((len(grid), 1, 3))
    gx[:, 0, 0] = grid
    gchi, v = chi.chi(gx), 8.0 * ((grid - 0.5) ** 2 - 0.25) ** 2
    rng, xs = np.random.default_rng(seed), []
    for zk in z:
        for centre, m in ((zk, n // 2), (zk + shift, n - n // 2)):
            cdf = np.cumsum(np.exp(-v - 0.5 * kappa_kT * (gchi - centre) ** 2))
            xs.append(np.interp(rng.random(m), cdf / cdf[-1], grid))
    pos = np.zeros((len(z) * n, 1, 3))
    pos[:, 0, 0] = np.concatenate(xs)
    return UmbrellaSamples(positions=pos, chi=chi.chi(pos), energy=np.zeros(len(pos)),
                           window=np.repeat(np.arange(len(z)), n), z=z.copy(),
                           kappa=np.full(len(z), kappa_kT * kT), kT=kT)


def test_reweighted_sensitivity_error_matches_the_spread_of_independent_runs():
    # the reported error of ⟨‖∇χ‖²⟩ (MBAR re-solved per resample, batch means) is what 25
    # independent umbrella runs actually scatter by: neither 2x too small nor too large
    chi = sigmoid_chi((0.0, 0.0), (1.0, 0.0), steepness=6.0)
    est, err = [], []
    for r in range(25):
        fes = fit_mbar(_iid_windows(chi, r), bootstrap=0, block=1)
        sens, _ = reweighted_sensitivity(fes, chi, bootstrap=25, bins=1, min_count=1, seed=r)
        est.append(sens.per_atom[0])
        err.append(sens.per_atom_err[0])
    assert 0.6 < np.std(est, ddof=1) / np.median(err) < 1.6


def test_reweighted_sensitivity_error_sees_drifting_windows():
    # every window's second half sits 0.15 further along χ: a bootstrap within windows
    # cannot see that the frames are not one stationary ensemble, the time segments can
    chi = sigmoid_chi((0.0, 0.0), (1.0, 0.0), steepness=6.0)
    fes = fit_mbar(_iid_windows(chi, 99, shift=0.15), bootstrap=0, block=1)
    sens, _ = reweighted_sensitivity(fes, chi, bootstrap=25, bins=1, min_count=1, block=1)
    boot, _ = reweighted_sensitivity(fes, chi, bootstrap=25, bins=1, min_count=1, block=1,
                                     segments=0)
    seg = sens.segment_per_atom[:, 0]
    assert seg.shape == (4,) and boot.segment_per_atom is None
    assert min(seg[:2]) - max(seg[2:]) > 5 * boot.per_atom_err[0]
    assert sens.per_atom_err[0] > 3 * boot.per_atom_err[0]

