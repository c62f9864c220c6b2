"""`amore run alanine_dipeptide_tip3p` at a tiny size through the command line: the whole
pipeline on a periodic water box (PME, HBonds, rigid water). The run directory is complete,
the tables and path PDBs hold the 22 solute atoms only, y holds the solute only."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

TINY = ["--seed=0", "--n-starts=24", "--n-koopman=1", "--iterations=60",
        "--iterations-per-generation=10", "--minibatch=12", "--generations=1",
        "--paths-per-generation=1", "--starts-per-path=2", "--final-paths=1",
        "--path-step=0.05", "--path-max-nodes=3", "--sensitivity-bins=5",
        "--sensitivity-samples=24", "--workers=1", "--platform=CPU"]

FILES = ["config.toml", "run.log", "data/koopman.npz", "model/chi.pt", "model/chi_state.pt",
         "mep/paths.npz", "mep/path_000.pdb", "sensitivity/atoms.csv",
         "sensitivity/levelset.npz", "sensitivity/features.csv", "report.json", "report.md",
         "checkpoint/state.json"]


@pytest.mark.slow
def test_amore_run_on_a_water_box(tmp_path):
    out = tmp_path / "W"
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    res = subprocess.run([sys.executable, "-m", "amore_openmm.cli", "run",
                          "alanine_dipeptide_tip3p", "--out", str(out), "--quiet", *TINY],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr
    for rel in FILES:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel

    from amore_openmm.data import KoopmanData
    from amore_openmm.systems import load_system
    ms = load_system("alanine_dipeptide_tip3p")
    data = KoopmanData.load(out / "data" / "koopman.npz", n_atoms=ms.n_atoms)
    assert data.n_selected == 22 and np.array_equal(data.atoms, ms.selection)

    with open(out / "sensitivity" / "atoms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["atom_index_0based"]) for r in rows) == list(range(22))
    pdb = (out / "mep" / "path_000.pdb").read_text()
    first = pdb.split("ENDMDL")[0]
    atoms = [ln for ln in first.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    assert len(atoms) == 22 and not any(" HOH " in ln for ln in atoms)
    log = (out / "run.log").read_text()
    assert "burst pool layout on CPU (reseed burst)" in log
    # a box's path energies include the water's rearrangement: the report says so
    assert "A periodic (solvated) system" in (out / "report.md").read_text()
