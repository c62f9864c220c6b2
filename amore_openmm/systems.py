"""Stage 0 — systems: load what a user has into an OpenMM ``System`` plus dynamics settings.

``load_system`` accepts a bundled system name, a folder with a ``system.toml`` manifest, a PDB
plus force-field XML names, an Amber prmtop plus inpcrd, or an OpenMM System XML plus a PDB.
Everything downstream (bursts, χ, paths) works on the :class:`MolecularSystem` it returns.

Units inside: nm, ps, kJ/mol, K. ``openmm.unit`` quantities are accepted at this edge.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import openmm
from openmm import app, unit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "MolecularSystem",
    "SystemLoadError",
    "load_system",
    "bundled_systems",
    "systems_root",
    "muller_brown_system",
    "muller_brown_energy",
    "MULLER_BROWN",
]

BOLTZ = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
INTEGRATORS = ("langevin_middle", "langevin", "brownian")


class SystemLoadError(ValueError):
    """A system could not be loaded; the message names the file or parameter and the fix."""


# --------------------------------------------------------------------------------------------
# unit handling at the API edge
# --------------------------------------------------------------------------------------------
def _strip(value: Any, target: unit.Unit) -> Any:
    """Return ``value`` in ``target`` units as plain numbers (numbers pass through)."""
    if unit.is_quantity(value):
        return value.value_in_unit(target)
    return value


def as_positions_nm(positions: Any) -> np.ndarray:
    """Positions (Quantity, list of Vec3, or array) as a float64 (n, 3) array in nm."""
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    arr = np.asarray([[v[0], v[1], v[2]] for v in positions] if len(positions) and
                     isinstance(positions[0], openmm.Vec3) else positions, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise SystemLoadError(f"positions must have shape (n_atoms, 3) in nm, got {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------
# MolecularSystem
# --------------------------------------------------------------------------------------------
@dataclass
class MolecularSystem:
    """An OpenMM System with its topology, initial structures and dynamics settings.

    Attributes:
        system: the physical OpenMM ``System`` (no χ forces attached).
        topology: the OpenMM ``Topology``.
        positions: one or more initial structures, each an (n_atoms, 3) float64 array in nm.
        temperature: K. timestep: ps. friction: 1/ps.
        integrator: "langevin_middle" (default), "langevin" or "brownian" (overdamped).
        lag_steps: integrator steps per Koopman burst (the lag time τ = lag_steps·timestep).
        featurizer: default χ featurizer: "auto", "pairwise_all", "pairwise_heavy", "pairwise_polar",
            "dihedrals" or "coordinates".
        name: short name used in run directories and reports.
        source: where the system came from (for reports and resume checks).
        coordinate_dims: for toy systems the coordinates that carry the dynamics ((0, 1) for
            Müller–Brown); None for molecules.
    """

    system: openmm.System
    topology: app.Topology
    positions: list[np.ndarray]
    temperature: float = 300.0
    timestep: float = 0.002
    friction: float = 1.0
    integrator: str = "langevin_middle"
    lag_steps: int = 100
    featurizer: str = "auto"
    name: str = "system"
    source: str = "user"
    coordinate_dims: tuple[int, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.temperature = float(_strip(self.temperature, unit.kelvin))
        self.timestep = float(_strip(self.timestep, unit.picosecond))
        self.friction = float(_strip(self.friction, unit.picosecond**-1))
        self.lag_steps = int(self.lag_steps)
        self.positions = [as_positions_nm(p) for p in (self.positions if isinstance(
            self.positions, (list, tuple)) else [self.positions])]
        if not self.positions:
            raise SystemLoadError("a MolecularSystem needs at least one initial structure")
        n = self.system.getNumParticles()
        for i, p in enumerate(self.positions):
            if p.shape[0] != n:
                raise SystemLoadError(
                    f"initial structure {i} has {p.shape[0]} atoms but the System has {n}; "
                    "positions and System must describe the same atoms in the same order")
        if self.topology.getNumAtoms() != n:
            raise SystemLoadError(
                f"the Topology has {self.topology.getNumAtoms()} atoms but the System has {n}")
        if self.integrator not in INTEGRATORS:
            raise SystemLoadError(
                f"integrator {self.integrator!r} is not known; use one of {', '.join(INTEGRATORS)}")
        for key in ("temperature", "timestep", "friction"):
            if not getattr(self, key) > 0:
                raise SystemLoadError(f"{key} must be positive, got {getattr(self, key)}")
        if self.lag_steps < 1:
            raise SystemLoadError(f"lag_steps must be >= 1, got {self.lag_steps}")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_openmm(cls, system: openmm.System, topology: app.Topology, positions: Any, *,
                    temperature: Any = 300.0, timestep: Any = 0.002, friction: Any = 1.0,
                    integrator: str = "langevin_middle", lag_steps: int = 100,
                    featurizer: str = "auto", name: str = "system",
                    check: bool = True) -> "MolecularSystem":
        """Wrap a System built in the user's own OpenMM script.

        ``positions`` may be one structure (Quantity, list of Vec3, (n, 3) array in nm) or a
        list of structures. With ``check`` the first structure's energy and forces must be
        finite.
        """
        if isinstance(positions, np.ndarray) and positions.ndim == 3:
            positions = list(positions)
        elif not (isinstance(positions, (list, tuple)) and len(positions) and
                  _looks_like_structure(positions[0])):
            positions = [positions]
        ms = cls(system=system, topology=topology, positions=list(positions),
                 temperature=temperature, timestep=timestep, friction=friction,
                 integrator=integrator, lag_steps=lag_steps, featurizer=featurizer, name=name,
                 source="openmm")
        if check:
            ms.check_finite()
        return ms

    # -- properties --------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    @property
    def kT(self) -> float:
        """Thermal energy in kJ/mol."""
        return BOLTZ * self.temperature

    @property
    def lag_time(self) -> float:
        """Lag time τ in ps."""
        return self.lag_steps * self.timestep

    @property
    def has_constraints(self) -> bool:
        return self.system.getNumConstraints() > 0

    def atom_labels(self) -> list[str]:
        """Labels such as ``ALA2:CA`` (residue name, 1-based residue number as in the PDB)."""
        return [f"{a.residue.name}{a.residue.id}:{a.name}" for a in self.topology.atoms()]

    def heavy_atoms(self) -> list[int]:
        return [a.index for a in self.topology.atoms()
                if a.element is None or a.element.symbol != "H"]

    def polar_atoms(self) -> list[int]:
        """Heavy atoms plus hydrogens bonded to N, O or S (amide, hydroxyl, thiol H).

        Leaves out C-bound hydrogens: methyl and methylene rotations permute chemically
        equivalent atoms, which labelled distance features would see as slow processes.
        """
        polar_h = set()
        for a, b in self.topology.bonds():
            for h, x in ((a, b), (b, a)):
                if h.element is not None and h.element.symbol == "H" and \
                        x.element is not None and x.element.symbol in ("N", "O", "S"):
                    polar_h.add(h.index)
        return sorted(set(self.heavy_atoms()) | polar_h)

    # -- OpenMM objects ----------------------------------------------------------------------
    def make_integrator(self, seed: int | None = None) -> openmm.Integrator:
        """A fresh integrator with this system's settings (seeded when ``seed`` is given)."""
        T, g, dt = self.temperature, self.friction, self.timestep
        if self.integrator == "langevin_middle":
            integ = openmm.LangevinMiddleIntegrator(T, g, dt)
        elif self.integrator == "langevin":
            integ = openmm.LangevinIntegrator(T, g, dt)
        else:
            integ = openmm.BrownianIntegrator(T, g, dt)
        if seed is not None:
            integ.setRandomNumberSeed(_openmm_seed(seed))
        return integ

    def make_context(self, platform: str | openmm.Platform = "Reference",
                     properties: dict[str, str] | None = None, seed: int | None = None,
                     system: openmm.System | None = None) -> openmm.Context:
        """A Context on ``platform`` at the first initial structure."""
        plat = platform if isinstance(platform, openmm.Platform) else \
            openmm.Platform.getPlatformByName(platform)
        ctx = openmm.Context(system or self.system, self.make_integrator(seed), plat,
                             properties or {})
        ctx.setPositions(self.positions[0])
        return ctx

    def energy(self, positions: Any | None = None, platform: str = "Reference") -> float:
        """Potential energy (kJ/mol) of ``positions`` (default: first initial structure)."""
        ctx = self.make_context(platform)
        if positions is not None:
            ctx.setPositions(as_positions_nm(positions))
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)

    def check_finite(self) -> None:
        """Raise :class:`SystemLoadError` if an initial structure has non-finite energy/forces."""
        ctx = self.make_context("Reference")
        for i, pos in enumerate(self.positions):
            ctx.setPositions(pos)
            st = ctx.getState(getEnergy=True, getForces=True)
            e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            if not (math.isfinite(e) and np.all(np.isfinite(f))):
                raise SystemLoadError(
                    f"initial structure {i} of {self.source} has non-finite energy ({e}) or "
                    "forces: atoms overlap or coordinates are corrupt; minimise the structure "
                    "or check its units (OpenMM reads PDB coordinates in Å)")

    def with_overrides(self, **overrides: Any) -> "MolecularSystem":
        """A copy with dynamics settings replaced (temperature, timestep, friction, ...)."""
        allowed = {"temperature", "timestep", "friction", "integrator", "lag_steps",
                   "featurizer", "name"}
        bad = set(overrides) - allowed
        if bad:
            raise SystemLoadError(
                f"unknown override(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        return replace(self, **overrides)


def _looks_like_structure(obj: Any) -> bool:
    """True if ``obj`` is one whole structure rather than one atom's position."""
    if unit.is_quantity(obj):
        obj = obj._value
    if isinstance(obj, openmm.Vec3):
        return False
    try:
        return np.asarray(obj, dtype=float).ndim == 2
    except (TypeError, ValueError):
        return False


def _openmm_seed(seed: int) -> int:
    """Map any integer to a valid non-zero OpenMM seed (0 would mean 'pick one randomly')."""
    return int(seed) % 2147483646 + 1


# --------------------------------------------------------------------------------------------
# Müller–Brown
# --------------------------------------------------------------------------------------------
MULLER_BROWN = {
    "A": (-200.0, -100.0, -170.0, 15.0),
    "a": (-1.0, -1.0, -6.5, 0.7),
    "b": (0.0, 0.0, 11.0, 0.6),
    "c": (-10.0, -10.0, -6.5, 0.7),
    "x0": (1.0, 0.0, -0.5, -1.0),
    "y0": (0.0, 0.5, 1.5, 1.0),
}
#: harmonic restraint holding the particle near z = 0 (kJ/mol/nm²); dt·k = 0.1 keeps the
#: Brownian step stable and z never enters the x–y dynamics.
MULLER_BROWN_Z_SPRING = 1000.0


def muller_brown_expression() -> str:
    p = MULLER_BROWN
    terms = []
    for A, a, b, c, x0, y0 in zip(p["A"], p["a"], p["b"], p["c"], p["x0"], p["y0"]):
        terms.append(f"({A})*exp(({a})*(x-({x0}))^2+({b})*(x-({x0}))*(y-({y0}))"
                     f"+({c})*(y-({y0}))^2)")
    return "+".join(terms)


def muller_brown_energy(xy: np.ndarray) -> np.ndarray:
    """The Müller–Brown potential (kJ/mol) at points ``xy`` of shape (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    p = MULLER_BROWN
    e = np.zeros_like(x)
    for A, a, b, c, x0, y0 in zip(p["A"], p["a"], p["b"], p["c"], p["x0"], p["y0"]):
        e = e + A * np.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
    return e


def muller_brown_system(sigma: float = 5.0, timestep: float = 1e-4, lag_steps: int = 10,
                        start: Sequence[float] = (-0.558, 1.442)) -> MolecularSystem:
    """One particle (1 amu) in the Müller–Brown potential, overdamped, β = 2/σ².

    With ``BrownianIntegrator``, mass 1 amu and friction 1/ps, mγ = 1 and
    dx = F dt + sqrt(2 kT dt) ξ, so σ = 5 gives kT = σ²/2 = 12.5 kJ/mol.
    """
    system = openmm.System()
    system.addParticle(1.0)
    force = openmm.CustomExternalForce(
        f"{muller_brown_expression()}+0.5*{MULLER_BROWN_Z_SPRING}*z^2")
    force.addParticle(0, [])
    force.setName("MullerBrown")
    system.addForce(force)
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MB", chain)
    top.addAtom("P", None, res)
    kT = sigma**2 / 2.0
    pos = np.array([[start[0], start[1], 0.0]])
    return MolecularSystem(system=system, topology=top, positions=[pos],
                           temperature=kT / BOLTZ, timestep=timestep, friction=1.0,
                           integrator="brownian", lag_steps=lag_steps,
                           featurizer="coordinates", name="muller_brown",
                           source="muller_brown", coordinate_dims=(0, 1))


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------
#: manifest schema: section -> key -> allowed types
MANIFEST_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "system": {
        "name": (str,), "description": (str,), "kind": (str,),
        "pdb": (str,), "conformations": (list,), "prmtop": (str,), "inpcrd": (str,),
        "system_xml": (str,), "forcefield": (list, str), "implicit_solvent": (str,),
        "nonbonded_method": (str,), "nonbonded_cutoff": (float, int), "constraints": (str,),
        "hydrogen_mass": (float, int),
    },
    "dynamics": {
        "temperature": (float, int), "friction": (float, int), "timestep": (float, int),
        "integrator": (str,), "lag_steps": (int,), "sigma": (float, int),
    },
    "chi": {"featurizer": (str,)},
    "run": {},  # free-form pipeline defaults, validated by the pipeline stage
}
NONBONDED = {"NoCutoff": app.NoCutoff, "CutoffNonPeriodic": app.CutoffNonPeriodic,
             "CutoffPeriodic": app.CutoffPeriodic, "PME": app.PME}
CONSTRAINTS = {"None": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds,
               "HAngles": app.HAngles}


def read_toml(path: str | os.PathLike, error: type[Exception], missing: str) -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad syntax raises ``error`` naming the file
    (``missing`` is the sentence saying what file is expected there)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; {missing}")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from exc


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Read and validate a ``system.toml`` manifest; errors name the file and key."""
    path = Path(path)
    data = read_toml(path, SystemLoadError, "a system folder needs a system.toml manifest "
                     "(run `amore build-systems` for the bundled ones)")
    for section, content in data.items():
        if section not in MANIFEST_SCHEMA:
            raise SystemLoadError(f"{path}: unknown section [{section}]; known sections: "
                                  f"{', '.join(MANIFEST_SCHEMA)}")
        if not isinstance(content, dict):
            raise SystemLoadError(f"{path}: [{section}] must be a table")
        schema = MANIFEST_SCHEMA[section]
        if section == "run":
            continue
        for key, value in content.items():
            if key not in schema:
                raise SystemLoadError(
                    f"{path}: unknown key '{key}' in [{section}]; known keys: "
                    f"{', '.join(sorted(schema))}")
            types = schema[key]
            if isinstance(value, bool) or not isinstance(value, types):
                names = " or ".join(t.__name__ for t in types)
                raise SystemLoadError(
                    f"{path}: [{section}] {key} = {value!r} has type {type(value).__name__}; "
                    f"expected {names}")
    return data


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def systems_root() -> Path:
    """Folder holding the bundled systems (``$AMORE_SYSTEMS_DIR`` overrides)."""
    env = os.environ.get("AMORE_SYSTEMS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "systems"


def bundled_systems() -> list[str]:
    root = systems_root()
    names = {"muller_brown"}
    if root.is_dir():
        names |= {p.parent.name for p in root.glob("*/system.toml")}
    return sorted(names)


def _require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise SystemLoadError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    return path


def _forcefield(files: Iterable[str], where: str) -> app.ForceField:
    files = list(files)
    try:
        return app.ForceField(*files)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise SystemLoadError(
            f"{where}: force field file(s) {files} could not be loaded ({exc}); use files "
            "shipped with OpenMM such as 'amber14-all.xml', 'implicit/obc2.xml', "
            "'charmm36.xml', or a path to your own XML") from exc


def _create_from_pdb(pdb_path: Path, ff_files: list[str], implicit: str | None,
                     nonbonded: str, cutoff: float | None, constraints: str,
                     where: str) -> tuple[openmm.System, app.Topology, np.ndarray]:
    pdb = app.PDBFile(str(pdb_path))
    files = list(ff_files) + ([implicit] if implicit else [])
    ff = _forcefield(files, where)
    kwargs: dict[str, Any] = dict(nonbondedMethod=_lookup(NONBONDED, nonbonded,
                                                          "nonbonded_method", where),
                                  constraints=_lookup(CONSTRAINTS, constraints,
                                                      "constraints", where),
                                  rigidWater=constraints != "None")
    if cutoff is not None and nonbonded != "NoCutoff":
        kwargs["nonbondedCutoff"] = cutoff * unit.nanometer
    try:
        system = ff.createSystem(pdb.topology, **kwargs)
    except ValueError as exc:
        msg = str(exc)
        if "template" in msg.lower():
            raise SystemLoadError(
                f"{pdb_path}: {msg}. The force field {files} has no template for that "
                "residue. Usually hydrogens are missing or named differently: add them with "
                "openmm.app.Modeller.addHydrogens (or pdbfixer), or give a force field that "
                "covers the residue") from exc
        raise SystemLoadError(f"{pdb_path}: createSystem failed: {msg}") from exc
    return system, pdb.topology, as_positions_nm(pdb.getPositions(asNumpy=True))


def _lookup(table: dict[str, Any], key: str, param: str, where: str) -> Any:
    if key not in table:
        raise SystemLoadError(f"{where}: {param} = {key!r} is not known; use one of "
                              f"{', '.join(table)}")
    return table[key]


def _read_inpcrd(path: Path, n_prmtop: int, prmtop_path: Path) -> np.ndarray:
    crd = app.AmberInpcrdFile(str(path))
    pos = as_positions_nm(crd.getPositions(asNumpy=True))
    if pos.shape[0] != n_prmtop:
        raise SystemLoadError(
            f"{path} has {pos.shape[0]} atoms but {prmtop_path} has {n_prmtop}; the "
            "coordinate file must belong to the same topology")
    return pos


def _create_from_prmtop(prmtop_path: Path, inpcrd_path: Path, implicit: str | None,
                        nonbonded: str, cutoff: float | None, constraints: str, where: str
                        ) -> tuple[openmm.System, app.Topology, np.ndarray]:
    prmtop = app.AmberPrmtopFile(str(prmtop_path))
    pos = _read_inpcrd(inpcrd_path, prmtop.topology.getNumAtoms(), prmtop_path)
    implicit_map = {None: None, "implicit/obc2.xml": app.OBC2, "implicit/obc1.xml": app.OBC1,
                    "implicit/gbn2.xml": app.GBn2, "implicit/gbn.xml": app.GBn,
                    "implicit/hct.xml": app.HCT}
    if implicit not in implicit_map:
        raise SystemLoadError(f"{where}: implicit_solvent {implicit!r} is not supported for "
                              f"prmtop input; use one of {[k for k in implicit_map if k]}")
    kwargs: dict[str, Any] = dict(
        nonbondedMethod=_lookup(NONBONDED, nonbonded, "nonbonded_method", where),
        constraints=_lookup(CONSTRAINTS, constraints, "constraints", where),
        implicitSolvent=implicit_map[implicit])
    if cutoff is not None and nonbonded != "NoCutoff":
        kwargs["nonbondedCutoff"] = cutoff * unit.nanometer
    system = prmtop.createSystem(**kwargs)
    return system, prmtop.topology, pos


def _find_inpcrd(prmtop: Path) -> Path:
    for ext in (".inpcrd", ".rst7", ".crd", ".rst"):
        cand = prmtop.with_suffix(ext)
        if cand.is_file():
            return cand
    raise SystemLoadError(f"no coordinates for {prmtop}: pass inpcrd='file.inpcrd' (looked for "
                          f"{prmtop.with_suffix('.inpcrd').name} and .rst7 beside it)")


DYNAMICS_OVERRIDES = ("temperature", "timestep", "friction", "integrator", "lag_steps",
                      "featurizer", "name")
BUILD_OVERRIDES = ("forcefield", "implicit_solvent", "nonbonded_method", "nonbonded_cutoff",
                   "constraints", "inpcrd", "pdb", "check")


def load_system(source: str | os.PathLike | MolecularSystem, **overrides: Any) -> MolecularSystem:
    """Load a system for the AMORE pipeline.

    ``source`` may be:

    * a bundled system name: ``"muller_brown"``, ``"alanine_dipeptide"``, ``"vgvapg"``;
    * a folder holding a ``system.toml`` manifest;
    * a ``.pdb`` file (force field from ``forcefield=[...]``, default ``amber14-all.xml``,
      plus ``implicit_solvent=``);
    * an Amber ``.prmtop``/``.parm7`` (coordinates from ``inpcrd=`` or a sibling file);
    * an OpenMM System ``.xml`` (structure from ``pdb=``).

    Keyword overrides: temperature (K), timestep (ps), friction (1/ps), integrator, lag_steps,
    featurizer, name, and for files: forcefield, implicit_solvent, nonbonded_method,
    nonbonded_cutoff (nm), constraints, inpcrd, pdb, check (default True: initial structures
    must have finite energy and forces).
    """
    if isinstance(source, MolecularSystem):
        return source.with_overrides(**overrides) if overrides else source
    unknown = set(overrides) - set(DYNAMICS_OVERRIDES) - set(BUILD_OVERRIDES)
    if unknown:
        raise SystemLoadError(f"load_system: unknown parameter(s) {sorted(unknown)}; allowed: "
                              f"{sorted(DYNAMICS_OVERRIDES + BUILD_OVERRIDES)}")
    dyn = {k: overrides.pop(k) for k in list(overrides) if k in DYNAMICS_OVERRIDES}
    check = overrides.pop("check", True)
    src = str(source)
    path = Path(src).expanduser()
    if not path.exists():
        bundled = systems_root() / src
        if (bundled / "system.toml").is_file():
            path = bundled
        elif src == "muller_brown":  # built in; the bundled manifest is preferred when present
            ms = muller_brown_system()
            return ms.with_overrides(**dyn) if dyn else ms
        else:
            raise SystemLoadError(
                f"system {src!r} is neither an existing file/folder nor a bundled system "
                f"({', '.join(bundled_systems())}); give a path to a system folder, a .pdb, "
                "a .prmtop or a System .xml")
    if path.is_dir():
        ms = _load_manifest_folder(path, overrides, check)
    else:
        ms = _load_file(path, overrides, check)
    return ms.with_overrides(**dyn) if dyn else ms


def _load_file(path: Path, opts: dict[str, Any], check: bool) -> MolecularSystem:
    suffix = path.suffix.lower()
    where = str(path)
    implicit = opts.get("implicit_solvent")
    nonbonded = opts.get("nonbonded_method", "NoCutoff")
    cutoff = opts.get("nonbonded_cutoff")
    constraints = opts.get("constraints", "None")
    if suffix == ".pdb":
        ff = opts.get("forcefield", ["amber14-all.xml"])
        ff = [ff] if isinstance(ff, str) else list(ff)
        system, top, pos = _create_from_pdb(path, ff, implicit, nonbonded, cutoff,
                                            constraints, where)
    elif suffix in (".prmtop", ".parm7", ".top"):
        inpcrd = Path(opts["inpcrd"]) if opts.get("inpcrd") else _find_inpcrd(path)
        _require_file(inpcrd, "coordinate file")
        system, top, pos = _create_from_prmtop(path, inpcrd, implicit, nonbonded, cutoff,
                                               constraints, where)
    elif suffix == ".xml":
        pdb_path = opts.get("pdb")
        if not pdb_path:
            raise SystemLoadError(f"{path}: an OpenMM System XML needs a structure: pass "
                                  "pdb='structure.pdb' with the same atoms")
        pdb_path = _require_file(Path(pdb_path), "structure file")
        try:
            system = openmm.XmlSerializer.deserialize(path.read_text())
        except Exception as exc:  # noqa: BLE001 - OpenMM raises plain Exception
            raise SystemLoadError(f"{path}: not a serialized OpenMM System ({exc})") from exc
        pdb = app.PDBFile(str(pdb_path))
        top, pos = pdb.topology, as_positions_nm(pdb.getPositions(asNumpy=True))
        if pos.shape[0] != system.getNumParticles():
            raise SystemLoadError(f"{pdb_path} has {pos.shape[0]} atoms but {path} has "
                                  f"{system.getNumParticles()} particles")
    else:
        raise SystemLoadError(f"{path}: unknown file type {suffix!r}; give a .pdb, a .prmtop "
                              "(with .inpcrd), an OpenMM System .xml (with pdb=), or a folder "
                              "with system.toml")
    if pos.shape[0] != system.getNumParticles():
        raise SystemLoadError(f"{path}: {pos.shape[0]} atoms in the structure but "
                              f"{system.getNumParticles()} in the System")
    ms = MolecularSystem(system=system, topology=top, positions=[pos], name=path.stem,
                         source=str(path))
    if check:
        ms.check_finite()
    return ms


def _load_manifest_folder(folder: Path, opts: dict[str, Any], check: bool) -> MolecularSystem:
    manifest = folder / "system.toml"
    data = read_manifest(manifest)
    sec = data.get("system", {})
    dyn = data.get("dynamics", {})
    where = str(manifest)
    kind = sec.get("kind", "openmm")
    if kind == "muller_brown":
        ms = muller_brown_system(sigma=float(dyn.get("sigma", 5.0)),
                                 timestep=float(dyn.get("timestep", 1e-4)),
                                 lag_steps=int(dyn.get("lag_steps", 10)))
        ms.source = str(folder)
        ms.metadata["manifest"] = data
        return ms
    if kind != "openmm":
        raise SystemLoadError(f"{where}: kind = {kind!r} is not known; use 'openmm' or "
                              "'muller_brown'")
    implicit = opts.get("implicit_solvent", sec.get("implicit_solvent"))
    nonbonded = opts.get("nonbonded_method", sec.get("nonbonded_method", "NoCutoff"))
    cutoff = opts.get("nonbonded_cutoff", sec.get("nonbonded_cutoff"))
    constraints = opts.get("constraints", sec.get("constraints", "None"))
    ff = opts.get("forcefield", sec.get("forcefield", ["amber14-all.xml"]))
    ff = [ff] if isinstance(ff, str) else list(ff)
    # Prefer the PDB + force field route; prmtop when the manifest names only that.
    if sec.get("pdb"):
        pdb_path = _require_file(folder / sec["pdb"], f"{where}: pdb",
                                 "run `amore build-systems` to regenerate bundled systems")
        system, top, pos = _create_from_pdb(pdb_path, ff, implicit, nonbonded, cutoff,
                                            constraints, where)
    elif sec.get("prmtop"):
        prm = _require_file(folder / sec["prmtop"], f"{where}: prmtop")
        crd = _require_file(folder / sec.get("inpcrd", prm.with_suffix(".inpcrd").name),
                            f"{where}: inpcrd")
        system, top, pos = _create_from_prmtop(prm, crd, implicit, nonbonded, cutoff,
                                               constraints, where)
    elif sec.get("system_xml"):
        raise SystemLoadError(f"{where}: system_xml needs pdb = '...' for the structure")
    else:
        raise SystemLoadError(f"{where}: [system] needs pdb = '...' or prmtop = '...'")
    positions = [pos]
    for conf in sec.get("conformations", []):
        cpath = _require_file(folder / conf, f"{where}: conformation")
        cpos = as_positions_nm(app.PDBFile(str(cpath)).getPositions(asNumpy=True))
        if cpos.shape != pos.shape:
            raise SystemLoadError(f"{cpath} has {cpos.shape[0]} atoms but the system has "
                                  f"{pos.shape[0]}")
        positions.append(cpos)
    if sec.get("conformations"):
        positions = positions[1:] if len(positions) > 1 else positions
    kwargs = {k: dyn[k] for k in ("temperature", "friction", "timestep", "integrator",
                                  "lag_steps") if k in dyn}
    ms = MolecularSystem(system=system, topology=top, positions=positions,
                         featurizer=data.get("chi", {}).get("featurizer", "auto"),
                         name=sec.get("name", folder.name), source=str(folder), **kwargs)
    ms.metadata["manifest"] = data
    if check:
        ms.check_finite()
    return ms
