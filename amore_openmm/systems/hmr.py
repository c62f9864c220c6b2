"""Hydrogen mass repartitioning (HMR): heavier hydrogens for a longer timestep.

Mass is moved from each heavy atom to the hydrogens bonded to it, so the total mass (and the
mass of every heavy-atom group) is unchanged while the fastest bond-angle motions involving
hydrogen slow down. With HBond constraints and hydrogens of 3 amu a 4 fs
``LangevinMiddleIntegrator`` step is stable for peptides (vacuum, implicit or explicit solvent).

Water hydrogens are left alone by default: rigid water (SETTLE) has no fast internal motion
to slow down, and the water model's inertia is part of its parametrisation.
"""
from __future__ import annotations

import copy
from typing import Any

import openmm
from openmm import app, unit

from .common import strip_units
from .molecular import MolecularSystem
from .selection import WATER_RESIDUES

__all__ = ["repartition_hydrogen_masses", "constrain_hbonds", "hmr_system",
           "DEFAULT_HYDROGEN_MASS"]

#: the usual HMR hydrogen mass (amu); 4 fs with HBond constraints is stable at this mass
DEFAULT_HYDROGEN_MASS = 3.0


def _is_hydrogen(atom: app.topology.Atom) -> bool:
    return atom.element is not None and atom.element.symbol == "H"


def _rigid_atoms(system: openmm.System) -> set[int]:
    """Atoms that take part in a distance constraint."""
    out: set[int] = set()
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        out.update((i, j))
    return out


def repartition_hydrogen_masses(system: openmm.System, topology: app.Topology,
                                hydrogen_mass: Any = DEFAULT_HYDROGEN_MASS, *,
                                water: bool = False, min_heavy_mass: Any = None,
                                in_place: bool = False) -> openmm.System:
    """Give every hydrogen ``hydrogen_mass`` by taking the difference from its bonded heavy atom.

    Args:
        system: the OpenMM System (a copy is changed unless ``in_place``).
        topology: its Topology; its bonds decide which heavy atom each hydrogen belongs to.
        hydrogen_mass: target hydrogen mass, amu or an ``openmm.unit`` mass (default 3 amu).
        water: also repartition water hydrogens (residues named like HOH/WAT/TIP3...). Rigid
            water molecules (constrained hydrogens) are left alone even then.
        min_heavy_mass: a heavy atom may not end up lighter than this (amu; default
            ``hydrogen_mass``: a heavy atom stays at least as heavy as its hydrogens).
        in_place: change ``system`` itself instead of a copy.

    Returns:
        The System with repartitioned masses; the total mass is unchanged. Calling it twice
        with the same mass changes nothing the second time. Particles of zero mass (virtual
        sites, fixed atoms) are never touched.

    Raises:
        ValueError: ``hydrogen_mass`` not positive, topology and System of different sizes, or
            a heavy atom that would fall below ``min_heavy_mass`` (use a smaller
            ``hydrogen_mass``).
    """
    m_h = float(strip_units(hydrogen_mass, unit.dalton))
    if not m_h > 0:
        raise ValueError(f"hydrogen_mass must be positive (amu), got {m_h}; 3.0 is usual")
    m_min = m_h if min_heavy_mass is None else float(strip_units(min_heavy_mass, unit.dalton))
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(
            f"topology has {topology.getNumAtoms()} atoms but system has "
            f"{system.getNumParticles()} particles; pass the topology of this system")
    out = system if in_place else copy.deepcopy(system)
    masses = [out.getParticleMass(i).value_in_unit(unit.dalton)
              for i in range(out.getNumParticles())]
    rigid = _rigid_atoms(out)
    atoms = list(topology.atoms())
    # heavy partner of each hydrogen, from the topology's bonds
    partner: dict[int, int] = {}
    for a, b in topology.bonds():
        for h, x in ((a, b), (b, a)):
            if _is_hydrogen(h) and not _is_hydrogen(x):
                partner.setdefault(h.index, x.index)
    for h_idx, x_idx in sorted(partner.items()):
        res = atoms[h_idx].residue
        if res.name.upper() in WATER_RESIDUES:
            if not water:
                continue
            # rigid water: every hydrogen of the molecule is constrained
            hs = [a.index for a in res.atoms() if _is_hydrogen(a)]
            if all(i in rigid for i in hs):
                continue
        if masses[h_idx] == 0.0 or masses[x_idx] == 0.0:
            continue  # fixed atoms and virtual sites stay massless
        delta = m_h - masses[h_idx]
        masses[h_idx] += delta
        masses[x_idx] -= delta
    for x_idx in sorted(set(partner.values())):
        if masses[x_idx] != 0.0 and masses[x_idx] < m_min:
            a = atoms[x_idx]
            raise ValueError(
                f"hydrogen_mass={m_h} amu leaves atom {x_idx} ({a.residue.name}{a.residue.id}:"
                f"{a.name}) with {masses[x_idx]:.3f} amu, below min_heavy_mass={m_min}; "
                "use a smaller hydrogen_mass (3.0 amu is usual)")
    for i, m in enumerate(masses):
        out.setParticleMass(i, m)
    return out


def constrain_hbonds(system: openmm.System, topology: app.Topology, *,
                     in_place: bool = False) -> openmm.System:
    """Add a distance constraint for every topology bond to a hydrogen not constrained yet.

    The length is the equilibrium length of the bond's ``HarmonicBondForce`` term (the
    ``constraints=HBonds`` choice of ``ForceField.createSystem`` for a System built without
    constraints). Raises ValueError when such a bond has no harmonic bond term.
    """
    out = system if in_place else copy.deepcopy(system)
    lengths: dict[tuple[int, int], float] = {}
    for f in out.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for k in range(f.getNumBonds()):
                i, j, r0, _ = f.getBondParameters(k)
                lengths[(min(i, j), max(i, j))] = r0.value_in_unit(unit.nanometer)
    have = set()
    for k in range(out.getNumConstraints()):
        i, j, _ = out.getConstraintParameters(k)
        have.add((min(i, j), max(i, j)))
    for a, b in topology.bonds():
        if not (_is_hydrogen(a) or _is_hydrogen(b)):
            continue
        key = (min(a.index, b.index), max(a.index, b.index))
        if key in have:
            continue
        if key not in lengths:
            raise ValueError(
                f"bond {key} to a hydrogen has no HarmonicBondForce term to take its length "
                "from; build the system with constraints='HBonds' instead")
        out.addConstraint(key[0], key[1], lengths[key])
        have.add(key)
    return out


def hmr_system(ms: MolecularSystem, hydrogen_mass: Any = DEFAULT_HYDROGEN_MASS,
               timestep: Any = 0.004, *, constraints: bool = True,
               water: bool = False) -> MolecularSystem:
    """A copy of ``ms`` with repartitioned hydrogen masses and a longer ``timestep`` (ps).

    With ``constraints`` every bond to hydrogen is constrained first (:func:`constrain_hbonds`),
    which a 4 fs step needs. Initial structures are kept as they are; the integrator's
    constraint tolerance puts them on the constraint surface at the first step.
    """
    dt = float(strip_units(timestep, unit.picosecond))
    if not dt > 0:
        raise ValueError(f"timestep must be positive (ps), got {dt}; 0.004 is usual with HMR")
    system = constrain_hbonds(ms.system, ms.topology) if constraints else \
        copy.deepcopy(ms.system)
    repartition_hydrogen_masses(system, ms.topology, hydrogen_mass, water=water,
                                in_place=True)
    out = copy.copy(ms)
    out.system = system
    out.positions = list(ms.positions)
    out.timestep = dt
    out.metadata = {**ms.metadata, "hmr": {"hydrogen_mass": float(
        strip_units(hydrogen_mass, unit.dalton)), "hbond_constraints": bool(constraints)}}
    return out
