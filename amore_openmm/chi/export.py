"""The TorchScript file OpenMM loads: positions (nm) → χ, with its metadata.

``ChiModel.export_torchscript(path)`` writes a scripted :class:`ExportedChi`; its extra file
``amore_chi.json`` (:data:`METADATA_FILE`) holds the model's ``describe()`` dictionary (atom
count, featurizer spec, feature names, featurized atoms, network spec, training summary).
"""
from __future__ import annotations

import copy
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..data import atomic_write_bytes

__all__ = ["ExportedChi", "METADATA_FILE", "FORMAT", "FORMAT_VERSION",
           "read_torchscript_metadata", "write_torchscript", "is_torchscript"]

#: name of the JSON entry in the TorchScript file's extra files
METADATA_FILE = "amore_chi.json"
FORMAT = "amore_chi"
FORMAT_VERSION = 1


class ChiParts(Protocol):
    """What export needs of a χ model (a :class:`~amore_openmm.chi.ChiModel`, an
    ``nn.Module``): its featurizer and network modules and its atom count; typed structurally
    so that this module does not import the model's (no import cycle)."""

    featurizer: nn.Module
    network: nn.Module
    n_atoms: int

    def parameters(self) -> Any: ...


class ExportedChi(nn.Module):
    """χ in float64 for OpenMM and for batches; input float32 or float64, any device.

    * positions (n, 3) nm → χ as a 0-dim tensor (what ``openmmtorch.TorchForce`` needs);
    * positions (B, n, 3) nm → χ of every structure, shape (B,).

    Other shapes raise. Extra rows (atoms beyond those the featurizer uses) are ignored, so χ
    trained on a solute can run inside a System that holds more particles.
    """

    def __init__(self, model: ChiParts) -> None:
        super().__init__()
        inner = copy.deepcopy(model).cpu().double()
        # OpenMM differentiates with respect to positions only
        for p in inner.parameters():
            p.requires_grad_(False)
        self.model = nn.Module()
        self.model.featurizer = inner.featurizer
        self.model.network = inner.network
        self.n_atoms = int(model.n_atoms)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)
        if x.dim() == 2:
            return self.model.network(self.model.featurizer(x.unsqueeze(0))).reshape(())
        if x.dim() == 3:
            return self.model.network(self.model.featurizer(x)).reshape(-1)
        raise ValueError("exported chi takes positions of shape (n, 3) or (B, n, 3) in nm")


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (as opposed to a ``torch.save`` file)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def write_torchscript(model: ChiParts, path: str | os.PathLike, desc: dict[str, Any]
                      ) -> Path:
    """Script ``model`` as :class:`ExportedChi` and write it (atomically) with ``desc``."""
    scripted = torch.jit.script(ExportedChi(model))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={METADATA_FILE: json.dumps(desc)})
    return atomic_write_bytes(Path(path), buf.getvalue())


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``amore_chi.json`` metadata of an exported χ file (atom count, features, training)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"χ TorchScript file {path} does not exist")
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    raw = extra[METADATA_FILE]
    if not raw:
        raise ValueError(f"{path} is TorchScript but has no {METADATA_FILE}: it was not "
                         "written by ChiModel.export_torchscript")
    return json.loads(raw)
