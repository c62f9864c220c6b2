"""Stage 0 — systems: load what a user has into an OpenMM ``System`` plus dynamics settings.

``load_system`` accepts a bundled system name, a folder with a ``system.toml`` manifest, a PDB
plus force-field XML names, an Amber prmtop plus inpcrd, or an OpenMM System XML plus a PDB.
Everything downstream (bursts, χ, paths) works on the :class:`MolecularSystem` it returns;
its ``selection`` names the molecule of interest (default: not water, not ions).

Modules: ``common`` (errors, units, force fields), ``molecular`` (MolecularSystem),
``selection`` (atom selections, whole molecules in periodic boxes), ``muller_brown`` (the toy),
``manifest`` (system.toml), ``loader`` (load_system), ``geometry`` (dihedrals), ``nerf``
(sequence → heavy atoms), ``builder`` (hydrogens, minimisation, files), ``bundled`` (the
bundled systems, rebuilt by ``systems/build.py``).

Units inside: nm, ps, kJ/mol, K; atom indices 0-based.
"""
from .builder import (BuiltPeptide, add_hydrogens, build_peptide, create_system,
                      minimize_structure, write_amber, write_pdb)
from .bundled import (ALANINE_PHI_PSI, BUNDLED_BUILDERS, VGVAPG_CONFORMATIONS,
                      BundledConformation, build_bundled_systems, build_solvated_alanine)
from .common import (BOLTZ, PlatformError, SystemLoadError, as_positions_nm, get_platform,
                     load_forcefield, platform_names)
from .geometry import backbone_dihedral_atoms, backbone_dihedrals, dihedral_angles
from .loader import bundled_systems, load_system, manifest_run_table, systems_root
from .manifest import MANIFEST_SCHEMA, read_manifest, read_toml, toml_text
from .molecular import INTEGRATORS, MolecularSystem
from .muller_brown import (MULLER_BROWN, muller_brown_energy, muller_brown_expression,
                           muller_brown_system)
from .nerf import (ONE_TO_THREE, SUPPORTED_RESIDUES, build_heavy_atoms, parse_sequence,
                   place_atom)
from .selection import (ION_RESIDUES, WATER_RESIDUES, default_selection, make_whole,
                        molecules, periodic_box, select_atoms)

__all__ = [
    # loading
    "MolecularSystem", "SystemLoadError", "load_system", "bundled_systems", "systems_root",
    "manifest_run_table",
    "read_manifest", "read_toml", "toml_text", "MANIFEST_SCHEMA", "INTEGRATORS",
    "as_positions_nm", "load_forcefield", "BOLTZ",
    # OpenMM platforms
    "get_platform", "platform_names", "PlatformError",
    # the molecule of interest
    "default_selection", "select_atoms", "make_whole", "molecules", "periodic_box",
    "WATER_RESIDUES",
    "ION_RESIDUES",
    # Müller–Brown
    "muller_brown_system", "muller_brown_energy", "muller_brown_expression", "MULLER_BROWN",
    # geometry
    "dihedral_angles", "backbone_dihedrals", "backbone_dihedral_atoms",
    # building from sequence
    "parse_sequence", "place_atom", "build_heavy_atoms", "add_hydrogens", "create_system",
    "minimize_structure", "build_peptide", "BuiltPeptide", "write_pdb", "write_amber",
    "ONE_TO_THREE", "SUPPORTED_RESIDUES",
    # the bundled systems
    "build_bundled_systems", "build_solvated_alanine", "BUNDLED_BUILDERS", "BundledConformation",
    "VGVAPG_CONFORMATIONS", "ALANINE_PHI_PSI",
]
