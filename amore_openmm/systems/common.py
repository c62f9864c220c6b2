"""What every module of :mod:`amore_openmm.systems` shares: the error type, kB, units, force fields.

Units inside the package: nm, ps, kJ/mol, K. ``openmm.unit`` quantities are accepted at the
public API edge and stripped here.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import openmm
from openmm import app, unit

__all__ = ["SystemLoadError", "PlatformError", "BOLTZ", "as_positions_nm", "load_forcefield",
           "get_platform", "platform_names"]

#: Boltzmann constant per mole, kJ/mol/K
BOLTZ = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


class SystemLoadError(ValueError):
    """A system could not be loaded; the message names the file or parameter and the fix."""


class PlatformError(ValueError):
    """An OpenMM platform that this installation does not have; the message names the ones it
    has and how to install the missing one."""


#: how to get an OpenMM platform that is not registered here
PLATFORM_INSTALL = {
    "CUDA": "on a machine with an NVIDIA GPU and driver, install the CUDA extra from the "
            "amore_openmm source folder: pip install '.[cuda13]' (CUDA 13 driver; '.[cuda12]' "
            "for CUDA 12), or make venv EXTRAS=cuda13",
    "OpenCL": "install an OpenCL driver for your GPU (the OpenMM wheels include the OpenCL "
              "platform; it registers once an OpenCL runtime is found)",
    "HIP": "install OpenMM's HIP plugin for AMD GPUs (e.g. conda install -c conda-forge "
           "openmm-hip)",
}


def platform_names() -> list[str]:
    """Names of the OpenMM platforms registered in this installation."""
    return [openmm.Platform.getPlatform(i).getName()
            for i in range(openmm.Platform.getNumPlatforms())]


def get_platform(name: str | openmm.Platform) -> openmm.Platform:
    """The OpenMM platform ``name`` (a Platform passes through). Raises :class:`PlatformError`
    naming the platforms that exist here and how to install the missing one."""
    if isinstance(name, openmm.Platform):
        return name
    try:
        return openmm.Platform.getPlatformByName(str(name))
    except Exception:  # noqa: BLE001 - OpenMMException: "There is no registered Platform ..."
        have = platform_names()
        hint = PLATFORM_INSTALL.get(str(name), "check the spelling (names are case-sensitive)")
        # the plugin's own load error says what is missing (e.g. "libOpenCL.so.1: cannot
        # open shared object file"); quote the first line that names this platform's library
        lib = f"libOpenMM{name}.so"
        why = next((f.split(": ", 1)[-1] for f in openmm.Platform.getPluginLoadFailures()
                    if lib in f), None)
        found = f"its plugin did not load ({why}); " if why else ""
        raise PlatformError(f"OpenMM platform {name!r} is not available here (this "
                            f"installation has {', '.join(have)}); {found}{hint}; or choose "
                            "one of those (`amore info` lists them with their speed)") from None


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
