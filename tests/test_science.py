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
    stationary = rng.uniform(-np.pi, np.pi, size=(4, 2000, 2))
    res = halves_check(stationary, ["a", "b"])
    assert res["converged"] and res["max_tv"] < 0.1
    drifting = stationary.copy()
    drifting[:, 1000:, 1] = rng.normal(2.0, 0.2, size=(4, 1000))  # b jumps to one basin
    res = halves_check(drifting, ["a", "b"])
    assert not res["converged"] and res["worst"] == "b" and res["max_tv"] > 0.5
    assert res["frames_per_half"] == 4 * 1000
    with pytest.raises(ValueError, match="names"):
        halves_check(stationary, ["a"])


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
    assert cfg.science and cfg.equilibrium_replicas > 0 and cfg.n_koopman == 1
    assert (cfg.ts_low, cfg.ts_high) == (0.49, 0.51)
    with pytest.raises(ConfigError, match="vgvapg"):
        resolve_config("alanine_dipeptide", "science")
    with pytest.raises(ConfigError, match="n_koopman"):
        resolve_config("vgvapg", "science", overrides={"n_koopman": 2})


@pytest.mark.slow
def test_science_pipeline_smoke(tmp_path):
    """The science stages end to end at tiny size (a few minutes on 2 cores): equilibrium
    ensemble of packed replicas, generations with transitions, dihedral χ, channels,
    paper_comparison.md beside report.md."""
    import json

    from amore_openmm.pipeline import AmoreRun
    ov = dict(equilibrium_replicas=10, equilibrium_steps=3250, equilibration_steps=250,
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
