#!/usr/bin/env python
"""Run every benchmark script in this folder and print one table.

Each script prints one or more JSON lines (objects). Numeric fields become rows; fields whose
name says ratio/speedup/efficiency are shown in the ratio column. All results are written to
``benchmarks/results/<host>-<date>.json``. Scripts are run with ``--quick`` when ``--quick`` is
given here. Exit status is non-zero if any script failed (the table still prints).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RATIO_WORDS = ("ratio", "speedup", "speed_up", "efficiency", "fraction")


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _flatten(obj: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--only", nargs="*", help="run only these scripts (file names)")
    args = ap.parse_args(argv)
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    if args.only:
        scripts = [p for p in scripts if p.name in args.only or p.stem in args.only]
    results, rows, failed = {}, [], []
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"== {script.name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-2000:])
        objs = _json_lines(proc.stdout)
        results[script.stem] = {"returncode": proc.returncode, "seconds":
                                round(time.perf_counter() - t0, 1), "results": objs}
        if proc.returncode != 0:
            failed.append(script.name)
        for obj in objs:
            plat = str(obj.get("platform", obj.get("platform_name", "")))
            label = obj.get("benchmark", obj.get("system", script.stem))
            for name, value in _flatten(obj).items():
                is_ratio = any(w in name.lower() for w in RATIO_WORDS)
                rows.append((f"{script.stem}:{label}", name, "" if is_ratio else value,
                             value if is_ratio else "", plat))
    width = max([len(r[0]) + len(r[1]) + 1 for r in rows] + [20])
    print(f"{'metric'.ljust(width)}  {'value':>14}  {'ratio':>8}  platform")
    for group, name, value, ratio, plat in rows:
        v = f"{value:14.4g}" if value != "" else " " * 14
        r = f"{ratio:8.3f}" if ratio != "" else " " * 8
        print(f"{(group + ' ' + name).ljust(width)}  {v}  {r}  {plat}")
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out_dir / f"{socket.gethostname()}-{stamp}.json"
    out.write_text(json.dumps({"host": socket.gethostname(), "python": platform.python_version(),
                               "date": stamp, "scripts": results}, indent=1))
    print(f"\nwritten {out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
