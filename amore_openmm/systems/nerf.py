"""Peptide heavy atoms from sequence and dihedrals: the NeRF construction.

Heavy atoms are placed from internal coordinates (bond lengths, angles, dihedrals) with the
NeRF construction (natural extension reference frame); φ/ψ/ω choose the backbone
conformation, χ angles the side chains. For ACE the builder places ``H1`` itself before
``CH3`` so that the cap reads ``H1 CH3 H2 H3 C O`` once hydrogens are added (the common
Amber order: the paper's 1-based atoms 6, 16, 18 of alanine dipeptide are O(ACE), O(ALA),
H(NME)).

Units: the internal-coordinate tables are in Å and degrees; positions at the API in nm.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from openmm import app

__all__ = ["ONE_TO_THREE", "CAPS", "SUPPORTED_RESIDUES", "PRO_PHI", "parse_sequence",
           "place_atom", "build_heavy_atoms"]

ONE_TO_THREE = {"G": "GLY", "A": "ALA", "V": "VAL", "L": "LEU", "I": "ILE", "P": "PRO",
                "S": "SER", "T": "THR", "F": "PHE", "Y": "TYR", "W": "TRP", "D": "ASP",
                "E": "GLU", "N": "ASN", "Q": "GLN", "K": "LYS"}
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
    "TYR": [("CG", "C", ("N", "CA", "CB"), 1.512, 113.8, ("chi1", 0.0)),
            ("CD1", "C", ("CA", "CB", "CG"), 1.389, 120.8, ("chi2", 0.0)),
            ("CD2", "C", ("CA", "CB", "CG"), 1.389, 120.8, ("chi2", 180.0)),
            ("CE1", "C", ("CB", "CG", "CD1"), 1.382, 121.2, 180.0),
            ("CE2", "C", ("CB", "CG", "CD2"), 1.382, 121.2, 180.0),
            ("CZ", "C", ("CG", "CD1", "CE1"), 1.378, 119.6, 0.0),
            ("OH", "O", ("CD1", "CE1", "CZ"), 1.376, 119.9, 180.0)],
    # indole: the five-ring CG-CD1-NE1-CE2-CD2, the six-ring CD2-CE2-CZ2-CH2-CZ3-CE3
    "TRP": [("CG", "C", ("N", "CA", "CB"), 1.498, 113.6, ("chi1", 0.0)),
            ("CD1", "C", ("CA", "CB", "CG"), 1.365, 127.1, ("chi2", 0.0)),
            ("CD2", "C", ("CA", "CB", "CG"), 1.433, 126.6, ("chi2", 180.0)),
            ("NE1", "N", ("CB", "CG", "CD1"), 1.374, 110.2, 180.0),
            ("CE2", "C", ("CB", "CG", "CD2"), 1.409, 107.2, 180.0),
            ("CE3", "C", ("CB", "CG", "CD2"), 1.398, 133.9, 0.0),
            ("CZ2", "C", ("CG", "CD2", "CE2"), 1.394, 122.3, 180.0),
            ("CZ3", "C", ("CG", "CD2", "CE3"), 1.382, 118.8, 180.0),
            ("CH2", "C", ("CD2", "CE2", "CZ2"), 1.368, 117.5, 0.0)],
    "ASP": [("CG", "C", ("N", "CA", "CB"), 1.516, 112.6, ("chi1", 0.0)),
            ("OD1", "O", ("CA", "CB", "CG"), 1.249, 118.4, ("chi2", 0.0)),
            ("OD2", "O", ("CA", "CB", "CG"), 1.249, 118.4, ("chi2", 180.0))],
    "GLU": [("CG", "C", ("N", "CA", "CB"), 1.520, 114.1, ("chi1", 0.0)),
            ("CD", "C", ("CA", "CB", "CG"), 1.516, 112.6, ("chi2", 0.0)),
            ("OE1", "O", ("CB", "CG", "CD"), 1.249, 118.4, ("chi3", 0.0)),
            ("OE2", "O", ("CB", "CG", "CD"), 1.249, 118.4, ("chi3", 180.0))],
    "ASN": [("CG", "C", ("N", "CA", "CB"), 1.516, 112.6, ("chi1", 0.0)),
            ("OD1", "O", ("CA", "CB", "CG"), 1.231, 120.8, ("chi2", 0.0)),
            ("ND2", "N", ("CA", "CB", "CG"), 1.328, 116.4, ("chi2", 180.0))],
    "GLN": [("CG", "C", ("N", "CA", "CB"), 1.520, 114.1, ("chi1", 0.0)),
            ("CD", "C", ("CA", "CB", "CG"), 1.516, 112.6, ("chi2", 0.0)),
            ("OE1", "O", ("CB", "CG", "CD"), 1.231, 120.8, ("chi3", 0.0)),
            ("NE2", "N", ("CB", "CG", "CD"), 1.328, 116.4, ("chi3", 180.0))],
    "LYS": [("CG", "C", ("N", "CA", "CB"), 1.520, 114.1, ("chi1", 0.0)),
            ("CD", "C", ("CA", "CB", "CG"), 1.520, 111.3, ("chi2", 0.0)),
            ("CE", "C", ("CB", "CG", "CD"), 1.520, 111.3, ("chi3", 0.0)),
            ("NZ", "N", ("CG", "CD", "CE"), 1.489, 111.9, ("chi4", 0.0))],
    # Cγ-endo pucker; with N-CA-CB = 103° the ring closes to N–CD ≈ 1.49 Å before minimisation.
    "PRO": [("CG", "C", ("N", "CA", "CB"), 1.495, 104.5, ("chi1", 0.0)),
            ("CD", "C", ("CA", "CB", "CG"), 1.507, 105.5, ("chi2", 0.0))],
}
#: extra bonds that close rings (the NeRF tree only bonds each atom to its ref3)
_RING_BONDS = {"PRO": [("CD", "N")], "PHE": [("CZ", "CE2")], "TYR": [("CZ", "CE2")],
               "TRP": [("NE1", "CE2"), ("CH2", "CZ3")]}
#: default χ angles (degrees): common rotamers (Val t, Leu mt, Ile mt, Ser/Thr p, Phe/Tyr
#: m-85, Trp m95, Asp/Asn m-20, Glu/Gln mt-10, Lys mttt)
_DEFAULT_CHI = {"VAL": (175.0,), "LEU": (-65.0, 175.0), "ILE": (-65.0, 170.0),
                "SER": (62.0,), "THR": (62.0,), "PHE": (-65.0, 90.0), "PRO": (29.6, -34.8),
                "TYR": (-65.0, 90.0), "TRP": (-65.0, 95.0), "ASP": (-70.0, -15.0),
                "ASN": (-65.0, -20.0), "GLU": (-65.0, 180.0, -10.0),
                "GLN": (-65.0, 180.0, -25.0), "LYS": (-65.0, 180.0, 180.0, 180.0)}
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


def per_residue_values(values: float | Sequence[float] | None, n: int, default: float,
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
        chi: optional {amino-acid index: (χ1, χ2, ...)} in degrees; defaults are common
            rotamers.

    Returns:
        (topology with bonds, positions (n, 3) in nm). Proline's φ must lie within ±30° of
        −65°: the ring constrains it.
    """
    names = parse_sequence(sequence)
    aa = [n for n in names if n not in CAPS]
    phis = per_residue_values(phi, len(aa), -120.0, "phi")
    psis = per_residue_values(psi, len(aa), 130.0, "psi")
    omegas = per_residue_values(omega, len(names) - 1, 180.0, "omega")
    chi = dict(chi or {})
    for i, res in enumerate(aa):
        if res == "PRO" and (i > 0 or names[0] == "ACE") and \
                abs(phis[i] - PRO_PHI) > PRO_PHI_WINDOW:
            raise ValueError(f"phi[{i}] = {phis[i]} for PRO is outside {PRO_PHI}±"
                             f"{PRO_PHI_WINDOW}°: the ring allows no other φ; use about −65")
    coords: list[dict[str, np.ndarray]] = []   # per residue: atom name -> Å
    prev: dict[str, Any] | None = None         # previous residue's N-like, CA-like, C, ψ
    aa_i = 0
    for ri, res in enumerate(names):
        if res == "ACE":
            atoms = _place_ace()
            prev = {"N": atoms["H1"], "CA": atoms["CH3"], "C": atoms["C"], "psi": 180.0}
            coords.append(atoms)
            continue
        atoms = _place_backbone(res, prev, coords, omegas[ri - 1] if ri else 180.0,
                                phis[aa_i] if res != "NME" else 0.0)
        if res == "NME":
            coords.append(atoms)
            break
        if res != "GLY":
            _place_side_chain(atoms, res, list(chi.get(aa_i, _DEFAULT_CHI.get(res, ()))), aa_i)
        if ri == len(names) - 1:  # free C terminus: carboxylate O at ψ+180°, OXT at ψ
            atoms["O"] = place_atom(atoms["N"], atoms["CA"], atoms["C"], 1.25, 117.0,
                                    psis[aa_i] + 180.0)
            atoms["OXT"] = place_atom(atoms["N"], atoms["CA"], atoms["C"], 1.25, 117.0,
                                      psis[aa_i])
        prev = {"N": atoms["N"], "CA": atoms["CA"], "C": atoms["C"], "psi": psis[aa_i]}
        coords.append(atoms)
        aa_i += 1
    return _heavy_topology(names, coords)


def _place_ace() -> dict[str, np.ndarray]:
    """ACE: H1 stands in for the N of an amino acid (H1-CH3-C-N plays the role of ψ)."""
    atoms = {"H1": np.zeros(3), "CH3": np.array([C_H, 0.0, 0.0])}
    atoms["C"] = place_atom(np.array([0.0, 1.0, 0.0]), atoms["H1"], atoms["CH3"],
                            1.520, 109.5, 0.0)
    atoms["O"] = place_atom(atoms["H1"], atoms["CH3"], atoms["C"], C_O, 121.0, 0.0)
    return atoms


def _place_backbone(res: str, prev: dict[str, Any] | None,
                    coords: list[dict[str, np.ndarray]], omega: float, phi: float
                    ) -> dict[str, np.ndarray]:
    """N, CA (NME: C) and C of one residue; also the previous residue's O (peptide plane)."""
    atoms: dict[str, np.ndarray] = {}
    if prev is None:  # free N terminus: first three atoms in a plane
        atoms["N"] = np.zeros(3)
        atoms["CA"] = np.array([N_CA, 0.0, 0.0])
        atoms["C"] = place_atom(np.array([0.0, 1.0, 0.0]), atoms["N"], atoms["CA"],
                                CA_C, ANG_N_CA_C, 180.0)
        return atoms
    atoms["N"] = place_atom(prev["N"], prev["CA"], prev["C"], C_N, ANG_CA_C_N, prev["psi"])
    ca_name = "C" if res == "NME" else "CA"
    atoms[ca_name] = place_atom(prev["CA"], prev["C"], atoms["N"],
                                1.449 if res == "NME" else N_CA, ANG_C_N_CA, omega)
    # O of the previous residue lies in the peptide plane, cis to this CA for ω = 180°.
    coords[-1]["O"] = place_atom(atoms[ca_name], atoms["N"], prev["C"], C_O, 123.0,
                                 omega + 180.0)
    if res != "NME":
        atoms["C"] = place_atom(prev["C"], atoms["N"], atoms["CA"], CA_C, ANG_N_CA_C, phi)
    return atoms


def _place_side_chain(atoms: dict[str, np.ndarray], res: str, chis: list[float],
                      aa_i: int) -> None:
    """CB and the side chain of ``res`` into ``atoms`` (χ angles in degrees)."""
    atoms["CB"] = place_atom(atoms["C"], atoms["N"], atoms["CA"], CA_CB,
                             ANG_N_CA_CB_PRO if res == "PRO" else ANG_N_CA_CB, TORS_C_N_CA_CB)
    for name, _el, (r1, r2, r3), bond, ang, tors in _SC[res]:
        if isinstance(tors, tuple):
            k = int(tors[0][3:]) - 1
            if k >= len(chis):
                raise ValueError(f"chi[{aa_i}] for {res} needs at least {k + 1} angles")
            tors = chis[k] + tors[1]
        atoms[name] = place_atom(atoms[r1], atoms[r2], atoms[r3], bond, ang, tors)


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
