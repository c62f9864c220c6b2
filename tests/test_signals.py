"""SIGINT and SIGTERM inside the threaded stages stop the run cleanly, and it resumes to the
result of an uninterrupted run.

The signal is sent from outside, as a terminal or a batch queue sends it, a short time after
the stage announces its progress display (on a pipe it prints a "started" line). A signal
that lands after the stage has ended is still a valid test of the next safe point; the
assertions do not depend on where it landed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from amore_openmm.interrupt import (Interrupted, check_interrupt, exit_code, stop_on_signals,
                                    stop_requested)

REPO = Path(__file__).resolve().parent.parent
# CPU platform: burst slots are threads, and two χ-MEP tracer threads (``--workers 2``)
FLAGS = ["alanine_dipeptide", "--preset", "quick", "--platform", "CPU", "--workers", "2"]
#: (line that shows the stage is running, seconds to wait, signal); the same stage twice
#: (the second time after a resume) gets the other signal
INTERRUPTS = [("bursts alanine_dipeptide:", 0.5, signal.SIGINT),
              ("bursts alanine_dipeptide:", 0.3, signal.SIGTERM),
              ("ISOKANN: 0/300", 0.4, signal.SIGTERM),
              ("ISOKANN: 0/300", 0.4, signal.SIGINT),
              ("χ-MEPs", 1.0, signal.SIGINT),
              ("χ-MEPs", 1.0, signal.SIGTERM)]
FATAL = ("terminate called", "Traceback", "OpenMMException", "Aborted", "core dumped",
         "simtk", "\r")  # and no deprecated import notice, no carriage-return bar frames


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # one CPU-platform thread per Context: forces are then summed in one order, and two
    # runs of one seed agree to round-off on any machine
    return dict(os.environ, OMP_NUM_THREADS="1", OPENMM_CPU_THREADS="1", PYTHONPATH=path)


def _amore(*args: str) -> list[str]:
    return [sys.executable, "-m", "amore_openmm.cli", "run", *args]


def _run_until_signal(cmd: list[str], trigger: str, delay: float, sig: int
                      ) -> tuple[int, str, bool]:
    """Run ``cmd``; ``delay`` s after a stderr line holding ``trigger`` and "started", send
    ``sig``. Returns (exit code, stderr, whether the signal was sent)."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8")
    lines: list[str] = []
    sent = False
    timer = None
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if not sent and trigger in line and "started" in line:
            timer = threading.Timer(delay, proc.send_signal, args=(sig,))
            timer.start()
            sent = True
    rc = proc.wait(timeout=600)
    if timer is not None:
        timer.join()
    return rc, "".join(lines), sent


@pytest.fixture(scope="module")
def after_trajectory(tmp_path_factory):
    """A run directory after its equilibrium trajectory. Both runs below start from copies:
    the trajectory uses every CPU thread, and the CPU platform sums forces in an order that
    changes with the threads' timing, so two trajectories of one seed are not the same."""
    out = tmp_path_factory.mktemp("signals") / "trajectory"
    res = subprocess.run(_amore(*FLAGS, "--out", str(out), "--until", "trajectory"),
                         env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(after_trajectory, tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "reference"
    shutil.copytree(after_trajectory, out)
    res = subprocess.run(_amore("--out", str(out), "--resume"), env=_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_signals_in_threaded_stages_exit_cleanly_and_resume_to_the_same_result(
        after_trajectory, uninterrupted, tmp_path, same_data_and_chi):
    out = tmp_path / "run"
    shutil.copytree(after_trajectory, out)
    cmd = _amore("--out", str(out), "--resume")
    codes = []
    for trigger, delay, sig in INTERRUPTS:
        rc, err, sent = _run_until_signal(cmd, trigger, delay, sig)
        for bad in FATAL:
            assert bad not in err, f"{bad!r} after {sig.name} at {trigger!r}:\n{err[-3000:]}"
        cmd = _amore("--out", str(out), "--resume")
        if rc == 0:  # the run finished before the trigger (or the signal) came
            assert not sent or "interrupted" not in err
            break
        assert sent, err[-3000:]
        assert rc == 128 + sig, (sig.name, rc, err[-3000:])
        assert "interrupted" in err and "--resume" in err
        codes.append(rc)
    assert set(codes) == {130, 143}, f"each signal must have interrupted a stage: {codes}"
    if rc != 0:
        res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    same_data_and_chi(uninterrupted, out, atol=1e-5)
    p1 = np.load(uninterrupted / "mep" / "paths.npz")
    p2 = np.load(out / "mep" / "paths.npz")
    np.testing.assert_array_equal(p1["path_id"], p2["path_id"])
    np.testing.assert_array_equal(p1["certified"], p2["certified"])
    np.testing.assert_allclose(p1["chi"], p2["chi"], atol=1e-3)
    # level-set minima to the minimiser tolerance (1 kJ/mol/nm RMS force): kJ/mol
    np.testing.assert_allclose(p1["energy"], p2["energy"], atol=0.5)
    log = (out / "run.log").read_text()
    assert log.count("interrupted (") == len(codes) and "resuming" in log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_requests_a_stop_that_the_next_safe_point_raises(sig):
    with stop_on_signals():
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while not stop_requested() and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        with pytest.raises(Interrupted) as err:
            check_interrupt()
        assert err.value.signum == sig and exit_code(err.value) == 128 + sig
        assert isinstance(err.value, KeyboardInterrupt)
    assert not stop_requested()   # the block leaves no stop behind
    check_interrupt()
    assert signal.getsignal(sig) is not None and signal.getsignal(sig).__module__ != \
        "amore_openmm.interrupt"


def test_a_stop_requested_between_stages_is_logged_and_resumes(tmp_path):
    """A signal that lands after one stage has finished stops the run before the next one;
    run.log says so (a batched χ-MEP stage of the quick preset takes ~1 s, so signals often
    land there), and nothing is marked done."""
    from amore_openmm.pipeline import AmoreRun
    with AmoreRun(tmp_path / "run", "muller_brown", preset="quick") as run:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 5
            while not stop_requested() and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(Interrupted):
                run.run()
        first = run.stages()[0]
        assert run.completed == []
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"run interrupted (SIGINT) before stage {first}" in log and "--resume" in log
