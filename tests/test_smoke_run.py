"""The pipeline that users type, end to end in the default suite: `amore run
alanine_dipeptide` at reduced size through the command line (about half a minute on one
core), checking the run directory and that a certified χ-MEP crosses between the basins."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

#: reduced sizes: a few hundred starts, a few hundred iterations, one generation, short paths
SMOKE = ["--seed=0", "--n-starts=400", "--n-koopman=1", "--iterations=200",
         "--iterations-per-generation=30", "--minibatch=100", "--generations=1",
         "--paths-per-generation=1", "--starts-per-path=4", "--final-paths=1",
         "--path-step=0.05", "--path-max-nodes=30", "--sensitivity-bins=10",
         "--sensitivity-samples=400", "--workers=1", "--platform=Reference"]

FILES = ["config.toml", "run.log", "data/koopman.npz", "model/chi.pt", "model/chi_state.pt",
         "mep/paths.npz", "mep/path_000.pdb", "sensitivity/atoms.csv",
         "sensitivity/levelset.npz", "sensitivity/features.csv", "figures/ramachandran.png",
         "report.json", "report.md", "checkpoint/state.json"]


def test_amore_run_alanine_dipeptide_through_the_command_line(tmp_path):
    out = tmp_path / "D"
    path = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    res = subprocess.run([sys.executable, "-m", "amore_openmm.cli", "run", "alanine_dipeptide",
                          "--out", str(out), "--quiet", *SMOKE], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    for rel in FILES:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert not [p for p in out.rglob(".*") if p.name != ".lock"], "temporary files left"

    from amore_openmm.data import KoopmanData
    from amore_openmm.pipeline import load_chipaths
    from amore_openmm.plots import phi_psi_quads
    from amore_openmm.systems import dihedral_angles, load_system
    data = KoopmanData.load(out / "data" / "koopman.npz", n_atoms=22)
    assert np.sum(data.origin == "trajectory") == 400
    new = data.generation == 1
    assert np.all(data.origin[new] == "mep") and np.all(data.weights[new] == 0)
    assert np.all(data.weights[~new] > 0)

    # the physical fact: a certified path crosses from one basin to the other
    (p,) = load_chipaths(out / "mep" / "paths.npz")
    cert = np.flatnonzero(p.certified)
    assert len(cert) >= 3
    assert p.chi[cert].min() < 0.2 and p.chi[cert].max() > 0.8, p.chi[cert]
    phi_q, psi_q = phi_psi_quads(load_system("alanine_dipeptide").topology)[1]
    ends = p.positions[[cert[0], cert[-1]]]
    psi = np.degrees(dihedral_angles(ends, np.array([psi_q])))[:, 0]
    # αR (ψ ≈ −40…60°) at one end, β/C5 (|ψ| ≳ 120°) at the other
    assert abs((psi[1] - psi[0] + 180.0) % 360.0 - 180.0) > 90.0, psi

    rep = json.loads((out / "report.json").read_text())
    assert [g["generation"] for g in rep["generations"]] == [0, 1]
    (info,) = rep["paths"]
    assert info["n_certified"] == len(cert) and info["n_nodes"] == len(p)
    assert info["barrier"] is not None and info["barrier"] > 0
    top = rep["top_atoms"]
    assert top and all(a["mean_grad_sq_err"] >= 0 and 0 <= a["top_k_frequency"] <= 1
                       for a in top)
    with open(out / "sensitivity" / "atoms.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 22 and {"atom_index_0based", "atom_index_1based"} <= set(rows[0])
    md = (out / "report.md").read_text()
    assert f"{len(cert)}/{len(p)}" in md and "validation loss" in md
    assert "A periodic (solvated) system" not in md
    # the peptide's backbone atoms are named with their rank among all atoms, best first
    line = next(ln for ln in md.splitlines() if ln.startswith("Backbone atoms (N, CA"))
    named = re.findall(r"(\w+):(\w+) \(index (\d+), rank (\d+)\)", line)
    assert len(named) == 5 and all(n in {"N", "CA", "C", "O", "H", "OXT"} for _, n, _, _ in named)
    ranks = [int(r) for *_, r in named]
    assert ranks == sorted(ranks) and ranks[0] >= 1
