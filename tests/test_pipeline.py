"""End-to-end tests of the AMORE pipeline (AmoreRun) and its run directory."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amore_openmm.pipeline import AmoreRun, RunDirError, load_chipaths  # noqa: E402
from amore_openmm.config import ConfigError, RunConfig, resolve_config  # noqa: E402
from amore_openmm.data import KoopmanData  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: Müller–Brown through 2 generations in a few seconds (one worker: no process start-up)
TINY = {"n_starts": 1000, "stride_steps": 1000, "n_koopman": 4, "iterations": 200,
        "iterations_per_generation": 40, "minibatch": 100, "generations": 2,
        "paths_per_generation": 1, "starts_per_path": 8, "path_max_nodes": 30,
        "path_step": 0.05, "final_paths": 1, "sensitivity_bins": 10,
        "sensitivity_samples": 1000, "workers": 1, "platform": "Reference", "seed": 0}


def _cli_flags(settings: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def mb_run(tmp_path_factory):
    """One uninterrupted tiny Müller–Brown run (shared by the layout and resume tests)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mb") / "run"
    with AmoreRun(out, "muller_brown", preset="quick", overrides=TINY, quiet=True) as run:
        report = run.run()
    return out, report


def test_layout_every_file_written_and_readable(mb_run):
    out, report = mb_run
    for rel in ["config.toml", "run.log", "data/koopman.npz", "model/chi.pt",
                "model/chi_state.pt", "mep/paths.npz", "mep/path_000.pdb",
                "sensitivity/atoms.csv", "sensitivity/levelset.npz",
                "sensitivity/features.csv", "report.json", "report.md",
                "checkpoint/state.json", "figures/landscape.png"]:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"

    # config round trip
    cfg = RunConfig.read(out / "config.toml")
    assert cfg.generations == 2 and cfg.n_starts == 1000 and cfg.kappa is None

    # data: trajectory starts of generation 0 plus path-node starts of generations 1 and 2
    data = KoopmanData.load(out / "data" / "koopman.npz", n_atoms=1)
    assert data.n_koopman == 4 and data.lag_steps == 10
    assert np.sum(data.origin == "trajectory") == 1000
    for g in (1, 2):
        sel = data.generation == g
        assert 1 <= sel.sum() <= 8 and np.all(data.origin[sel] == "mep")
    assert len(data) == report["data_size"]

    # χ: TorchScript file maps (n, 3) nm -> scalar; the state file reloads to the same χ
    from amore_openmm.chi import ChiModel
    scripted = torch.jit.load(str(out / "model" / "chi.pt"))
    model = ChiModel.load(out / "model" / "chi_state.pt")
    a = np.array([[-0.558, 1.442, 0.0]])
    b = np.array([[0.623, 0.028, 0.0]])
    chi_a = float(scripted(torch.tensor(a)).detach())
    assert chi_a == pytest.approx(float(model.chi(a)[0]), abs=1e-5)
    # oriented: the first initial structure (basin A) has χ ≈ 0, the other basin χ ≈ 1
    assert chi_a < 0.2 and float(model.chi(b)[0]) > 0.8

    # paths: arrays per node, energies in kJ/mol on the Müller–Brown surface
    with np.load(out / "mep" / "paths.npz") as f:
        for key in ("positions", "chi", "energy", "grad_norm", "path_id"):
            assert key in f.files
        assert f["positions"].shape[1:] == (1, 3) and len(f["chi"]) == len(f["path_id"])
    paths = load_chipaths(out / "mep" / "paths.npz")
    assert len(paths) == 1
    from amore_openmm.systems import muller_brown_energy
    p = paths[0]
    np.testing.assert_allclose(p.energy, muller_brown_energy(p.positions[:, 0, :2])
                               + 500.0 * p.positions[:, 0, 2] ** 2, atol=1e-3)
    pdb = (out / "mep" / "path_000.pdb").read_text()
    assert sum(line.startswith("MODEL ") for line in pdb.splitlines()) == len(p.chi)

    # sensitivity files
    with open(out / "sensitivity" / "atoms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "atom_index_0based" in rows[0] and rows[0]["atom_index_0based"] == "0"
    with np.load(out / "sensitivity" / "levelset.npz") as f:
        assert f["levelset"].shape == (1, 10) and len(f["bin_edges"]) == 11
        assert f["counts"].sum() == 1000
    with open(out / "sensitivity" / "features.csv", newline="") as fh:
        feats = {r["feature"] for r in csv.DictReader(fh)}
    assert feats == {"x", "y"}

    # report.json: per-generation records, rates, top atoms/features, MSE
    rep = json.loads((out / "report.json").read_text())
    assert [g["generation"] for g in rep["generations"]] == [0, 1, 2]
    for g in rep["generations"]:
        assert g["n_data"] > 0 and g["loss"] is not None and g["seconds"] > 0
    assert rep["generations"][1]["n_paths"] == 1
    assert rep["exit_rates"]["lag_time_ps"] == pytest.approx(1e-3)
    assert rep["top_atoms"][0]["index_0based"] == 0
    assert len(rep["path_vs_ensemble_mse"]) == 1
    md = (out / "report.md").read_text()
    assert "figures/landscape.png" in md and "Generations" in md
    log = (out / "run.log").read_text()
    assert "generation 2/2" in log


def _env() -> dict:
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def test_resume_after_kill_mid_generation_gives_same_files(mb_run, tmp_path,
                                                          same_data_and_chi):
    """A kill inside ``bursts_1``, after the merged data file was written but before the
    stage was recorded, reproduced deterministically (no timing): the state is rolled back to
    what the kill leaves, plus a temp file of a killed writer. Resuming through the command
    line cuts the data back, redoes the stage and ends with the uninterrupted run's files."""
    ref_out, ref_report = mb_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "amore_openmm.cli", "run", "muller_brown", "--out", str(out),
           "--preset", "quick", "--quiet", "--until", "bursts_1", *_cli_flags(TINY)]
    res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    state_file = out / "checkpoint" / "state.json"
    st = json.loads(state_file.read_text())
    assert st["completed"][-1] == "bursts_1" and st["n_data"] == 1008
    # what a SIGKILL between "merged data saved" and "stage recorded" leaves behind
    st["completed"].remove("bursts_1")
    st["n_data"] = 1000
    state_file.write_text(json.dumps(st))
    (out / "checkpoint" / "bursts_g001.npz").unlink()
    stale = out / "figures" / ".landscape.png.k1ll3d_x.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")
    assert len(KoopmanData.load(out / "data" / "koopman.npz")) == 1008

    res = subprocess.run([sys.executable, "-m", "amore_openmm.cli", "run", "--out", str(out),
                          "--resume", "--quiet"], env=_env(), cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert not stale.exists(), "a killed writer's temp file survived the resume"
    rep = json.loads((out / "report.json").read_text())
    assert [g["generation"] for g in rep["generations"]] == [0, 1, 2]
    # same data as the uninterrupted run (seeded bursts), same χ to training precision
    same_data_and_chi(ref_out, out, atol=1e-6)
    assert (out / "mep" / "path_000.pdb").is_file()
    assert "resuming" in (out / "run.log").read_text()
    assert "removed figures/.landscape.png.k1ll3d_x.png" in (out / "run.log").read_text()


def test_resume_refuses_other_system_and_changed_settings(tmp_path):
    out = tmp_path / "run"
    with AmoreRun(out, "muller_brown", preset="quick", overrides=TINY, quiet=True) as run:
        run.run(until="trajectory")
        assert run.completed == ["trajectory"]
    with pytest.raises(RunDirError, match="holds a run of system 'muller_brown'"):
        AmoreRun(out, "alanine_dipeptide", resume=True)
    with pytest.raises(RunDirError, match="n_starts"):
        AmoreRun(out, resume=True, overrides={"n_starts": 700})
    with pytest.raises(RunDirError, match="already holds a run"):
        AmoreRun(out, "muller_brown", overrides=TINY)
    # a setting that may change on resume
    run = AmoreRun(out, resume=True, overrides={"generations": 3})
    assert run.config.generations == 3 and run.stages()[-1] == "report"
    run.close()
    # training settings may change until the first χ is trained (the remedy a collapsed
    # first fit suggests), not after
    with AmoreRun(out, resume=True, overrides={"lr": 1e-4, "iterations": 50},
                  quiet=True) as run:
        assert run.config.lr == 1e-4
        run.run(until="train_0")
    assert RunConfig.read(out / "config.toml").lr == 1e-4
    with pytest.raises(RunDirError, match="lr: 0.0001 in the run, 0.001 now"):
        AmoreRun(out, resume=True, overrides={"lr": 1e-3})


def test_extending_generations_redoes_final_stages(mb_run, tmp_path):
    import shutil
    ref_out, _ = mb_run
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    with AmoreRun(out, resume=True, overrides={"generations": 3}, quiet=True) as run:
        rep = run.run()
        assert run.is_complete() and run.completed.count("report") == 1
    assert [g["generation"] for g in rep["generations"]] == [0, 1, 2, 3]
    data = KoopmanData.load(out / "data" / "koopman.npz")
    assert np.any(data.generation == 3)


def test_config_layers_and_unknown_keys(tmp_path):
    src = (REPO / "systems" / "muller_brown" / "system.toml").read_text()
    folder = tmp_path / "mb"
    folder.mkdir()
    (folder / "system.toml").write_text(
        src + "\n[run]\nn_starts = 1234\niterations = 77\nlr = 0.002\n\n[run.quick]\n"
              "n_starts = 321\n")
    cfg = resolve_config(str(folder))
    assert cfg.n_starts == 1234 and cfg.iterations == 77
    quick = resolve_config(str(folder), "quick")
    # [run] < built-in quick preset (iterations 200) < [run.quick]; lr kept from [run]
    assert (quick.n_starts, quick.iterations, quick.lr) == (321, 200, 0.002)
    conf = tmp_path / "c.toml"
    conf.write_text("[run]\nn_koopman = 3\nkappa = 5e5\n")
    cfg = resolve_config(str(folder), "default", conf, {"iterations": 10, "seed": None})
    assert (cfg.n_koopman, cfg.kappa, cfg.iterations, cfg.n_starts) == (3, 5e5, 10, 1234)
    # round trip through config.toml
    cfg.write(tmp_path / "config.toml")
    assert RunConfig.read(tmp_path / "config.toml") == cfg
    bad = tmp_path / "bad.toml"
    bad.write_text("n_startz = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown setting 'n_startz' \(did you "
                                          r"mean 'n_starts'\?\)"):
        resolve_config("muller_brown", config_file=bad)
    (folder / "system.toml").write_text(src + "\n[run]\nlag = 3\n")
    with pytest.raises(ConfigError, match=r"system.toml \[run\]: unknown setting 'lag'"):
        resolve_config(str(folder))
    with pytest.raises(ConfigError, match="'iterations' = -1 must be >= 1"):
        resolve_config("muller_brown", overrides={"iterations": -1})
    with pytest.raises(ConfigError, match="ts_low"):
        resolve_config("muller_brown", overrides={"ts_low": 0.6, "ts_high": 0.5})


@pytest.mark.slow
def test_muller_brown_default_pipeline_meets_path_criteria(tmp_path):
    """The χ-MEP criteria on the pipeline's output: saddle within 0.1, barrier top within
    10 kJ/mol of −40.66, mean distance to the string MEP < 0.1."""
    from amore_openmm.strings import path_distance, string_method
    from amore_openmm.systems import load_system
    out = tmp_path / "run"
    with AmoreRun(out, "muller_brown", overrides={"ts_low": 0.49, "ts_high": 0.51},
                  quiet=True) as run:
        rep = run.run()
    paths = load_chipaths(out / "mep" / "paths.npz")
    assert len(paths) >= 1
    saddle = np.array([-0.822, 0.624])
    ms = load_system("muller_brown")
    string = string_method(ms, np.array([[-0.558, 1.442, 0.0]]),
                           np.array([[0.623, 0.028, 0.0]]), n_images=50)
    for p in paths:
        xy = p.positions[:, 0, :2]
        assert np.min(np.linalg.norm(xy - saddle, axis=1)) < 0.1
        assert abs(p.max_energy - (-40.66)) < 10.0
        mean, _ = path_distance(xy, np.asarray(string.images)[:, 0, :2])
        assert mean < 0.1
    assert rep["generations"][-1]["n_data"] > rep["generations"][0]["n_data"]


@pytest.mark.slow
def test_alanine_dipeptide_default_pipeline(tmp_path):
    """`amore run alanine_dipeptide` defaults: χ separates the sampled basins, paths cross
    χ = 0.5, sensitivity and report written, within the 5-minute budget (2 cores)."""
    out = tmp_path / "run"
    with AmoreRun(out, "alanine_dipeptide", quiet=True) as run:
        rep = run.run()
    data = KoopmanData.load(out / "data" / "koopman.npz")
    from amore_openmm.chi import ChiModel
    chi = ChiModel.load(out / "model" / "chi_state.pt").chi(data.x)
    assert chi.min() < 0.15 and chi.max() > 0.85, "χ does not separate the basins"
    assert rep["paths"], "no χ-MEP traced"
    for p in rep["paths"]:
        assert p["chi_min"] < 0.4 and p["chi_max"] > 0.6
        assert p["n_certified"] > 0 and np.isfinite(p["barrier"])
    assert len(rep["top_atoms"]) == 10 and rep["top_features"]
    assert rep["generations"][-1]["n_data"] > rep["generations"][0]["n_data"]
    with np.load(out / "sensitivity" / "levelset.npz") as f:
        assert f["levelset"].shape[0] == 22


@pytest.mark.slow
def test_vgvapg_reduced_pipeline_reports_dihedral_saliency(tmp_path):
    """VGVAPG from its bundled conformations, quick preset, χ on backbone dihedrals: the run
    completes and the report lists the feature saliency over φ/ψ."""
    out = tmp_path / "run"
    with AmoreRun(out, "vgvapg", preset="quick", quiet=True,
                  overrides={"featurizer": "dihedrals", "n_starts": 200}) as run:
        rep = run.run()
    assert rep["top_features"]
    md = (out / "report.md").read_text()
    assert "Most salient features" in md
    traj = np.load(out / "checkpoint" / "trajectory.npz")["frames"]
    assert len(traj) == 200
    assert (out / "sensitivity" / "atoms.csv").read_text().count("\n") == 73 + 1


def test_only_certified_nodes_become_burst_starts():
    from amore_openmm.pipeline import burst_starts
    pos = np.arange(6 * 3, dtype=float).reshape(6, 1, 3)
    paths = [{"certified": np.array([0, 1, 1, 0, 1, 0], bool), "positions": pos},
             {"certified": np.zeros(6, bool), "positions": pos + 100}]
    starts = burst_starts(paths, 2)
    # the first and last certified nodes of path 0; nothing from the uncertified path
    np.testing.assert_array_equal(starts[:, 0, 0], [3.0, 12.0])
    assert burst_starts(paths[1:], 5).shape == (0, 1, 3)


def test_report_marks_uncertified_paths_and_shows_error_bars():
    from amore_openmm.pipeline import report_markdown
    rep = {"system": {"name": "x"}, "settings": {"preset": "quick"}, "generations": [],
           "paths": [{"id": 0, "n_nodes": 5, "n_certified": 5, "certified": True,
                      "chi_min": 0.1, "chi_max": 0.9, "energy_max_certified": 12.0,
                      "barrier": 30.5, "stop_reasons": {}},
                     {"id": 1, "n_nodes": 4, "n_certified": 0, "certified": False,
                      "chi_min": 0.2, "chi_max": 0.7, "energy_max_certified": None,
                      "barrier": None, "stop_reasons": {}}],
           "top_atoms": [{"index_0based": 5, "index_1based": 6, "label": "ACE1:O",
                          "mean_grad_sq": 1.5, "mean_grad_sq_err": 0.2, "fraction": 0.3,
                          "top_k": 5, "top_k_frequency": 0.97}]}
    md = report_markdown(rep)
    row0 = next(line for line in md.splitlines() if line.startswith("| 0 |"))
    row1 = next(line for line in md.splitlines() if line.startswith("| 1 UNCERTIFIED |"))
    assert "5/5" in row0 and "30.5" in row0
    assert "0/4" in row1 and "—" in row1
    atom = next(line for line in md.splitlines() if "ACE1:O" in line)
    assert "1.5 ± 0.2" in atom and "0.97" in atom and "| 5 | 6 |" in atom


def test_sensitivity_fits_average_more_chi_fits_of_the_final_data(tmp_path):
    from amore_openmm.chi import ChiModel
    from amore_openmm.sensitivity import Sensitivity, chi_sensitivity
    torch.set_num_threads(1)
    out = tmp_path / "run"
    with AmoreRun(out, "muller_brown", preset="quick", quiet=True,
                  overrides={**TINY, "generations": 0, "sensitivity_fits": 3}) as run:
        rep = run.run()
    fits = [ChiModel.load(out / "model" / n) for n in ("chi_state.pt", "chi_fit1.pt",
                                                        "chi_fit2.pt")]
    assert [m.metadata.get("fit") for m in fits] == [None, 1, 2]
    data = KoopmanData.load(out / "data" / "koopman.npz")
    x = data.x[data.weights > 0]
    # other seeds, other χ: the fits are not copies of the run's χ
    assert not np.allclose(fits[1].chi(x[:200]), fits[0].chi(x[:200]), atol=1e-3)
    saved = Sensitivity.load(out / "sensitivity" / "levelset.npz")
    own = [chi_sensitivity(m, x, bins=10, bootstrap=0).per_atom for m in fits]
    assert saved.fits == 3 and np.allclose(saved.per_atom, np.mean(own, axis=0), rtol=1e-6)
    assert rep["sensitivity_fits"] == 3
    assert "mean over 3 χ fits" in (out / "report.md").read_text()
