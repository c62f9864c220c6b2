"""Build peptide structures from sequence and backbone dihedrals (the bundled ``systems/``).

Heavy atoms are placed from internal coordinates (bond lengths, angles, dihedrals) with the
NeRF construction; φ/ψ/ω choose the backbone conformation, χ angles the side chains. Hydrogens
come from ``openmm.app.Modeller.addHydrogens`` (pH 7: charged termini unless capped with
ACE/NME), then the structure is minimised with OpenMM. Everything runs on the ``Reference``
platform with a fixed seed, so the same call gives the same file on every run.

Atom order is the one ``Modeller.addHydrogens`` produces from our heavy-atom order
(N, CA, side chain, C, O[, OXT]; each hydrogen right after its parent). For ACE the builder
places ``H1`` itself before ``CH3`` so that the cap reads ``H1 CH3 H2 H3 C O`` (the common
Amber ordering: the paper's 1-based atoms 6, 16, 18 of alanine dipeptide are O(ACE), O(ALA),
H(NME)).

Units: positions in nm at the API; the internal-coordinate tables are in Å and degrees.
"""
from __future__ import annotations

import io
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import openmm
from openmm import app, unit

from .data import atomic_write_text

__all__ = [
    "BuiltPeptide",
    "BundledConformation",
    "ONE_TO_THREE",
    "SUPPORTED_RESIDUES",
    "VGVAPG_CONFORMATIONS",
    "parse_sequence",
    "place_atom",
    "build_heavy_atoms",
    "add_hydrogens",
    "create_system",
    "minimize_structure",
    "build_peptide",
    "backbone_dihedrals",
    "write_pdb",
    "write_amber",
    "build_bundled_systems",
]

ONE_TO_THREE = {"G": "GLY", "A": "ALA", "V": "VAL", "L": "LEU", "I": "ILE", "P": "PRO",
                "S": "SER", "T": "THR", "F": "PHE"}
CAPS = ("ACE", "NME")

# --------------------------------------------------------------------------------------------
# geometry (Å, degrees): standard values (Engh & Huber backbone, common side-chain geometry)
# --------------------------------------------------------------------------------------------
N_CA, CA_C, C_N, C_O, CA_CB, C_H = 1.458, 1.525, 1.329, 1.231, 1.530, 1.09
ANG_N_CA_C, ANG_CA_C_N, ANG_C_N_CA = 111.2, 116.2, 121.7
ANG_N_CA_CB = 110.5
ANG_N_CA_CB_PRO = 103.0   # the five-membered ring closes the N-CA-CB angle
TORS_C_N_CA_CB = -122.6   # places CB for L-amino acids (CA is S by CIP; R for none here)
PRO_PHI = -65.0           # the pyrrolidine ring pins proline's φ near −65°
PRO_PHI_WINDOW = 30.0

# Side chains: (atom, element, (ref1, ref2, ref3), bond, angle, torsion). The atom is bonded
# to ref3; the torsion is ref1-ref2-ref3-atom, a number or ("chiK", offset).
_SC: dict[str, list[tuple[str, str, tuple[str, str, str], float, float, Any]]] = {
    "GLY": [],
    "ALA": [],
    "VAL": [("CG1", "C", ("N", "CA", "CB"), 1.527, 110.7, ("chi1", 0.0)),
            ("CG2", "C", ("N", "CA", "CB"), 1.527, 110.4, ("chi1", 120.0))],
    "LEU": [("CG", "C", ("N", "CA", "CB"), 1.530, 116.1, ("chi1", 0.0)),
            ("CD1", "C", ("CA", "CB", "CG"), 1.524, 110.3, ("chi2", 0.0)),
            ("CD2", "C", ("CA", "CB", "CG"), 1.525, 110.6, ("chi2", 120.0))],
    # Ile CB is S: CG2 sits at χ1 − 120°; Thr CB is R: CG2 at χ1 − 120° from OG1.
    "ILE": [("CG1", "C", ("N", "CA", "CB"), 1.527, 110.4, ("chi1", 0.0)),
            ("CG2", "C", ("N", "CA", "CB"), 1.527, 110.5, ("chi1", -120.0)),
            ("CD1", "C", ("CA", "CB", "CG1"), 1.520, 113.8, ("chi2", 0.0))],
    "SER": [("OG", "O", ("N", "CA", "CB"), 1.417, 111.1, ("chi1", 0.0))],
    "THR": [("OG1", "O", ("N", "CA", "CB"), 1.430, 109.2, ("chi1", 0.0)),
            ("CG2", "C", ("N", "CA", "CB"), 1.530, 111.1, ("chi1", -120.0))],
    "PHE": [("CG", "C", ("N", "CA", "CB"), 1.502, 113.8, ("chi1", 0.0)),
            ("CD1", "C", ("CA", "CB", "CG"), 1.390, 120.7, ("chi2", 0.0)),
            ("CD2", "C", ("CA", "CB", "CG"), 1.390, 120.7, ("chi2", 180.0)),
            ("CE1", "C", ("CB", "CG", "CD1"), 1.390, 120.0, 180.0),
            ("CE2", "C", ("CB", "CG", "CD2"), 1.390, 120.0, 180.0),
            ("CZ", "C", ("CG", "CD1", "CE1"), 1.390, 120.0, 0.0)],
    # Cγ-endo pucker; with N-CA-CB = 103° the ring closes to N–CD ≈ 1.49 Å before minimisation.
    "PRO": [("CG", "C", ("N", "CA", "CB"), 1.495, 104.5, ("chi1", 0.0)),
            ("CD", "C", ("CA", "CB", "CG"), 1.507, 105.5, ("chi2", 0.0))],
}
#: extra bonds that close rings (the NeRF tree only bonds each atom to its ref3)
_RING_BONDS = {"PRO": [("CD", "N")], "PHE": [("CZ", "CE2")]}
#: default χ angles (degrees): common rotamers (Val t, Leu mt, Ile mt, Ser/Thr p, Phe m-85)
_DEFAULT_CHI = {"VAL": (175.0,), "LEU": (-65.0, 175.0), "ILE": (-65.0, 170.0),
                "SER": (62.0,), "THR": (62.0,), "PHE": (-65.0, 90.0), "PRO": (29.6, -34.8)}
SUPPORTED_RESIDUES = tuple(sorted(_SC)) + CAPS


# --------------------------------------------------------------------------------------------
# sequence handling
# --------------------------------------------------------------------------------------------
def parse_sequence(sequence: str | Sequence[str]) -> list[str]:
    """Residue names from ``"VGVAPG"``, ``"ACE-ALA-NME"`` or ``["ACE", "ALA", "NME"]``.

    ACE may only come first and NME only last; a peptide without both caps gets charged
    termini.
    """
    if isinstance(sequence, str):
        s = sequence.strip()
        if "-" in s or " " in s:
            names = [p.upper() for p in s.replace("-", " ").split()]
        else:
            bad = [c for c in s if c.upper() not in ONE_TO_THREE]
            if bad or not s:
                raise ValueError(f"sequence {sequence!r}: one-letter code(s) {bad} not supported;"
                                 f" use {''.join(sorted(ONE_TO_THREE))} or three-letter names "
                                 f"joined by '-' ({', '.join(SUPPORTED_RESIDUES)})")
            names = [ONE_TO_THREE[c.upper()] for c in s]
    else:
        names = [str(n).upper() for n in sequence]
    unknown = [n for n in names if n not in SUPPORTED_RESIDUES]
    if unknown:
        raise ValueError(f"sequence {sequence!r}: residue(s) {unknown} not supported by the "
                         f"builder; supported: {', '.join(SUPPORTED_RESIDUES)}")
    inner = [n for n in names if n not in CAPS]
    if not inner:
        raise ValueError(f"sequence {sequence!r} has no amino acid between the caps")
    if "ACE" in names[1:] or "NME" in names[:-1]:
        raise ValueError(f"sequence {sequence!r}: ACE may only start and NME only end the chain")
    return names


# --------------------------------------------------------------------------------------------
# internal coordinates -> Cartesian (NeRF)
# --------------------------------------------------------------------------------------------
def place_atom(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle_deg: float,
               torsion_deg: float) -> np.ndarray:
    """Position of atom d with |cd| = bond, angle b-c-d and dihedral a-b-c-d (degrees)."""
    theta, phi = math.radians(angle_deg), math.radians(torsion_deg)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * math.cos(theta), bond * math.sin(theta) * math.cos(phi),
                   bond * math.sin(theta) * math.sin(phi)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def _per_residue(values: float | Sequence[float] | None, n: int, default: float,
                 name: str) -> list[float]:
    if values is None:
        return [default] * n
    if isinstance(values, (int, float)):
        return [float(values)] * n
    vals = [float(v) for v in values]
    if len(vals) != n:
        raise ValueError(f"{name} needs one value per amino acid ({n}), got {len(vals)}")
    return vals


def build_heavy_atoms(sequence: str | Sequence[str], phi: float | Sequence[float] | None = None,
                      psi: float | Sequence[float] | None = None,
                      omega: float | Sequence[float] | None = None,
                      chi: dict[int, Sequence[float]] | None = None
                      ) -> tuple[app.Topology, np.ndarray]:
    """Heavy atoms (plus ACE's H1) of a peptide from backbone and side-chain dihedrals.

    Args:
        sequence: see :func:`parse_sequence`.
        phi, psi: degrees, one per amino acid (caps excluded) or one value for all. A free
            N terminus has no atom for φ (ignored); at a free C terminus ψ places OXT (O at
            ψ + 180°). Default: extended β (−120°, 130°).
        omega: peptide-bond dihedral(s) CA-C-N-CA, one per peptide bond, default 180 (trans).
        chi: optional {amino-acid index: (χ1, χ2)} in degrees; defaults are common rotamers.

    Returns:
        (topology with bonds, positions (n, 3) in nm). Proline's φ must lie within ±30° of
        −65°: the ring constrains it.
    """
    names = parse_sequence(sequence)
    capped_n, _capped_c = names[0] == "ACE", names[-1] == "NME"
    aa = [n for n in names if n not in CAPS]
    phis = _per_residue(phi, len(aa), -120.0, "phi")
    psis = _per_residue(psi, len(aa), 130.0, "psi")
    omegas = _per_residue(omega, len(names) - 1, 180.0, "omega")
    chi = dict(chi or {})
    for i, res in enumerate(aa):
        if res == "PRO" and (i > 0 or capped_n) and abs(phis[i] - PRO_PHI) > PRO_PHI_WINDOW:
            raise ValueError(f"phi[{i}] = {phis[i]} for PRO is outside {PRO_PHI}±"
                             f"{PRO_PHI_WINDOW}°: the ring allows no other φ; use about −65")

    coords: list[dict[str, np.ndarray]] = []   # per residue: atom name -> Å
    prev: dict[str, np.ndarray] | None = None  # previous residue's N-like, CA-like, C
    aa_i = 0
    for ri, res in enumerate(names):
        atoms: dict[str, np.ndarray] = {}
        if res == "ACE":
            # H1 stands in for the N of an amino acid: H1-CH3-C-N plays the role of ψ.
            atoms["H1"] = np.zeros(3)
            atoms["CH3"] = np.array([C_H, 0.0, 0.0])
            atoms["C"] = place_atom(np.array([0.0, 1.0, 0.0]), atoms["H1"], atoms["CH3"],
                                    1.520, 109.5, 0.0)
            atoms["O"] = place_atom(atoms["H1"], atoms["CH3"], atoms["C"], C_O, 121.0, 0.0)
            prev = {"N": atoms["H1"], "CA": atoms["CH3"], "C": atoms["C"], "psi": 180.0}
            coords.append(atoms)
            continue
        if prev is None:  # free N terminus: first three atoms in a plane
            atoms["N"] = np.zeros(3)
            atoms["CA"] = np.array([N_CA, 0.0, 0.0])
            atoms["C"] = place_atom(np.array([0.0, 1.0, 0.0]), atoms["N"], atoms["CA"],
                                    CA_C, ANG_N_CA_C, 180.0)
        else:
            atoms["N"] = place_atom(prev["N"], prev["CA"], prev["C"], C_N, ANG_CA_C_N,
                                    prev["psi"])
            w = omegas[ri - 1]
            ca_name = "C" if res == "NME" else "CA"
            atoms[ca_name] = place_atom(prev["CA"], prev["C"], atoms["N"], N_CA if res != "NME"
                                        else 1.449, ANG_C_N_CA, w)
            # O of the previous residue lies in the peptide plane, cis to this CA for ω = 180°.
            coords[-1]["O"] = place_atom(atoms[ca_name], atoms["N"], prev["C"], C_O, 123.0,
                                         w + 180.0)
            if res == "NME":
                coords.append(atoms)
                break
            atoms["C"] = place_atom(prev["C"], atoms["N"], atoms["CA"], CA_C, ANG_N_CA_C,
                                    phis[aa_i])
        # side chain
        if res != "GLY":
            atoms["CB"] = place_atom(atoms["C"], atoms["N"], atoms["CA"], CA_CB,
                                     ANG_N_CA_CB_PRO if res == "PRO" else ANG_N_CA_CB,
                                     TORS_C_N_CA_CB)
            chis = list(chi.get(aa_i, _DEFAULT_CHI.get(res, ())))
            for name, _el, (r1, r2, r3), bond, ang, tors in _SC[res]:
                if isinstance(tors, tuple):
                    k = int(tors[0][3:]) - 1
                    if k >= len(chis):
                        raise ValueError(f"chi[{aa_i}] for {res} needs at least {k + 1} angles")
                    tors = chis[k] + tors[1]
                atoms[name] = place_atom(atoms[r1], atoms[r2], atoms[r3], bond, ang, tors)
        if ri == len(names) - 1:  # free C terminus: carboxylate O at ψ+180°, OXT at ψ
            atoms["O"] = place_atom(atoms["N"], atoms["CA"], atoms["C"], 1.25, 117.0,
                                    psis[aa_i] + 180.0)
            atoms["OXT"] = place_atom(atoms["N"], atoms["CA"], atoms["C"], 1.25, 117.0,
                                      psis[aa_i])
        prev = {"N": atoms["N"], "CA": atoms["CA"], "C": atoms["C"], "psi": psis[aa_i]}
        coords.append(atoms)
        aa_i += 1
    return _heavy_topology(names, coords)


def _heavy_topology(names: list[str], coords: list[dict[str, np.ndarray]]
                    ) -> tuple[app.Topology, np.ndarray]:
    top = app.Topology()
    chain = top.addChain("A")
    pos: list[np.ndarray] = []
    prev_c = None
    el = app.element
    for ri, (res, atoms) in enumerate(zip(names, coords)):
        r = top.addResidue(res, chain, id=str(ri + 1))
        made: dict[str, app.topology.Atom] = {}

        def add(name: str, element: Any) -> None:
            made[name] = top.addAtom(name, element, r)
            pos.append(atoms[name])

        if res == "ACE":
            for name, e in (("H1", el.hydrogen), ("CH3", el.carbon), ("C", el.carbon),
                            ("O", el.oxygen)):
                add(name, e)
            top.addBond(made["H1"], made["CH3"])
            top.addBond(made["CH3"], made["C"])
            top.addBond(made["C"], made["O"])
        elif res == "NME":
            add("N", el.nitrogen)
            add("C", el.carbon)
            top.addBond(made["N"], made["C"])
        else:
            add("N", el.nitrogen)
            add("CA", el.carbon)
            top.addBond(made["N"], made["CA"])
            if res != "GLY":
                add("CB", el.carbon)
                top.addBond(made["CA"], made["CB"])
                for name, e, (_r1, _r2, r3), *_ in _SC[res]:
                    add(name, el.Element.getBySymbol(e))
                    top.addBond(made[r3], made[name])
                for a, b in _RING_BONDS.get(res, []):
                    top.addBond(made[a], made[b])
            add("C", el.carbon)
            add("O", el.oxygen)
            top.addBond(made["CA"], made["C"])
            top.addBond(made["C"], made["O"])
            if "OXT" in atoms:
                add("OXT", el.oxygen)
                top.addBond(made["C"], made["OXT"])
        if prev_c is not None:
            top.addBond(prev_c, made["N"])
        prev_c = made.get("C") if res != "NME" else None
    return top, np.asarray(pos, dtype=np.float64) * 0.1


# --------------------------------------------------------------------------------------------
# hydrogens, minimisation
# --------------------------------------------------------------------------------------------
@contextmanager
def _seeded_python_random(seed: int) -> Iterator[None]:
    """Modeller.addHydrogens draws from Python's global ``random``: seed it, then restore."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _forcefield(forcefield: Sequence[str]) -> app.ForceField:
    try:
        return app.ForceField(*forcefield)
    except (ValueError, OSError) as exc:
        raise ValueError(f"forcefield {list(forcefield)} could not be loaded ({exc}); use files "
                         "shipped with OpenMM such as 'amber14-all.xml'") from exc


def add_hydrogens(topology: app.Topology, positions: np.ndarray,
                  forcefield: Sequence[str] = ("amber14-all.xml",), pH: float = 7.0,
                  seed: int = 0) -> tuple[app.Topology, np.ndarray]:
    """Add hydrogens with ``Modeller.addHydrogens`` (deterministic: seeded, Reference platform).

    Returns the new topology and positions (n, 3) in nm.
    """
    modeller = app.Modeller(topology, positions * unit.nanometer)
    with _seeded_python_random(seed):
        modeller.addHydrogens(_forcefield(forcefield), pH=pH,
                              platform=openmm.Platform.getPlatformByName("Reference"))
    pos = modeller.getPositions().value_in_unit(unit.nanometer)
    return modeller.getTopology(), np.array([[v[0], v[1], v[2]] for v in pos])


def create_system(topology: app.Topology, forcefield: Sequence[str] = ("amber14-all.xml",),
                  implicit_solvent: str | None = None) -> openmm.System:
    """Vacuum/implicit-solvent System: no cutoff, no constraints (as the bundled manifests)."""
    files = list(forcefield) + ([implicit_solvent] if implicit_solvent else [])
    return _forcefield(files).createSystem(topology, nonbondedMethod=app.NoCutoff,
                                           constraints=None, rigidWater=False)


def minimize_structure(topology: app.Topology, positions: np.ndarray,
                       forcefield: Sequence[str] = ("amber14-all.xml",),
                       implicit_solvent: str | None = None, tolerance: float = 0.5,
                       max_iterations: int = 0) -> tuple[np.ndarray, float]:
    """Local energy minimisation on the Reference platform (deterministic).

    Args:
        tolerance: RMS force criterion in kJ/mol/nm. max_iterations: 0 = until converged.

    Returns:
        (positions (n, 3) nm, potential energy kJ/mol).
    """
    system = create_system(topology, forcefield, implicit_solvent)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(ctx, tolerance * unit.kilojoule_per_mole /
                                         unit.nanometer, max_iterations)
    st = ctx.getState(getPositions=True, getEnergy=True)
    pos = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    energy = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not math.isfinite(energy):
        raise RuntimeError("minimisation ended at a non-finite energy: the built structure has "
                           "overlapping atoms; choose other backbone dihedrals")
    return np.asarray(pos, dtype=np.float64), float(energy)


@dataclass
class BuiltPeptide:
    """A built, hydrogenated and (optionally) minimised peptide.

    Attributes: topology; positions (n, 3) nm; energy (kJ/mol, None if not minimised);
    residues (names); phi/psi requested (degrees).
    """

    topology: app.Topology
    positions: np.ndarray
    energy: float | None
    residues: list[str]
    phi: list[float] = field(default_factory=list)
    psi: list[float] = field(default_factory=list)


def build_peptide(sequence: str | Sequence[str], phi: float | Sequence[float] | None = None,
                  psi: float | Sequence[float] | None = None,
                  omega: float | Sequence[float] | None = None,
                  chi: dict[int, Sequence[float]] | None = None, *,
                  forcefield: Sequence[str] = ("amber14-all.xml",),
                  implicit_solvent: str | None = None, pH: float = 7.0, minimize: bool = True,
                  tolerance: float = 0.5, seed: int = 0) -> BuiltPeptide:
    """Peptide from sequence: heavy atoms from dihedrals, hydrogens, minimisation.

    Example: ``build_peptide("ACE-ALA-NME", phi=-80, psi=75)`` or
    ``build_peptide("VGVAPG", phi=[-75]*6, psi=[145]*6, implicit_solvent="implicit/obc2.xml")``.
    Deterministic: the same arguments give the same coordinates.
    """
    names = parse_sequence(sequence)
    n_aa = len([n for n in names if n not in CAPS])
    phis = _per_residue(phi, n_aa, -120.0, "phi")
    psis = _per_residue(psi, n_aa, 130.0, "psi")
    top, pos = build_heavy_atoms(names, phis, psis, omega, chi)
    top, pos = add_hydrogens(top, pos, forcefield, pH=pH, seed=seed)
    energy = None
    if minimize:
        pos, energy = minimize_structure(top, pos, forcefield, implicit_solvent, tolerance)
    return BuiltPeptide(topology=top, positions=pos, energy=energy, residues=names,
                        phi=phis, psi=psis)


def backbone_dihedrals(topology: app.Topology, positions: np.ndarray
                       ) -> list[tuple[str, float | None, float | None]]:
    """(residue label, φ, ψ) in degrees for each amino acid; None where undefined."""
    atoms = {(a.residue.index, a.name): a.index for a in topology.atoms()}
    residues = list(topology.residues())
    pos = np.asarray(positions)

    def dih(idx: list[int | None]) -> float | None:
        if any(i is None for i in idx):
            return None
        return float(np.degrees(_dihedral(*(pos[i] for i in idx))))  # type: ignore[index]

    out = []
    for r in residues:
        if r.name in CAPS:
            continue
        i = r.index
        prev_c = atoms.get((i - 1, "C"))
        next_n = atoms.get((i + 1, "N"))
        bb = [atoms.get((i, n)) for n in ("N", "CA", "C")]
        out.append((f"{r.name}{r.id}", dih([prev_c] + bb), dih(bb + [next_n])))
    return out


def _dihedral(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> float:
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1n) * b1n
    w = b2 - np.dot(b2, b1n) * b1n
    return math.atan2(np.dot(np.cross(b1n, v), w), np.dot(v, w))


# --------------------------------------------------------------------------------------------
# writing (no dates or versions in the files: rebuilding gives identical bytes)
# --------------------------------------------------------------------------------------------
def write_pdb(path: str | Path, topology: app.Topology, positions: np.ndarray,
              remarks: Sequence[str] = ()) -> Path:
    """Write a PDB (OpenMM atom names, coordinates in Å with 3 decimals) atomically."""
    buf = io.StringIO()
    for line in remarks:
        buf.write(f"REMARK   1 {line}\n")
    app.PDBFile.writeModel(topology, np.asarray(positions) * 10.0 * unit.angstrom, buf,
                           keepIds=True)
    app.PDBFile.writeFooter(topology, buf)
    return atomic_write_text(Path(path), buf.getvalue())


def write_amber(prmtop: str | Path, inpcrd: str | Path, topology: app.Topology,
                system: openmm.System, positions: np.ndarray) -> tuple[Path, Path]:
    """Write an Amber prmtop/inpcrd pair with parmed from an OpenMM System.

    parmed stamps the prmtop with today's date; it is replaced by a fixed one so that a
    rebuild gives the same bytes.
    """
    import parmed  # local: only the builder needs parmed

    struct = parmed.openmm.load_topology(topology, system, xyz=np.asarray(positions) * 10.0)
    prmtop, inpcrd = Path(prmtop), Path(inpcrd)
    prmtop.parent.mkdir(parents=True, exist_ok=True)
    tmp_top, tmp_crd = prmtop.with_name(prmtop.name + ".tmp"), inpcrd.with_name(
        inpcrd.name + ".tmp")
    struct.save(str(tmp_top), format="amber", overwrite=True)
    struct.save(str(tmp_crd), format="rst7", overwrite=True)
    lines = tmp_top.read_text().splitlines(keepends=True)
    lines = [("%VERSION  VERSION_STAMP = V0001.000  DATE = 01/01/00  00:00:00\n"
              if ln.startswith("%VERSION") else ln) for ln in lines]
    tmp_top.unlink()
    atomic_write_text(prmtop, "".join(lines))
    crd_text = tmp_crd.read_text()
    tmp_crd.unlink()
    atomic_write_text(inpcrd, crd_text)
    return prmtop, inpcrd


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        if len(v) > 3:
            return "[\n" + "".join(f"    {_toml_value(x)},\n" for x in v) + "]"
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml(sections: dict[str, dict[str, Any]], header: Sequence[str] = ()) -> str:
    out = [f"# {h}\n" for h in header]
    for name, content in sections.items():
        out.append(f"\n[{name}]\n")
        out.extend(f"{k} = {_toml_value(v)}\n" for k, v in content.items())
    return "".join(out)


# --------------------------------------------------------------------------------------------
# bundled systems
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundledConformation:
    """One starting conformation: a name and per-residue (φ, ψ) in degrees."""

    name: str
    description: str
    phi: tuple[float, ...]
    psi: tuple[float, ...]


def _turn(kind: str, at: int, base: tuple[float, float] = (-120.0, 130.0)
          ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """VGVAPG dihedrals: β strand with a two-residue turn at residues at, at+1 (0-based)."""
    turns = {"I": ((-60.0, -30.0), (-90.0, 0.0)), "II": ((-60.0, 120.0), (80.0, 0.0)),
             "II'": ((60.0, -120.0), (-80.0, 0.0))}
    phi, psi = [base[0]] * 6, [base[1]] * 6
    for k, (f, s) in enumerate(turns[kind]):
        phi[at + k], psi[at + k] = f, s
    phi[4] = PRO_PHI
    return tuple(phi), tuple(psi)


def _uniform(f: float, s: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    phi = [f] * 6
    phi[4] = PRO_PHI
    return tuple(phi), tuple([s] * 6)


#: VGVAPG starting structures: open (strand, PPII, fully extended) and closed (helical, β-turns
#: of types I, II, II' at different positions). Proline's φ is fixed at −65° by its ring.
VGVAPG_CONFORMATIONS: tuple[BundledConformation, ...] = (
    BundledConformation("c01_beta", "open: beta strand (-120, 130)", *_uniform(-120.0, 130.0)),
    BundledConformation("c02_ppii", "open: polyproline II (-75, 145)", *_uniform(-75.0, 145.0)),
    BundledConformation("c03_extended", "open: fully extended (-150, 155)",
                        *_uniform(-150.0, 155.0)),
    BundledConformation("c04_helical", "closed: right-handed helical (-60, -45)",
                        *_uniform(-60.0, -45.0)),
    BundledConformation("c05_turnII_V1G2", "closed: type II turn at Val1-Gly2",
                        *_turn("II", 0)),
    BundledConformation("c06_turnI_G2V3", "closed: type I turn at Gly2-Val3", *_turn("I", 1)),
    BundledConformation("c07_turnIIp_G2V3", "closed: type II' turn at Gly2-Val3",
                        *_turn("II'", 1)),
    BundledConformation("c08_turnI_V3A4", "closed: type I turn at Val3-Ala4", *_turn("I", 2)),
    BundledConformation("c09_turnII_V3A4", "closed: type II turn at Val3-Ala4",
                        *_turn("II", 2)),
    BundledConformation("c10_turnI_A4P5", "closed: type I turn at Ala4-Pro5 (Pro at i+2)",
                        *_turn("I", 3)),
)

ALANINE_PHI_PSI = (-80.0, 75.0)  # C7eq, the vacuum minimum of alanine dipeptide
_BUILT_BY = "built by amore_openmm.builder (systems/build.py); do not edit by hand"


def _build_muller_brown(folder: Path) -> list[Path]:
    text = _toml({
        "system": {"name": "muller_brown", "kind": "muller_brown",
                   "description": "one particle in the 4-term Mueller-Brown potential (x, y), "
                                  "z held near 0 by a spring; overdamped dynamics"},
        "dynamics": {"sigma": 5.0, "timestep": 0.0001, "lag_steps": 10,
                     "integrator": "brownian", "friction": 1.0},
        "chi": {"featurizer": "coordinates"},
    }, header=[_BUILT_BY, "beta = 2/sigma^2 (kT = 12.5 kJ/mol), m*gamma = 1, lag 1e-3"])
    return [atomic_write_text(folder / "system.toml", text)]


def _build_alanine(folder: Path) -> list[Path]:
    phi, psi = ALANINE_PHI_PSI
    built = build_peptide("ACE-ALA-NME", phi=phi, psi=psi)
    pdb = write_pdb(folder / "alanine_dipeptide.pdb", built.topology, built.positions, [
        _BUILT_BY, f"ACE-ALA-NME from phi={phi:g} psi={psi:g}, hydrogens by Modeller, "
                   "minimised with amber14-all in vacuum"])
    # The Amber files carry the PDB's (rounded) coordinates so both routes see one structure.
    pdbf = app.PDBFile(str(pdb))
    pos = pdbf.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    system = create_system(pdbf.topology)
    prm, crd = write_amber(folder / "alanine_dipeptide.prmtop",
                           folder / "alanine_dipeptide.inpcrd", pdbf.topology, system, pos)
    text = _toml({
        "system": {"name": "alanine_dipeptide", "kind": "openmm",
                   "description": "ACE-ALA-NME (22 atoms), amber14-all, vacuum",
                   "pdb": pdb.name, "prmtop": prm.name, "inpcrd": crd.name,
                   "forcefield": ["amber14-all.xml"], "nonbonded_method": "NoCutoff",
                   "constraints": "None"},
        "dynamics": {"temperature": 310.0, "friction": 1.0, "timestep": 0.002,
                     "integrator": "langevin_middle", "lag_steps": 100},
        "chi": {"featurizer": "pairwise_polar"},
    }, header=[_BUILT_BY, "the PDB is loaded with the force field; prmtop/inpcrd (parmed) "
               "hold the same system for Amber tools"])
    return [pdb, prm, crd, atomic_write_text(folder / "system.toml", text)]


def _build_vgvapg(folder: Path, conformations: Sequence[BundledConformation] | None = None
                  ) -> list[Path]:
    confs = list(VGVAPG_CONFORMATIONS if conformations is None else conformations)
    written: list[Path] = []
    rel: list[str] = []
    for conf in confs:
        built = build_peptide("VGVAPG", phi=conf.phi, psi=conf.psi,
                              implicit_solvent="implicit/obc2.xml")
        path = write_pdb(folder / "conformations" / f"{conf.name}.pdb", built.topology,
                         built.positions, [_BUILT_BY, f"VGVAPG {conf.description}",
                                           "phi " + " ".join(f"{x:g}" for x in conf.phi),
                                           "psi " + " ".join(f"{x:g}" for x in conf.psi)])
        written.append(path)
        rel.append(f"conformations/{conf.name}.pdb")
    text = _toml({
        "system": {"name": "vgvapg", "kind": "openmm",
                   "description": "VGVAPG, charged termini (73 atoms), amber14-all + OBC2 "
                                  "implicit solvent; open and closed (beta-turn) starts",
                   "pdb": rel[0], "conformations": rel,
                   "forcefield": ["amber14-all.xml"], "implicit_solvent": "implicit/obc2.xml",
                   "nonbonded_method": "NoCutoff", "constraints": "None"},
        "dynamics": {"temperature": 298.0, "friction": 1.0, "timestep": 0.002,
                     "integrator": "langevin_middle", "lag_steps": 250},
        "chi": {"featurizer": "pairwise_polar"},
    }, header=[_BUILT_BY, "psi of the central valine (Val3): atoms 25, 27, 39, 41 (0-based)"])
    written.append(atomic_write_text(folder / "system.toml", text))
    return written


_BUNDLED = {"muller_brown": _build_muller_brown, "alanine_dipeptide": _build_alanine,
            "vgvapg": _build_vgvapg}


def build_bundled_systems(out_dir: str | Path, names: Sequence[str] | None = None
                          ) -> dict[str, list[Path]]:
    """(Re)build the bundled systems into ``out_dir``/<name>/; returns the files written.

    ``names``: any of "muller_brown", "alanine_dipeptide", "vgvapg" (default: all).
    """
    out = Path(out_dir)
    names = list(_BUNDLED) if names is None else list(names)
    unknown = [n for n in names if n not in _BUNDLED]
    if unknown:
        raise ValueError(f"names: unknown bundled system(s) {unknown}; known: "
                         f"{', '.join(_BUNDLED)}")
    return {n: _BUNDLED[n](out / n) for n in names}
