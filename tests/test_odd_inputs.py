"""Odd inputs a new user tries: a platform this machine lacks, output that is not a terminal,
the deprecated ``simtk`` import notice."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amore_openmm.cli import main
from amore_openmm.progress import LineProgress, progress_bar
from amore_openmm.systems import PlatformError, get_platform, load_system, platform_names

REPO = Path(__file__).resolve().parent.parent


def _missing_gpu_platform() -> str:
    have = platform_names()
    missing = [p for p in ("CUDA", "OpenCL", "HIP") if p not in have]
    if not missing:
        pytest.skip("every GPU platform is installed here")
    return missing[0]


def test_missing_platform_exit_2_names_the_platforms_here_and_the_install(tmp_path, capsys):
    name = _missing_gpu_platform()
    out = tmp_path / "run"
    assert main(["run", "alanine_dipeptide", "--out", str(out), "--preset", "quick",
                 "--platform", name]) == 2
    err = capsys.readouterr().err
    assert f"platform {name!r} is not available here" in err
    assert all(p in err for p in platform_names())      # what there is instead
    assert "install" in err and "Traceback" not in err
    assert "There is no registered Platform" not in err  # OpenMM's raw message
    assert not out.exists()                             # refused before anything is written


def test_get_platform_errors_are_bad_input():
    assert get_platform("Reference").getName() == "Reference"
    with pytest.raises(PlatformError, match="check the spelling") as err:
        get_platform("cuda")  # names are case-sensitive
    assert isinstance(err.value, ValueError)
    with pytest.raises(PlatformError, match="not available here"):
        load_system("alanine_dipeptide").make_context(_missing_gpu_platform())


def test_progress_is_whole_lines_when_stderr_is_not_a_terminal():
    buf = io.StringIO()
    bar = progress_bar(1000, desc="bursts x", unit="burst", file=buf)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
    bar.set_postfix(loss="1.0e-02")
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # a start and an end line, none per update (interval 30 s)
    assert lines[0].startswith("bursts x: 0/1000 bursts (0%)") and "started" in lines[0]
    assert lines[-1].startswith("bursts x: 1000/1000 bursts (100%)") and \
        lines[-1].endswith("loss=1.0e-02, done")
    assert len(lines) == 2
    often = LineProgress(3, desc="p", unit="path", file=io.StringIO(), interval=0.0)
    often.update(1)
    often.update(1)
    often.close()
    assert often.file.getvalue().count("\n") == 4 and "stopped" in often.file.getvalue()


def test_progress_is_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    from tqdm import tqdm
    bar = progress_bar(10, desc="d", file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_openmmtorch_import_prints_no_simtk_notice():
    """openmmtorch's wrapper imports ``simtk.openmm``, whose shim logs a deprecation notice on
    the root logger; the package's one import of it drops that notice."""
    code = ("from amore_openmm.forces.torchforce import import_openmmtorch\n"
            "try:\n    import_openmmtorch()\nexcept ImportError:\n    raise SystemExit(3)\n"
            "import logging; logging.getLogger().warning('still logging')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if res.returncode == 3:
        pytest.skip("openmmtorch is not installed")
    assert res.returncode == 0, res.stderr
    assert "simtk" not in res.stderr
    assert "still logging" in res.stderr  # the root logger itself is left alone


@pytest.mark.parametrize("flags, problem", [
    (["--kappa", "-5"], "kappa must be > 0"),
    (["--kappa", "stiff"], "--kappa 'stiff' is not a number"),
    (["--windows", "1"], "windows must be >= 2"),
])
def test_fes_bad_input_exit_2(tmp_path, capsys, flags, problem):
    from amore_openmm.biased import projection_chi
    model = tmp_path / "chi_state.pt"
    projection_chi((-0.558, 1.442), (0.623, 0.028)).save(model)
    out = tmp_path / "fes"
    assert main(["fes", "--model", str(model), "--system", "muller_brown", "--out", str(out),
                 "--frames", "5", "--bootstrap", "2", *flags]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err


def test_fes_without_a_model_exit_2(tmp_path, capsys):
    assert main(["fes", "--model", str(tmp_path / "none.pt"), "--system", "muller_brown",
                 "--out", str(tmp_path / "fes")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fes_command_writes_the_profile_and_the_barrier(tmp_path, capsys):
    import json
    from amore_openmm.biased import projection_chi
    model = tmp_path / "chi_state.pt"
    projection_chi((-0.558, 1.442), (0.623, 0.028)).save(model)
    out = tmp_path / "fes"
    assert main(["fes", "--model", str(model), "--system", "muller_brown", "--out", str(out),
                 "--windows", "11", "--frames", "200", "--equilibration", "20", "--bins", "10",
                 "--bootstrap", "5", "--quiet"]) == 0
    assert "ΔF‡ =" in capsys.readouterr().out
    for name in ("fes.csv", "fes.png", "fes.json", "fes.npz", "umbrella_samples.npz"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "fes.json").read_text())
    # Müller–Brown A → B along this χ: a barrier of several kT (exact 6.25 kT on [0, 1])
    assert 2.0 < summary["barrier_kT"] < 12.0 and summary["barrier_err_kT"] > 0


def test_fes_of_windows_that_do_not_overlap_is_not_reported(tmp_path, capsys):
    """Three stiff windows (χ width ~0.025 around 0, 0.5, 1) share no samples: MBAR cannot
    join them, so the command refuses the profile (exit 1) and says how to fix it."""
    import json
    from amore_openmm.biased import projection_chi
    model = tmp_path / "chi_state.pt"
    projection_chi((-0.558, 1.442), (0.623, 0.028)).save(model)
    out = tmp_path / "fes"
    assert main(["fes", "--model", str(model), "--system", "muller_brown", "--out", str(out),
                 "--windows", "3", "--kappa", "2e4", "--frames", "100", "--equilibration",
                 "10", "--bins", "10", "--bootstrap", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not certified" in err and "--windows" in err
    summary = json.loads((out / "fes.json").read_text())
    assert summary["certified"] is False and summary["window_overlap_min"] < 0.03


def test_interrupted_umbrella_windows_resume_to_the_uninterrupted_frames(tmp_path, monkeypatch):
    import numpy as np
    from amore_openmm.biased import UmbrellaSampler, projection_chi
    from amore_openmm.biased import umbrella as umbrella_module
    from amore_openmm.interrupt import Interrupted
    from amore_openmm.systems import muller_brown_system
    ms = muller_brown_system()
    model = projection_chi((-0.558, 1.442), (0.623, 0.028))
    settings = dict(frames=30, equilibration=5, seed=3)
    sampler = UmbrellaSampler(ms, model, np.linspace(0, 1, 4), kappa="auto")
    whole = sampler.run(**settings)
    calls = {"n": 0}

    def stop_in_window_3() -> None:  # a signal's stop, seen at the 75th frame
        calls["n"] += 1
        if calls["n"] == 75:
            raise Interrupted()
    ck = tmp_path / "partial.npz"
    monkeypatch.setattr(umbrella_module, "check_interrupt", stop_in_window_3)
    with pytest.raises(Interrupted):
        sampler.run(checkpoint=ck, **settings)
    with np.load(ck) as f:
        assert int(f["windows_done"]) == 2 and len(f["positions"]) == 60
    monkeypatch.undo()
    resumed = sampler.run(checkpoint=ck, **settings)
    np.testing.assert_allclose(resumed.positions, whole.positions, atol=1e-9)
    np.testing.assert_allclose(resumed.chi, whole.chi, atol=1e-9)
    # another run's checkpoint is not used
    other = UmbrellaSampler(ms, model, np.linspace(0, 1, 5), kappa="auto").run(
        checkpoint=ck, frames=10, equilibration=2, seed=3)
    assert len(other.positions) == 50
