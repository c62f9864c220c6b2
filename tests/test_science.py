"""The science reproduction's pieces: halves check, transitions and stopping rule, channel
summaries, the comparison with the paper, the science preset (cheap, no MD)."""
from types import SimpleNamespace

import numpy as np
import pytest

from amore_openmm.channels import find_channels
from amore_openmm.config import ConfigError, resolve_config
from amore_openmm.pipeline.science import (PAPER, SAME_PROCESS_CORR, channel_summaries,
                                           chi_correlation, choose_residue,
                                           comparison_markdown, comparison_rows,
                                           count_transitions, halves_check, koopman_pairs,
                                           stop_decision)


def test_halves_check_tells_a_stationary_series_from_a_drifting_one():
    rng = np.random.default_rng(0)
    stationary = rng.uniform(-np.pi, np.pi, size=(4, 8000, 2))
    res = halves_check(stationary, ["a", "b"])
    assert res["converged"] and res["max_tv"] < 0.05
    # independent frames: τ ≈ 1 and the chance TV is what the halves show
    assert all(0.8 < t < 1.3 for t in res["tau_frames"].values())
    assert 0.5 < res["max_tv"] / max(res["tv_floor"].values()) < 1.6
    assert res["max_frames_needed"] == 2 * 4 * 4000  # converged: no more frames needed
    drifting = stationary.copy()
    drifting[:, 4000:, 1] = rng.normal(2.0, 0.2, size=(4, 4000))  # b jumps to one basin
    res = halves_check(drifting, ["a", "b"])
    assert not res["converged"] and res["worst"] == "b" and res["max_tv"] > 0.5
    assert res["frames_per_half"] == 4 * 4000
    # one jump reads as one very slow transition: far more frames are needed than exist
    assert res["slowest"] == "b" and res["n_eff"]["b"] < 0.01 * res["n_eff"]["a"]
    assert res["frames_needed"]["b"] > 100 * 2 * 4 * 4000
    with pytest.raises(ValueError, match="names"):
        halves_check(stationary, ["a"])


def test_correlated_frames_raise_tau_and_the_frames_a_stationary_run_needs():
    from amore_openmm.pipeline.science import integrated_autocorrelation, stationary_tv
    rng = np.random.default_rng(1)
    phi, n = 0.9, 20000
    x = np.zeros((2, n))
    for t in range(1, n):  # AR(1): τ_int = (1 + φ)/(1 − φ) = 19
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=2)
    tau = integrated_autocorrelation(x)
    assert 14.0 < tau < 24.0
    assert integrated_autocorrelation(rng.normal(size=(2, n))) < 1.2
    # the chance TV of two iid histograms: the formula against Monte Carlo
    p = np.full(12, 1 / 12)
    mc = np.mean([0.5 * np.abs(np.bincount(rng.integers(0, 12, 500), minlength=12) / 500
                               - np.bincount(rng.integers(0, 12, 500), minlength=12) / 500
                               ).sum() for _ in range(400)])
    assert abs(stationary_tv(p, 500, 500) - mc) < 0.15 * mc
    # a slow angle needs τ× more frames than a fast one for the same chance TV
    ang = np.stack([0.3 * x, rng.uniform(-np.pi, np.pi, (2, n))], axis=-1)
    res = halves_check(ang, ["slow", "fast"])
    assert res["slowest"] == "slow"
    assert res["n_eff"]["slow"] < 0.2 * res["n_eff"]["fast"]


def test_koopman_pairs_are_consecutive_frames_with_boltzmann_weight():
    traj = np.arange(3 * 5 * 2 * 3, dtype=np.float32).reshape(3, 5, 2, 3)
    data = koopman_pairs(traj, 100, lag_steps=250, timestep=0.002, system_name="toy")
    assert len(data) == 3 * 4 and data.n_koopman == 1
    assert np.all(data.weights == 1.0)
    r, t = data.extra["replica"], data.extra["frame"]
    assert np.array_equal(data.x, traj[r, t]) and np.array_equal(data.y[:, 0], traj[r, t + 1])
    assert len(koopman_pairs(traj, 5, lag_steps=250, timestep=0.002)) == 5


def test_count_transitions_and_stopping_rule():
    assert count_transitions([0.1, 0.2, 0.9, 0.6], [[0.2, 0.7], [0.3, 0.1], [0.4, 0.8],
                                                    [0.6, 0.55]]) == 2
    recs = [{"generation": 1, "timescale_ps": 100.0, "new_transitions": 3},
            {"generation": 2, "timescale_ps": 105.0, "new_transitions": 0}]
    stop, why = stop_decision(recs)
    assert stop and "generation 2" in why and "5.0 %" in why
    recs[1]["new_transitions"] = 1
    assert not stop_decision(recs)[0]
    recs[1].update(new_transitions=0, timescale_ps=150.0)
    assert not stop_decision(recs)[0]
    assert not stop_decision(recs[:1])[0]


def _path(phi, rng, m=30, n_atoms=4, hot=0):
    chi = np.linspace(0.0, 1.0, m)
    ang = np.stack([np.full(m, phi) + rng.normal(0, 0.05, m), np.pi * chi - 1.5], axis=1)
    g2 = np.full((m, n_atoms), 0.01)
    g2[:, hot] = 1.0
    energy = 10 * np.sin(np.pi * chi)
    cert = np.ones(m, dtype=bool)
    cert[0] = False  # an uncertified end node is never counted
    p = SimpleNamespace(chi=chi, atom_grad_sq=g2, certified=cert, energy=energy,
                        barrier=lambda e=energy, c=cert: float(e[c].max() - e[c].min()))
    return p, ang


def test_channel_summaries_of_two_synthetic_routes():
    rng = np.random.default_rng(3)
    made = [_path(-1.5, rng, hot=1) for _ in range(5)] + [_path(1.2, rng, hot=2)
                                                         for _ in range(3)]
    paths = [p for p, _ in made]
    angs = [a[p.certified] for p, a in made]
    chis = [p.chi[p.certified] for p in paths]
    ens = np.stack([rng.normal(-1.5, 0.2, 500), rng.uniform(-1.5, 1.6, 500)], axis=1)
    chans, _ = find_channels(chis, angs, ens)
    summ = channel_summaries(chans, paths, None, labels=["a", "b", "c", "d"], top=2)
    assert len(summ) == 2 and summ[0]["members"] == [0, 1, 2, 3, 4]
    assert summ[0]["share"] == pytest.approx(5 / 8)
    assert summ[0]["certified_nodes"] == 5 * 29 and summ[0]["nodes"] == 5 * 30
    assert summ[0]["top_atoms"][0]["index_0based"] == 1
    assert summ[1]["top_atoms"][0]["label"] == "c"
    assert 9.0 < summ[0]["barrier_kj"] <= 10.0
    assert summ[0]["mse_nm4"] is None  # no sensitivity given


def test_choose_residue_skips_residues_without_both_angles():
    names = ["VAL1 ψ", "GLY2 φ", "GLY2 ψ", "VAL3 φ", "VAL3 ψ"]
    assert choose_residue([("VAL1 ψ", 1.0), ("VAL3 ψ", 0.5)], names) == ("VAL3", 3, 4)
    with pytest.raises(ValueError, match="dihedrals"):
        choose_residue([("VAL1 ψ", 1.0)], names)


def test_comparison_table_from_fixed_numbers():
    sal = [("VAL3 ψ", 0.02), ("GLY2 φ", 0.001), ("ALA4 φ", 0.0001)]
    chans = [{"mse_nm4": 0.004, "mse_normalized": 0.001}, {"mse_nm4": 0.02}]
    rows = comparison_rows(sal, [26, 5, 40, 7, 8, 9, 42], chans)
    # 2 of the paper's 4 atoms and 2 of its ≥ 4 channels: only the 2-core threshold is met
    assert [r["agrees"] for r in rows] == [True, True, "partly", "partly", True]
    assert "2 [26, 40]" in rows[2]["ours"]  # atom 42 is 7th: not in the top 6
    assert "channels: partly (fewer than the paper)" in comparison_markdown(rows)
    rows = comparison_rows(sal, [26, 28, 40, 42, 1, 2], chans + chans)
    assert [r["agrees"] for r in rows] == [True] * 5     # the paper's own counts
    rows = comparison_rows([("GLY2 φ", 0.02), ("VAL3 ψ", 0.01)], [0, 1, 2, 3, 4, 5],
                           chans[:1])
    assert [r["agrees"] for r in rows] == [False, False, False, False, True]
    rows[0]["note"] = "the ensemble is short"
    md = comparison_markdown(rows, ["1.4 ns sampled"])
    assert "| quantity | paper | ours | agreement |" in md
    assert "disagrees, because the ensemble is short" in md
    assert str(PAPER["mse"]) in md and "1.4 ns sampled" in md
    assert comparison_rows([], [], [])[4]["agrees"] is None


def test_same_process_line_from_the_chi_correlation():
    """The report says whether the dihedral χ describes the run's process: correlation of the
    two χ over the ensemble against SAME_PROCESS_CORR."""
    from amore_openmm.pipeline.science_stages import science_markdown
    rng = np.random.default_rng(0)
    a = rng.uniform(size=500)
    assert chi_correlation(a, 0.5 * a + 0.2) == pytest.approx(1.0)
    assert abs(chi_correlation(a, rng.uniform(size=500))) < 0.2
    assert np.isnan(chi_correlation(a, np.full(500, 0.3)))
    with pytest.raises(ValueError, match="same samples"):
        chi_correlation(a, a[:-1])
    rows = [{"dihedral": "VAL3 ψ", "saliency_rad2": 0.01, "sin": 0.02, "cos": 0.001}]
    same = "\n".join(science_markdown({"dihedral_saliency": rows, "dihedral_chi_corr": 0.97}))
    other = "\n".join(science_markdown({"dihedral_saliency": rows, "dihedral_chi_corr": 0.15}))
    assert "0.970 (one process" in same and "NOT one process" not in same
    assert "0.150 (NOT one process" in other
    assert SAME_PROCESS_CORR > 0.5


def test_science_preset_only_for_vgvapg_and_consistent():
    cfg = resolve_config("vgvapg", "science")
    assert cfg.science and cfg.equilibrium_method == "remd" and cfg.remd_exchanges >= 2
    assert cfg.hmr and cfg.remd_replicas == 6 and cfg.n_koopman == 1
    assert (cfg.ts_low, cfg.ts_high) == (0.49, 0.51)
    with pytest.raises(ConfigError, match="vgvapg"):
        resolve_config("alanine_dipeptide", "science")
    plain = {"equilibrium_method": "plain", "equilibrium_replicas": 10,
             "equilibrium_steps": 50000}
    assert resolve_config("vgvapg", "science", overrides=plain).equilibrium_replicas == 10
    with pytest.raises(ConfigError, match="n_koopman"):
        resolve_config("vgvapg", "science", overrides={**plain, "n_koopman": 2})


@pytest.mark.slow
def test_science_pipeline_smoke(tmp_path):
    """The science stages end to end at tiny size (a few minutes on 2 cores): equilibrium
    ensemble of packed replicas, generations with transitions, dihedral χ, channels,
    paper_comparison.md beside report.md."""
    import json

    from amore_openmm.pipeline import AmoreRun
    ov = dict(equilibrium_method="plain", equilibrium_replicas=10, equilibrium_steps=3250,
              equilibration_steps=250,
              n_starts=120, iterations=600, iterations_per_generation=20, generations=2,
              paths_per_generation=1, starts_per_path=3, path_max_nodes=10, path_step=0.1,
              final_paths=3, sensitivity_bins=10, sensitivity_samples=120, minibatch=100)
    out = tmp_path / "run"
    with AmoreRun(out, "vgvapg", preset="science", overrides=ov, quiet=True) as run:
        rep = run.run()
        assert run.is_complete()
    sci = rep["science"]
    eq = sci["equilibrium"]
    assert eq["replicas"] == 10 and eq["ns_sampled"] == pytest.approx(10 * 3250 * 0.002 / 1000)
    assert set(eq["halves"]["tv"]) == {r["dihedral"] for r in sci["dihedral_saliency"]}
    assert len(sci["dihedral_saliency"]) == 10
    assert all(r["sin"] is not None and r["cos"] is not None for r in sci["dihedral_saliency"])
    assert rep["generations"][0]["new_transitions"] is not None
    assert "channels" in sci and sci["channels"]["n_paths"] == 3
    data = np.load(out / "data" / "koopman.npz")
    w, gen = data["weights"], data["generation"]
    assert np.all(w[gen == 0] == 1.0) and np.all(w[gen > 0] == 0.0)
    md = (out / "report.md").read_text()
    assert "Dihedral χ: saliency per backbone dihedral" in md and "Transition channels" in md
    corr = sci["dihedral_chi_corr"]       # started from the run's χ: the same process
    assert corr > SAME_PROCESS_CORR and f"Correlation with the run's χ over the ensemble: " \
        f"{corr:.3f} (one process" in md
    comp = (out / "paper_comparison.md").read_text()
    assert "| quantity | paper | ours | agreement |" in comp and "VAL3 ψ" in comp
    assert "final paths: 3, started at χ" in comp    # where the "transition states" were
    assert json.loads((out / "sensitivity" / "channels.json").read_text())["n_paths"] == 3


def test_channel_figure_is_written(tmp_path):
    from amore_openmm.plots import plot_channels_phi_psi
    rng = np.random.default_rng(0)
    ens = rng.uniform(-3, 3, (300, 2))
    chans = [[rng.uniform(-3, 3, (8, 2)) for _ in range(2)], [rng.uniform(-3, 3, (8, 2))]]
    out = plot_channels_phi_psi(tmp_path / "f.png", ens, np.ones(300), chans, [2 / 3, 1 / 3],
                                residue="VAL3", others=[rng.uniform(-3, 3, (4, 2))])
    assert out.is_file() and out.stat().st_size > 1000


# --------------------------------------------------------------------------------------------
# replica-exchange ensemble (equilibrium_method = "remd")
# --------------------------------------------------------------------------------------------
def test_remd_settings_are_checked():
    with pytest.raises(ConfigError, match="remd_exchanges"):
        resolve_config("vgvapg", "science", overrides={"remd_exchanges": 1})
    with pytest.raises(ConfigError, match="equilibrium_method"):
        resolve_config("vgvapg", "science", overrides={"equilibrium_method": "hot"})
    with pytest.raises(ConfigError, match="remd_ps_per_exchange"):
        resolve_config("vgvapg", "science", overrides={"remd_ps_per_exchange": 0.0})


def _hydrogen_bonds(ms):
    return np.array([(a.index, b.index) for a, b in ms.topology.bonds()
                     if "H" in (a.element.symbol, b.element.symbol)])


def _mean_energy(ms, x, temperature):
    import openmm
    ctx = openmm.Context(ms.system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    out = []
    for xi in x:
        ctx.setPositions(xi)
        out.append(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            openmm.unit.kilojoule_per_mole))
    return float(np.mean(out))


def test_remd_stages_give_base_temperature_frames_and_bursts_of_the_original_system(tmp_path):
    """equilibrium_method = remd on alanine dipeptide (vacuum, no constraints): the frames
    come from the HMR replicas (X–H bonds held at their constraint length) at the base
    temperature (their potential energy is that of plain MD at 310 K, not at the top
    temperature), and the Koopman bursts ran the original, unconstrained system (the end
    points' X–H bonds vibrate); the acceptance per neighbour pair is recorded."""
    from amore_openmm.pipeline import AmoreRun
    from amore_openmm.sampling import sample_trajectory
    from amore_openmm.systems import load_system
    ov = dict(science=True, equilibrium_method="remd", remd_replicas=3, remd_t_max=500.0,
              remd_exchanges=60, remd_ps_per_exchange=0.2, equilibration_steps=500,
              n_starts=30, n_koopman=2, platform="CPU", workers=1)
    with AmoreRun(tmp_path / "run", "alanine_dipeptide", overrides=ov, quiet=True) as run:
        run.run(until="initial_bursts")
        eq = run.state["equilibrium"]
        data = run.load_data()
    remd = eq["remd"]
    assert remd["temperatures_K"][0] == pytest.approx(310.0)
    assert remd["temperatures_K"][-1] == pytest.approx(500.0)
    assert len(remd["acceptance"]) == 2 and remd["hmr"] and remd["timestep_ps"] == 0.004
    assert sum(remd["n_attempted"]) == 60 and remd["exchanges_discarded"] == 5
    assert eq["frames_per_replica"] == 55 and set(eq["halves"]["tv"])
    frames = np.load(tmp_path / "run" / "checkpoint" / "equilibrium.npz")["traj"][0]
    assert not (tmp_path / "run" / "checkpoint" / "remd.npz").exists()
    ms = load_system("alanine_dipeptide")
    hb = _hydrogen_bonds(ms)

    def lengths(x):
        return np.linalg.norm(x[:, hb[:, 0]] - x[:, hb[:, 1]], axis=-1)
    r_frames, r_ends = lengths(frames), lengths(data.y[:, 0])
    assert np.ptp(r_frames, axis=0).max() < 1e-3        # constrained (HMR replicas)
    assert np.ptp(r_ends, axis=0).min() > 3e-3          # free: the original system
    assert len(data) == 30 and data.n_koopman == 2 and np.all(data.weights == 1.0)
    assert data.lag_steps == ms.lag_steps and data.timestep == pytest.approx(ms.timestep)
    # every start is a REMD frame
    d = np.abs(data.x[:, None] - frames[None]).max(axis=(2, 3)).min(axis=1)
    assert d.max() < 1e-5
    # base temperature: the frames' mean energy is plain MD's at 310 K, not at 500 K
    u_remd = _mean_energy(ms, frames, 310.0)
    hot = ms.with_overrides(temperature=500.0)
    u = {t: _mean_energy(ms, sample_trajectory(s, 60, 50, 3, platform="CPU",
                                               progress=False)[10:], t)
         for t, s in ((310.0, ms), (500.0, hot))}
    assert u[500.0] - u[310.0] > 20.0                    # the test can tell them apart
    assert abs(u_remd - u[310.0]) < 0.3 * (u[500.0] - u[310.0])


def test_remd_frames_resume_to_the_same_frames(tmp_path):
    from amore_openmm.pipeline.science import remd_frames
    from amore_openmm.systems import load_system
    ms = load_system("alanine_dipeptide")
    kw = dict(n_replicas=2, t_max=400.0, ps_per_exchange=0.1, equilibration_ps=0.2, seed=5,
              platform="CPU")
    full, info = remd_frames(ms, 16, **kw)
    ck = tmp_path / "remd.npz"
    part, _ = remd_frames(ms, 8, checkpoint=ck, **kw)           # stopped after 8 exchanges
    resumed, info2 = remd_frames(ms, 16, checkpoint=ck, **kw)   # continues from there
    assert full.shape == resumed.shape == (1, 14, ms.n_atoms, 3) and part.shape[1] == 6
    np.testing.assert_allclose(resumed, full, rtol=0, atol=1e-4)
    assert info2["n_accepted"] == info["n_accepted"]
    with pytest.raises(ValueError, match="remd_exchanges"):
        remd_frames(ms, 3, **kw)
