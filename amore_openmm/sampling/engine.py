"""Burst engines: one OpenMM Context each, running chunks of Koopman bursts.

The engine protocol (:class:`BurstEngine`), shared by the plain :class:`Engine` here and the
packed engine (:class:`~amore_openmm.sampling.packed_engine.PackedEngine`):

``run_chunk(task) -> result`` with ``task`` a dict: ``chunk`` (id), ``x`` (m, n, 3) nm,
``start_index`` (m,), ``n_koopman`` K, ``lag_steps``, ``seed``, ``max_retries``,
``max_displacement`` (nm), optional ``reseed_block`` (0: re-seed every burst) and ``sanity``
(a :class:`~amore_openmm.sampling.sanity.BurstSanity` as a dict; default limits when absent).
The result has ``chunk``, ``y`` (m, K, n, 3) float32 (every atom, never wrapped into the
periodic box), with a barostat ``box`` (m, K, 3, 3) (each end's box vectors, nm), ``ok`` (m,)
bool, ``events`` (a list
of ``(start index, k, attempt, reason code, detail)``; k = -1 for a refused start, reason
"recovered" for a burst that succeeded on a retry), ``seconds`` and ``pid``. ``close()`` frees
the Context.

A *spec* is the picklable recipe of an engine (``kind``, ``digest()``, ``build()``);
:func:`cached_chunk` runs a chunk on this process's cached engine for a spec (what executor
tasks do) and :func:`engine_cache` lists those engines.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import openmm
from openmm import unit

from ..settings import SamplingSettings
from ..systems import get_platform
from . import sanity as sn
from .seeds import FORCE_TAG, REF_LOCK, reference_seed_function, stream_seeds, BLOCK_TAG

__all__ = ["BurstEngine", "Engine", "BurstSpec", "BurstFailureWarning", "cached_chunk",
           "engine_cache", "default_platform_properties", "DEFAULT_MAX_DISPLACEMENT"]

#: default bound on how far a burst may move any coordinate (nm) before it counts as exploded
DEFAULT_MAX_DISPLACEMENT = SamplingSettings().max_displacement
GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP")


class BurstFailureWarning(UserWarning):
    """A start was dropped: refused (absurd energy, broken bond) or its bursts kept failing."""


def default_platform_properties(platform: str, properties: dict[str, str] | None = None
                                ) -> dict[str, str]:
    """``properties`` completed with the defaults of burst Contexts: one thread per Context on
    CPU (parallelism comes from the pool's slots), mixed precision on GPUs."""
    props = dict(properties or {})
    if platform == "CPU":
        props.setdefault("Threads", "1")
    elif platform in GPU_PLATFORMS:
        props.setdefault("Precision", "mixed")
    return props


def as_starts(starts: Any, n_atoms: int) -> np.ndarray:
    """Starts as a float64 (N, n_atoms, 3) array in nm (one structure or Quantities too)."""
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


def read_positions(state: openmm.State, shape: tuple[int, int]) -> np.ndarray:
    """Positions (nm) of a State as a new float64 array, without the unit wrapper (~5× faster)."""
    out = np.empty(shape, dtype=np.float64)
    try:
        state._getVectorAsNumpy(openmm.State.Positions, out)
    except AttributeError:  # pragma: no cover - other OpenMM versions
        out[:] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return out


def positions(ctx: openmm.Context, shape: tuple[int, int]) -> np.ndarray:
    """Positions (nm) of a Context as a new float64 array (not wrapped into the box)."""
    return read_positions(ctx.getState(getPositions=True, enforcePeriodicBox=False), shape)


def box_vectors(state: openmm.State) -> np.ndarray:
    """The periodic box vectors (3, 3) nm of a State, rows a, b, c."""
    return np.array([[float(c) for c in v.value_in_unit(unit.nanometer)]
                     for v in state.getPeriodicBoxVectors()])


# ---------------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------------
class EngineSpec(Protocol):
    """What :func:`cached_chunk` needs of a spec."""

    kind: str

    def digest(self) -> str: ...

    def build(self) -> "BurstEngine": ...


class BurstEngine:
    """Base of the burst engines: the chunk protocol (module docstring), timing, the
    Reference lock and the burst sanity checks. Subclasses implement ``_run_chunk``."""

    is_reference: bool = False
    checker: sn.SanityChecker | None = None

    def run_chunk(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run K bursts for each start of ``task``; see the module docstring."""
        t0 = time.perf_counter()
        if self.is_reference:
            with REF_LOCK:  # the RNG is per process: one Reference burst at a time
                out = self._run_chunk(task)
        else:
            out = self._run_chunk(task)
        out["seconds"] = time.perf_counter() - t0
        out["pid"] = os.getpid()
        return out

    def _run_chunk(self, task: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Free the Context."""
        self.__dict__.pop("context", None)

    # -- sanity --------------------------------------------------------------------------------
    def _make_checker(self, system: openmm.System, temperature: float,
                      energy_context: openmm.Context, ref_positions: np.ndarray) -> None:
        energy_context.setPositions(np.asarray(ref_positions, dtype=np.float64))
        try:
            e_ref = sn.energy_of(energy_context)
        except openmm.OpenMMException:
            e_ref = float("nan")
        self._checker_system = (system, temperature, e_ref)
        self.checker = sn.SanityChecker(system, temperature, sn.BurstSanity(), e_ref)

    def _use_limits(self, task: dict[str, Any]) -> bool:
        """Set the checker's limits from ``task``; True when the sanity checks are on."""
        limits = sn.BurstSanity(**task["sanity"]) if task.get("sanity") else sn.BurstSanity()
        if self.checker is None:
            return False
        if limits != self.checker.limits:
            self.checker = sn.SanityChecker(*self._checker_system[:2], limits,
                                            self._checker_system[2])
        return limits.enabled

    def _end_problem(self, x: np.ndarray, end: np.ndarray, e_end: float | None,
                     e_start: float | None, bound: float) -> tuple[str, str]:
        code, detail = sn.displacement_problem(x, end, bound)
        if code or e_end is None or self.checker is None:
            return code, detail
        return self.checker.end_problem(end, e_end, e_start)


# ---------------------------------------------------------------------------------------------
# the plain engine
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BurstSpec:
    """Everything a worker needs to build its :class:`Engine` (picklable, no OpenMM objects)."""

    system_xml: str
    integrator_xml: str
    platform: str
    properties: tuple[tuple[str, str], ...]
    temperature: float
    brownian: bool
    probe_positions: np.ndarray  # the reference structure: self-check and E_ref
    kind = "burst"

    def digest(self) -> str:
        h = hashlib.sha1()
        for part in (self.system_xml, self.integrator_xml, self.platform,
                     repr(self.properties), repr(self.temperature)):
            h.update(part.encode())
        return h.hexdigest()

    def build(self) -> "Engine":
        return Engine(self)


class Engine(BurstEngine):
    """One OpenMM Context plus the burst loop (lives in a worker process or a pool thread)."""

    def __init__(self, spec: BurstSpec) -> None:
        self.spec = spec
        self.system = system = openmm.XmlSerializer.deserialize(spec.system_xml)
        self.integrator = openmm.XmlSerializer.deserialize(spec.integrator_xml)
        plat = get_platform(spec.platform)
        self.context = openmm.Context(system, self.integrator, plat, dict(spec.properties))
        self.temperature = spec.temperature
        self.brownian = spec.brownian
        self.is_reference = spec.platform == "Reference"
        self._shape = (system.getNumParticles(), 3)
        # a barostat changes the box during a burst: restore it so bursts stay independent
        self._box = (system.getDefaultPeriodicBoxVectors() if any(
            "Barostat" in f.__class__.__name__ for f in system.getForces()) else None)
        # forces with their own random stream and step counter (barostats, Andersen
        # thermostat): re-seeded with the integrator and reset by ``reinitialize``
        self._seeded_forces = [f for f in system.getForces()
                               if hasattr(f, "setRandomNumberSeed")]
        self.last_box: np.ndarray | None = None
        self._ref_seed = reference_seed_function() if self.is_reference else None
        self.fast_reseed = False
        if self.is_reference and not self._seeded_forces and self._ref_seed is not None:
            self.fast_reseed = self._fast_reseed_matches()
        if self._box is not None:
            self.context.setPeriodicBoxVectors(*self._box)
        self._make_checker(system, spec.temperature, self.context, spec.probe_positions)

    # -- one burst -----------------------------------------------------------------------------
    def _reseed(self, integ_seed: int, fast: bool) -> None:
        if fast:
            self._ref_seed(integ_seed)
        else:
            self.integrator.setRandomNumberSeed(integ_seed)
            for i, force in enumerate(self._seeded_forces):
                force.setRandomNumberSeed(stream_seeds(integ_seed, i, 0, 0, tag=FORCE_TAG)[0])
            self.context.reinitialize(preserveState=False)

    def _set_start(self, x: np.ndarray) -> None:
        if self._box is not None:
            self.context.setPeriodicBoxVectors(*self._box)
        self.context.setPositions(x)

    def start_energy(self, x: np.ndarray) -> float:
        """Potential energy (kJ/mol) of ``x``; changes nothing a later burst depends on."""
        self._set_start(x)
        try:
            return sn.energy_of(self.context)
        except openmm.OpenMMException:
            return float("nan")

    def burst(self, x: np.ndarray, lag_steps: int, integ_seed: int | None, vel_seed: int,
              fast: bool | None = None, energy: bool = False
              ) -> tuple[np.ndarray, float | None]:
        """(end positions (n, 3) nm, end energy kJ/mol or None) of one burst from ``x``; the
        positions may contain NaN, OpenMM may raise. Positions are not wrapped into the
        periodic box; with a barostat the end's box vectors are left in ``last_box``.

        ``integ_seed=None`` continues the Context's current random stream (block re-seeding).
        """
        if integ_seed is not None:
            self._reseed(integ_seed, self.fast_reseed if fast is None else fast)
        self._set_start(x)
        if not self.brownian:
            self.context.setVelocitiesToTemperature(self.temperature, vel_seed)
        self.integrator.step(lag_steps)
        state = self.context.getState(getPositions=True, getEnergy=energy,
                                      enforcePeriodicBox=False)
        if self._box is not None:
            self.last_box = box_vectors(state)
        e_end = (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                 if energy else None)
        return read_positions(state, self._shape), e_end

    def _fast_reseed_matches(self) -> bool:
        """True if global-RNG re-seeding reproduces ``reinitialize`` re-seeding bit for bit."""
        x = np.asarray(self.spec.probe_positions, dtype=np.float64)
        try:
            a = self.burst(x, 10, 12345, 678, fast=False)[0]
            b = self.burst(x, 10, 12345, 678, fast=True)[0]
            c = self.burst(x, 10, 12346, 678, fast=True)[0]
        except Exception:  # noqa: BLE001 - any failure: use the safe path
            return False
        return bool(np.array_equal(a, b) and not np.array_equal(a, c))

    # -- a chunk of starts ---------------------------------------------------------------------
    def _run_chunk(self, task: dict[str, Any]) -> dict[str, Any]:
        xs: np.ndarray = task["x"]
        idx: np.ndarray = task["start_index"]
        K = task["n_koopman"]
        block_size = int(task.get("reseed_block", 0))  # 0: re-seed every burst
        check = self._use_limits(task)
        m, n = xs.shape[0], xs.shape[1]
        block = None
        y = np.zeros((m, K, n, 3), dtype=np.float32)
        box = None if self._box is None else np.zeros((m, K, 3, 3))
        ok = np.ones(m, dtype=bool)
        events: list[tuple[int, int, int, str, str]] = []
        for j in range(m):
            start = int(idx[j])
            if block_size and start // block_size != block:
                # block re-seeding: one (expensive) re-seed per block of start indices; the
                # bursts of the block then continue that stream in start-index order
                block = start // block_size
                self._reseed(stream_seeds(task["seed"], block, 0, 0, tag=BLOCK_TAG)[0],
                             self.fast_reseed)
            e_start = None
            if check:
                e_start = self.start_energy(xs[j])
                code, detail = self.checker.start_problem(xs[j], e_start)
                if code:  # refused: a property of the start, not of a random stream
                    events.append((start, -1, 0, code, detail))
                    ok[j] = False
                    continue
            for k in range(K):
                if not self._burst_with_retries(task, xs[j], start, k, e_start, block_size,
                                                y[j, k], events):
                    ok[j] = False
                    break  # the start is dropped: skip its remaining bursts
                if box is not None:
                    box[j, k] = self.last_box
        out = {"chunk": task["chunk"], "y": y, "ok": ok, "events": events}
        if box is not None:
            out["box"] = box
        return out

    def _burst_with_retries(self, task: dict[str, Any], x: np.ndarray, start: int, k: int,
                            e_start: float | None, block_size: int, out: np.ndarray,
                            events: list) -> bool:
        """Run burst ``k`` of ``start`` (retrying with derived seeds) into ``out``."""
        for attempt in range(int(task["max_retries"]) + 1):
            s_int, s_vel = stream_seeds(task["seed"], start, k, attempt)
            if block_size and attempt == 0:
                s_int = None
            try:
                end, e_end = self.burst(x, int(task["lag_steps"]), s_int, s_vel,
                                        energy=e_start is not None)
            except openmm.OpenMMException as exc:  # CPU/GPU raise on NaN coordinates
                code, detail = sn.OPENMM_ERROR, f"OpenMM error: {str(exc).strip()}"
            else:
                code, detail = self._end_problem(x, end, e_end, e_start,
                                                 float(task["max_displacement"]))
            if not code:
                out[:] = end
                if attempt:
                    events.append((start, k, attempt, sn.RECOVERED, ""))
                return True
            events.append((start, k, attempt, code, detail))
        return False


# ---------------------------------------------------------------------------------------------
# per-process engine cache (executor tasks: Dask, process pools)
# ---------------------------------------------------------------------------------------------
_ENGINES: dict[tuple[str, str, int], BurstEngine] = {}
_ENGINES_LOCK = threading.Lock()


def cached_chunk(spec: EngineSpec, task: dict[str, Any]) -> dict[str, Any]:
    """Run one chunk on this process's cached engine for ``spec`` (built on first use per
    (spec, thread), then reused by every later chunk: one Context per worker thread)."""
    key = (spec.kind, spec.digest(), threading.get_ident())
    eng = _ENGINES.get(key)
    if eng is None:
        eng = spec.build()
        with _ENGINES_LOCK:
            _ENGINES[key] = eng
    return eng.run_chunk(task)


def engine_cache() -> dict[tuple[str, str, int], BurstEngine]:
    """A snapshot of this process's cached engines: ``{(kind, spec digest, thread id):
    engine}`` with kind "burst" or "packed". On a Dask worker, ``client.run`` a function of it
    to check that Contexts are reused across tasks."""
    with _ENGINES_LOCK:
        return dict(_ENGINES)
