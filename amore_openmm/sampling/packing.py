"""Replica packing: M non-interacting copies of a small molecule in one OpenMM System.

A 22-atom peptide cannot fill a GPU (or amortise a Context's per-step overhead) one copy at a
time. :func:`pack_replicas` builds one System holding M copies, so that one Context advances M
bursts per integrator step; :class:`PackedEngine` runs Koopman bursts on it with the same task
protocol as the unpacked sampler's engines (see :mod:`amore_openmm.sampling.engine`).
This module builds the packed System; the engine is in
:mod:`amore_openmm.sampling.packed_engine`.

Exactness
    *Vacuum* (``NonbondedForce`` with ``NoCutoff``): exact. The non-bonded part becomes a
    ``CustomNonbondedForce`` with the same Coulomb + Lennard-Jones energy, restricted by one
    interaction group per copy (no cross-copy pair is ever evaluated); the force's exceptions
    become exclusions plus a ``CustomBondForce`` holding the non-zero (1-4) exceptions. Bonded
    and external forces are copied with index offsets. Copies may overlap in space: they do
    not see each other. Per-copy energy and forces equal the single-copy System's to double
    precision on Reference (tested to 1e-6 relative).

    *Implicit solvent* (``CustomGBForce``, e.g. amber14 ``implicit/obc2.xml``): exact as long
    as every copy stays smaller than ``gb_cutoff``. Each pair expression of the GB force is
    wrapped in ``select(amore_copy1-amore_copy2, 0, ...)`` with a per-particle copy index, so
    cross-copy pairs contribute exactly zero; to avoid the O((M·n)²) pair loop the packed GB
    force uses ``CutoffNonPeriodic`` with ``gb_cutoff`` (default 5 nm) and the copies are
    placed on a grid ``spacing`` apart, so neighbour lists skip cross-copy pairs. Intra-copy
    pairs farther apart than ``gb_cutoff`` would be dropped: :class:`PackedEngine` checks each
    copy's largest intra-copy distance after every burst and fails the burst (it is retried)
    if it exceeds the cutoff. On single/mixed precision GPU platforms the grid offsets
    (tens of nm) cost a few digits of position resolution (float32 at 50 nm ≈ 4e-6 nm).
    ``GBSAOBCForce`` (native OBC) cannot be restricted this way and is refused; build the
    system with ``implicit/obc2.xml`` (a ``CustomGBForce``) instead.

    ``CMMotionRemover`` is dropped: one remover would act on the whole packed system, not per
    copy. The internal dynamics (dihedrals, distances) do not depend on it. Periodic systems
    are refused (a solvated system does not need packing).

Random streams
    The unpacked sampler gives burst k of start i the stream ``burst_seed(seed, i, k)``. A
    packed Context has one integrator-noise stream for all its copies, so a packed burst group
    is keyed by :func:`packed_stream_key` ``(seed, attempt, [(start index, k) of each copy])``:
    deterministic for the same grouping, and independent between copies (different slices of
    one stream). Each copy's initial Maxwell–Boltzmann velocities are drawn from its own
    velocity seed (the sibling of ``burst_seed(seed, i, k)``), so they do not depend on the
    grouping. Packed results therefore differ from unpacked ones burst by burst, but their
    statistics agree (tested: mean and variance of end-point dihedrals).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import openmm
from openmm import app, unit

from amore_openmm.systems import MolecularSystem

__all__ = ["PackedSystem", "PackingError", "pack_replicas"]

#: Coulomb constant OpenMM uses (kJ·nm/(mol·e²)), measured from NonbondedForce
ONE_4PI_EPS0 = 138.93545764438198
COPY_PARAM = "amore_copy"


class PackingError(ValueError):
    """The System cannot be packed; the message names the force and the way out."""


# ---------------------------------------------------------------------------------------------
# the packed system
# ---------------------------------------------------------------------------------------------
@dataclass
class PackedSystem:
    """M copies of one molecule in one OpenMM System.

    Attributes:
        system: the packed ``openmm.System`` (M·n particles, copy c owns c·n … c·n+n−1).
        topology: M copies of the molecule's topology (one chain per copy and chain).
        copies: M. n_atoms: atoms per copy.
        offsets: (M, 3) nm, where each copy is placed (zeros in exact vacuum packing).
        gb_cutoff: nm, the cutoff of a packed GB force (None when the system has none).
        exact: True when no intra-copy interaction can be lost (no GB cutoff involved).
        dropped_forces: names of forces not carried over (``CMMotionRemover``).
        source: the single-copy :class:`MolecularSystem`.
    """

    system: openmm.System
    topology: app.Topology
    copies: int
    n_atoms: int
    offsets: np.ndarray
    gb_cutoff: float | None
    exact: bool
    dropped_forces: list[str]
    source: MolecularSystem

    @property
    def n_particles(self) -> int:
        return self.copies * self.n_atoms

    def copy_slice(self, c: int) -> slice:
        """Particle indices of copy ``c`` in the packed System."""
        if not 0 <= c < self.copies:
            raise IndexError(f"copy {c} out of range 0..{self.copies - 1}")
        return slice(c * self.n_atoms, (c + 1) * self.n_atoms)

    def pack_positions(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, n, 3) per-copy positions -> ((M·n, 3) packed positions, (M, 3) shifts).

        Without offsets the copies keep their coordinates (shifts are 0, so position-dependent
        external forces such as Müller–Brown stay exact). With offsets each copy is centred on
        its grid point; pass the returned shifts to :meth:`unpack_positions`.
        """
        x = np.asarray(positions, dtype=np.float64)
        if x.shape != (self.copies, self.n_atoms, 3):
            raise ValueError(f"positions must have shape ({self.copies}, {self.n_atoms}, 3) "
                             f"(copies, atoms, xyz) in nm, got {x.shape}")
        if np.any(self.offsets):
            shifts = self.offsets - x.mean(axis=1)
        else:
            shifts = np.zeros((self.copies, 3))
        return (x + shifts[:, None, :]).reshape(-1, 3), shifts

    def unpack_positions(self, packed: np.ndarray, shifts: np.ndarray | None = None
                         ) -> np.ndarray:
        """(M·n, 3) packed positions -> (M, n, 3) per-copy positions (shifts undone)."""
        y = np.asarray(packed, dtype=np.float64).reshape(self.copies, self.n_atoms, 3)
        if shifts is not None:
            y = y - np.asarray(shifts, dtype=np.float64)[:, None, :]
        return y

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """(M·n, 3) per-particle vectors (forces, velocities) -> (M, n, 3); no shifts."""
        return np.asarray(packed).reshape(self.copies, self.n_atoms, 3)

    def molecular_system(self) -> MolecularSystem:
        """The packed System as a :class:`MolecularSystem` with the source's dynamics."""
        src = self.source
        x, _ = self.pack_positions(np.repeat(src.positions[0][None], self.copies, axis=0))
        return MolecularSystem(system=self.system, topology=self.topology, positions=[x],
                               temperature=src.temperature, timestep=src.timestep,
                               friction=src.friction, integrator=src.integrator,
                               lag_steps=src.lag_steps, featurizer=src.featurizer,
                               name=f"{src.name}_x{self.copies}", source=f"packed:{src.source}",
                               coordinate_dims=src.coordinate_dims)


def _grid_offsets(copies: int, spacing: float) -> np.ndarray:
    """A compact cubic grid of ``copies`` points, ``spacing`` apart, centred on the origin
    (small coordinates keep float32 resolution on GPUs)."""
    side = max(1, math.ceil(copies ** (1.0 / 3.0) - 1e-9))
    pts = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)],
                   dtype=np.float64)[:copies]
    pts -= pts.mean(axis=0)
    return pts * spacing


def _wrap_pair_expression(expr: str) -> str:
    """``select(copy1-copy2, 0, main); defs``: the pair term vanishes across copies."""
    main, sep, rest = expr.partition(";")
    return f"select({COPY_PARAM}1-{COPY_PARAM}2, 0, {main.strip()}){sep}{rest}"


def _replicate(force: openmm.Force, n: int, copies: int) -> openmm.Force:
    """A clone of a bonded/external force with its terms repeated for copies 1..M-1."""
    f = openmm.XmlSerializer.clone(force)
    if isinstance(f, openmm.HarmonicBondForce):
        terms = [f.getBondParameters(i) for i in range(f.getNumBonds())]
        for c in range(1, copies):
            o = c * n
            for p1, p2, length, k in terms:
                f.addBond(p1 + o, p2 + o, length, k)
    elif isinstance(f, openmm.HarmonicAngleForce):
        terms = [f.getAngleParameters(i) for i in range(f.getNumAngles())]
        for c in range(1, copies):
            o = c * n
            for p1, p2, p3, a, k in terms:
                f.addAngle(p1 + o, p2 + o, p3 + o, a, k)
    elif isinstance(f, openmm.PeriodicTorsionForce):
        terms = [f.getTorsionParameters(i) for i in range(f.getNumTorsions())]
        for c in range(1, copies):
            o = c * n
            for p1, p2, p3, p4, per, phase, k in terms:
                f.addTorsion(p1 + o, p2 + o, p3 + o, p4 + o, per, phase, k)
    elif isinstance(f, openmm.CMAPTorsionForce):
        terms = [f.getTorsionParameters(i) for i in range(f.getNumTorsions())]
        for c in range(1, copies):
            o = c * n
            for t in terms:
                f.addTorsion(t[0], *[p + o for p in t[1:]])
    elif isinstance(f, openmm.CustomBondForce):
        terms = [f.getBondParameters(i) for i in range(f.getNumBonds())]
        for c in range(1, copies):
            for p1, p2, params in terms:
                f.addBond(p1 + c * n, p2 + c * n, params)
    elif isinstance(f, openmm.CustomAngleForce):
        terms = [f.getAngleParameters(i) for i in range(f.getNumAngles())]
        for c in range(1, copies):
            for p1, p2, p3, params in terms:
                f.addAngle(p1 + c * n, p2 + c * n, p3 + c * n, params)
    elif isinstance(f, openmm.CustomTorsionForce):
        terms = [f.getTorsionParameters(i) for i in range(f.getNumTorsions())]
        for c in range(1, copies):
            o = c * n
            for p1, p2, p3, p4, params in terms:
                f.addTorsion(p1 + o, p2 + o, p3 + o, p4 + o, params)
    elif isinstance(f, openmm.CustomCompoundBondForce):
        terms = [f.getBondParameters(i) for i in range(f.getNumBonds())]
        for c in range(1, copies):
            for particles, params in terms:
                f.addBond([p + c * n for p in particles], params)
    elif isinstance(f, openmm.CustomExternalForce):
        terms = [f.getParticleParameters(i) for i in range(f.getNumParticles())]
        for c in range(1, copies):
            for idx, params in terms:
                f.addParticle(idx + c * n, params)
    else:  # pragma: no cover - guarded by the caller
        raise PackingError(f"internal: no replication rule for {type(force).__name__}")
    return f


def _nonbonded_to_custom(force: openmm.NonbondedForce, n: int, copies: int
                         ) -> list[openmm.Force]:
    """Exact NoCutoff Coulomb + LJ restricted to within-copy pairs (see module docstring)."""
    if force.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
        raise PackingError(
            "pack_replicas supports NonbondedForce only with NoCutoff (vacuum or implicit "
            f"solvent); this one uses method {force.getNonbondedMethod()}. Build the single-copy "
            "system with nonbondedMethod=NoCutoff (a cutoff would change the physics of a "
            "small molecule anyway).")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise PackingError("pack_replicas cannot pack a NonbondedForce with parameter offsets "
                           "(alchemical parameters); remove them from the single-copy system")
    cnb = openmm.CustomNonbondedForce(
        f"{ONE_4PI_EPS0!r}*q1*q2/r + 4*eps*((sig/r)^12-(sig/r)^6); "
        "sig=0.5*(sig1+sig2); eps=sqrt(eps1*eps2)")
    for name in ("q", "sig", "eps"):
        cnb.addPerParticleParameter(name)
    cnb.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    cnb.setName("PackedNonbonded")
    params = []
    for i in range(n):
        q, sig, eps = force.getParticleParameters(i)
        params.append([q.value_in_unit(unit.elementary_charge),
                       sig.value_in_unit(unit.nanometer),
                       eps.value_in_unit(unit.kilojoule_per_mole)])
    exc = openmm.CustomBondForce(f"{ONE_4PI_EPS0!r}*qq/r + 4*eps*((sig/r)^12-(sig/r)^6)")
    for name in ("qq", "sig", "eps"):
        exc.addPerBondParameter(name)
    exc.setName("PackedNonbondedExceptions")
    exceptions = []
    for e in range(force.getNumExceptions()):
        i, j, qq, sig, eps = force.getExceptionParameters(e)
        exceptions.append((i, j, qq.value_in_unit(unit.elementary_charge**2),
                           sig.value_in_unit(unit.nanometer),
                           eps.value_in_unit(unit.kilojoule_per_mole)))
    for c in range(copies):
        o = c * n
        for p in params:
            cnb.addParticle(p)
        for i, j, qq, sig, eps in exceptions:
            cnb.addExclusion(i + o, j + o)
            if qq != 0.0 or eps != 0.0:
                exc.addBond(i + o, j + o, [qq, sig, eps])
        members = list(range(o, o + n))
        cnb.addInteractionGroup(members, members)  # within-copy pairs only, each once
    for f in (cnb, exc):
        f.setForceGroup(force.getForceGroup())
    return [cnb, exc] if exc.getNumBonds() else [cnb]


def _replicate_custom_nonbonded(force: openmm.CustomNonbondedForce, n: int, copies: int
                                ) -> openmm.CustomNonbondedForce:
    if force.getNonbondedMethod() == openmm.CustomNonbondedForce.CutoffPeriodic:
        raise PackingError("pack_replicas: a periodic CustomNonbondedForce cannot be packed")
    f = openmm.XmlSerializer.clone(force)
    params = [f.getParticleParameters(i) for i in range(n)]
    excl = [f.getExclusionParticles(e) for e in range(f.getNumExclusions())]
    groups = [f.getInteractionGroupParameters(g) for g in range(f.getNumInteractionGroups())]
    for c in range(1, copies):
        for p in params:
            f.addParticle(p)
        for i, j in excl:
            f.addExclusion(i + c * n, j + c * n)
    if groups:
        for g in range(len(groups)):
            a, b = groups[g]
            f.setInteractionGroupParameters(g, list(a), list(b))  # copy 0 keeps its groups
        for c in range(1, copies):
            for a, b in groups:
                f.addInteractionGroup([i + c * n for i in a], [j + c * n for j in b])
    else:
        for c in range(copies):
            members = list(range(c * n, (c + 1) * n))
            f.addInteractionGroup(members, members)
    return f


def _replicate_custom_gb(force: openmm.CustomGBForce, n: int, copies: int,
                         cutoff: float) -> openmm.CustomGBForce:
    if force.getNonbondedMethod() == openmm.CustomGBForce.CutoffPeriodic:
        raise PackingError("pack_replicas: a periodic CustomGBForce cannot be packed")
    if force.getNonbondedMethod() != openmm.CustomGBForce.NoCutoff:
        raise PackingError("pack_replicas supports CustomGBForce only with NoCutoff (its packed "
                           "copy gets its own cutoff, gb_cutoff); build the single-copy "
                           "system with nonbondedMethod=NoCutoff")
    f = openmm.XmlSerializer.clone(force)
    pair_types = (openmm.CustomGBForce.ParticlePair,
                  openmm.CustomGBForce.ParticlePairNoExclusions)
    for i in range(f.getNumComputedValues()):
        name, expr, kind = f.getComputedValueParameters(i)
        if kind in pair_types:
            f.setComputedValueParameters(i, name, _wrap_pair_expression(expr), kind)
    for i in range(f.getNumEnergyTerms()):
        expr, kind = f.getEnergyTermParameters(i)
        if kind in pair_types:
            f.setEnergyTermParameters(i, _wrap_pair_expression(expr), kind)
    f.addPerParticleParameter(COPY_PARAM)
    params = [list(f.getParticleParameters(i)) for i in range(n)]
    for i in range(n):
        f.setParticleParameters(i, params[i] + [0.0])
    excl = [f.getExclusionParticles(e) for e in range(f.getNumExclusions())]
    for c in range(1, copies):
        for p in params:
            f.addParticle(p + [float(c)])
        for i, j in excl:
            f.addExclusion(i + c * n, j + c * n)
    f.setNonbondedMethod(openmm.CustomGBForce.CutoffNonPeriodic)
    f.setCutoffDistance(cutoff)
    return f


_BONDED = (openmm.HarmonicBondForce, openmm.HarmonicAngleForce, openmm.PeriodicTorsionForce,
           openmm.CMAPTorsionForce, openmm.CustomBondForce, openmm.CustomAngleForce,
           openmm.CustomTorsionForce, openmm.CustomCompoundBondForce)


def _copy_virtual_site(site: openmm.VirtualSite, o: int) -> openmm.VirtualSite:
    if isinstance(site, openmm.TwoParticleAverageSite):
        return openmm.TwoParticleAverageSite(site.getParticle(0) + o, site.getParticle(1) + o,
                                             site.getWeight(0), site.getWeight(1))
    if isinstance(site, openmm.ThreeParticleAverageSite):
        return openmm.ThreeParticleAverageSite(*[site.getParticle(i) + o for i in range(3)],
                                               *[site.getWeight(i) for i in range(3)])
    if isinstance(site, openmm.OutOfPlaneSite):
        return openmm.OutOfPlaneSite(*[site.getParticle(i) + o for i in range(3)],
                                     site.getWeight12(), site.getWeight13(),
                                     site.getWeightCross())
    raise PackingError(f"pack_replicas: virtual site type {type(site).__name__} is not "
                       "supported; use TwoParticleAverage/ThreeParticleAverage/OutOfPlane sites")


def _packed_topology(topology: app.Topology, copies: int) -> app.Topology:
    """``copies`` copies of ``topology`` (one chain per copy and chain)."""
    top = app.Topology()
    for c in range(copies):
        atoms = {}
        for chain in topology.chains():
            new_chain = top.addChain(f"{chain.id}{c}" if chain.id else str(c))
            for res in chain.residues():
                new_res = top.addResidue(res.name, new_chain, res.id, res.insertionCode)
                for atom in res.atoms():
                    atoms[atom] = top.addAtom(atom.name, atom.element, new_res, atom.id)
        for a, b in topology.bonds():
            top.addBond(atoms[a], atoms[b])
    return top


def pack_replicas(system: MolecularSystem, copies: int, *, gb_cutoff: float = 5.0,
                  spacing: float | None = None) -> PackedSystem:
    """Build one OpenMM System with ``copies`` non-interacting copies of ``system``.

    Args:
        system: the single-copy :class:`MolecularSystem` (vacuum or implicit solvent,
            non-periodic).
        copies: M ≥ 1.
        gb_cutoff: nm, cutoff of the packed implicit-solvent (``CustomGBForce``) term; must
            exceed the largest intra-copy atom distance the molecule will reach.
        spacing: nm between copies on a grid. Default: 0 (copies overlap; exact for vacuum)
            without a GB force, ``gb_cutoff + 2 nm`` with one (so neighbour lists skip
            cross-copy pairs).

    Returns:
        :class:`PackedSystem`. Raises :class:`PackingError` naming the force that cannot be
        packed (periodic systems, ``GBSAOBCForce``, NonbondedForce with a cutoff, ...).
    """
    if not isinstance(system, MolecularSystem):
        raise TypeError("pack_replicas(system=...) needs a MolecularSystem (load_system(...))")
    if isinstance(copies, bool) or int(copies) != copies or int(copies) < 1:
        raise PackingError(f"pack_replicas(copies={copies!r}): need an integer >= 1")
    copies = int(copies)
    src = system.system
    n = src.getNumParticles()
    if src.usesPeriodicBoundaryConditions():
        raise PackingError(f"{system.name}: periodic systems cannot be packed (copies would "
                           "share the box); packing is for small molecules in vacuum or "
                           "implicit solvent")
    has_gb = any(isinstance(f, (openmm.CustomGBForce, openmm.GBSAOBCForce))
                 for f in src.getForces())
    if not gb_cutoff > 0:
        raise PackingError(f"gb_cutoff must be positive (nm), got {gb_cutoff}")
    if spacing is None:
        spacing = gb_cutoff + 2.0 if has_gb else 0.0
    if spacing < 0:
        raise PackingError(f"spacing must be >= 0 nm, got {spacing}")
    offsets = _grid_offsets(copies, spacing) if spacing > 0 else np.zeros((copies, 3))

    packed = openmm.System()
    for c in range(copies):
        for i in range(n):
            packed.addParticle(src.getParticleMass(i))
    for c in range(copies):
        o = c * n
        for i in range(n):
            if src.isVirtualSite(i):
                packed.setVirtualSite(i + o, _copy_virtual_site(src.getVirtualSite(i), o))
        for k in range(src.getNumConstraints()):
            i, j, d = src.getConstraintParameters(k)
            packed.addConstraint(i + o, j + o, d)
    dropped: list[str] = []
    for force in src.getForces():
        if isinstance(force, openmm.CMMotionRemover):
            dropped.append(force.getName() or "CMMotionRemover")
            continue
        if isinstance(force, openmm.CustomExternalForce) and spacing > 0:
            raise PackingError(f"{system.name}: force {force.getName()!r} depends on absolute "
                               "positions; it cannot be packed with spacing > 0 (use "
                               "spacing=0, which needs a system without a GB force)")
        if isinstance(force, _BONDED) or isinstance(force, openmm.CustomExternalForce):
            new = [_replicate(force, n, copies)]
        elif isinstance(force, openmm.NonbondedForce):
            new = _nonbonded_to_custom(force, n, copies)
        elif isinstance(force, openmm.CustomNonbondedForce):
            new = [_replicate_custom_nonbonded(force, n, copies)]
        elif isinstance(force, openmm.CustomGBForce):
            new = [_replicate_custom_gb(force, n, copies, gb_cutoff)]
        elif isinstance(force, openmm.GBSAOBCForce):
            raise PackingError(f"{system.name}: GBSAOBCForce cannot be restricted to "
                               "within-copy pairs; build the system with the force field "
                               "'implicit/obc2.xml' (a CustomGBForce), which packs exactly")
        else:
            raise PackingError(f"{system.name}: force {type(force).__name__} "
                               f"({force.getName()!r}) is not supported by pack_replicas; "
                               "supported: bonded/custom bonded, external, NonbondedForce "
                               "(NoCutoff), CustomNonbondedForce, CustomGBForce")
        for f in new:
            f.setForceGroup(force.getForceGroup())
            packed.addForce(f)

    return PackedSystem(system=packed, topology=_packed_topology(system.topology, copies),
                        copies=copies, n_atoms=n,
                        offsets=offsets, gb_cutoff=gb_cutoff if has_gb else None,
                        exact=not has_gb, dropped_forces=dropped, source=system)
