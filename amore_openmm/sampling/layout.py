"""The CPU pool layout: several single-thread Contexts or fewer multi-thread ones, measured.

On the CPU platform a pool of ``c`` usable cores can run ``c`` Contexts of one thread each
(bursts in parallel), or ``c/t`` Contexts of ``t`` threads (each burst faster). Which gives
more steps per second depends on the system: small vacuum molecules do not scale over
threads at all, while PME water boxes spend time in FFTs and neighbour lists whose threading
and cache behaviour decide the matter. So it is measured, not ruled: every layout
``slots × threads = c`` (threads a divisor of c) runs its Contexts concurrently for a short
probe, and the layout with the most steps/s in total wins. The result is cached per System,
integrator and core count, logged, and kept in :attr:`ContextPool.layout_report`.

Results do not depend on the layout beyond round-off: bursts are seeded per start (or per
block of start indices), not per slot. They are not bit-identical across thread counts: the
CPU platform sums forces in another order with another thread count (measured on the TIP3P
box: after 100 steps two runs of one seed differ by ~0.2 nm with 1 vs 2 threads, as round-off
grows chaotically, even with ``DeterministicForces``; with one thread count and
``DeterministicForces=true`` they are bit-identical).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, Sequence

import openmm

from amore_openmm.systems import MolecularSystem

__all__ = ["choose_cpu_layout", "layout_matters", "LAYOUT_MIN_ATOMS"]

log = logging.getLogger("amore_openmm.sampling")

#: systems with more atoms than this (or periodic ones) get a measured layout
LAYOUT_MIN_ATOMS = 500
_LAYOUT_CACHE: dict[str, dict[str, Any]] = {}


def layout_matters(system: MolecularSystem) -> bool:
    """True for systems where the CPU layout can matter (periodic or > 500 atoms); smaller
    vacuum / implicit-solvent systems keep one thread per Context."""
    return bool(system.is_periodic or system.n_atoms > LAYOUT_MIN_ATOMS)


def _layout_rate(system: MolecularSystem, slots: int, threads: int, budget_s: float) -> float:
    """Total steps/s of ``slots`` CPU Contexts of ``threads`` threads stepping concurrently."""
    plat = openmm.Platform.getPlatformByName("CPU")
    ctxs = []
    for i in range(slots):
        ctx = openmm.Context(system.system, system.make_integrator(seed=1 + i), plat,
                             {"Threads": str(threads)})
        ctx.setPositions(system.positions[0])
        ctx.setVelocitiesToTemperature(system.temperature, 1 + i)
        ctx.getIntegrator().step(2)  # warm-up: neighbour lists, PME grids
        ctxs.append(ctx)
    rates = [0.0] * slots
    barrier = threading.Barrier(slots)

    def work(i: int) -> None:
        integ = ctxs[i].getIntegrator()
        barrier.wait()
        steps, block, t0 = 0, 2, time.perf_counter()
        while True:
            integ.step(block)  # OpenMM releases the GIL inside step
            steps += block
            dt = time.perf_counter() - t0
            if dt >= budget_s:
                rates[i] = steps / dt
                return
            block = min(2 * block, 50)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(slots)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return float(sum(rates))


def choose_cpu_layout(system: MolecularSystem, cpus: int, budget_s: float = 0.3,
                      threads: Sequence[int] | None = None) -> dict[str, Any]:
    """Measure the CPU pool layouts of ``system`` on ``cpus`` cores; the report of the best.

    Args:
        system: the system whose bursts the pool will run.
        cpus: usable cores; each layout uses all of them (slots × threads = cpus).
        budget_s: seconds each layout steps (after a 2-step warm-up).
        threads: thread counts per Context to try (default: every divisor of ``cpus``).

    Returns:
        ``{"measured": True, "cpus", "layouts": {"<slots>x<threads>": total steps/s},
        "chosen": "<slots>x<threads>", "slots", "threads", "steps_per_s" (of the chosen),
        "probe_seconds", "cached"}``. Cached per System, integrator, cores and thread counts
        (a cached report has ``cached: True``). The choice is logged at INFO level.
    """
    cpus = max(1, int(cpus))
    tries = sorted({int(t) for t in (threads or [t for t in range(1, cpus + 1)
                                                 if cpus % t == 0]) if 1 <= int(t) <= cpus})
    if not tries:
        raise ValueError(f"choose_cpu_layout(threads={threads!r}): need thread counts in "
                         f"1..{cpus}")
    key = hashlib.sha1((openmm.XmlSerializer.serialize(system.system) + system.integrator +
                        repr((system.timestep, cpus, tries))).encode()).hexdigest()
    if key in _LAYOUT_CACHE:
        return {**_LAYOUT_CACHE[key], "cached": True}
    t_all = time.perf_counter()
    layouts: dict[str, float] = {}
    for t in tries:
        slots = max(1, cpus // t)
        layouts[f"{slots}x{t}"] = round(_layout_rate(system, slots, t, budget_s), 1)
    chosen = max(layouts, key=layouts.get)
    slots, thr = (int(v) for v in chosen.split("x"))
    report = {"measured": True, "cpus": cpus, "layouts": layouts, "chosen": chosen,
              "slots": slots, "threads": thr, "steps_per_s": layouts[chosen],
              "probe_seconds": round(time.perf_counter() - t_all, 3), "cached": False}
    log.info("CPU pool layout for %s on %d cores: %s (Contexts × threads; total steps/s "
             "measured: %s; probe %.2f s)", system.name, cpus, chosen, layouts,
             report["probe_seconds"])
    _LAYOUT_CACHE[key] = report
    return dict(report)
