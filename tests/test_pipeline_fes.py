"""The pipeline's free-energy stage and stratified generation starts (issue 23)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pymbar")

from amore_openmm.config import ConfigError, resolve_config  # noqa: E402
from amore_openmm.data import KoopmanData  # noqa: E402
from amore_openmm.interrupt import Interrupted  # noqa: E402
from amore_openmm.pipeline import AmoreRun  # noqa: E402
from amore_openmm.pipeline.fes_stages import (fes_markdown, start_histogram,  # noqa: E402
                                              STRATIFIED_ORIGIN)

#: Müller–Brown, one generation with both start strategies, a 5-window F(χ)
TINY = {"n_starts": 1000, "stride_steps": 1000, "n_koopman": 4, "iterations": 200,
        "iterations_per_generation": 40, "minibatch": 100, "generations": 1,
        "paths_per_generation": 1, "starts_per_path": 16, "path_max_nodes": 30,
        "path_step": 0.05, "final_paths": 1, "sensitivity_bins": 10,
        "sensitivity_samples": 1000, "workers": 1, "platform": "Reference", "seed": 0,
        "figures": False, "free_energy": "on", "fes_windows": 5, "fes_frames": 20,
        "fes_equilibration": 2, "fes_bootstrap": 10, "generation_starts": "both",
        "stratified_windows": 11, "stratified_frames": 20}


@pytest.fixture(scope="module")
def fes_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fes") / "run"
    with AmoreRun(out, "muller_brown", preset="quick", overrides=TINY, quiet=True) as run:
        report = run.run()
    return out, report


def test_report_carries_the_free_energy_with_its_certificate(fes_run):
    out, rep = fes_run
    fe = rep["free_energy"]
    assert fe["enabled"] and isinstance(fe["certified"], bool) and not fe["headline"]
    assert fe["windows"] == 5 and fe["n_samples"] == 100 and fe["effective_sample_size"] > 0
    summary = json.loads((out / "fes" / "fes.json").read_text())
    assert summary["certified"] == fe["certified"]
    for f in ("fes.csv", "fes.npz", "umbrella_samples.npz"):
        assert (out / "fes" / f).is_file()
    assert not (out / "fes" / "umbrella_partial.npz").exists()
    md = (out / "report.md").read_text()
    assert "## Free energy along χ" in md
    if fe["certified"]:
        assert np.isfinite(fe["barrier_kJ_mol"]) and fe["barrier_err_kJ_mol"] > 0
        assert fe["barrier_kJ_mol"] == pytest.approx(fe["barrier_kT"] * 12.5, rel=1e-6)
        assert "certified" in md and "NOT CERTIFIED" not in md
        top = fe["reweighted_sensitivity"]["top_atoms"]
        assert top[0]["label"] in md and "Most χ-sensitive atoms of the unbiased" in md
    else:   # no number without a certificate
        assert fe["barrier_kJ_mol"] is None and fe["barrier_kT"] is None and fe["reason"]
        assert "NOT CERTIFIED" in md and "reweighted_sensitivity" not in fe
        assert "Most χ-sensitive atoms of the unbiased" not in md
    assert (out / "fes" / "reweighted_atoms.csv").is_file()


def test_stratified_starts_are_flatter_in_chi_than_mep_starts(fes_run):
    out, rep = fes_run
    st = rep["generations"][1]["starts"]
    assert st["strategy"] == "both" and st["stratified"] == 16 and st["mep"] >= 4
    mep, strat = st["chi_histogram_mep"], st["chi_histogram_stratified"]
    # χ-MEP nodes crowd round the transition state; the umbrella frames span χ
    assert strat["flatness"] > mep["flatness"] + 0.05
    assert np.count_nonzero(strat["counts"]) > np.count_nonzero(mep["counts"])
    # the bursts from stratified starts are unbiased MD, with weight 0 like path nodes
    data = KoopmanData.load(out / "data" / "koopman.npz", n_atoms=1)
    sel = data.generation == 1
    assert np.sum(data.origin[sel] == STRATIFIED_ORIGIN) == 16
    assert np.sum(data.origin[sel] == "mep") == st["mep"]
    assert np.all(data.weights[sel] == 0)
    assert (out / "checkpoint" / "stratified_g001.npz").is_file()
    assert "## Generation starts" in (out / "report.md").read_text()


def test_interrupted_free_energy_resumes_to_the_same_windows(fes_run, tmp_path, monkeypatch):
    ref, _ = fes_run
    out = tmp_path / "run"
    shutil.copytree(ref, out, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(out / "fes")
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["completed"] = [s for s in state["completed"]
                          if s not in ("free_energy", "figures", "report")]
    state_file.write_text(json.dumps(state))
    import amore_openmm.biased.umbrella as umbrella
    calls = {"n": 0}

    def stop_in_window_2() -> None:   # a signal arriving during the third window
        calls["n"] += 1
        if calls["n"] > 45:
            raise Interrupted()
    monkeypatch.setattr(umbrella, "check_interrupt", stop_in_window_2)
    with AmoreRun(out, resume=True, quiet=True) as run, pytest.raises(Interrupted):
        run.run()
    assert (out / "fes" / "umbrella_partial.npz").is_file()
    assert "free_energy" not in json.loads(state_file.read_text())["completed"]
    monkeypatch.undo()
    with AmoreRun(out, resume=True, quiet=True) as run:
        rep = run.run()
    assert rep["free_energy"]["certified"] == json.loads(
        (ref / "report.json").read_text())["free_energy"]["certified"]
    with np.load(ref / "fes" / "umbrella_samples.npz") as a, \
            np.load(out / "fes" / "umbrella_samples.npz") as b:
        assert np.allclose(a["chi"], b["chi"], atol=1e-6)


def test_free_energy_auto_is_on_for_periodic_systems_only():
    assert resolve_config("alanine_dipeptide").free_energy == "auto"
    cfg = resolve_config("alanine_dipeptide_tip3p", "quick")
    assert cfg.fes_windows < 21 and cfg.fes_frames < 1000   # reduced for the quick preset
    from amore_openmm.pipeline.fes_stages import fes_enabled

    class Fake:
        def __init__(self, mode, periodic):
            self.config = resolve_config("muller_brown", overrides={"free_energy": mode})
            self.system = type("S", (), {"is_periodic": periodic})()
    assert fes_enabled(Fake("auto", True)) and not fes_enabled(Fake("auto", False))
    assert fes_enabled(Fake("on", False)) and not fes_enabled(Fake("off", True))


@pytest.mark.parametrize("bad", [{"free_energy": "maybe"}, {"fes_windows": 1},
                                 {"fes_kappa": -1.0}, {"generation_starts": "random"},
                                 {"stratified_frames": 1}, {"fes_bootstrap": 0},
                                 {"fes_bins": 1}])
def test_bad_settings_are_config_errors(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        resolve_config("muller_brown", overrides=bad)


def test_uncertified_barrier_is_never_shown_as_a_result():
    fe = {"enabled": True, "certified": False, "headline": True, "chi_generation": 2,
          "windows": 11, "frames_per_window": 40, "stride_steps": 50,
          "effective_sample_size": 120.0, "n_samples": 440, "window_overlap_min": 0.0,
          "min_overlap_required": 0.03, "barrier_kJ_mol": None, "barrier_err_kJ_mol": None,
          "barrier_kT": None, "barrier_err_kT": None, "reason": "windows apart"}
    text = "\n".join(fes_markdown(fe, headline=True))
    assert "NOT CERTIFIED" in text and "kJ/mol (" not in text and "Headline" in text
    ok = {**fe, "certified": True, "barrier_kJ_mol": 30.5, "barrier_err_kJ_mol": 1.5,
          "barrier_kT": 12.2, "barrier_err_kT": 0.6}
    text = "\n".join(fes_markdown(ok))
    assert "30.50 ± 1.50 kJ/mol" in text and "NOT CERTIFIED" not in text


def test_start_histogram_flatness():
    assert start_histogram(np.linspace(0.0, 0.999, 100))["flatness"] == pytest.approx(1.0)
    assert start_histogram(np.full(10, 0.5))["flatness"] == 0.0
