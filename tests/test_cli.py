"""The `amore` command line: exit codes and error messages, single-stage commands, info."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from amore_openmm.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
FAST = ["--n-starts=40", "--stride-steps=100", "--n-koopman=2", "--workers=1",
        "--platform=Reference"]


def test_unknown_system_exit_2_names_it(tmp_path, capsys):
    rc = main(["run", "no_such_system", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'no_such_system'" in err and "alanine_dipeptide" in err
    assert not (tmp_path / "r").exists(), "nothing may be written for a bad system"


def test_unwritable_output_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["run", "muller_brown", "--out", str(blocker / "run"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and str(blocker / "run") in err
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["run", "muller_brown", "--out", str(ro / "run"), *FAST]) == 2
        finally:
            ro.chmod(0o700)


def test_unknown_config_key_exit_2_names_key_and_file(tmp_path, capsys):
    conf = tmp_path / "settings.toml"
    conf.write_text("[run]\nn_starts = 50\nburst_count = 3\n")
    rc = main(["run", "muller_brown", "--out", str(tmp_path / "r"), "--config", str(conf)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown setting 'burst_count'" in err and "settings.toml" in err
    # a flag that does not exist is a usage error too
    assert main(["run", "muller_brown", "--out", str(tmp_path / "r"), "--n-startz", "3"]) == 2
    assert "--n-startz" in capsys.readouterr().err
    # bad value
    assert main(["run", "muller_brown", "--out", str(tmp_path / "r"), "--optimizer=sgd"]) == 2
    assert "optimizer" in capsys.readouterr().err


def test_resume_other_system_and_existing_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "muller_brown", "--out", str(out), "--until", "trajectory",
                 "--quiet", *FAST]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["completed"] == ["trajectory"] and state["system"]["name"] == "muller_brown"
    capsys.readouterr()
    assert main(["run", "alanine_dipeptide", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of system 'muller_brown'" in err and "alanine_dipeptide" in err
    assert main(["run", "muller_brown", "--out", str(out), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--resume", "--n-koopman=3"]) == 2
    assert "n_koopman" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--resume", "--until", "nope"]) == 2
    # resuming continues after the completed stage
    assert main(["run", "--out", str(out), "--resume", "--until", "initial_bursts",
                 "--quiet"]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["completed"] == ["trajectory", "initial_bursts"]
    from amore_openmm.data import KoopmanData
    d = KoopmanData.load(out / "data" / "koopman.npz")
    assert len(d) == 40 and d.n_koopman == 2


def test_help_version_and_missing_command(capsys):
    assert main(["--help"]) == 0
    assert "build-systems" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--n-starts", "--generations", "--resume", "--config", "--quiet", "--kappa"):
        assert flag in out


def test_featurizer_help_names_every_featurizer():
    """The --featurizer help lists exactly the kinds make_featurizer accepts."""
    from amore_openmm.chi import FEATURIZER_KINDS
    from amore_openmm.config import RunConfig
    help_text = RunConfig.__dataclass_fields__["featurizer"].metadata["help"]
    named = {w.strip(" ,():") for w in help_text.split("(")[0].split(",")}
    assert named == set(FEATURIZER_KINDS)


def test_info_lists_platforms_and_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "openmm" in out and "Reference" in out and "torch" in out and "gpu" in out


def test_info_names_the_chi_backend_and_why(monkeypatch, capsys):
    """`amore info` says which χ backend is active and why: the one resolve_backend gives,
    an override by AMORE_CHI_BACKEND, and a bad override reported, not raised."""
    from amore_openmm.forces import resolve_backend
    from amore_openmm.forces.backend import ENV_VAR
    monkeypatch.delenv(ENV_VAR, raising=False)
    name, reason = resolve_backend("auto")
    assert main(["info"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("chi_backend"))
    assert f"{name} ({reason})" in line
    monkeypatch.setenv(ENV_VAR, "pythonforce")
    assert main(["info"]) == 0
    assert f"pythonforce (environment {ENV_VAR}=pythonforce)" in capsys.readouterr().out
    monkeypatch.setenv(ENV_VAR, "bogus")
    assert main(["info"]) == 0
    assert "chi_backend" in (out := capsys.readouterr().out) and "bogus" in out


def test_every_subcommand_has_a_function():
    from amore_openmm.cli import COMMANDS
    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subs.choices) == set(COMMANDS)


def test_single_stage_commands_chain(tmp_path, capsys):
    """sample -> train -> mep -> sensitivity on files, Müller–Brown, seconds."""
    data = tmp_path / "data.npz"
    assert main(["sample", "muller_brown", "--out", str(data), "--n-starts", "600",
                 "--stride-steps", "1000", "--n-koopman", "4", "--workers", "1",
                 "--platform", "Reference", "--quiet"]) == 0
    model = tmp_path / "chi_state.pt"
    script = tmp_path / "chi.pt"
    assert main(["train", str(data), "--system", "muller_brown", "--out", str(model),
                 "--script", str(script), "--iterations", "200"]) == 0
    assert model.is_file() and script.is_file()
    from amore_openmm.chi import ChiModel
    m = ChiModel.load(model)
    # oriented: basin A (first initial structure) low, basin B high
    assert m.chi(np.array([[-0.558, 1.442, 0.0]]))[0] < 0.3
    assert m.chi(np.array([[0.623, 0.028, 0.0]]))[0] > 0.7
    mep = tmp_path / "mep"
    assert main(["mep", "--model", str(model), "--system", "muller_brown", "--data", str(data),
                 "--out", str(mep), "--n-paths", "1", "--ts-low", "0.3", "--ts-high", "0.7",
                 "--max-nodes", "20", "--step", "0.05", "--workers", "1", "--quiet"]) == 0
    assert (mep / "paths.npz").is_file() and (mep / "path_000.pdb").is_file()
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in mep.iterdir()}
    sens = tmp_path / "sens"
    assert main(["sensitivity", "--model", str(model), "--system", "muller_brown", "--data",
                 str(data), "--out", str(sens), "--paths", str(mep / "paths.npz"),
                 "--bins", "10"]) == 0
    for name in ("atoms.csv", "levelset.npz", "features.csv", "path_000.pdb"):
        assert (sens / name).is_file()
    # the paths' folder is an input: nothing in it is rewritten
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in mep.iterdir()} == before
    assert "top atoms (0-based): 0:MB1:P" in capsys.readouterr().out
    # a second fit of the same data (another seed): the saved ranking is the mean of both
    fit = tmp_path / "chi_fit1.pt"
    assert main(["train", str(data), "--system", "muller_brown", "--out", str(fit),
                 "--iterations", "200", "--seed", "1", "--no-restore-best"]) == 0
    assert "restored_best" not in ChiModel.load(fit).metadata["training"]
    assert m.metadata["training"]["restored_best"]     # the run's default
    both = tmp_path / "sens2"
    assert main(["sensitivity", "--model", str(model), "--fit", str(fit), "--system",
                 "muller_brown", "--data", str(data), "--out", str(both), "--bins", "10"]) == 0
    assert "(mean over 2 χ fits)" in capsys.readouterr().out
    from amore_openmm.data import KoopmanData
    from amore_openmm.sensitivity import Sensitivity, chi_sensitivity
    d = KoopmanData.load(data)
    one = Sensitivity.load(sens / "levelset.npz")
    two = Sensitivity.load(both / "levelset.npz")
    other = chi_sensitivity(ChiModel.load(fit), d.x, weights=d.weights, bins=10, bootstrap=0)
    assert one.fits == 1 and two.fits == 2
    assert np.allclose(two.per_atom, 0.5 * (one.per_atom + other.per_atom), rtol=1e-6)


def test_flag_defaults_come_from_runconfig_and_the_library(monkeypatch):
    """Every single-stage flag is a RunConfig setting with RunConfig's default; χ-MEP
    settings left at auto are not passed on, so trace_chi_mep's own defaults apply."""
    import inspect

    from amore_openmm import mep
    from amore_openmm.cli import STAGE_OPTIONS
    from amore_openmm.config import RunConfig
    from amore_openmm.pipeline import trace_paths
    from amore_openmm.settings import MEPSettings
    required = {"sample": ["sample", "muller_brown", "--out", "x"],
                "train": ["train", "d", "--system", "s", "--out", "o"],
                "mep": ["mep", "--model", "m", "--system", "s", "--data", "d", "--out", "o"],
                "sensitivity": ["sensitivity", "--model", "m", "--system", "s", "--data", "d",
                                "--out", "o"]}
    defaults = RunConfig()
    for cmd, opts in STAGE_OPTIONS.items():
        args = build_parser().parse_args(required[cmd])
        for opt in opts:
            name = opt[1] if isinstance(opt, tuple) else opt
            assert getattr(args, name) == getattr(defaults, name), (cmd, name)
    assert defaults.path_step is None and defaults.path_max_nodes is None
    seen = {}
    # enough transition states for any path count (a thin window is topped up from χ)
    monkeypatch.setattr(mep, "transition_states", lambda *a, **k: np.zeros((64, 1, 3)))
    monkeypatch.setattr(mep, "trace_chi_meps", lambda *a, **k: seen.update(k) or [])
    args = build_parser().parse_args(required["mep"])
    trace_paths("muller_brown", None, np.zeros((3, 1, 3)), args.final_paths,
                step=args.path_step, kappa=args.kappa, max_nodes=args.path_max_nodes,
                tracer="pool")
    # "auto": the library's defaults (amore_openmm.settings.MEPSettings) apply
    assert not {"step", "max_nodes", "kappa"} & set(seen) and seen["settings"] == MEPSettings()
    sig = inspect.signature(mep.trace_chi_mep).parameters
    assert sig["step"].default is None and "max_nodes" not in sig
    # a value given on the command line is passed on
    args = build_parser().parse_args(required["mep"] + ["--step", "0.03"])
    trace_paths("muller_brown", None, np.zeros((3, 1, 3)), 1, step=args.path_step,
                tracer="pool")
    assert seen["settings"] == MEPSettings(step=0.03)


def test_run_has_file_input_flags(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--temperature", "--forcefield", "--implicit-solvent", "--atoms", "--pdb"):
        assert flag in out


def test_a_file_name_never_selects_a_bundled_preset(tmp_path):
    from amore_openmm.config import PRESETS, RunConfig, resolve_config
    pdb = tmp_path / "alanine_dipeptide.pdb"
    pdb.write_text((REPO / "systems" / "alanine_dipeptide" / "alanine_dipeptide.pdb")
                   .read_text())
    assert resolve_config(str(pdb)).n_starts == RunConfig().n_starts
    assert resolve_config("alanine_dipeptide").n_starts == \
        PRESETS["alanine_dipeptide"]["default"]["n_starts"] != RunConfig().n_starts
    quick = resolve_config(str(pdb), "quick")
    assert quick.n_starts != PRESETS["alanine_dipeptide"]["quick"]["n_starts"]
    assert quick.to_dict() == resolve_config(str(tmp_path / "x.pdb"), "quick").to_dict() | {
        "system": str(pdb)}
    # nor a file named like the bundled water box (or a file in a folder of that name)
    box = tmp_path / "alanine_dipeptide_tip3p"
    box.mkdir()
    prmtop = box / "alanine_dipeptide_tip3p.prmtop"
    prmtop.write_text((REPO / "systems" / "alanine_dipeptide_tip3p" / prmtop.name).read_text())
    assert resolve_config(str(prmtop), "quick").n_starts == \
        resolve_config(str(tmp_path / "x.pdb"), "quick").n_starts
    assert resolve_config("alanine_dipeptide_tip3p", "quick").n_starts == \
        PRESETS["alanine_dipeptide_tip3p"]["quick"]["n_starts"]


def test_file_input_settings_from_flags_and_defaults_are_recorded(tmp_path, capsys):
    """A .pdb run: --temperature is taken; what came from defaults (lag, featurizer for the
    bundled folder) is written to config.toml and run.log; --pdb only goes with a .xml."""
    from amore_openmm.config import RunConfig
    pdb = tmp_path / "ala.pdb"
    pdb.write_text((REPO / "systems" / "alanine_dipeptide" / "alanine_dipeptide.pdb")
                   .read_text())
    small = ["--until", "trajectory", "--n-starts=2", "--stride-steps=2", "--workers=1",
             "--platform=Reference", "--quiet"]
    out = tmp_path / "r"
    assert main(["run", str(pdb), "--out", str(out), "--temperature", "310", *small]) == 0
    cfg = RunConfig.read(out / "config.toml")
    assert cfg.temperature == 310.0 and cfg.lag_steps is not None
    # "auto" is resolved for the file's atoms and written down (22 atoms: pairwise_sym)
    assert cfg.featurizer == "pairwise_sym"
    log = (out / "run.log").read_text()
    line = next(x for x in log.splitlines() if "settings from the system's defaults" in x)
    assert "lag_steps=" in line and "featurizer=pairwise_sym" in line
    assert "temperature" not in line
    assert "featurizer auto -> pairwise_sym" in log
    out2 = tmp_path / "r2"
    assert main(["run", str(pdb), "--out", str(out2), *small]) == 0
    assert RunConfig.read(out2 / "config.toml").temperature == 300.0
    assert "temperature=300" in (out2 / "run.log").read_text()
    capsys.readouterr()
    assert main(["run", str(pdb), "--out", str(tmp_path / "r3"), "--pdb", str(pdb)]) == 2
    assert "only needed for a System .xml" in capsys.readouterr().err


def test_system_xml_with_pdb_flag(tmp_path, capsys):
    import openmm

    from amore_openmm.config import RunConfig
    from amore_openmm.systems import load_system
    ala = load_system("alanine_dipeptide")
    xml = tmp_path / "ala.xml"
    xml.write_text(openmm.XmlSerializer.serialize(ala.system))
    pdb = REPO / "systems" / "alanine_dipeptide" / "alanine_dipeptide.pdb"
    small = ["--until", "trajectory", "--n-starts=2", "--stride-steps=2", "--workers=1",
             "--platform=Reference", "--quiet"]
    assert main(["run", str(xml), "--out", str(tmp_path / "bad"), *small]) == 2
    assert "pdb" in capsys.readouterr().err
    out = tmp_path / "r"
    assert main(["run", str(xml), "--pdb", str(pdb), "--out", str(out), *small]) == 0
    assert RunConfig.read(out / "config.toml").pdb == str(pdb.resolve())


def test_atoms_selection_reaches_the_system(tmp_path, capsys):
    """--atoms is an mdtraj selection handed to load_system; one that matches nothing is
    bad input (exit 2, no traceback)."""
    rc = main(["run", "alanine_dipeptide", "--out", str(tmp_path / "r"), "--atoms",
               "resname XYZ", "--until", "trajectory", "--n-starts=2", "--stride-steps=2",
               "--workers=1", "--platform=Reference", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "resname XYZ" in err
