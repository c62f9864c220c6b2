"""ISOKANN on data of a selection (y of the solute only) and the training memory guard."""
import numpy as np
import pytest
import torch

from amore_openmm.chi import make_featurizer
from amore_openmm.chi.network import default_network_spec
from amore_openmm.cli import main
from amore_openmm.data import KoopmanData, MemoryBudgetError
from amore_openmm.isokann import Isokann, koopman_chi
from amore_openmm.isokann_memory import (check_training_memory, estimate_training_bytes,
                                         featurize)
from amore_openmm.systems import load_system


@pytest.fixture(scope="module")
def water_box():
    return load_system("alanine_dipeptide_tip3p")


@pytest.fixture(scope="module")
def solute_data(water_box):
    """20 starts × 2 bursts; y holds the 22 solute atoms only."""
    rng = np.random.default_rng(0)
    x0 = water_box.positions[0]
    x = x0[None] + 0.01 * rng.standard_normal((20, water_box.n_atoms, 3))
    sel = water_box.selection
    y = x[:, None, sel] + 0.01 * rng.standard_normal((20, 2, len(sel), 3))
    return KoopmanData(x, y, lag_steps=10, timestep=0.002, system_name=water_box.name,
                       atoms=sel)


def test_isokann_trains_on_data_of_the_selection(water_box, solute_data):
    assert solute_data.n_selected == 22 and solute_data.n_atoms == water_box.n_atoms
    model = Isokann(iterations=3, minibatch=8, seed=1).fit(solute_data, system=water_box)
    chi_x, kchi = koopman_chi(model, solute_data)
    assert chi_x.shape == (20,) and kchi.shape == (20,) and np.all(np.isfinite(kchi))
    # features of the selected end points equal those of the same atoms in full positions
    full = np.repeat(solute_data.x[:1], 1, axis=0).copy()
    full[:, water_box.selection] = solute_data.y[0, :1]
    f_sel = featurize(model.featurizer, solute_data.y[0, :1], torch.float64,
                      torch.device("cpu"), solute_data.atoms)
    f_full = featurize(model.featurizer, full, torch.float64, torch.device("cpu"))
    np.testing.assert_allclose(f_sel.numpy(), f_full.numpy(), rtol=1e-6)


def test_tiny_budget_refuses_training_with_the_numbers(water_box, solute_data):
    with pytest.raises(MemoryBudgetError) as err:
        Isokann(iterations=1, memory_budget_gb=1e-6).fit(solute_data, system=water_box)
    msg = str(err.value)
    for part in ("GB", "features", "weights", "--atoms", "--featurizer",
                 "AMORE_MEMORY_BUDGET_GB"):
        assert part in msg, (part, msg)


def test_budget_from_the_environment(water_box, solute_data, monkeypatch):
    monkeypatch.setenv("AMORE_MEMORY_BUDGET_GB", "1e-6")
    with pytest.raises(MemoryBudgetError):
        Isokann(iterations=1).fit(solute_data, system=water_box)
    monkeypatch.setenv("AMORE_MEMORY_BUDGET_GB", "8")
    Isokann(iterations=1).fit(solute_data, system=water_box)


def test_featurizing_the_water_is_refused_before_the_network_is_built(water_box):
    """The issue's case: every atom of the box featurized gives ~10⁶ distances and a first
    layer of ~10⁹–10¹⁰ weights; the guard answers from the spec, without building it."""
    everything = water_box.with_overrides(atoms="all")
    feat = make_featurizer(everything, "pairwise_heavy")
    spec = default_network_spec(feat)
    assert feat.n_features > 50_000
    est = estimate_training_bytes(500, 4, feat.n_features, spec, 256, n_atoms=feat.n_atoms)
    assert est["n_params"] > 1e8 and est["total"] > 4e9
    with pytest.raises(MemoryBudgetError, match="pairwise_heavy"):
        check_training_memory(500, 4, feat, spec, 256, budget_gb=4.0)
    # the solute alone fits easily
    small = make_featurizer(water_box, "pairwise_sym")
    check_training_memory(500, 4, small, default_network_spec(small), 256, budget_gb=4.0)


def test_cli_turns_the_refusal_into_exit_code_2(water_box, solute_data, tmp_path, capsys,
                                                monkeypatch):
    path = solute_data.save(tmp_path / "data.npz")
    monkeypatch.setenv("AMORE_MEMORY_BUDGET_GB", "1e-6")
    code = main(["train", str(path), "--system", "alanine_dipeptide_tip3p",
                 "--out", str(tmp_path / "chi.pt"), "--iterations", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "memory budget" in err and "--atoms" in err and "Traceback" not in err
    assert not (tmp_path / "chi.pt").exists()
