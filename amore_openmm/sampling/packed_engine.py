"""PackedEngine: Koopman bursts M at a time on a packed System (see :mod:`.packing`).

Implements the engine protocol of :mod:`amore_openmm.sampling.engine` (``run_chunk``,
``close``). The packed Context gives only the total energy of its copies; the per-copy start
and end energies of the sanity checks come from a single-copy Reference Context (one energy
evaluation per start and per burst end).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import openmm
from openmm import app, unit

from amore_openmm.systems import BOLTZ, MolecularSystem, get_platform

from . import sanity as sn
from .engine import BurstEngine, default_platform_properties, read_positions
from .packing import pack_replicas
from .seeds import packed_stream_key, stream_seeds

__all__ = ["PackedSpec", "PackedEngine"]


@dataclass(frozen=True)
class PackedSpec:
    """Picklable recipe for a :class:`PackedEngine` (what a worker needs, no OpenMM objects).

    It holds the single-copy System (as XML), its topology and dynamics settings, M, and the
    platform; :meth:`digest` keys per-worker caches.
    """

    system_xml: str
    topology: app.Topology
    positions: np.ndarray
    temperature: float
    timestep: float
    friction: float
    integrator: str
    lag_steps: int
    name: str
    copies: int
    platform: str
    properties: tuple[tuple[str, str], ...] = ()
    gb_cutoff: float = 5.0
    kind = "packed"

    @classmethod
    def from_system(cls, system: MolecularSystem, copies: int, platform: str = "Reference",
                    properties: dict[str, str] | None = None, gb_cutoff: float = 5.0
                    ) -> "PackedSpec":
        """The spec of ``copies`` packed copies of ``system`` on ``platform``."""
        return cls(system_xml=openmm.XmlSerializer.serialize(system.system),
                   topology=system.topology,
                   positions=np.asarray(system.positions[0], dtype=np.float64),
                   temperature=system.temperature, timestep=system.timestep,
                   friction=system.friction, integrator=system.integrator,
                   lag_steps=system.lag_steps, name=system.name, copies=int(copies),
                   platform=platform, properties=tuple(sorted((properties or {}).items())),
                   gb_cutoff=float(gb_cutoff))

    def molecular_system(self) -> MolecularSystem:
        """The single-copy system this spec packs."""
        return MolecularSystem(system=openmm.XmlSerializer.deserialize(self.system_xml),
                               topology=self.topology, positions=[self.positions],
                               temperature=self.temperature, timestep=self.timestep,
                               friction=self.friction, integrator=self.integrator,
                               lag_steps=self.lag_steps, name=self.name)

    def digest(self) -> str:
        h = hashlib.sha1()
        for part in (self.system_xml, self.integrator, repr((self.temperature, self.timestep,
                     self.friction, self.copies, self.platform, self.properties,
                     self.gb_cutoff))):
            h.update(part.encode())
        return h.hexdigest()

    def build(self) -> "PackedEngine":
        return PackedEngine(self)


class PackedEngine(BurstEngine):
    """One Context on a packed System that runs Koopman bursts M at a time.

    ``run_chunk(task)`` follows the engine protocol (:mod:`amore_openmm.sampling.engine`).
    The m·K bursts of a chunk are run in groups of M (the last group padded with repeats
    whose results are discarded). A failed copy (non-finite, moved too far, unphysical
    energy jump or bond, or a GB copy grown past the cutoff) is retried with ``attempt + 1``
    in a new group; if the whole Context raises, the group's bursts are retried one per group
    so that one bad start cannot sink the others. Starts with absurd energy or a broken bond
    are refused before any burst.
    """

    def __init__(self, spec_or_system: PackedSpec | MolecularSystem, copies: int | None = None,
                 platform: str = "Reference", properties: dict[str, str] | None = None) -> None:
        if isinstance(spec_or_system, MolecularSystem):
            if copies is None:
                raise ValueError("PackedEngine(system, copies=M): give the number of copies")
            spec = PackedSpec.from_system(spec_or_system, copies, platform, properties)
            single = spec_or_system
        else:
            spec = spec_or_system
            single = spec.molecular_system()
        self.spec = spec
        self.packed = pack_replicas(single, spec.copies, gb_cutoff=spec.gb_cutoff)
        self.copies = spec.copies
        self.n = single.n_atoms
        self.integrator = single.make_integrator(seed=1)
        plat = get_platform(spec.platform)
        props = default_platform_properties(spec.platform, dict(spec.properties))
        self.context = openmm.Context(self.packed.system, self.integrator, plat, props)
        self.brownian = single.integrator == "brownian"
        self.temperature = single.temperature
        masses = np.array([single.system.getParticleMass(i).value_in_unit(unit.dalton)
                           for i in range(self.n)])
        with np.errstate(divide="ignore"):
            self._v_scale = np.where(masses > 0, np.sqrt(BOLTZ * self.temperature /
                                                         np.where(masses > 0, masses, 1.0)), 0.0)
        self._constrained = single.system.getNumConstraints() > 0
        self.is_reference = spec.platform == "Reference"
        self.groups_run = 0
        # single-copy Context for per-copy energies (never stepped: no random numbers used)
        self._energy_ctx = openmm.Context(single.system, openmm.VerletIntegrator(0.001),
                                          openmm.Platform.getPlatformByName("Reference"))
        self._make_checker(single.system, single.temperature, self._energy_ctx,
                           spec.positions)

    def _velocities(self, seeds: Sequence[int]) -> np.ndarray:
        v = np.empty((self.copies, self.n, 3))
        for c, s in enumerate(seeds):
            v[c] = np.random.default_rng(int(s)).standard_normal((self.n, 3)) * \
                self._v_scale[:, None]
        return v.reshape(-1, 3)

    def copy_energy(self, x: np.ndarray) -> float:
        """Potential energy (kJ/mol) of one copy at positions ``x`` (n, 3) nm."""
        if not np.all(np.isfinite(x)):
            return float("nan")
        self._energy_ctx.setPositions(x)
        try:
            return sn.energy_of(self._energy_ctx)
        except openmm.OpenMMException:
            return float("nan")

    def run_group(self, xs: np.ndarray, bursts: Sequence[tuple[int, int]], seed: int,
                  lag_steps: int, attempt: int = 0) -> np.ndarray:
        """End positions (g, n, 3) of one packed burst group of g ≤ M bursts.

        ``xs`` (g, n, 3) are the starts, ``bursts`` the (start index, k) of each; may contain
        NaN, may raise ``openmm.OpenMMException``.
        """
        g = len(bursts)
        if g < 1 or g > self.copies or xs.shape[0] != g:
            raise ValueError(f"a packed group needs 1..{self.copies} bursts with one start each")
        pad = self.copies - g
        x_all = np.concatenate([xs, np.repeat(xs[:1], pad, axis=0)]) if pad else xs
        b_all = list(bursts) + [bursts[0]] * pad
        packed_x, shifts = self.packed.pack_positions(x_all)
        self.integrator.setRandomNumberSeed(packed_stream_key(seed, bursts, attempt))
        ctx = self.context
        ctx.reinitialize(preserveState=False)  # OpenMM applies a new seed only here
        ctx.setPositions(packed_x)
        if not self.brownian:
            vel_seeds = [stream_seeds(seed, s, k, attempt)[1] for s, k in b_all]
            ctx.setVelocities(self._velocities(vel_seeds))
            if self._constrained:
                ctx.applyVelocityConstraints(1e-6)
        self.integrator.step(int(lag_steps))
        self.groups_run += 1
        out = read_positions(ctx.getState(getPositions=True, enforcePeriodicBox=False),
                             (self.copies * self.n, 3))
        return self.packed.unpack_positions(out, shifts)[:g]

    def _copy_problem(self, x: np.ndarray, end: np.ndarray, bound: float,
                      e_start: float | None) -> tuple[str, str]:
        code, detail = sn.displacement_problem(x, end, bound)
        if code:
            return code, detail
        cut = self.packed.gb_cutoff
        if cut is not None:
            d = np.sqrt(((end[:, None, :] - end[None, :, :]) ** 2).sum(-1)).max()
            if d >= cut:
                return sn.GB_CUTOFF, (f"copy extent {d:.3g} nm reached the packed GB cutoff "
                                      f"{cut:g} nm (raise gb_cutoff)")
        if e_start is None:
            return "", ""
        return self._end_problem(x, end, self.copy_energy(end), e_start, bound)

    def _refuse_starts(self, xs: np.ndarray, idx: np.ndarray, check: bool, ok: np.ndarray,
                       events: list) -> list[float | None]:
        """Start energies (None without checks); refused starts get ``ok = False``."""
        energies: list[float | None] = []
        for j in range(len(xs)):
            if not check:
                energies.append(None)
                continue
            e = self.copy_energy(xs[j])
            code, detail = self.checker.start_problem(xs[j], e)
            if code:
                events.append((int(idx[j]), -1, 0, code, detail))
                ok[j] = False
            energies.append(e)
        return energies

    def _run_chunk(self, task: dict[str, Any]) -> dict[str, Any]:
        xs = np.asarray(task["x"], dtype=np.float64)
        idx = np.asarray(task["start_index"], dtype=np.int64)
        K, lag, seed = int(task["n_koopman"]), int(task["lag_steps"]), int(task["seed"])
        retries, bound = int(task["max_retries"]), float(task["max_displacement"])
        m = xs.shape[0]
        y = np.zeros((m, K, self.n, 3), dtype=np.float32)
        ok = np.ones(m, dtype=bool)
        events: list[tuple[int, int, int, str, str]] = []
        e_start = self._refuse_starts(xs, idx, self._use_limits(task), ok, events)
        todo = [(j, k) for j in range(m) if ok[j] for k in range(K)]  # a fixed order
        for attempt in range(retries + 1):
            if not todo:
                break
            failed: list[tuple[int, int]] = []
            for group in self._groups(todo, attempt):
                bursts = [(int(idx[j]), k) for j, k in group]
                starts = xs[[j for j, _ in group]]
                try:
                    ends = self.run_group(starts, bursts, seed, lag, attempt)
                except openmm.OpenMMException as exc:
                    for j, k in group:
                        events.append((int(idx[j]), k, attempt, sn.OPENMM_ERROR,
                                       f"OpenMM error: {str(exc).strip()}"))
                        failed.append((j, k))
                    continue
                for (j, k), x, end in zip(group, starts, ends):
                    code, detail = self._copy_problem(x, end, bound, e_start[j])
                    if code:
                        events.append((int(idx[j]), k, attempt, code, detail))
                        failed.append((j, k))
                    else:
                        y[j, k] = end
                        if attempt:
                            events.append((int(idx[j]), k, attempt, sn.RECOVERED, ""))
            todo = failed
        for j, _ in todo:
            ok[j] = False
        return {"chunk": task["chunk"], "y": y, "ok": ok, "events": events}

    def _groups(self, todo: list[tuple[int, int]], attempt: int
                ) -> Iterator[list[tuple[int, int]]]:
        """Groups of ≤ M bursts; retries (attempt > 0) run one burst per group."""
        size = self.copies if attempt == 0 else 1
        for i in range(0, len(todo), size):
            yield todo[i:i + size]

    def close(self) -> None:
        super().close()
        self.__dict__.pop("_energy_ctx", None)
