#!/usr/bin/env python
"""Regenerate the bundled systems in this folder from sequence (deterministic).

    python systems/build.py                     # all (see BUNDLED_BUILDERS)
    python systems/build.py alanine_dipeptide   # only some
    python systems/build.py --out /tmp/systems  # somewhere else

The structures are built by :mod:`amore_openmm.systems` (internal coordinates → heavy atoms
with NeRF, Modeller.addHydrogens, OpenMM minimisation on the Reference platform; solvent
boxes with Modeller.addSolvent). See ``amore_openmm.systems.bundled``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from amore_openmm.systems import build_bundled_systems  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="systems to build (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent),
                        help="output folder (default: this systems/ folder)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    written = build_bundled_systems(args.out, args.names or None)
    for name, files in written.items():
        print(f"{name}: {len(files)} file(s) in {Path(args.out) / name}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
