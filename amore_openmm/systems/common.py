"""What every module of :mod:`amore_openmm.systems` shares: the error type, kB, units, force fields.

Units inside the package: nm, ps, kJ/mol, K. ``openmm.unit`` quantities are accepted at the
public API edge and stripped here.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import openmm
from openmm import app, unit

__all__ = ["SystemLoadError", "BOLTZ", "as_positions_nm", "load_forcefield"]

#: Boltzmann constant per mole, kJ/mol/K
BOLTZ = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


class SystemLoadError(ValueError):
    """A system could not be loaded; the message names the file or parameter and the fix."""


def strip_units(value: Any, target: unit.Unit) -> Any:
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


def load_forcefield(files: Iterable[str], where: str = "forcefield") -> app.ForceField:
    """``app.ForceField(*files)``; a missing or broken file raises :class:`SystemLoadError`
    naming ``where`` (the manifest, file or parameter that asked for it) and the fix."""
    files = list(files)
    try:
        return app.ForceField(*files)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise SystemLoadError(
            f"{where}: force field file(s) {files} could not be loaded ({exc}); use files "
            "shipped with OpenMM such as 'amber14-all.xml', 'implicit/obc2.xml', "
            "'amber14/tip3p.xml', 'charmm36.xml', or a path to your own XML") from exc
