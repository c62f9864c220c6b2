"""``load_system``: bundled names, manifest folders, PDB, Amber prmtop/inpcrd, System XML.

Every route ends in a :class:`~amore_openmm.systems.MolecularSystem`; every bad input ends in
a :class:`~amore_openmm.systems.SystemLoadError` (a ValueError) naming the file or parameter
and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import openmm
from openmm import app, unit

from .common import SystemLoadError, as_positions_nm, load_forcefield
from .manifest import read_manifest
from .molecular import MolecularSystem
from .muller_brown import muller_brown_system
from .selection import is_water_residue

__all__ = ["load_system", "systems_root", "manifest_run_table", "bundled_systems", "NONBONDED", "CONSTRAINTS",
           "SETTING_OVERRIDES", "BUILD_OVERRIDES"]

NONBONDED = {"NoCutoff": app.NoCutoff, "CutoffNonPeriodic": app.CutoffNonPeriodic,
             "CutoffPeriodic": app.CutoffPeriodic, "PME": app.PME}
CONSTRAINTS = {"None": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds,
               "HAngles": app.HAngles}
IMPLICIT_PRMTOP = {None: None, "implicit/obc2.xml": app.OBC2, "implicit/obc1.xml": app.OBC1,
                   "implicit/gbn2.xml": app.GBn2, "implicit/gbn.xml": app.GBn,
                   "implicit/hct.xml": app.HCT}
#: settings applied to the loaded system (MolecularSystem.with_overrides)
SETTING_OVERRIDES = ("temperature", "timestep", "friction", "integrator", "lag_steps",
                     "featurizer", "name", "atoms")
#: options of how a file becomes a System
BUILD_OVERRIDES = ("forcefield", "implicit_solvent", "nonbonded_method", "nonbonded_cutoff",
                   "constraints", "inpcrd", "pdb", "check")


def systems_root() -> Path:
    """Folder holding the bundled systems: ``$AMORE_SYSTEMS_DIR`` if set, else ``systems/``
    of the source checkout this package runs from, else the copy an installed package
    carries (``amore_openmm/systems_data``, see setup.py)."""
    env = os.environ.get("AMORE_SYSTEMS_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "systems"
    if (checkout / "build.py").is_file():
        return checkout
    return package / "systems_data"


def bundled_systems() -> list[str]:
    """Names of the bundled systems (folders with a system.toml, plus the built-in toy)."""
    root = systems_root()
    names = {"muller_brown"}
    if root.is_dir():
        names |= {p.parent.name for p in root.glob("*/system.toml")}
    return sorted(names)


def load_system(source: str | os.PathLike | MolecularSystem, **overrides: Any) -> MolecularSystem:
    """Load a system for the AMORE pipeline.

    ``source`` may be:

    * a bundled system name (see :func:`bundled_systems`: ``"muller_brown"``,
      ``"alanine_dipeptide"``, ``"vgvapg"``, ...);
    * a folder holding a ``system.toml`` manifest;
    * a ``.pdb`` file (force field from ``forcefield=[...]``, default ``amber14-all.xml``,
      plus ``implicit_solvent=``);
    * an Amber ``.prmtop``/``.parm7`` (coordinates from ``inpcrd=`` or a sibling file);
    * an OpenMM System ``.xml`` (structure from ``pdb=``).

    Keyword overrides: temperature (K), timestep (ps), friction (1/ps), integrator, lag_steps,
    featurizer, name, atoms (the molecule of interest: an mdtraj selection string or 0-based
    indices; default every atom that is not water or a monatomic ion), and for files:
    forcefield, implicit_solvent, nonbonded_method, nonbonded_cutoff (nm), constraints,
    inpcrd, pdb, check (default True: initial structures must have finite energy and forces).

    Files without a manifest: a structure in a periodic box that holds water is built with
    PME, HBond constraints and rigid water by default; anything else with no cutoff and no
    constraints. A manifest or the keywords above override these defaults.
    """
    if isinstance(source, MolecularSystem):
        return source.with_overrides(**overrides) if overrides else source
    unknown = set(overrides) - set(SETTING_OVERRIDES) - set(BUILD_OVERRIDES)
    if unknown:
        raise SystemLoadError(f"load_system: unknown parameter(s) {sorted(unknown)}; allowed: "
                              f"{sorted(SETTING_OVERRIDES + BUILD_OVERRIDES)}")
    settings = {k: overrides.pop(k) for k in list(overrides) if k in SETTING_OVERRIDES}
    check = overrides.pop("check", True)
    path = _resolve_source(str(source))
    if path is None:  # the built-in toy (no bundled manifest found)
        ms = muller_brown_system()
    elif path.is_dir():
        ms = _load_manifest_folder(path, overrides, check, settings.get("atoms"))
    else:
        ms = _load_file(path, overrides, check, settings.get("atoms"))
    settings.pop("atoms", None)  # already applied (a bad selection fails before check_finite)
    return ms.with_overrides(**settings) if settings else ms


def _resolve_source(src: str) -> Path | None:
    """An existing path, a bundled folder, or None for the built-in Müller–Brown toy."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    bundled = systems_root() / src
    if (bundled / "system.toml").is_file():
        return bundled
    if src == "muller_brown":  # built in; the bundled manifest is preferred when present
        return None
    raise SystemLoadError(
        f"system {src!r} is neither an existing file/folder nor a bundled system "
        f"({', '.join(bundled_systems())}); give a path to a system folder, a .pdb, "
        "a .prmtop or a System .xml")


# --------------------------------------------------------------------------------------------
# System creation from files
# --------------------------------------------------------------------------------------------
def _require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise SystemLoadError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    return path


def _lookup(table: dict[str, Any], key: str, param: str, where: str) -> Any:
    if key not in table:
        raise SystemLoadError(f"{where}: {param} = {key!r} is not known; use one of "
                              f"{', '.join(table)}")
    return table[key]


def _is_solvated(topology: app.Topology) -> bool:
    """A periodic box (CRYST1 / prmtop box) that holds water: explicit solvent."""
    return topology.getPeriodicBoxVectors() is not None and \
        any(is_water_residue(r) for r in topology.residues())


def _system_kwargs(opts: dict[str, Any], where: str, topology: app.Topology
                   ) -> dict[str, Any]:
    """createSystem keywords shared by the PDB and prmtop routes.

    Defaults: explicit solvent (a box with water) gets PME, HBond constraints and rigid
    water; everything else no cutoff and no constraints (vacuum or implicit solvent).
    """
    solvated = _is_solvated(topology)
    nonbonded = opts.get("nonbonded_method", "PME" if solvated else "NoCutoff")
    constraints = opts.get("constraints", "HBonds" if solvated else "None")
    kwargs: dict[str, Any] = dict(
        nonbondedMethod=_lookup(NONBONDED, nonbonded, "nonbonded_method", where),
        constraints=_lookup(CONSTRAINTS, constraints, "constraints", where),
        rigidWater=constraints != "None")
    cutoff = opts.get("nonbonded_cutoff")
    if cutoff is not None and nonbonded != "NoCutoff":
        kwargs["nonbondedCutoff"] = float(cutoff) * unit.nanometer
    return kwargs


def _read_structure_file(path: Path, reader: Any, kind: str) -> Any:
    """``reader(str(path))`` with a clear error for empty or unreadable files (OpenMM's own
    readers fail with IndexError/KeyError on those)."""
    if path.stat().st_size == 0:
        raise SystemLoadError(f"{path} is empty; give a complete {kind} file")
    try:
        return reader(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenMM's readers raise anything on bad files
        raise SystemLoadError(f"{path}: could not read it as a {kind} file "
                              f"({type(exc).__name__}: {exc}); check the file's format") from exc


def _create_from_pdb(pdb_path: Path, opts: dict[str, Any], where: str
                     ) -> tuple[openmm.System, app.Topology, np.ndarray]:
    pdb = _read_structure_file(pdb_path, app.PDBFile, "PDB")
    ff = opts.get("forcefield", ["amber14-all.xml"])
    ff = [ff] if isinstance(ff, str) else list(ff)
    implicit = opts.get("implicit_solvent")
    files = ff + ([implicit] if implicit else [])
    forcefield = load_forcefield(files, where)
    try:
        system = forcefield.createSystem(pdb.topology,
                                         **_system_kwargs(opts, where, pdb.topology))
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


def _create_from_prmtop(prmtop_path: Path, inpcrd_path: Path, opts: dict[str, Any],
                        where: str) -> tuple[openmm.System, app.Topology, np.ndarray]:
    prmtop = _read_structure_file(prmtop_path, app.AmberPrmtopFile, "Amber prmtop")
    crd = _read_structure_file(inpcrd_path, app.AmberInpcrdFile, "Amber inpcrd")
    pos = as_positions_nm(crd.getPositions(asNumpy=True))
    if pos.shape[0] != prmtop.topology.getNumAtoms():
        raise SystemLoadError(
            f"{inpcrd_path} has {pos.shape[0]} atoms but {prmtop_path} has "
            f"{prmtop.topology.getNumAtoms()}; the coordinate file must belong to the same "
            "topology")
    implicit = opts.get("implicit_solvent")
    if implicit not in IMPLICIT_PRMTOP:
        raise SystemLoadError(f"{where}: implicit_solvent {implicit!r} is not supported for "
                              f"prmtop input; use one of {[k for k in IMPLICIT_PRMTOP if k]}")
    kwargs = _system_kwargs(opts, where, prmtop.topology)
    system = prmtop.createSystem(implicitSolvent=IMPLICIT_PRMTOP[implicit], **kwargs)
    if crd.boxVectors is not None and system.usesPeriodicBoundaryConditions():
        system.setDefaultPeriodicBoxVectors(*crd.getBoxVectors())  # the inpcrd's box
    return system, prmtop.topology, pos


def _create_from_xml(xml_path: Path, pdb_path: Path
                     ) -> tuple[openmm.System, app.Topology, np.ndarray]:
    try:
        system = openmm.XmlSerializer.deserialize(xml_path.read_text())
    except Exception as exc:  # noqa: BLE001 - OpenMM raises plain Exception
        raise SystemLoadError(f"{xml_path}: not a serialized OpenMM System ({exc})") from exc
    pdb = _read_structure_file(pdb_path, app.PDBFile, "PDB")
    pos = as_positions_nm(pdb.getPositions(asNumpy=True))
    if pos.shape[0] != system.getNumParticles():
        raise SystemLoadError(f"{pdb_path} has {pos.shape[0]} atoms but {xml_path} has "
                              f"{system.getNumParticles()} particles")
    return system, pdb.topology, pos


def _find_inpcrd(prmtop: Path) -> Path:
    for ext in (".inpcrd", ".rst7", ".crd", ".rst"):
        cand = prmtop.with_suffix(ext)
        if cand.is_file():
            return cand
    raise SystemLoadError(f"no coordinates for {prmtop}: pass inpcrd='file.inpcrd' (looked for "
                          f"{prmtop.with_suffix('.inpcrd').name} and .rst7 beside it)")


def _load_file(path: Path, opts: dict[str, Any], check: bool, atoms: Any) -> MolecularSystem:
    suffix = path.suffix.lower()
    if suffix == ".pdb":
        system, top, pos = _create_from_pdb(path, opts, str(path))
    elif suffix in (".prmtop", ".parm7", ".top"):
        inpcrd = Path(opts["inpcrd"]) if opts.get("inpcrd") else _find_inpcrd(path)
        _require_file(inpcrd, "coordinate file")
        system, top, pos = _create_from_prmtop(path, inpcrd, opts, str(path))
    elif suffix == ".xml":
        if not opts.get("pdb"):
            raise SystemLoadError(f"{path}: an OpenMM System XML needs a structure: pass "
                                  "pdb='structure.pdb' with the same atoms")
        system, top, pos = _create_from_xml(path, _require_file(Path(opts["pdb"]),
                                                                "structure file"))
    else:
        raise SystemLoadError(f"{path}: unknown file type {suffix!r}; give a .pdb, a .prmtop "
                              "(with .inpcrd), an OpenMM System .xml (with pdb=), or a folder "
                              "with system.toml")
    ms = MolecularSystem(system=system, topology=top, positions=[pos], name=path.stem,
                         source=str(path), selection=atoms)
    if check:
        ms.check_finite()
    return ms


# --------------------------------------------------------------------------------------------
# manifest folders
# --------------------------------------------------------------------------------------------
def _manifest_structure(folder: Path, sec: dict[str, Any], opts: dict[str, Any], where: str
                        ) -> tuple[openmm.System, app.Topology, np.ndarray]:
    """The System from the manifest's files: System XML + PDB, else PDB + force field, else
    prmtop + inpcrd."""
    hint = "run `amore build-systems` to regenerate bundled systems"
    if sec.get("system_xml"):
        if not sec.get("pdb"):
            raise SystemLoadError(f"{where}: system_xml needs pdb = '...' for the structure")
        return _create_from_xml(_require_file(folder / sec["system_xml"], f"{where}: system_xml"),
                                _require_file(folder / sec["pdb"], f"{where}: pdb", hint))
    if sec.get("pdb"):
        return _create_from_pdb(_require_file(folder / sec["pdb"], f"{where}: pdb", hint),
                                opts, where)
    if sec.get("prmtop"):
        prm = _require_file(folder / sec["prmtop"], f"{where}: prmtop", hint)
        crd = _require_file(folder / sec.get("inpcrd", prm.with_suffix(".inpcrd").name),
                            f"{where}: inpcrd", hint)
        return _create_from_prmtop(prm, crd, opts, where)
    raise SystemLoadError(f"{where}: [system] needs pdb = '...' or prmtop = '...'")


def _conformations(folder: Path, sec: dict[str, Any], n_atoms: int, where: str
                   ) -> list[np.ndarray]:
    out = []
    for conf in sec.get("conformations", []):
        cpath = _require_file(folder / conf, f"{where}: conformation")
        cpos = as_positions_nm(app.PDBFile(str(cpath)).getPositions(asNumpy=True))
        if cpos.shape[0] != n_atoms:
            raise SystemLoadError(f"{cpath} has {cpos.shape[0]} atoms but the system has "
                                  f"{n_atoms}")
        out.append(cpos)
    return out


def _load_manifest_folder(folder: Path, opts: dict[str, Any], check: bool, atoms: Any
                          ) -> MolecularSystem:
    manifest = folder / "system.toml"
    data = read_manifest(manifest)
    sec, dyn = data.get("system", {}), data.get("dynamics", {})
    where = str(manifest)
    kind = sec.get("kind", "openmm")
    if kind == "muller_brown":
        ms = muller_brown_system(sigma=float(dyn.get("sigma", 5.0)),
                                 timestep=float(dyn.get("timestep", 1e-4)),
                                 lag_steps=int(dyn.get("lag_steps", 10)))
        ms.source = str(folder)
        ms.metadata["manifest"] = data
        return ms.with_overrides(atoms=atoms) if atoms is not None else ms
    if kind != "openmm":
        raise SystemLoadError(f"{where}: kind = {kind!r} is not known; use 'openmm' or "
                              "'muller_brown'")
    keys = ("forcefield", "implicit_solvent", "nonbonded_method", "nonbonded_cutoff",
            "constraints")
    merged = {**{k: sec[k] for k in keys if k in sec}, **opts}  # call options win
    system, top, pos = _manifest_structure(folder, sec, merged, where)
    positions = _conformations(folder, sec, pos.shape[0], where) or [pos]
    kwargs = {k: dyn[k] for k in ("temperature", "friction", "timestep", "integrator",
                                  "lag_steps") if k in dyn}
    ms = MolecularSystem(system=system, topology=top, positions=positions,
                         featurizer=data.get("chi", {}).get("featurizer", "auto"),
                         name=sec.get("name", folder.name), source=str(folder),
                         metadata={"manifest": data},
                         selection=atoms if atoms is not None else sec.get("atoms"), **kwargs)
    if check:
        ms.check_finite()
    return ms


def manifest_run_table(system: str) -> tuple[str | None, dict[str, Any]]:
    """(name used for built-in presets, the manifest's [run] table) for a system source.

    Only a bundled system's name or the ``name`` in a folder's ``system.toml`` selects
    built-in presets; a file on disk gets the generic presets whatever it is called."""
    src = str(system)
    path = Path(src).expanduser()
    manifest = None
    if path.is_dir():
        manifest = path / "system.toml"
    elif not path.exists() and (systems_root() / src / "system.toml").is_file():
        manifest = systems_root() / src / "system.toml"
    if manifest is not None and manifest.is_file():
        data = read_manifest(manifest)
        sec = data.get("system", {})
        name = "muller_brown" if sec.get("kind") == "muller_brown" else sec.get("name")
        run = data.get("run", {})
        return name, {"__where__": str(manifest), **run}
    if src == "muller_brown" and not path.exists():
        return "muller_brown", {}
    return None, {}
