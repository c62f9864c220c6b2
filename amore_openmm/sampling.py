"""Stage 1 — sampling: Koopman bursts from a pool of reused OpenMM Contexts.

A *burst* sets a start x, draws Maxwell–Boltzmann velocities, runs ``lag_steps`` integrator
steps and keeps the end positions. :class:`BurstSampler` runs K bursts from each of N starts
and returns :class:`~amore_openmm.data.KoopmanData`. A Context is never created per burst:
:class:`ContextPool` creates one Context per slot once and reuses it.

Reproducibility. With ``reseed="burst"`` (the default on Reference) burst k of start i uses the
random stream ``burst_seed(seed, i, k)`` for the integrator noise and a sibling seed for the
initial velocities, so it depends on nothing else: not on pool size, chunking, scheduling or
the other starts of the run. OpenMM applies an integrator seed only when a Context is
(re)initialised, so every burst re-seeds its Context:

* Reference: the Langevin/Brownian random generator is a process-global static shared by all
  Reference Contexts of a process. Pool slots are therefore separate worker processes (one
  Reference Context each). Re-seeding calls OpenMM's own ``SimTKOpenMMUtilities::
  setRandomNumberSeed`` (the function Context initialisation calls; ~1 µs instead of a 0.3 ms
  ``reinitialize``). Each worker verifies at start-up that this gives bit-identical bursts to
  ``reinitialize`` and falls back to ``reinitialize`` otherwise.
* CPU / CUDA / OpenCL: each Context has its own generator; slots are threads (OpenMM releases
  the GIL inside ``step``), re-seeded with ``Context.reinitialize`` after
  ``Integrator.setRandomNumberSeed``. On CPU each Context gets one OpenMM thread. Because
  ``reinitialize`` is expensive there (it recompiles custom forces such as OBC implicit
  solvent: ~20–80 ms, plus kernel builds on GPUs), these platforms re-seed once per *block* of
  consecutive start indices by default (``reseed="block"``); the block's bursts follow on that
  stream in start-index order. Results still do not depend on pool size or scheduling.

Robustness. A burst whose end point is not finite or moved more than ``max_displacement`` nm is
retried with a new derived seed (``attempt`` 1, 2, ...); after ``max_retries`` failures its
start is dropped with a warning naming the start: the returned data keep complete starts only.
Work is done in chunks of starts; after an exception or Ctrl-C the finished chunks are kept
(``exc.partial`` / ``BurstSampler.partial``, and the ``checkpoint`` file or callback).
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import glob
import hashlib
import json
import functools
import logging
import math
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import openmm
from openmm import unit

from amore_openmm.data import FORMAT_VERSION, ORIGINS, KoopmanData, atomic_save_npz
from amore_openmm.systems import MolecularSystem

__all__ = [
    "ContextPool",
    "BurstSampler",
    "BurstFailureWarning",
    "sample_trajectory",
    "burst_seed",
    "choose_platform",
    "available_platforms",
]

log = logging.getLogger("amore_openmm.sampling")

#: default bound on how far a burst may move any coordinate (nm) before it counts as exploded
DEFAULT_MAX_DISPLACEMENT = 100.0
_SEED_MOD = 2**31 - 2  # OpenMM seeds are 31-bit ints; 0 means "pick randomly": map to 1..2^31-2
_STREAM_TAG = 0x414D4F52  # "AMOR": separates burst streams from other uses of the same seed
_TRAJ_TAG = 0x5452414A    # "TRAJ"
_BLOCK_TAG = 0x424C4F4B   # "BLOK"
_FORCE_TAG = 0x46524345   # "FRCE"
_GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP")


class BurstFailureWarning(UserWarning):
    """A start was dropped because its bursts kept exploding (NaN or huge coordinates)."""


# ---------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------
def _u64(v: int) -> int:
    v = int(v)
    return v if v >= 0 else v + (1 << 64)


def _stream_seeds(seed: int, start_index: int, k: int, attempt: int = 0,
                  tag: int = _STREAM_TAG) -> tuple[int, int]:
    """(integrator seed, velocity seed) for one burst attempt; both valid non-zero OpenMM seeds.

    BLAKE2b of the packed integers (3 µs; numpy's SeedSequence costs ~15–40 µs per burst).
    """
    digest = hashlib.blake2b(struct.pack("<5Q", tag, _u64(seed), _u64(start_index), _u64(k),
                                         _u64(attempt)), digest_size=8).digest()
    a, b = struct.unpack("<II", digest)
    return a % _SEED_MOD + 1, b % _SEED_MOD + 1


def burst_seed(seed: int, start_index: int, k: int) -> int:
    """The integrator seed of burst ``k`` from start ``start_index`` in a run with ``seed``.

    A hash (BLAKE2b) of the three integers, mapped to a valid non-zero 31-bit
    OpenMM seed. It is the key of the burst's random stream: the same triple gives the same
    burst on the same platform, whatever the pool size. Retries after a failed burst use
    further derived seeds.
    """
    return _stream_seeds(seed, start_index, k, 0)[0]


# ---------------------------------------------------------------------------------------------
# Reference platform: fast re-seeding of the process-global random generator
# ---------------------------------------------------------------------------------------------
_REF_SEED_FN: Any = None
_REF_SEED_LOOKED = False
_REF_LOCK = threading.Lock()  # serialises Reference bursts inside one process (shared RNG)


def _reference_seed_function() -> Callable[[int], None] | None:
    """``SimTKOpenMMUtilities::setRandomNumberSeed`` from libOpenMM, or None if not found."""
    global _REF_SEED_FN, _REF_SEED_LOOKED
    if _REF_SEED_LOOKED:
        return _REF_SEED_FN
    _REF_SEED_LOOKED = True
    base = Path(openmm.__file__).resolve().parent
    candidates = sorted(glob.glob(str(base.parent / "OpenMM.libs" / "lib" / "libOpenMM.so*")))
    candidates += sorted(glob.glob(str(base.parent.parent.parent / "libOpenMM.so*")))  # conda
    candidates += ["libOpenMM.so"]
    for cand in candidates:
        try:
            lib = ctypes.CDLL(cand)
            fn = getattr(lib, "_ZN6OpenMM20SimTKOpenMMUtilities19setRandomNumberSeedEj")
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_uint32]
        fn.restype = None
        _REF_SEED_FN = fn
        break
    return _REF_SEED_FN


# ---------------------------------------------------------------------------------------------
# one Context that runs bursts
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """Everything a worker needs to build its Context (picklable, no OpenMM objects)."""

    system_xml: str
    integrator_xml: str
    platform: str
    properties: tuple[tuple[str, str], ...]
    temperature: float
    brownian: bool
    probe_positions: np.ndarray  # a valid structure for the start-up self-check

    def digest(self) -> str:
        h = hashlib.sha1()
        for part in (self.system_xml, self.integrator_xml, self.platform,
                     repr(self.properties), repr(self.temperature)):
            h.update(part.encode())
        return h.hexdigest()


def _positions(ctx: openmm.Context, shape: tuple[int, int]) -> np.ndarray:
    """Positions (nm) as a new float64 array, without the unit wrapper (~5× faster)."""
    state = ctx.getState(getPositions=True)
    out = np.empty(shape, dtype=np.float64)
    try:
        state._getVectorAsNumpy(openmm.State.Positions, out)
    except AttributeError:  # pragma: no cover - other OpenMM versions
        out[:] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return out


class _Engine:
    """One OpenMM Context plus the burst loop (lives in a worker process or a pool thread)."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.system = system = openmm.XmlSerializer.deserialize(spec.system_xml)
        self.integrator = openmm.XmlSerializer.deserialize(spec.integrator_xml)
        plat = openmm.Platform.getPlatformByName(spec.platform)
        self.context = openmm.Context(system, self.integrator, plat, dict(spec.properties))
        self.temperature = spec.temperature
        self.brownian = spec.brownian
        self.is_reference = spec.platform == "Reference"
        self._buffer_shape = (system.getNumParticles(), 3)
        # a barostat changes the box during a burst: restore it so bursts stay independent
        self._box = (system.getDefaultPeriodicBoxVectors() if any(
            "Barostat" in f.__class__.__name__ for f in system.getForces()) else None)
        # forces with their own random stream and step counter (barostats, Andersen
        # thermostat): re-seeded with the integrator and reset by ``reinitialize``
        self._seeded_forces = [f for f in system.getForces()
                               if hasattr(f, "setRandomNumberSeed")]
        self.fast_reseed = False
        if self.is_reference and not self._seeded_forces and \
                _reference_seed_function() is not None:
            self.fast_reseed = self._fast_reseed_matches()

    # -- one burst -----------------------------------------------------------------------------
    def _reseed(self, integ_seed: int, fast: bool) -> None:
        if fast:
            _REF_SEED_FN(integ_seed)
        else:
            self.integrator.setRandomNumberSeed(integ_seed)
            for i, force in enumerate(self._seeded_forces):
                force.setRandomNumberSeed(_stream_seeds(integ_seed, i, 0, 0, tag=_FORCE_TAG)[0])
            self.context.reinitialize(preserveState=False)

    def burst(self, x: np.ndarray, lag_steps: int, integ_seed: int | None, vel_seed: int,
              fast: bool | None = None) -> np.ndarray:
        """End positions (n, 3) nm of one burst from ``x``; may contain NaN or raise.

        ``integ_seed=None`` continues the Context's current random stream (block re-seeding).
        """
        ctx = self.context
        if integ_seed is not None:
            self._reseed(integ_seed, self.fast_reseed if fast is None else fast)
        if self._box is not None:
            ctx.setPeriodicBoxVectors(*self._box)
        ctx.setPositions(x)
        if not self.brownian:
            ctx.setVelocitiesToTemperature(self.temperature, vel_seed)
        self.integrator.step(lag_steps)
        return _positions(ctx, self._buffer_shape)

    def _fast_reseed_matches(self) -> bool:
        """True if global-RNG re-seeding reproduces ``reinitialize`` re-seeding bit for bit."""
        x = np.asarray(self.spec.probe_positions, dtype=np.float64)
        try:
            a = self.burst(x, 10, 12345, 678, fast=False)
            b = self.burst(x, 10, 12345, 678, fast=True)
            c = self.burst(x, 10, 12346, 678, fast=True)
        except Exception:  # noqa: BLE001 - any failure: use the safe path
            return False
        return bool(np.array_equal(a, b) and not np.array_equal(a, c))

    # -- a chunk of starts ---------------------------------------------------------------------
    def run_chunk(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run K bursts for each start of ``task``; see :meth:`BurstSampler.run`."""
        t0 = time.perf_counter()
        if self.is_reference:
            with _REF_LOCK:  # the RNG is per process: one Reference burst at a time
                out = self._run_chunk(task)
        else:
            out = self._run_chunk(task)
        out["seconds"] = time.perf_counter() - t0
        out["pid"] = os.getpid()
        return out

    def _run_chunk(self, task: dict[str, Any]) -> dict[str, Any]:
        xs: np.ndarray = task["x"]
        idx: np.ndarray = task["start_index"]
        K, lag, seed = task["n_koopman"], task["lag_steps"], task["seed"]
        retries, bound = task["max_retries"], task["max_displacement"]
        block_size = int(task.get("reseed_block", 0))  # 0: re-seed every burst
        m, n = xs.shape[0], xs.shape[1]
        block = None
        y = np.zeros((m, K, n, 3), dtype=np.float32)
        ok = np.ones(m, dtype=bool)
        events: list[tuple[int, int, int, str]] = []  # (start, k, attempt, reason)
        for j in range(m):
            x = xs[j]
            if block_size and int(idx[j]) // block_size != block:
                # block re-seeding: one (expensive) re-seed per block of start indices; the
                # bursts of the block then continue that stream in start-index order
                block = int(idx[j]) // block_size
                self._reseed(_stream_seeds(seed, block, 0, 0, tag=_BLOCK_TAG)[0],
                             self.fast_reseed)
            for k in range(K):
                for attempt in range(retries + 1):
                    s_int, s_vel = _stream_seeds(seed, int(idx[j]), k, attempt)
                    if block_size and attempt == 0:
                        s_int = None
                    reason = ""
                    try:
                        end = self.burst(x, lag, s_int, s_vel)
                    except openmm.OpenMMException as exc:  # CPU/GPU raise on NaN coordinates
                        reason = f"OpenMM error: {str(exc).strip()}"
                    else:
                        moved = float(np.max(np.abs(end - x)))
                        if not moved <= bound:  # also catches NaN
                            reason = ("non-finite coordinates" if not math.isfinite(moved)
                                      else f"moved {moved:.3g} nm (> {bound:g} nm)")
                    if not reason:
                        y[j, k] = end
                        if attempt:
                            events.append((int(idx[j]), k, attempt, "recovered"))
                        break
                    events.append((int(idx[j]), k, attempt, reason))
                else:
                    ok[j] = False
                if not ok[j]:
                    break  # the start is dropped: skip its remaining bursts
        return {"chunk": task["chunk"], "y": y, "ok": ok, "events": events}


# ---------------------------------------------------------------------------------------------
# worker processes (Reference platform)
# ---------------------------------------------------------------------------------------------
# Workers are plain subprocesses speaking pickle over stdin/stdout (not multiprocessing): they
# do not re-import the user's __main__ script, so pools work from scripts without a
# ``if __name__ == "__main__"`` guard, and a worker that dies is detected (EOF), not waited on.
_WORKER_CMD = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
               "from amore_openmm.sampling import _worker_main; _worker_main()")


def _worker_main() -> None:
    """Entry point of a burst worker process: one Context, chunks in, results out."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by libraries goes to stderr, not into the protocol
    engine: _Engine | None = None
    while True:
        try:
            msg = pickle.load(proto_in)
        except EOFError:  # parent gone
            return
        try:
            if msg[0] == "init":
                engine = _Engine(msg[1])
                reply: tuple = ("ok", os.getpid(), engine.fast_reseed)
            elif msg[0] == "chunk":
                assert engine is not None, "worker got a chunk before init"
                reply = ("ok", engine.run_chunk(msg[1]))
            elif msg[0] == "call":  # a chunk for another engine (e.g. packed replicas)
                reply = ("ok", msg[1](msg[2]))
            elif msg[0] == "stop":
                return
            else:
                reply = ("error", f"unknown worker message {msg[0]!r}")
        except Exception:  # noqa: BLE001 - reported to the parent, worker stays usable
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, proto_out, protocol=pickle.HIGHEST_PROTOCOL)
        proto_out.flush()


class _ProcessSlot:
    """Parent-side handle of one worker process holding one Context."""

    def __init__(self, spec: _Spec, on_create: Callable[[], None]) -> None:
        self.spec = spec
        self._on_create = on_create
        self.proc: subprocess.Popen | None = None
        self.fast_reseed = False
        self._launch()

    def _launch(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        env["OMP_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CMD],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._init_sent = False
        self._initialised = False

    def _finish_init(self) -> None:
        if self._initialised:
            return
        if not self._init_sent:
            self._send(("init", self.spec))
            self._init_sent = True
        reply = self._recv()
        if reply[0] != "ok":
            raise RuntimeError(f"burst worker could not create its Context:\n{reply[1]}")
        self.fast_reseed = bool(reply[2])
        self._initialised = True
        self._on_create()

    def _send(self, msg: tuple) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def _recv(self) -> tuple:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            return pickle.load(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(f"burst worker process {self.proc.pid} died (exit code {code}); "
                               "see its messages on stderr. The pool restarts it for the "
                               "next chunk.") from None

    def run_chunk(self, task: dict[str, Any],
                  runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:  # died earlier: restart
            self._launch()
        try:
            self._finish_init()
            self._send(("chunk", task) if runner is None else ("call", runner, task))
            reply = self._recv()
        except (BrokenPipeError, RuntimeError):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            raise
        if reply[0] != "ok":
            raise RuntimeError(f"burst worker failed on chunk {task['chunk']}:\n{reply[1]}")
        return reply[1]

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self._send(("stop",))
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for fh in (self.proc.stdin, self.proc.stdout):
                try:
                    fh.close()
                except OSError:
                    pass
            self.proc = None


# engines of tasks sent to a user-supplied executor (dask, ...), one per (spec, thread)
_EXEC_ENGINES: dict[tuple[str, int], _Engine] = {}


def _executor_chunk(spec: _Spec, task: dict[str, Any]) -> dict[str, Any]:
    key = (spec.digest(), threading.get_ident())
    eng = _EXEC_ENGINES.get(key)
    if eng is None:
        eng = _EXEC_ENGINES[key] = _Engine(spec)
    return eng.run_chunk(task)


# ---------------------------------------------------------------------------------------------
# platform choice
# ---------------------------------------------------------------------------------------------
def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that load in this installation."""
    return [openmm.Platform.getPlatform(i).getName()
            for i in range(openmm.Platform.getNumPlatforms())]


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _default_properties(platform: str, properties: dict[str, str] | None) -> dict[str, str]:
    props = dict(properties or {})
    if platform == "CPU":
        props.setdefault("Threads", "1")
    elif platform in ("CUDA", "OpenCL", "HIP"):
        props.setdefault("Precision", "mixed")
    return props


_PROBE_CACHE: dict[str, tuple[str, dict[str, Any]]] = {}


def choose_platform(system: MolecularSystem, candidates: Sequence[str] | None = None,
                    budget_s: float = 0.15, verbose: bool = True) -> tuple[str, dict[str, Any]]:
    """Pick the platform with the highest estimated burst throughput for ``system``.

    Each candidate (default: all available) runs a short timed probe: one Context (CPU with
    one thread, GPUs in mixed precision), a few warm-up steps, then steps for about
    ``budget_s`` seconds. Estimated pool throughput = steps/s × parallel slots (usable CPU
    cores for Reference/CPU, one Context per GPU). Returns ``(name, report)``; the report
    holds the measured steps/s per platform. The choice is logged and, with ``verbose``,
    printed to stderr. Results are cached per System and integrator.
    """
    cands = list(candidates) if candidates else available_platforms()
    unknown = [c for c in cands if c not in available_platforms()]
    if unknown:
        raise ValueError(f"platform(s) {unknown} are not available; available: "
                         f"{available_platforms()}")
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
                              "errors": {}}
    x0 = system.positions[0]
    cpus = _usable_cpus()
    t_all = time.perf_counter()
    for name in cands:
        try:
            plat = openmm.Platform.getPlatformByName(name)
            ctx = openmm.Context(system.system, system.make_integrator(seed=1), plat,
                                 _default_properties(name, None))
            ctx.setPositions(x0)
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
                    break
                block = min(block * 2, 2000)
            rate = steps / dt
            del ctx
        except Exception as exc:  # noqa: BLE001 - a platform that fails is not chosen
            report["errors"][name] = str(exc).strip()
            continue
        slots = 1 if name in _GPU_PLATFORMS else cpus
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


# ---------------------------------------------------------------------------------------------
# ContextPool
# ---------------------------------------------------------------------------------------------
class ContextPool:
    """Reusable OpenMM Contexts for one system: the slots that run bursts.

    Args:
        system: the :class:`MolecularSystem` (its System, integrator kind, temperature,
            friction and timestep define every Context).
        size: number of slots (Contexts). Default: usable CPU cores for Reference/CPU, two
            Contexts per GPU device for CUDA/OpenCL.
        platform: "auto" (timed probe, see :func:`choose_platform`), "Reference", "CPU",
            "CUDA" or "OpenCL".
        properties: platform properties. CPU defaults to ``{"Threads": "1"}`` (parallelism
            comes from the slots); GPUs default to ``Precision=mixed``. A ``DeviceIndex``
            such as ``"0,1"`` spreads the Contexts round-robin over those devices.

    Slots are worker processes on Reference (its random generator is process-global), threads
    elsewhere; a pool of size 1 runs in the calling thread (on Reference its bursts are then
    reproducible only while no other thread of the process steps a Reference Context at the
    same time). Contexts are created once, here, and reused by every
    :meth:`BurstSampler.run`; ``contexts_created`` counts them. Use as a context manager or
    call :meth:`close`.

    Attributes:
        platform_name, size, properties: what the pool runs on.
        mode: "inline", "process" or "thread".
        fast_reseed: True when Reference slots re-seed without ``reinitialize`` (verified
            bit-identical at start-up).
        probe_report: the :func:`choose_platform` report when ``platform="auto"``.
        contexts_created: Contexts created by this pool (== size; a worker process that
            died and was restarted adds one).
    """

    def __init__(self, system: MolecularSystem, size: int | None = None,
                 platform: str = "auto", properties: dict[str, str] | None = None) -> None:
        if not isinstance(system, MolecularSystem):
            raise TypeError("ContextPool(system=...) needs a MolecularSystem; get one with "
                            "amore_openmm.load_system(...)")
        self.system = system
        self.probe_report: dict[str, Any] | None = None
        if platform == "auto":
            platform, self.probe_report = choose_platform(system)
        if platform not in available_platforms():
            raise ValueError(f"ContextPool(platform={platform!r}): not available here; use "
                             f"'auto' or one of {available_platforms()}")
        self.platform_name: str = platform
        props = _default_properties(platform, properties)
        devices = [d.strip() for d in props.get("DeviceIndex", "").split(",") if d.strip()]
        if size is None:
            size = 2 * max(1, len(devices)) if platform in _GPU_PLATFORMS else _usable_cpus()
        if int(size) < 1:
            raise ValueError(f"ContextPool(size={size}): need at least one slot")
        self.size: int = int(size)
        self._closed = False
        self._lock = threading.Lock()
        self._created = 0
        self.mode = ("inline" if self.size == 1 else
                     "process" if platform == "Reference" else "thread")
        brownian = system.integrator == "brownian"
        base = dict(system_xml=openmm.XmlSerializer.serialize(system.system),
                    integrator_xml=openmm.XmlSerializer.serialize(system.make_integrator(seed=1)),
                    platform=platform, temperature=system.temperature, brownian=brownian,
                    probe_positions=np.asarray(system.positions[0], dtype=np.float64))
        self._specs: list[_Spec] = []
        for i in range(self.size):
            p = dict(props)
            if len(devices) > 1:
                p["DeviceIndex"] = devices[i % len(devices)]
            self._specs.append(_Spec(properties=tuple(sorted(p.items())), **base))
        self.properties = props
        self._slots: list[Any] = []
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._executor: cf.ThreadPoolExecutor | None = None
        self.fast_reseed = False
        try:
            if self.mode == "process":
                # launch all workers first so that they start up in parallel
                for spec in self._specs:
                    self._slots.append(_ProcessSlot(spec, self._count_context))
                for slot in self._slots:
                    slot._send(("init", slot.spec))
                    slot._init_sent = True
                for slot in self._slots:
                    slot._finish_init()
                self.fast_reseed = all(slot.fast_reseed for slot in self._slots)
            else:
                for spec in self._specs:
                    self._slots.append(_Engine(spec))
                    self._count_context()
                self.fast_reseed = all(e.fast_reseed for e in self._slots)
        except BaseException:
            for slot in self._slots:
                if isinstance(slot, _ProcessSlot):
                    slot.close()
            raise
        for slot in self._slots:
            self._free.put(slot)
        if self.mode != "inline":
            self._executor = cf.ThreadPoolExecutor(self.size, thread_name_prefix="amore-burst")
        self._finalizer = weakref.finalize(self, ContextPool._shutdown, self._executor,
                                           list(self._slots))

    def _count_context(self) -> None:
        with self._lock:
            self._created += 1

    @property
    def contexts_created(self) -> int:
        """How many OpenMM Contexts this pool has created (== size unless a worker died)."""
        return self._created

    @property
    def spec(self) -> _Spec:
        return self._specs[0]

    def submit(self, task: dict[str, Any],
               runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> cf.Future:
        """Run one chunk task on a free slot; returns a Future of the chunk result.

        ``runner`` (a picklable callable, e.g. ``functools.partial(packed_chunk, spec)``)
        runs the task instead of the slot's own Context, inside the slot's thread or worker
        process, so that other engines share the pool's parallelism and process isolation.
        """
        if self._closed:
            raise RuntimeError("this ContextPool is closed; create a new one")
        if self._executor is not None:
            return self._executor.submit(self._thread_chunk, task, runner)
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(self._thread_chunk(task, runner))
        except Exception as exc:  # noqa: BLE001 - delivered through the future
            fut.set_exception(exc)
        return fut

    def _thread_chunk(self, task: dict[str, Any],
                      runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                      ) -> dict[str, Any]:
        eng = self._free.get()
        try:
            if isinstance(eng, _ProcessSlot):
                return eng.run_chunk(task, runner)
            return eng.run_chunk(task) if runner is None else runner(task)
        finally:
            self._free.put(eng)

    @staticmethod
    def _shutdown(executor: cf.Executor | None, slots: list[Any]) -> None:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for slot in slots:
            if isinstance(slot, _ProcessSlot):
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


# ---------------------------------------------------------------------------------------------
# BurstSampler
# ---------------------------------------------------------------------------------------------
def _as_starts(starts: Any, n_atoms: int) -> np.ndarray:
    if unit.is_quantity(starts):
        starts = starts.value_in_unit(unit.nanometer)
    arr = np.asarray(starts, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (n_atoms, 3):
        raise ValueError(f"starts must have shape (N, {n_atoms}, 3) in nm for this system, got "
                         f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])[:5].tolist()
        raise ValueError(f"starts {bad} contain non-finite coordinates; remove them")
    return arr


def _per_start(value: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(n, arr.item(), dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one entry per start ({n}), got "
                         f"shape {arr.shape}")
    return arr


class BurstSampler:
    """Runs Koopman bursts on a :class:`ContextPool`.

    Args:
        pool: the Context pool (it fixes the system and platform).
        executor: optional ``concurrent.futures.Executor`` (e.g. a Dask client's
            ``get_executor()``) to run chunks on instead of the pool's own slots. Each
            executor worker builds and caches one Context per thread; on Reference use
            process workers (the Reference random generator is per process; bursts inside one
            process are serialised).
        replicas: run M > 1 bursts per Context step in a System of M non-interacting copies
            (:func:`amore_openmm.packing.pack_replicas`; exact for vacuum, see there). Chunks
            then hold a fixed number of starts, so results depend on (seed, M) but not on pool
            size; the statistics equal the unpacked sampler's.

    After :meth:`run` returns or raises, ``partial`` holds the data of the finished chunks.
    """

    def __init__(self, pool: ContextPool, executor: cf.Executor | None = None,
                 replicas: int = 1) -> None:
        if int(replicas) < 1:
            raise ValueError(f"BurstSampler(replicas={replicas}): need at least 1 copy")
        self.pool = pool
        self.executor = executor
        self.replicas = int(replicas)
        self._runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        if self.replicas > 1:
            from .packing import PackedSpec, packed_chunk

            spec = PackedSpec.from_system(pool.system, self.replicas, pool.platform_name,
                                          pool.properties)
            self._runner = functools.partial(packed_chunk, spec)
        self.partial: KoopmanData | None = None
        self.last_stats: dict[str, Any] = {}

    def _submit(self, task: dict[str, Any]) -> cf.Future:
        if self.executor is not None:
            if self._runner is not None:
                return self.executor.submit(self._runner, task)
            return self.executor.submit(_executor_chunk, self.pool.spec, task)
        return self.pool.submit(task, self._runner)

    def run(self, starts: Any, n_koopman: int, lag_steps: int | None = None, seed: int = 0, *,
            start_indices: Sequence[int] | np.ndarray | None = None, generation: Any = 0,
            origin: Any = "trajectory", progress: bool = True, max_retries: int = 3,
            max_displacement: float = DEFAULT_MAX_DISPLACEMENT, chunk_size: int | None = None,
            checkpoint: str | os.PathLike | Callable[[KoopmanData], None] | None = None,
            checkpoint_interval: float = 10.0, resume: bool = True,
            on_chunk: Callable[[KoopmanData], None] | None = None, reseed: str = "auto",
            reseed_block: int = 8) -> KoopmanData:
        """K bursts of ``lag_steps`` steps from every start; returns the Koopman pairs.

        Args:
            starts: (N, n_atoms, 3) positions in nm (or one (n_atoms, 3) structure).
            n_koopman: bursts per start, K.
            lag_steps: steps per burst (default: the system's ``lag_steps``).
            seed: run seed; burst k of start i uses ``burst_seed(seed, start_indices[i], k)``.
            start_indices: the stream index of each start (default 0..N-1). Give globally
                unique indices when adding starts to an existing data set so that no two
                starts share a random stream.
            generation, origin: per-start metadata (scalar or one entry per start).
            progress: show a tqdm progress bar (stderr).
            max_retries: retries with a new derived seed per failing burst before the start is
                dropped (warning :class:`BurstFailureWarning` names the start).
            max_displacement: nm; a burst that moves any coordinate further fails.
            chunk_size: starts per task sent to a slot (default: adaptive, ~0.2 s of work);
                with block re-seeding a task is one block.
            checkpoint: a ``.npz`` path to which the finished starts are committed atomically
                (at most every ``checkpoint_interval`` s and at the end, also after an error
                or Ctrl-C), or a callable that gets each finished chunk as ``KoopmanData``.
                The file is readable with ``KoopmanData.load``.
            resume: with a checkpoint path that exists, reuse its starts (same run settings,
                same start index and coordinates) instead of recomputing them. Because each
                burst's stream depends only on (seed, start index, k), a resumed run gives the
                same data as an uninterrupted one.
            on_chunk: called in the calling thread with each finished chunk (``KoopmanData``
                of its kept starts); an exception it raises stops the run like any other.
            reseed: how random streams are keyed. ``"burst"``: every burst re-seeds its
                Context with ``burst_seed(seed, start index, k)``; a burst depends on nothing
                else. ``"block"``: a Context is re-seeded once per block of ``reseed_block``
                consecutive start indices (``start_index // reseed_block``) and runs the
                block's bursts in order on that stream (velocities stay seeded per burst);
                results depend on (seed, block, the block's starts), still not on pool size,
                chunking or scheduling. ``"auto"``: "burst" on Reference (re-seeding costs
                ~1 µs there), "block" on CPU/CUDA/OpenCL, where re-seeding means
                ``Context.reinitialize`` (tens of ms on CPU with custom forces such as OBC
                implicit solvent; kernel rebuilds on GPUs).
            reseed_block: starts per block for ``reseed="block"``.

        Returns:
            ``KoopmanData`` of the complete starts, in input order. ``extra`` holds
            ``start_index`` (the stream index of each kept start), ``dropped`` (start indices
            dropped after failures), ``retried`` (bursts that needed a retry) and ``reseed``
            ("burst" or "block:<size>").

        Raises:
            Whatever stopped the run (an exception or ``KeyboardInterrupt``) after the finished
            chunks were collected; the exception carries them as ``.partial`` (also in
            ``self.partial``) and they were committed to ``checkpoint``.
        """
        ms = self.pool.system
        n = ms.n_atoms
        x = _as_starts(starts, n)
        N = len(x)
        K = int(n_koopman)
        if K < 1:
            raise ValueError(f"n_koopman must be >= 1, got {n_koopman}")
        lag = int(ms.lag_steps if lag_steps is None else lag_steps)
        if lag < 1:
            raise ValueError(f"lag_steps must be >= 1, got {lag_steps}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        idx = (np.arange(N, dtype=np.int64) if start_indices is None
               else np.asarray(start_indices, dtype=np.int64).reshape(-1))
        if idx.shape != (N,):
            raise ValueError(f"start_indices must have one entry per start ({N}), got "
                             f"{idx.shape[0]}")
        if len(np.unique(idx)) != N:
            raise ValueError("start_indices must be unique: two starts with the same index "
                             "would share a random stream")
        gen = _per_start(generation, N, "generation", np.int64)
        org = _per_start(origin, N, "origin", "<U10")
        bad_origin = sorted(set(org.tolist()) - set(ORIGINS))
        if bad_origin:
            raise ValueError(f"origin {bad_origin} is not known; use one of {ORIGINS}")
        if reseed == "auto":
            reseed = "burst" if self.pool.platform_name == "Reference" else "block"
        if reseed not in ("burst", "block"):
            raise ValueError(f"reseed must be 'auto', 'burst' or 'block', got {reseed!r}")
        if reseed == "block" and int(reseed_block) < 1:
            raise ValueError(f"reseed_block must be >= 1, got {reseed_block}")
        block = int(reseed_block) if reseed == "block" else 0
        reseed_tag = f"block:{block}" if block else "burst"
        run_key = {"seed": int(seed), "n_koopman": K, "lag_steps": lag, "n_atoms": n,
                   "replicas": self.replicas,
                   "system": ms.name, "platform": self.pool.platform_name,
                   "max_displacement": float(max_displacement), "reseed": reseed_tag}

        y_all = np.zeros((N, K, n, 3), dtype=np.float32)
        done = np.zeros(N, dtype=bool)      # finished (kept or dropped)
        kept = np.zeros(N, dtype=bool)
        counts = {"retried": 0}
        dropped: list[int] = []
        ck_path = None if checkpoint is None or callable(checkpoint) else Path(checkpoint)
        if ck_path is not None and resume and ck_path.exists():
            dropped = self._resume(ck_path, run_key, x, idx, y_all, done, kept)

        def result() -> KoopmanData:
            sel = np.nonzero(kept)[0]
            return KoopmanData(x[sel], y_all[sel], gen[sel], org[sel],
                               np.full(len(sel), int(seed), dtype=np.int64), lag, ms.timestep,
                               ms.name, {"start_index": idx[sel].copy(),
                                         "dropped": sorted(dropped),
                                         "retried": counts["retried"],
                                         "reseed": reseed_tag,
                                         "replicas": self.replicas})

        def commit(force: bool = False) -> None:
            nonlocal last_commit
            if ck_path is None or (not force and time.monotonic() - last_commit <
                                   checkpoint_interval):
                return
            self._write_checkpoint(ck_path, result(), run_key, idx[done & ~kept])
            last_commit = time.monotonic()

        rows = np.nonzero(~done)[0]
        if block:  # one unit of work per block, its starts in start-index order
            rows = rows[np.lexsort((idx[rows], idx[rows] // block))]
            cuts = np.nonzero(np.diff(idx[rows] // block))[0] + 1
            units = [u.astype(np.int64) for u in np.split(rows, cuts)] if len(rows) else []
        else:
            units = [np.array([r], dtype=np.int64) for r in rows]
        todo = units
        last_commit = time.monotonic()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=N * K, initial=int(done.sum()) * K, unit="burst",
                       desc=f"bursts {ms.name}", file=sys.stderr, dynamic_ncols=True)
        slots = self.pool.size if self.executor is None else max(self.pool.size, 4)
        per_start_s: float | None = None
        pending: dict[cf.Future, np.ndarray] = {}
        next_chunk = 0
        t_start = time.perf_counter()
        busy_s = 0.0
        pos = 0

        def next_size() -> int:
            if self.replicas > 1:  # packed streams depend on the grouping: keep it fixed
                return max(int(chunk_size or 1), math.ceil(self.replicas / K))
            if block:
                return 1  # one block per task
            if chunk_size is not None:
                return max(1, int(chunk_size))
            remaining = len(todo) - pos
            if per_start_s is None:
                return 1  # first round: measure
            target = max(1, int(0.2 / max(per_start_s, 1e-6)))
            # keep every slot busy until the end
            return max(1, min(target, math.ceil(remaining / (2 * slots))))

        try:
            while pos < len(todo) or pending:
                while pos < len(todo) and len(pending) < 2 * slots:
                    m = next_size()
                    members = np.concatenate(todo[pos:pos + m])
                    pos += m
                    task = {"chunk": next_chunk, "x": x[members], "start_index": idx[members],
                            "n_koopman": K, "lag_steps": lag, "seed": int(seed),
                            "max_retries": int(max_retries),
                            "max_displacement": float(max_displacement),
                            "reseed_block": block}
                    next_chunk += 1
                    pending[self._submit(task)] = members
                    if per_start_s is None and chunk_size is None and \
                            len(pending) >= slots:
                        break
                finished, _ = cf.wait(list(pending), timeout=0.25,
                                      return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    members = pending.pop(fut)
                    out = fut.result()  # re-raises a worker's exception
                    chunk_kept = self._absorb(out, members, idx, y_all, done, kept, dropped,
                                              counts)
                    busy_s += out["seconds"]
                    s = out["seconds"] / len(members)
                    per_start_s = s if per_start_s is None else 0.7 * per_start_s + 0.3 * s
                    if bar is not None:
                        bar.update(len(members) * K)
                    hooks = [h for h in (checkpoint, on_chunk) if callable(h)]
                    if hooks:
                        sel = chunk_kept
                        part = KoopmanData(x[sel], y_all[sel], gen[sel], org[sel],
                                           np.full(len(sel), int(seed), dtype=np.int64), lag,
                                           ms.timestep, ms.name,
                                           {"start_index": idx[sel].copy()})
                        for hook in hooks:
                            hook(part)
                    commit()
        except BaseException as exc:
            self._drain(pending, idx, y_all, done, kept, dropped, counts)
            data = result()
            self.partial = data
            try:
                commit(force=True)
            finally:
                if bar is not None:
                    bar.close()
            try:
                exc.partial = data  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover - exotic exception types
                pass
            raise
        if bar is not None:
            bar.close()
        data = result()
        self.partial = data
        commit(force=True)
        wall = time.perf_counter() - t_start
        n_run = int(sum(len(u) for u in todo))
        self.last_stats = {"wall_s": wall, "busy_s": busy_s, "bursts": n_run * K,
                           "steps": n_run * K * lag, "n_starts": N, "chunks": next_chunk,
                           "reseed": reseed_tag}
        return data

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _absorb(out: dict[str, Any], members: np.ndarray, idx: np.ndarray, y_all: np.ndarray,
                done: np.ndarray, kept: np.ndarray, dropped: list[int],
                counts: dict[str, int]) -> np.ndarray:
        ok = out["ok"]
        y_all[members[ok]] = out["y"][ok]
        done[members] = True
        kept[members[ok]] = True
        for start, k, attempt, reason in out["events"]:
            if reason == "recovered":
                counts["retried"] += 1
                log.info("start %d burst %d succeeded on retry %d", start, k, attempt)
        for j in np.nonzero(~ok)[0]:
            start = int(idx[members[j]])
            reasons = sorted({r for s, _, _, r in out["events"] if s == start and
                              r != "recovered"})
            dropped.append(start)
            warnings.warn(f"start {start} (input row {int(members[j])}) dropped: its bursts "
                          f"failed after all retries ({'; '.join(reasons)[:300]}). Check that "
                          "structure (overlapping atoms?) or reduce the timestep.",
                          BurstFailureWarning, stacklevel=3)
        return members[ok]

    def _drain(self, pending: dict[cf.Future, np.ndarray], idx: np.ndarray, y_all: np.ndarray,
               done: np.ndarray, kept: np.ndarray, dropped: list[int],
               counts: dict[str, int]) -> None:
        """Collect chunks already running (they finish in well under a second each)."""
        for fut in list(pending):
            fut.cancel()
        try:
            deadline = time.monotonic() + 30.0
            for fut, members in list(pending.items()):
                if fut.cancelled():
                    continue
                try:
                    out = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except BaseException:  # noqa: BLE001 - keep what we can
                    continue
                self._absorb(out, members, idx, y_all, done, kept, dropped, counts)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            pass

    @staticmethod
    def _write_checkpoint(path: Path, data: KoopmanData, run_key: dict[str, Any],
                          dropped_idx: np.ndarray) -> None:
        atomic_save_npz(path, x=data.x, y=data.y, generation=data.generation,
                        origin=data.origin, seed=data.seed,
                        lag_steps=np.int64(data.lag_steps), timestep=np.float64(data.timestep),
                        system_name=np.str_(data.system_name),
                        format_version=np.int64(FORMAT_VERSION),
                        start_index=np.asarray(data.extra["start_index"], dtype=np.int64),
                        dropped_index=np.asarray(dropped_idx, dtype=np.int64),
                        run_key=np.str_(json.dumps(run_key, sort_keys=True)))

    @staticmethod
    def _resume(path: Path, run_key: dict[str, Any], x: np.ndarray, idx: np.ndarray,
                y_all: np.ndarray, done: np.ndarray, kept: np.ndarray) -> list[int]:
        with np.load(path, allow_pickle=False) as f:
            if "run_key" not in f.files:
                raise ValueError(f"checkpoint {path} was not written by BurstSampler.run; "
                                 "delete it or pass another checkpoint path")
            old_key = json.loads(str(f["run_key"]))
            if old_key != run_key:
                diff = {k: (old_key.get(k), v) for k, v in run_key.items()
                        if old_key.get(k) != v}
                raise ValueError(f"checkpoint {path} belongs to a different run (differs in "
                                 f"{diff} as (file, now)); delete it, pass resume=False, or "
                                 "use the same settings")
            c_idx, c_x, c_y = f["start_index"], f["x"], f["y"]
            c_drop = f["dropped_index"]
        where = {int(s): j for j, s in enumerate(idx)}
        dropped: list[int] = []
        for j, s in enumerate(c_idx):
            r = where.get(int(s))
            if r is not None and np.allclose(c_x[j], x[r].astype(np.float32), atol=1e-6):
                y_all[r] = c_y[j]
                done[r] = kept[r] = True
        for s in c_drop:
            r = where.get(int(s))
            if r is not None:
                done[r] = True
                dropped.append(int(s))
        return dropped


# ---------------------------------------------------------------------------------------------
# one long trajectory
# ---------------------------------------------------------------------------------------------
def sample_trajectory(system: MolecularSystem, n_frames: int, stride_steps: int, seed: int,
                      x0: Any | None = None, platform: str = "auto", progress: bool = True,
                      properties: dict[str, str] | None = None,
                      max_displacement: float = DEFAULT_MAX_DISPLACEMENT) -> np.ndarray:
    """One trajectory of ``n_frames`` frames, one every ``stride_steps`` steps.

    Starts at ``x0`` (default: the system's first structure) with Maxwell–Boltzmann velocities;
    frame 0 is the state after the first stride (x0 itself is not returned). The integrator
    and velocity seeds derive from ``seed``: the same seed gives the same frames on the same
    platform. Returns a float64 array (n_frames, n_atoms, 3) in nm. Raises ``RuntimeError``
    naming the frame if the dynamics blows up.
    """
    if n_frames < 1 or stride_steps < 1:
        raise ValueError(f"n_frames and stride_steps must be >= 1, got {n_frames}, "
                         f"{stride_steps}")
    if platform == "auto":
        platform, _ = choose_platform(system)
    props = dict(properties or {})
    if platform in _GPU_PLATFORMS:
        props.setdefault("Precision", "mixed")
    s_int, s_vel = _stream_seeds(seed, 0, 0, 0, tag=_TRAJ_TAG)
    integ = system.make_integrator()
    integ.setRandomNumberSeed(s_int)
    ctx = openmm.Context(system.system, integ, openmm.Platform.getPlatformByName(platform),
                         props)
    x = np.asarray(system.positions[0] if x0 is None else _as_starts(x0, system.n_atoms)[0],
                   dtype=np.float64)
    ctx.setPositions(x)
    if system.integrator != "brownian":
        ctx.setVelocitiesToTemperature(system.temperature, s_vel)
    frames = np.empty((int(n_frames), system.n_atoms, 3), dtype=np.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(n_frames), unit="frame", desc=f"trajectory {system.name}",
                   file=sys.stderr, dynamic_ncols=True)
    prev = x
    try:
        lock = _REF_LOCK if platform == "Reference" else None
        for i in range(int(n_frames)):
            try:
                if lock is not None:
                    with lock:
                        integ.step(int(stride_steps))
                else:
                    integ.step(int(stride_steps))
            except openmm.OpenMMException as exc:
                raise RuntimeError(f"trajectory of {system.name} blew up before frame {i}: "
                                   f"{exc}; minimise x0 or reduce the timestep") from exc
            pos = _positions(ctx, (system.n_atoms, 3))
            if not np.all(np.isfinite(pos)) or np.max(np.abs(pos - prev)) > max_displacement:
                raise RuntimeError(f"trajectory of {system.name} blew up at frame {i} "
                                   "(non-finite or exploding coordinates); minimise x0 or "
                                   "reduce the timestep")
            frames[i] = pos
            prev = pos
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return frames
