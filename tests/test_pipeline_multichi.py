"""`amore run --n-chi K`: the pipeline's transitions stage (issue 24)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amore_openmm.cli import main  # noqa: E402
from amore_openmm.config import ConfigError, resolve_config  # noqa: E402
from amore_openmm.multichi import MultiChiModel, memberships  # noqa: E402
from amore_openmm.pipeline import AmoreRun  # noqa: E402

#: Müller–Brown, one generation, then two memberships on all data
TINY = {"n_starts": 1000, "stride_steps": 1000, "n_koopman": 4, "iterations": 200,
        "iterations_per_generation": 40, "minibatch": 100, "generations": 1,
        "paths_per_generation": 1, "starts_per_path": 16, "path_max_nodes": 30,
        "path_step": 0.05, "final_paths": 1, "sensitivity_bins": 10,
        "sensitivity_samples": 1000, "workers": 1, "platform": "Reference", "seed": 0,
        "figures": False, "n_chi": 2}


@pytest.fixture(scope="module")
def k2_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("nchi") / "run"
    with AmoreRun(out, "muller_brown", preset="quick", overrides=TINY, quiet=True) as run:
        assert "transitions" in run.stages()
        report = run.run()
    return out, report


def test_two_memberships_separate_the_basins_and_the_path_between_them_is_certified(k2_run):
    out, report = k2_run
    model = MultiChiModel.load(out / "model" / "multichi.pt")
    assert model.n_chi == 2
    # the two Müller–Brown minima A (-0.558, 1.442) and B (0.623, 0.028) are two states
    ab = np.zeros((2, 1, 3))
    ab[:, 0, :2] = [(-0.558, 1.442), (0.623, 0.028)]
    chi = memberships(model, ab)
    assert np.argmax(chi[0]) != np.argmax(chi[1])
    assert chi.max(axis=1).min() > 0.8
    tr = report["transitions"]
    assert tr["n_chi"] == 2 and set(tr["pairs"]) == {"0-1"}
    pair = tr["pairs"]["0-1"]
    assert max(pair["certified_nodes"]) >= 2
    assert (out / "transitions" / "pair_0_1" / "paths.npz").is_file()
    rates = json.loads((out / "transitions" / "rates.json").read_text())
    assert np.asarray(rates["rates"]).shape == (2, 2)
    md = (out / "report.md").read_text()
    assert "## Transitions between 2 states" in md
    # 1000 starts × 4 bursts of 0.001 ps: too short a lag to resolve a Müller–Brown rate,
    # and the certificate says so instead of reporting one
    assert rates["lag_time_ps"] < 0.01 and not rates["valid"]
    assert any("no transition is resolved" in n for n in rates["notes"])
    assert "**INVALID**" in md
    # the k = 1 stages ran as before: the report still has its χ-MEP and atom ranking
    assert report["paths"] and report["top_atoms"]


def test_bad_n_chi_is_a_config_error_and_exit_2(tmp_path, capsys):
    with pytest.raises(ConfigError, match="n_chi"):
        resolve_config("muller_brown", overrides={"n_chi": 0})
    rc = main(["run", "muller_brown", "--preset", "quick", "--n-chi", "0",
               "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "n_chi" in capsys.readouterr().err
