"""Run-directory reliability: the lock, damaged files, bad input → exit 2 without a
traceback, and writers that leave no temporary files behind (issue 10, item 6)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amore_openmm.cli import main
from amore_openmm.pipeline import AmoreRun, RunDirError

REPO = Path(__file__).resolve().parent.parent
FAST = ["--n-starts=40", "--stride-steps=100", "--n-koopman=2", "--workers=1",
        "--platform=Reference", "--quiet"]


def _env() -> dict:
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def _exit2(capsys, argv: list[str], *needles: str) -> str:
    """``amore argv`` returns 2, prints no traceback, and names every needle."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A Müller–Brown run stopped after its initial bursts (seconds)."""
    out = tmp_path_factory.mktemp("rd") / "run"
    assert main(["run", "muller_brown", "--out", str(out), "--until", "initial_bursts",
                 *FAST]) == 0
    return out


def test_lock_refuses_a_second_process_and_names_the_holder(small_run, capsys):
    with AmoreRun.open(small_run):
        # another process: exit 2 and the holder's pid
        res = subprocess.run([sys.executable, "-m", "amore_openmm.cli", "run", "--out",
                              str(small_run), "--resume", "--quiet"], env=_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr
        assert f"pid {os.getpid()}" in res.stderr and "Traceback" not in res.stderr
        # a second opening in this process is refused too (the lock is per open file)
        with pytest.raises(RunDirError, match="in use by another amore process"):
            AmoreRun.open(small_run)
        _exit2(capsys, ["report", small_run], "in use", str(small_run))
    # released on close: the run can be opened again
    with AmoreRun.open(small_run) as run:
        assert run.completed == ["trajectory", "initial_bursts"]


def _damage(path: Path) -> bytes:
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])
    return good


def test_damaged_checkpoint_data_and_state_exit_2_naming_the_file(small_run, capsys):
    for rel in ("data/koopman.npz", "checkpoint/trajectory.npz"):
        f = small_run / rel
        good = _damage(f)
        try:
            if rel.startswith("data"):
                _exit2(capsys, ["run", "--out", small_run, "--resume", "--until", "train_0",
                                "--quiet"], str(f))
            with AmoreRun.open(small_run) as run:
                with pytest.raises(ValueError, match=str(f)):
                    if rel.startswith("data"):
                        run.load_data()
                    else:
                        from amore_openmm.pipeline.runio import read_npz
                        read_npz(run.paths["trajectory"])
        finally:
            f.write_bytes(good)
    state = small_run / "checkpoint" / "state.json"
    good = _damage(state)
    try:
        _exit2(capsys, ["run", "--out", small_run, "--resume", "--quiet"], str(state))
    finally:
        state.write_bytes(good)


def test_damaged_model_and_data_files_on_the_command_line(small_run, tmp_path, capsys):
    bad_data = tmp_path / "data.npz"
    bad_data.write_bytes((small_run / "data" / "koopman.npz").read_bytes()[:300])
    _exit2(capsys, ["train", bad_data, "--system", "muller_brown", "--out",
                    tmp_path / "m.pt", "--iterations", "3"], str(bad_data))
    for bad_model in (tmp_path / "chi.pt", tmp_path / "chi_state.pt"):
        bad_model.write_bytes(b"PK\x03\x04 not a model")
        _exit2(capsys, ["sensitivity", "--model", bad_model, "--system", "muller_brown",
                        "--data", small_run / "data" / "koopman.npz", "--out", tmp_path / "s"],
               str(bad_model))
        _exit2(capsys, ["mep", "--model", bad_model, "--system", "muller_brown", "--data",
                        small_run / "data" / "koopman.npz", "--out", tmp_path / "m"],
               str(bad_model))


def test_bad_numbers_and_out_naming_a_file_exit_2(small_run, tmp_path, capsys):
    _exit2(capsys, ["sample", "muller_brown", "--out", tmp_path / "d.npz", "--n-starts", "-1"],
           "n_starts", ">= 2")
    _exit2(capsys, ["train", small_run / "data" / "koopman.npz", "--system", "muller_brown",
                    "--out", tmp_path / "m.pt", "--iterations", "-1"], "iterations", ">= 1")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _exit2(capsys, ["run", "muller_brown", "--out", a_file, *FAST], str(a_file), "is a file")
    for cmd in ("mep", "sensitivity"):
        _exit2(capsys, [cmd, "--model", "m.pt", "--system", "muller_brown", "--data",
                        small_run / "data" / "koopman.npz", "--out", a_file], str(a_file),
               "is a file")
    assert a_file.read_text() == "x"


def test_empty_structure_files_exit_2(tmp_path, capsys):
    """Empty inputs are bad input with a message naming the file (the loader's checks)."""
    pdb = tmp_path / "empty.pdb"
    pdb.write_text("")
    _exit2(capsys, ["run", pdb, "--out", tmp_path / "r1"], "empty.pdb")
    prmtop, inpcrd = tmp_path / "empty.prmtop", tmp_path / "empty.inpcrd"
    prmtop.write_text("")
    inpcrd.write_text("")
    _exit2(capsys, ["run", prmtop, "--out", tmp_path / "r2"], "empty.prmtop")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_interrupted_figure_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from amore_openmm import plots

    def half_written(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM through the amore command

    monkeypatch.setattr(Figure, "savefig", half_written)

    class P:  # the attributes plot_path_profile reads
        chi = np.linspace(0, 1, 5)
        energy = np.arange(5.0)
        grad_norm = np.ones(5)

    with pytest.raises(KeyboardInterrupt):
        plots.plot_path_profile(tmp_path / "profile.png", [P()])
    assert list(tmp_path.iterdir()) == []
