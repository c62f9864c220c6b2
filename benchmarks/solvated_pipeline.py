#!/usr/bin/env python
"""The whole pipeline on a water box: ``amore run alanine_dipeptide_tip3p --preset quick``.

Runs the command line in a subprocess (under ``/usr/bin/time -v`` when it exists, else with
``resource.getrusage(RUSAGE_CHILDREN)``) and prints one JSON object with:

* ``wall_s``: wall time of the command; ``exit_code``;
* ``peak_rss_mb``: peak resident memory of the run (``/usr/bin/time`` "Maximum resident set
  size", else the children's ``ru_maxrss``);
* ``stages_s``: wall time per stage (``checkpoint/state.json`` timings of the run);
* ``platform``: the burst platform the run chose, and ``layout``: the CPU pool layout lines
  of ``run.log`` (the measured Contexts × threads choice);
* ``top_atoms``: the most χ-sensitive atoms of ``report.json`` (0-based index, label);
* ``paths``: certified nodes / nodes of the final χ-MEPs;
* ``targets``: the issue's targets for the quick preset (≤ 600 s, ≤ 2048 MB) and whether
  they were met.

Example (the numbers of the report; ~10 min on 2 cores)::

    python benchmarks/solvated_pipeline.py --out /tmp/ala_tip3p_quick
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S, TARGET_MB = 600.0, 2048.0


def run_command(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float | None, str]:
    """(exit code, wall s, peak RSS MB or None, stderr) of ``cmd``."""
    timer = Path("/usr/bin/time").is_file()
    full = (["/usr/bin/time", "-v"] + cmd) if timer else cmd
    t0 = time.perf_counter()
    res = subprocess.run(full, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = None
    if timer:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
        peak = int(m.group(1)) / 1024 if m else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
    return res.returncode, wall, peak, res.stderr


def summarise(out: Path) -> dict:
    """Stage times, platform, layout, top atoms and path certificates from a run directory."""
    info: dict = {}
    state_file = out / "checkpoint" / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        info["stages_s"] = state.get("timings", {})
        info["platform"] = state.get("platform")
    log = out / "run.log"
    if log.is_file():
        lines = log.read_text().splitlines()
        info["layout"] = [ln.split(" ", 3)[-1] for ln in lines if "layout" in ln.lower()][:4]
        info["defaults"] = [ln.split(" ", 3)[-1] for ln in lines
                            if "system's defaults" in ln or "featurizer auto" in ln]
    report = out / "report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        info["top_atoms"] = [(a.get("index_0based"), a.get("label"))
                             for a in (rep.get("top_atoms") or [])[:5]]
        info["paths"] = [f"{p.get('n_certified')}/{p.get('n_nodes')} certified, χ "
                         f"{p.get('chi_min', 0):.3f}..{p.get('chi_max', 0):.3f}, stops "
                         f"{p.get('stop_reasons')}" for p in rep.get("paths") or []]
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default="alanine_dipeptide_tip3p")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", help="run directory (default: a new temporary folder)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="further `amore run` flags")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="amore_tip3p_")) / "R"
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, "-m", "amore_openmm.cli", "run", args.system, "--preset",
           args.preset, "--out", str(out), "--quiet", *args.extra]
    code, wall, peak, err = run_command(cmd, env)
    result = {"command": " ".join(cmd[1:]), "exit_code": code, "wall_s": round(wall, 1),
              "peak_rss_mb": None if peak is None else round(peak, 1),
              "cores": os.cpu_count(), "out": str(out), **summarise(out)}
    result["targets"] = {"wall_s<=600": wall <= TARGET_S,
                         "peak_rss_mb<=2048": peak is not None and peak <= TARGET_MB}
    if code != 0:
        result["stderr_tail"] = err[-2000:]
    print(json.dumps(result, indent=1, default=str))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
