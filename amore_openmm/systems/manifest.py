"""``system.toml`` manifests: the schema, one TOML reader, and the writer the builder uses.

A manifest has the sections [system] (files, force field, ``atoms`` selection), [dynamics]
(temperature K, friction 1/ps, timestep ps, integrator, lag_steps), [chi] (featurizer) and a
free-form [run] section that the pipeline validates.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .common import SystemLoadError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MANIFEST_SCHEMA", "read_toml", "read_manifest", "toml_text"]

#: manifest schema: section -> key -> allowed types
MANIFEST_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "system": {
        "name": (str,), "description": (str,), "kind": (str,),
        "pdb": (str,), "conformations": (list,), "prmtop": (str,), "inpcrd": (str,),
        "system_xml": (str,), "forcefield": (list, str), "implicit_solvent": (str,),
        "nonbonded_method": (str,), "nonbonded_cutoff": (float, int), "constraints": (str,),
        "atoms": (str,),
    },
    "dynamics": {
        "temperature": (float, int), "friction": (float, int), "timestep": (float, int),
        "integrator": (str,), "lag_steps": (int,), "sigma": (float, int),
    },
    "chi": {"featurizer": (str,)},
    "run": {},  # free-form pipeline defaults, validated by the pipeline stage
}


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


def _toml_value(v: Any) -> str:
    """One TOML value (bool, str, number or list of them)."""
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


def toml_text(sections: dict[str, dict[str, Any]], header: Sequence[str] = ()) -> str:
    """TOML text of ``{section: {key: value}}`` with ``# header`` comment lines first
    (deterministic: the same input gives the same bytes)."""
    out = [f"# {h}\n" for h in header]
    for name, content in sections.items():
        out.append(f"\n[{name}]\n")
        out.extend(f"{k} = {_toml_value(v)}\n" for k, v in content.items())
    return "".join(out)
