#!/usr/bin/env python
"""Burst engine throughput against bare OpenMM Contexts on the same platform.

Measures, for one system:

(a) the engine: ``BurstSampler.run`` over a ``ContextPool`` (``--bursts`` bursts of
    ``--lag`` steps, K = 1, default re-seeding policy of the platform), aggregate integrator
    steps per second (pool start-up excluded, reported separately);
(b) one bare Context stepping the same total number of steps with ``integrator.step``;
(c) the parallel limit: as many bare Contexts as the pool really created (its default on GPUs
    is two Contexts per device, on CPU/Reference one per core), each stepping its share
    with ``integrator.step`` in one call, started together, from threads and from processes.
    Reference Contexts of one process share a process-global random generator, so from
    threads they race; the process variant is the honest limit there. The ratio uses the
    faster of the two.

Every baseline uses the same System, integrator (kind, temperature, friction, timestep),
platform and platform properties (CPU: one thread per Context) as the engine. Prints one
JSON line with the rates and the ratios engine/(c) and engine/(b), plus the load average
(other processes on the machine distort all numbers alike only if they are steady).

Examples::

    python benchmarks/burst_throughput.py                       # alanine_dipeptide, 2000 × 100
    python benchmarks/burst_throughput.py --system vgvapg --bursts 256   # OBC2 implicit solvent
    python benchmarks/burst_throughput.py --system my.pdb --implicit-solvent implicit/obc2.xml
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openmm  # noqa: E402

from amore_openmm.sampling import (BurstSampler, ContextPool, choose_platform,  # noqa: E402
                                   default_platform_properties, usable_cpus)
from amore_openmm.systems import load_system  # noqa: E402


def _bare_context(system_xml: str, integrator_xml: str, platform: str, props: dict,
                  x0: np.ndarray, temperature: float):
    system = openmm.XmlSerializer.deserialize(system_xml)
    integ = openmm.XmlSerializer.deserialize(integrator_xml)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(x0)
    ctx.setVelocitiesToTemperature(temperature, 1)
    integ.step(10)  # warm-up (kernels, neighbour lists)
    ctx.getState(getPositions=True)
    return ctx, integ


def _child(spec_file: str, steps: int) -> None:
    """Bare-Context process for baseline (c): build, report ready, wait for 'go', step."""
    spec = json.loads(Path(spec_file).read_text())
    ctx, integ = _bare_context(spec["system_xml"], spec["integrator_xml"], spec["platform"],
                               spec["props"], np.asarray(spec["x0"]), spec["temperature"])
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on Linux
    integ.step(steps)
    ctx.getState(getPositions=True)
    print(json.dumps({"t0": t0, "t1": time.monotonic()}), flush=True)


def bare_single(spec: dict, steps: int) -> float:
    ctx, integ = _bare_context(spec["system_xml"], spec["integrator_xml"], spec["platform"],
                               spec["props"], np.asarray(spec["x0"]), spec["temperature"])
    t0 = time.perf_counter()
    integ.step(steps)
    ctx.getState(getPositions=True)
    return steps / (time.perf_counter() - t0)


def bare_threads(spec: dict, n: int, steps_each: int) -> float:
    built = [_bare_context(spec["system_xml"], spec["integrator_xml"], spec["platform"],
                           spec["props"], np.asarray(spec["x0"]), spec["temperature"])
             for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    ends = [0.0] * n

    def work(i: int) -> None:
        ctx, integ = built[i]
        barrier.wait()
        integ.step(steps_each)
        ctx.getState(getPositions=True)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return n * steps_each / (max(ends) - t0)


def bare_processes(spec: dict, n: int, steps_each: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_file = fh.name
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--_child", spec_file,
                                   str(steps_each)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        times = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.wait()
    finally:
        os.unlink(spec_file)
    return n * steps_each / (max(t["t1"] for t in times) - min(t["t0"] for t in times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="alanine_dipeptide",
                    help="any load_system source: bundled name, folder, .pdb, .prmtop, ...")
    ap.add_argument("--implicit-solvent", default=None,
                    help="for a .pdb source, e.g. implicit/obc2.xml")
    ap.add_argument("--temperature", type=float, default=None, help="K (default: the system's)")
    ap.add_argument("--bursts", type=int, default=2000)
    ap.add_argument("--lag", type=int, default=None,
                    help="steps per burst (default: the system's lag_steps)")
    ap.add_argument("--size", type=int, default=None,
                    help="pool slots (default: the pool's own: CPU cores, 2 per GPU)")
    ap.add_argument("--platform", default="auto")
    ap.add_argument("--repeats", type=int, default=1, help="best of N for (a) and (c)")
    ap.add_argument("--quick", action="store_true", help="400 bursts (a smoke run)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(args._child[0], int(args._child[1]))
        return 0
    if args.quick:
        args.bursts = min(args.bursts, 400)

    kw = {}
    if args.implicit_solvent:
        kw["implicit_solvent"] = args.implicit_solvent
    if args.temperature:
        kw["temperature"] = args.temperature
    ms = load_system(args.system, **kw)
    if args.lag is None:
        args.lag = ms.lag_steps
    load0 = os.getloadavg()[0]
    probe = None
    platform = args.platform
    if platform == "auto":
        platform, probe = choose_platform(ms)
    props = default_platform_properties(platform, None)
    spec = {"system_xml": openmm.XmlSerializer.serialize(ms.system),
            "integrator_xml": openmm.XmlSerializer.serialize(ms.make_integrator(seed=1)),
            "platform": platform, "props": props, "x0": ms.positions[0].tolist(),
            "temperature": ms.temperature}
    total = args.bursts * args.lag
    rng = np.random.default_rng(0)
    starts = ms.positions[0][None] + rng.normal(scale=1e-3, size=(args.bursts,) +
                                                ms.positions[0].shape)

    # (b) one bare Context
    single = bare_single(spec, total)
    thr, prc, engine = [], [], []
    t0 = time.perf_counter()
    pool = ContextPool(ms, size=args.size, platform=platform)
    pool_start = time.perf_counter() - t0
    try:
        # (c) the parallel limit with the Contexts the pool really holds
        size = pool.contexts_created
        steps_each = total // size
        sampler = BurstSampler(pool)
        sampler.run(starts[: 4 * size], 1, args.lag, seed=1, progress=False)  # warm-up
        for rep in range(args.repeats):
            thr.append(bare_threads(spec, size, steps_each) if size > 1 else single)
            if platform == "Reference" and size > 1:
                prc.append(bare_processes(spec, size, steps_each))
            t0 = time.perf_counter()
            data = sampler.run(starts, 1, args.lag, seed=rep, progress=False)
            engine.append(data.n_starts * args.lag / (time.perf_counter() - t0))
        stats = sampler.last_stats
        mode, fast = pool.mode, pool.fast_reseed
        drops = data.extra["drop_counts"]
    finally:
        pool.close()
    limit = max(thr + prc)
    out = {
        "benchmark": "burst_throughput", "system": ms.name, "n_atoms": ms.n_atoms,
        "platform": platform, "auto_choice": probe["chosen"] if probe else None,
        "probe_steps_per_s": probe["steps_per_s"] if probe else None,
        "probe_seconds": probe["probe_seconds"] if probe else None,
        "pool_size": size, "pool_contexts": size, "pool_mode": mode, "fast_reseed": fast,
        "dropped": drops,
        "reseed": stats.get("reseed"),
        "bursts": args.bursts, "lag_steps": args.lag, "total_steps": total,
        "engine_steps_per_s": round(max(engine), 1),
        "bare_single_steps_per_s": round(single, 1),
        "bare_threads_steps_per_s": round(max(thr), 1),
        "bare_processes_steps_per_s": round(max(prc), 1) if prc else None,
        "bare_parallel_steps_per_s": round(limit, 1),
        "engine_vs_parallel_ratio": round(max(engine) / limit, 3),
        "engine_vs_single_ratio": round(max(engine) / single, 3),
        "engine_chunks": stats.get("chunks"), "pool_start_s": round(pool_start, 2),
        "load_avg_1min_before": round(load0, 2), "load_avg_1min_after":
            round(os.getloadavg()[0], 2), "cpus": usable_cpus(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
