"""Temperature replica exchange (parallel tempering) for an equilibrium ensemble.

N replicas of one :class:`~amore_openmm.systems.MolecularSystem` run at a ladder of
temperatures; every ``steps_per_exchange`` integrator steps neighbouring temperatures try to
swap their configurations with the Metropolis criterion on potential energies,
accept with probability min(1, exp(−Δ)), Δ = (β_i − β_j)(U_j − U_i), pairs (0,1), (2,3), ...
on even exchanges and (1,2), (3,4), ... on odd ones. The frames kept are those at the lowest
(base) temperature: a Boltzmann ensemble there that crosses barriers the hot replicas cross.

Why our own loop: OpenMM 8.5.2 has no ``openmm.app.ReplicaExchangeSampler``; openmmtools
0.27's ``multistate.ReplicaExchangeSampler`` installs and runs beside it, but it is not a
dependency of this project (it adds numba, llvmlite, pandas, netCDF4, pymbar: ~400 MB), its
checkpoints are NetCDF files, and its Langevin moves take no random seed, so a seeded run cannot
be repeated or resumed to the same continuation (the project's seed convention).

One Context per replica; a swap exchanges the replicas' temperatures (integrator temperature
set, velocities rescaled by sqrt(T_new/T_old)), not their coordinates. A checkpoint (npz,
written atomically) holds every Context's OpenMM checkpoint (positions, velocities, the
integrator's random state), the swap generator's state and the results so far; a run from it
continues as the uninterrupted run would on the same platform.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from openmm import unit

from ..interrupt import check_interrupt
from ..systems.common import BOLTZ, as_positions_nm, get_platform, strip_units
from ..systems.hmr import DEFAULT_HYDROGEN_MASS, hmr_system
from ..systems.molecular import MolecularSystem

__all__ = ["TemperatureReplicaExchange", "ReplicaExchangeResult", "geometric_temperatures",
           "equilibrium_ensemble"]

_FORMAT = 1


def geometric_temperatures(t_min: Any, t_max: Any, n_replicas: int) -> np.ndarray:
    """``n_replicas`` temperatures (K) from ``t_min`` to ``t_max`` in a geometric progression.

    A geometric ladder gives about equal neighbour acceptance when the heat capacity does not
    change much over the range.
    """
    lo = float(strip_units(t_min, unit.kelvin))
    hi = float(strip_units(t_max, unit.kelvin))
    n = int(n_replicas)
    if n < 2:
        raise ValueError(f"n_replicas must be >= 2 for replica exchange, got {n_replicas}")
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < t_min < t_max (K), got t_min={lo}, t_max={hi}")
    return lo * (hi / lo) ** (np.arange(n) / (n - 1))


@dataclass
class ReplicaExchangeResult:
    """What a replica-exchange run gives.

    Attributes:
        temperatures: the ladder (K), base temperature first.
        frames: (n_frames, n_stored_atoms, 3) positions (nm) at the base temperature, one
            after every ``save_every``-th exchange (unwrapped, as OpenMM integrates them).
        atoms: the 0-based atom indices stored in ``frames``.
        frame_energies: potential energy (kJ/mol) of each frame.
        acceptance: (n_replicas − 1,) accepted/attempted swaps between temperatures k and k+1
            (NaN where none was attempted).
        n_attempted, n_accepted: the counts behind ``acceptance``.
        round_trips: completed base → top → base walks, summed over replicas.
        state_history: (n_exchanges, n_replicas) temperature index of each replica after each
            exchange.
        n_exchanges: exchanges done in total. steps_per_exchange, timestep (ps): the dynamics.
    """

    temperatures: np.ndarray
    frames: np.ndarray
    atoms: np.ndarray
    frame_energies: np.ndarray
    acceptance: np.ndarray
    n_attempted: np.ndarray
    n_accepted: np.ndarray
    round_trips: int
    state_history: np.ndarray
    n_exchanges: int
    steps_per_exchange: int
    timestep: float

    @property
    def simulated_time_ps(self) -> float:
        """Simulated time per replica (ps)."""
        return self.n_exchanges * self.steps_per_exchange * self.timestep


class TemperatureReplicaExchange:
    """Parallel tempering of one system over a temperature ladder.

    Args:
        system: the MolecularSystem (its integrator kind, friction and timestep are used; its
            ``temperature`` is not: the ladder decides). Use
            :func:`~amore_openmm.systems.hmr.hmr_system` first for a 4 fs step.
        temperatures: K (numbers or a Quantity), strictly increasing, at least two; see
            :func:`geometric_temperatures`.
        steps_per_exchange: integrator steps between exchange attempts.
        platform, properties: the OpenMM platform of the replicas' Contexts.
        seed: seeds the integrators, the initial velocities and the swap decisions.
        checkpoint: npz path; when it exists (and ``resume``) the run continues from it, and
            it is rewritten every ``checkpoint_every`` exchanges and at the end of :meth:`run`.
        save_every: keep a base-temperature frame after every ``save_every``-th exchange.
        starts: initial structures (nm), replica r starts from ``starts[r % len(starts)]``
            (default: the system's initial structures).
        atoms: the atoms kept in the frames: None (all), "selection" (the system's molecule of
            interest, e.g. no water) or 0-based indices.
        threads: replicas stepped concurrently from this many threads (OpenMM releases the GIL
            while stepping). Not on Reference, whose random generator is process-global:
            threads would race on it and the run would not repeat.
    """

    def __init__(self, system: MolecularSystem, temperatures: Any,
                 steps_per_exchange: int = 500, *, platform: str = "Reference",
                 properties: dict[str, str] | None = None, seed: int = 0,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
                 save_every: int = 1, resume: bool = True,
                 starts: Sequence[Any] | None = None, atoms: Any = None,
                 threads: int = 1) -> None:
        temps = np.asarray(strip_units(temperatures, unit.kelvin), dtype=np.float64).ravel()
        if temps.size < 2:
            raise ValueError("temperatures needs at least two values (K); use "
                             "geometric_temperatures(t_min, t_max, n_replicas)")
        if not (np.all(temps > 0) and np.all(np.diff(temps) > 0)):
            raise ValueError(f"temperatures must be positive and strictly increasing, got "
                             f"{temps.tolist()}")
        for name, val in (("steps_per_exchange", steps_per_exchange),
                          ("checkpoint_every", checkpoint_every), ("save_every", save_every)):
            if int(val) < 1:
                raise ValueError(f"{name} must be a positive integer, got {val}")
        barostats = [f for f in system.system.getForces() if "Barostat" in type(f).__name__]
        if barostats:
            # NPT exchange needs a P·ΔV term and the barostat's own temperature swapped
            raise ValueError(
                f"system has a {type(barostats[0]).__name__}: temperature replica exchange "
                "here is NVT only; remove the barostat (equilibrate the box first)")
        if int(threads) < 1:
            raise ValueError(f"threads must be a positive integer, got {threads}")
        plat = get_platform(platform)
        if int(threads) > 1 and plat.getName() == "Reference":
            raise ValueError("threads > 1 needs a platform with per-Context random streams "
                             "(CPU, CUDA, OpenCL); on Reference use threads=1")
        if atoms is None:
            atoms = np.arange(system.n_atoms)
        elif isinstance(atoms, str):
            if atoms != "selection":
                raise ValueError(f"atoms must be None, 'selection' or indices, got {atoms!r}")
            atoms = system.selection
        self.atoms = np.asarray(atoms, dtype=np.int64).ravel()
        if self.atoms.size == 0 or self.atoms.min() < 0 or self.atoms.max() >= system.n_atoms:
            raise ValueError(f"atoms must be 0-based indices below {system.n_atoms}")
        self.threads = int(threads)
        self.system = system
        self.temperatures = temps
        self.steps_per_exchange = int(steps_per_exchange)
        self.seed = int(seed)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.save_every = int(save_every)
        self.platform = platform
        n = temps.size
        self._betas = 1.0 / (BOLTZ * temps)
        self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x52454D44]))
        self._contexts = []
        starts = list(system.positions if starts is None else starts)
        if not starts:
            raise ValueError("starts must hold at least one structure (nm)")
        for r in range(n):
            ctx = system.make_context(plat, properties, seed=self.seed * 1009 + r)
            ctx.getIntegrator().setTemperature(temps[r])
            ctx.setPositions(as_positions_nm(starts[r % len(starts)]))
            if system.has_constraints:
                ctx.applyConstraints(1e-6)
            if system.integrator != "brownian":
                ctx.setVelocitiesToTemperature(temps[r], (self.seed * 7919 + r) % 2147483646 + 1)
            self._contexts.append(ctx)
        self._state_of = np.arange(n)           # temperature index of each replica
        self._direction = np.zeros(n, np.int64)  # +1 heading up from base, −1 heading down
        self._direction[0] = 1
        self._round_trips = 0
        self._attempted = np.zeros(n - 1, np.int64)
        self._accepted = np.zeros(n - 1, np.int64)
        self._frames: list[np.ndarray] = []
        self._frame_energies: list[float] = []
        self._history: list[np.ndarray] = []
        self._done = 0
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            self._load(self.checkpoint)

    @property
    def n_replicas(self) -> int:
        return int(self.temperatures.size)

    @property
    def n_done(self) -> int:
        """Exchanges done so far (those restored from a checkpoint included)."""
        return self._done

    # -- the loop ------------------------------------------------------------------------
    def run(self, n_exchanges: int, progress: bool = False) -> ReplicaExchangeResult:
        """Run until ``n_exchanges`` exchanges are done in total (a resumed run does only the
        rest) and return the result. ``progress``: a progress display with the neighbour
        acceptance so far."""
        target = int(n_exchanges)
        if target < 0:
            raise ValueError(f"n_exchanges must be >= 0, got {n_exchanges}")
        bar = None
        if progress and self._done < target:
            from ..progress import progress_bar
            bar = progress_bar(target, desc=f"replica exchange {self.system.name}",
                               unit="exchange", initial=self._done)
        try:
            while self._done < target:
                try:
                    check_interrupt()
                except KeyboardInterrupt:  # a requested stop keeps every exchange done so far
                    if self.checkpoint is not None:
                        self.save(self.checkpoint)
                    raise
                self._one_exchange()
                if self.checkpoint is not None and self._done % self.checkpoint_every == 0:
                    self.save(self.checkpoint)
                if bar is not None:
                    if self._done % 10 == 0 or self._done == target:
                        acc = self._accepted / np.maximum(self._attempted, 1)
                        bar.set_postfix(acceptance=" ".join(f"{a:.2f}" for a in acc),
                                        round_trips=self._round_trips)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if self.checkpoint is not None:
            self.save(self.checkpoint)
        return self.result()

    def _one_exchange(self) -> None:
        if self.threads > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(lambda c: c.getIntegrator().step(self.steps_per_exchange),
                              self._contexts))
        else:
            for ctx in self._contexts:
                ctx.getIntegrator().step(self.steps_per_exchange)
        energies = np.array([c.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole) for c in self._contexts])
        replica_at = np.argsort(self._state_of)  # replica holding each temperature
        n = self.n_replicas
        for k in range(self._done % 2, n - 1, 2):
            a, b = replica_at[k], replica_at[k + 1]
            delta = (self._betas[k] - self._betas[k + 1]) * (energies[b] - energies[a])
            self._attempted[k] += 1
            u = self._rng.random()  # drawn every time, so the stream does not depend on Δ
            if delta <= 0 or u < math.exp(-delta):
                self._accepted[k] += 1
                self._swap(a, k + 1)
                self._swap(b, k)
                replica_at[k], replica_at[k + 1] = b, a
        for r in range(n):
            s = self._state_of[r]
            if s == n - 1 and self._direction[r] == 1:
                self._direction[r] = -1
            elif s == 0:
                if self._direction[r] == -1:
                    self._round_trips += 1
                self._direction[r] = 1
        self._done += 1
        self._history.append(self._state_of.copy())
        if self._done % self.save_every == 0:
            base = replica_at[0]
            st = self._contexts[base].getState(getPositions=True)
            xyz = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            self._frames.append(np.array(xyz[self.atoms]))
            self._frame_energies.append(float(energies[base]))

    def _swap(self, replica: int, new_state: int) -> None:
        """Move ``replica`` to temperature ``new_state`` (thermostat and velocities)."""
        t_old = self.temperatures[self._state_of[replica]]
        t_new = self.temperatures[new_state]
        ctx = self._contexts[replica]
        ctx.getIntegrator().setTemperature(t_new)
        if self.system.integrator != "brownian":
            v = ctx.getState(getVelocities=True).getVelocities(asNumpy=True)
            ctx.setVelocities(v * math.sqrt(t_new / t_old))
        self._state_of[replica] = new_state

    def result(self) -> ReplicaExchangeResult:
        """The result so far."""
        n_atoms = self.atoms.size
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(self._attempted > 0, self._accepted / np.maximum(self._attempted, 1),
                           np.nan)
        return ReplicaExchangeResult(
            temperatures=self.temperatures.copy(), atoms=self.atoms.copy(),
            frames=np.array(self._frames).reshape(-1, n_atoms, 3),
            frame_energies=np.array(self._frame_energies, dtype=np.float64),
            acceptance=acc, n_attempted=self._attempted.copy(),
            n_accepted=self._accepted.copy(), round_trips=int(self._round_trips),
            state_history=np.array(self._history, dtype=np.int64).reshape(-1, self.n_replicas),
            n_exchanges=self._done, steps_per_exchange=self.steps_per_exchange,
            timestep=self.system.timestep)

    # -- checkpoints ---------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return {"format": _FORMAT, "n_atoms": self.system.n_atoms,
                "temperatures": self.temperatures.tolist(),
                "steps_per_exchange": self.steps_per_exchange, "seed": self.seed,
                "save_every": self.save_every, "timestep": self.system.timestep,
                "integrator": self.system.integrator, "atoms": self.atoms.tolist()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the full state to ``path`` (npz; a temp file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(json.dumps({**self._fingerprint(), "done": self._done,
                                         "round_trips": self._round_trips,
                                         "rng": self._rng.bit_generator.state})),
            "state_of": self._state_of, "direction": self._direction,
            "attempted": self._attempted, "accepted": self._accepted,
            "frames": np.array(self._frames).reshape(-1, self.atoms.size, 3),
            "frame_energies": np.array(self._frame_energies, dtype=np.float64),
            "history": np.array(self._history, dtype=np.int64).reshape(-1, self.n_replicas),
        }
        for r, ctx in enumerate(self._contexts):
            arrays[f"context_{r}"] = np.frombuffer(ctx.createCheckpoint(), dtype=np.uint8)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def _load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            mine = self._fingerprint()
            diff = {k: (meta.get(k), v) for k, v in mine.items() if meta.get(k) != v}
            if diff:
                raise ValueError(
                    f"checkpoint {path} was written by a different run ({diff}: saved vs "
                    "now); pass the same settings or another checkpoint path")
            self._done = int(meta["done"])
            self._round_trips = int(meta["round_trips"])
            self._rng.bit_generator.state = meta["rng"]
            self._state_of = z["state_of"].astype(np.int64)
            self._direction = z["direction"].astype(np.int64)
            self._attempted = z["attempted"].astype(np.int64)
            self._accepted = z["accepted"].astype(np.int64)
            self._frames = list(z["frames"])
            self._frame_energies = [float(e) for e in z["frame_energies"]]
            self._history = list(z["history"])
            for r, ctx in enumerate(self._contexts):
                ctx.loadCheckpoint(z[f"context_{r}"].tobytes())
                ctx.getIntegrator().setTemperature(self.temperatures[self._state_of[r]])


def equilibrium_ensemble(system: MolecularSystem, n_exchanges: int, *, t_max: Any = None,
                         n_replicas: int = 4, ps_per_exchange: float = 1.0, hmr: bool = True,
                         hydrogen_mass: Any = DEFAULT_HYDROGEN_MASS, timestep: Any = 0.004,
                         checkpoint: str | os.PathLike | None = None, seed: int = 0,
                         platform: str = "Reference", properties: dict[str, str] | None = None,
                         atoms: Any = None, threads: int = 1, checkpoint_every: int = 50,
                         starts: Sequence[Any] | None = None,
                         progress: bool = False) -> ReplicaExchangeResult:
    """An equilibrium ensemble at ``system.temperature`` by temperature replica exchange.

    A geometric ladder of ``n_replicas`` temperatures from ``system.temperature`` to ``t_max``
    (K; default 1.35 × the base temperature, 298 → 402 K for VGVAPG). With ``hmr`` the system
    gets HBond constraints and ``hydrogen_mass`` hydrogens and runs at ``timestep`` (ps;
    :func:`~amore_openmm.systems.hmr.hmr_system`); leave it off for toys without hydrogens.
    Exchanges every ``ps_per_exchange`` ps; resumable through ``checkpoint`` (npz); frames
    of ``atoms`` (default all: usable as starts; "selection" for the molecule of interest only)
    at the base temperature; ``starts``: initial structures (default the system's).
    """
    ms = hmr_system(system, hydrogen_mass, timestep) if hmr else system
    t0 = system.temperature
    hi = 1.35 * t0 if t_max is None else float(strip_units(t_max, unit.kelvin))
    temps = geometric_temperatures(t0, hi, n_replicas)
    steps = int(round(float(strip_units(ps_per_exchange, unit.picosecond)) / ms.timestep))
    if steps < 1:
        raise ValueError(f"ps_per_exchange={ps_per_exchange} is shorter than one timestep "
                         f"({ms.timestep} ps); use a longer ps_per_exchange")
    remd = TemperatureReplicaExchange(ms, temps, steps, platform=platform, properties=properties,
                                      seed=seed, checkpoint=checkpoint, atoms=atoms,
                                      threads=threads, checkpoint_every=checkpoint_every,
                                      starts=starts)
    return remd.run(n_exchanges, progress=progress)
