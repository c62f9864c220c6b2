"""ContextPool (reusable Contexts: the slots that run bursts), the platform choice, and which
platforms can run OpenMM's energy minimiser."""
from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import logging
import os
import queue
import sys
import threading
import time
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import openmm

from amore_openmm.systems import MolecularSystem, get_platform, platform_names
from amore_openmm.threads import JoinedThreadPool

from .engine import GPU_PLATFORMS, BurstSpec, Engine, default_platform_properties
from .layout import choose_cpu_layout, layout_matters
from .workers import ProcessSlot

__all__ = ["ContextPool", "choose_platform", "available_platforms", "platform_can_minimize",
           "minimizer_platforms", "opencl_is_pocl", "POCL_NAME"]

log = logging.getLogger("amore_openmm.sampling")


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that load in this installation."""
    return platform_names()


def usable_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_PROBE_CACHE: dict[str, tuple[str, dict[str, Any]]] = {}
#: the OpenCL platform name of pocl, a CPU emulation of OpenCL
POCL_NAME = "Portable Computing Language"


@functools.lru_cache(maxsize=None)
def _opencl_names(props: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """(OpenCL platform name, device name) OpenMM's OpenCL platform uses with ``props``, or
    None when it cannot create a Context (one 1-particle Context, once per process)."""
    if "OpenCL" not in available_platforms():
        return None
    plat = openmm.Platform.getPlatformByName("OpenCL")
    system = openmm.System()
    system.addParticle(1.0)
    try:
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), plat, dict(props))
        return (plat.getPropertyValue(ctx, "OpenCLPlatformName"),
                plat.getPropertyValue(ctx, "DeviceName"))
    except Exception:  # noqa: BLE001 - no usable OpenCL device
        return None


def opencl_is_pocl(properties: dict[str, str] | None = None) -> bool:
    """True when OpenMM's OpenCL platform (with ``properties``) runs on pocl, the "Portable
    Computing Language" CPU emulation (OpenMM warns that it is unsupported). Cached."""
    names = _opencl_names(tuple(sorted((properties or {}).items())))
    return names is not None and any("portable computing language" in n.lower() or
                                     n.lower().startswith("pocl") for n in names)


def platform_can_minimize(name: str, properties: dict[str, str] | None = None) -> bool:
    """Whether ``openmm.LocalEnergyMinimizer`` may be run on platform ``name``: False when it
    is not available, or for OpenCL on pocl (the minimiser segfaults there) or on no usable
    device; True otherwise. Cheap after the first call (cached)."""
    if name not in available_platforms():
        return False
    if name == "OpenCL":
        return (_opencl_names(tuple(sorted((properties or {}).items()))) is not None and
                not opencl_is_pocl(properties))
    return True


def minimizer_platforms() -> list[str]:
    """The available platforms on which :func:`platform_can_minimize` is True."""
    return [p for p in available_platforms() if platform_can_minimize(p)]


def _probe_rate(system: MolecularSystem, name: str, budget_s: float) -> float:
    """Steps/s of one Context of ``system`` on platform ``name`` (timed for ~budget_s)."""
    plat = openmm.Platform.getPlatformByName(name)
    ctx = openmm.Context(system.system, system.make_integrator(seed=1), plat,
                         default_platform_properties(name, None))
    ctx.setPositions(system.positions[0])
    ctx.setVelocitiesToTemperature(system.temperature, 1)
    integ = ctx.getIntegrator()
    integ.step(5)
    ctx.getState(getPositions=True)
    steps, block = 0, 5
    t0 = time.perf_counter()
    while True:
        integ.step(block)
        ctx.getState(getPositions=True)  # sync (GPU platforms queue work)
        steps += block
        dt = time.perf_counter() - t0
        if dt >= budget_s:
            return steps / dt
        block = min(block * 2, 2000)


def choose_platform(system: MolecularSystem, candidates: Sequence[str] | None = None,
                    budget_s: float = 0.15, verbose: bool = True) -> tuple[str, dict[str, Any]]:
    """Pick the platform with the highest estimated burst throughput for ``system``.

    Each candidate (default: all available) runs a short timed probe: one Context (CPU with
    one thread, GPUs in mixed precision), a few warm-up steps, then steps for about
    ``budget_s`` seconds. Estimated pool throughput = steps/s × parallel slots (usable CPU
    cores for Reference/CPU, one Context per GPU). Returns ``(name, report)``; the report
    holds the measured steps/s per platform. The choice is logged and, with ``verbose``,
    printed to stderr. Results are cached per System and integrator.

    Without ``candidates``, an OpenCL platform running on pocl (a CPU emulation that OpenMM
    calls unsupported, and on which the energy minimiser crashes) is not probed; the report's
    ``skipped`` says so. Name "OpenCL" in ``candidates`` to probe it anyway.
    """
    cands = list(candidates) if candidates else available_platforms()
    skipped = {}
    if not candidates and "OpenCL" in cands and opencl_is_pocl():
        cands.remove("OpenCL")
        skipped["OpenCL"] = f"OpenCL platform is {POCL_NAME} (pocl, a CPU emulation)"
    for name in cands:
        get_platform(name)  # PlatformError naming the platforms that exist and the fix
    sys_xml = openmm.XmlSerializer.serialize(system.system)
    key = hashlib.sha1((sys_xml + system.integrator + repr(system.timestep) +
                        repr(sorted(cands))).encode()).hexdigest()
    if key in _PROBE_CACHE:
        best, report = _PROBE_CACHE[key]
        if verbose:
            print(f"amore_openmm: platform auto -> {best} for {system.name} (cached probe)",
                  file=sys.stderr)
        return best, report
    report: dict[str, Any] = {"steps_per_s": {}, "estimated_pool_steps_per_s": {},
                              "errors": {}, "skipped": skipped}
    cpus = usable_cpus()
    t_all = time.perf_counter()
    for name in cands:
        try:
            rate = _probe_rate(system, name, budget_s)
        except Exception as exc:  # noqa: BLE001 - a platform that fails is not chosen
            report["errors"][name] = str(exc).strip()
            continue
        slots = 1 if name in GPU_PLATFORMS else cpus
        report["steps_per_s"][name] = round(rate, 1)
        report["estimated_pool_steps_per_s"][name] = round(rate * slots, 1)
    est = report["estimated_pool_steps_per_s"]
    if not est:
        raise RuntimeError(f"no OpenMM platform could run {system.name}: {report['errors']}")
    best = max(est, key=est.get)
    report["chosen"] = best
    report["probe_seconds"] = round(time.perf_counter() - t_all, 3)
    msg = (f"amore_openmm: platform auto -> {best} for {system.name} "
           f"(single-Context steps/s: {report['steps_per_s']}; probe "
           f"{report['probe_seconds']:.2f} s)")
    log.info(msg)
    if verbose:
        print(msg, file=sys.stderr)
    _PROBE_CACHE[key] = (best, report)
    return best, report


class ContextPool:
    """Reusable OpenMM Contexts for one system: the slots that run bursts.

    Args:
        system: the :class:`MolecularSystem` (its System, integrator kind, temperature,
            friction and timestep define every Context).
        size: number of slots (Contexts). Default: usable CPU cores for Reference, two
            Contexts per GPU device for CUDA/OpenCL; on CPU, usable cores with one thread each,
            except for systems where it can matter (periodic or > 500 atoms) when neither
            ``size`` nor a ``Threads`` property is given: then the layout (Contexts × threads
            per Context, using every usable core) is measured by
            :func:`~amore_openmm.sampling.layout.choose_cpu_layout` and the fastest taken.
        platform: "auto" (timed probe, see :func:`choose_platform`), "Reference", "CPU",
            "CUDA" or "OpenCL".
        properties: platform properties. CPU defaults to ``{"Threads": "1"}`` (parallelism
            comes from the slots) or the measured layout's thread count (see ``size``);
            GPUs default to ``Precision=mixed``. A ``DeviceIndex`` such as ``"0,1"``
            spreads the Contexts round-robin over those devices.
        local: False builds no Context here: the pool is only the recipe for the workers of
            a ``BurstSampler(pool, executor=...)`` (e.g. CUDA bursts submitted from a login
            node without a GPU); ``platform`` must then be named, and :meth:`submit` refuses.

    Slots are worker processes on Reference (its random generator is process-global), threads
    elsewhere; a pool of size 1 runs in the calling thread (on Reference its bursts are then
    reproducible only while no other thread of the process steps a Reference Context at the
    same time). Contexts are created once, here, and reused by every
    :meth:`BurstSampler.run`; ``contexts_created`` counts them. Use as a context manager or
    call :meth:`close`.

    Attributes:
        platform_name, size, properties: what the pool runs on.
        mode: "inline", "process", "thread" or "remote" (``local=False``).
        fast_reseed: True when Reference slots re-seed without ``reinitialize`` (verified
            bit-identical at start-up).
        probe_report: the :func:`choose_platform` report when ``platform="auto"``.
        layout_report: on CPU, how the slots × threads layout was chosen: the measured
            report of :func:`~amore_openmm.sampling.layout.choose_cpu_layout`
            (``measured: True``, steps/s per layout, ``chosen``) or ``measured: False`` with
            the ``reason`` (small system, or size/Threads given); None on other platforms.
        contexts_created: Contexts created by this pool (== size; a worker process that
            died and was restarted adds one).
    """

    def __init__(self, system: MolecularSystem, size: int | None = None,
                 platform: str = "auto", properties: dict[str, str] | None = None,
                 local: bool = True) -> None:
        if not isinstance(system, MolecularSystem):
            raise TypeError("ContextPool(system=...) needs a MolecularSystem; get one with "
                            "amore_openmm.load_system(...)")
        self.system = system
        self.probe_report: dict[str, Any] | None = None
        if platform == "auto":
            if not local:
                raise ValueError("ContextPool(local=False) needs a named platform (the "
                                 "workers' one), not 'auto'")
            platform, self.probe_report = choose_platform(system)
        if local and platform not in available_platforms():
            raise ValueError(f"ContextPool(platform={platform!r}): not available here; use "
                             f"'auto' or one of {available_platforms()}")
        self.platform_name: str = platform
        self.layout_report: dict[str, Any] | None = None
        if platform == "CPU":
            size, properties = self._cpu_layout(system, size, properties, local)
        props = default_platform_properties(platform, properties)
        devices = [d.strip() for d in props.get("DeviceIndex", "").split(",") if d.strip()]
        if size is None:
            size = 2 * max(1, len(devices)) if platform in GPU_PLATFORMS else usable_cpus()
        if int(size) < 1:
            raise ValueError(f"ContextPool(size={size}): need at least one slot")
        self.size: int = int(size)
        self._closed = False
        self._lock = threading.Lock()
        self._created = 0
        self.mode = ("remote" if not local else "inline" if self.size == 1 else
                     "process" if platform == "Reference" else "thread")
        self._specs = self._make_specs(system, platform, props, devices)
        self.properties = props
        self._slots: list[Any] = []
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._executor: JoinedThreadPool | None = None
        self.fast_reseed = False
        if local:
            self._start_slots()
        for slot in self._slots:
            self._free.put(slot)
        if self.mode in ("process", "thread"):
            self._executor = JoinedThreadPool(self.size, thread_name_prefix="amore-burst")
        self._finalizer = weakref.finalize(self, ContextPool._shutdown, self._executor,
                                           list(self._slots))

    def _cpu_layout(self, system: MolecularSystem, size: int | None,
                    properties: dict[str, str] | None, local: bool
                    ) -> tuple[int | None, dict[str, str] | None]:
        """(size, properties) of a CPU pool; sets ``layout_report`` (see the class doc)."""
        props = dict(properties or {})
        cpus = usable_cpus()
        if size is not None or "Threads" in props or not local or not layout_matters(system):
            reason = ("size or Threads given" if size is not None or "Threads" in props else
                      "remote pool" if not local else
                      "small non-periodic system: one thread per Context")
            n = cpus if size is None else int(size)
            self.layout_report = {"measured": False, "reason": reason, "slots": n,
                                  "threads": int(props.get("Threads", 1)), "cpus": cpus}
            return size, properties
        report = choose_cpu_layout(system, cpus)
        self.layout_report = report
        props["Threads"] = str(report["threads"])
        log.info("ContextPool(%s): CPU layout %s Contexts × threads (%s steps/s measured%s)",
                 system.name, report["chosen"], report["steps_per_s"],
                 ", cached" if report.get("cached") else "")
        return report["slots"], props

    def _make_specs(self, system: MolecularSystem, platform: str, props: dict[str, str],
                    devices: list[str]) -> list[BurstSpec]:
        base = dict(system_xml=openmm.XmlSerializer.serialize(system.system),
                    integrator_xml=openmm.XmlSerializer.serialize(system.make_integrator(seed=1)),
                    platform=platform, temperature=system.temperature,
                    brownian=system.integrator == "brownian",
                    probe_positions=np.asarray(system.positions[0], dtype=np.float64))
        specs = []
        for i in range(self.size):
            p = dict(props)
            if len(devices) > 1:
                p["DeviceIndex"] = devices[i % len(devices)]
            specs.append(BurstSpec(properties=tuple(sorted(p.items())), **base))
        return specs

    def _start_slots(self) -> None:
        try:
            if self.mode == "process":
                # launch all workers first so that they start up in parallel
                for spec in self._specs:
                    self._slots.append(ProcessSlot(spec, self._count_context))
                for slot in self._slots:
                    slot.send_init()
                for slot in self._slots:
                    slot.finish_init()
                self.fast_reseed = all(slot.fast_reseed for slot in self._slots)
            else:
                for spec in self._specs:
                    self._slots.append(Engine(spec))
                    self._count_context()
                self.fast_reseed = all(e.fast_reseed for e in self._slots)
        except BaseException:
            for slot in self._slots:
                if isinstance(slot, ProcessSlot):
                    slot.close()
            raise

    def _count_context(self) -> None:
        with self._lock:
            self._created += 1

    @property
    def contexts_created(self) -> int:
        """How many OpenMM Contexts this pool has created (== size unless a worker died)."""
        return self._created

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (``mode == "process"``; empty otherwise)."""
        return [s.pid for s in self._slots if isinstance(s, ProcessSlot) and s.pid]

    @property
    def spec(self) -> BurstSpec:
        """The recipe of the pool's Contexts (what executor workers build)."""
        return self._specs[0]

    def submit(self, task: Any, runner: Callable[[Any], dict[str, Any]] | None = None
               ) -> cf.Future:
        """Run one chunk task on a free slot; returns a Future of the chunk result.

        ``runner`` (a picklable callable, e.g. ``functools.partial(cached_chunk, spec)``)
        runs the task instead of the slot's own Context, inside the slot's thread or worker
        process, so that other engines share the pool's parallelism and process isolation.
        """
        if self._closed:
            raise RuntimeError("this ContextPool is closed; create a new one")
        if self.mode == "remote":
            raise RuntimeError("ContextPool(local=False) runs nothing itself; pass an "
                               "executor to BurstSampler")
        if self._executor is not None:
            return self._executor.submit(self._thread_chunk, task, runner)
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(self._thread_chunk(task, runner))
        except Exception as exc:  # noqa: BLE001 - delivered through the future
            fut.set_exception(exc)
        return fut

    def _thread_chunk(self, task: Any, runner: Callable[[Any], dict[str, Any]] | None = None
                      ) -> dict[str, Any]:
        eng = self._free.get()
        try:
            if isinstance(eng, ProcessSlot):
                return eng.run_chunk(task, runner)
            return eng.run_chunk(task) if runner is None else runner(task)
        finally:
            self._free.put(eng)

    @staticmethod
    def _shutdown(executor: cf.Executor | None, slots: list[Any]) -> None:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for slot in slots:
            if isinstance(slot, ProcessSlot):
                slot.close()

    def close(self) -> None:
        """Stop the workers and free the Contexts (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        self._slots.clear()

    def __enter__(self) -> "ContextPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ContextPool({self.system.name}, platform={self.platform_name}, "
                f"size={self.size}, mode={self.mode})")
