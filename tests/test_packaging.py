"""A non-editable install carries the bundled systems (setup.py: amore_openmm.systems_data)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_installed_package_has_and_finds_every_bundled_system(tmp_path):
    pytest.importorskip("setuptools")  # runs setup.py build_py
    lib = tmp_path / "lib"
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = lib / "amore_openmm" / "systems_data"
    source = REPO / "systems"
    bundled = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file()
                     and "__pycache__" not in p.parts and p.suffix != ".pyc")
    missing = [str(p) for p in bundled if not (data / p).is_file()]
    assert not missing, f"package_data in setup.py leaves out {missing}"
    # run from outside the checkout, with only the built package importable as amore_openmm
    code = ("import amore_openmm, sys\n"
            "from amore_openmm.systems import bundled_systems, load_system, systems_root\n"
            "print(amore_openmm.__file__); print(systems_root())\n"
            "for name in bundled_systems():\n"
            "    ms = load_system(name); print(name, ms.n_atoms)\n")
    env = {k: v for k, v in os.environ.items() if k != "AMORE_SYSTEMS_DIR"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env=dict(env, PYTHONPATH=str(lib)))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout.splitlines()
    assert out[0].startswith(str(lib)) and out[1] == str(data)
    loaded = dict(line.split() for line in out[2:])
    assert {"alanine_dipeptide", "vgvapg", "muller_brown"} <= set(loaded)
    assert loaded["alanine_dipeptide"] == "22" and loaded["vgvapg"] == "73"
