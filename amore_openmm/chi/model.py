"""ChiModel: χ(x) = ν(f(x)), with evaluation, gradients, persistence and export.

Units: positions in nm, ∇χ in nm⁻¹. Atom indices are 0-based.
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import atomic_write_bytes, to_jsonable
from .export import (FORMAT, FORMAT_VERSION, ExportedChi, is_torchscript,
                     read_torchscript_metadata, write_torchscript)
from .factory import featurizer_from_spec
from .network import build_network, default_network_spec

__all__ = ["ChiModel"]


class ChiModel(nn.Module):
    """χ(x) = ν(f(x)): featurizer ``f`` then network ``ν``; positions in nm.

    Args:
        featurizer: a featurizer module (:class:`PairwiseDistances`,
            :class:`SymmetricPairwiseDistances`, :class:`BackboneDihedrals`,
            :class:`Coordinates`).
        network: None for the default (pairnet; the paper's 2→8→8→8→1 net for coordinates),
            a spec dict for :func:`build_network`, or any ``nn.Module`` mapping (B, F) → (B, 1).
        seed: seed of the weight initialisation.
        metadata: free-form information (training summary etc.) saved and exported with χ.

    ``forward`` accepts (n, 3) or (B, n, 3) tensors of any float dtype (cast to the
    parameters' dtype) and returns χ of shape (B,).

    ``optimizer_state`` (None, or {"optimizer": name, "state": state_dict}) is the training
    optimizer's state after the last :meth:`Isokann.fit <amore_openmm.isokann.Isokann.fit>`;
    :meth:`save`/:meth:`load` keep it so a resumed run continues with it (not exported).
    """

    __jit_ignored_attributes__ = ["metadata", "network_spec", "optimizer_state"]
    #: True for models with k > 1 outputs (multichi.MultiChiModel)
    vector_output = False

    def __init__(self, featurizer: nn.Module, network: nn.Module | dict[str, Any] | None = None,
                 seed: int = 0, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.featurizer = featurizer
        if network is None or isinstance(network, dict):
            spec = dict(network) if network is not None else default_network_spec(featurizer)
            spec.setdefault("n_in", featurizer.n_features)
            if int(spec["n_in"]) != featurizer.n_features:
                raise ValueError(f"network spec n_in={spec['n_in']} but the featurizer gives "
                                 f"{featurizer.n_features} features")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                network = build_network(spec)
            self.network_spec: dict[str, Any] | None = spec
        else:
            self.network_spec = None
        self.network = network
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.optimizer_state: dict[str, Any] | None = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return int(self.featurizer.n_atoms)

    @property
    def n_features(self) -> int:
        return int(self.featurizer.n_features)

    @property
    def feature_names(self) -> list[str]:
        return list(getattr(self.featurizer, "feature_names", []))

    @property
    def featurized_atoms(self) -> np.ndarray:
        """0-based indices (sorted) of the atoms whose ∇χ can be non-zero.

        Every atom of the molecule for "pairwise_sym"; the chosen subset for
        "pairwise_polar"/"pairwise_heavy"; the dihedral atoms for "dihedrals". Report other
        atoms as "not featurized" (NaN), never as a sensitivity of 0.
        """
        atoms = getattr(self.featurizer, "featurized_atoms", None)
        if atoms is None:
            return np.arange(self.n_atoms, dtype=np.int64)
        return np.asarray(atoms, dtype=np.int64)

    @property
    def featurizer_kind(self) -> str:
        return str(getattr(self.featurizer, "kind", type(self.featurizer).__name__))

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # -- evaluation ----------------------------------------------------------------------------
    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.featurizer(positions.to(self.dtype)))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """χ (B,) from features (B, F) (the network ν alone)."""
        return self.network(features).reshape(-1)

    def _positions(self, positions: Any) -> np.ndarray:
        x = positions
        try:
            from openmm import unit
            if unit.is_quantity(x):
                x = x.value_in_unit(unit.nanometer)
        except ImportError:  # pragma: no cover
            pass
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            if x.shape[0] != self.n_atoms:
                raise ValueError(f"a 2-D positions array is one structure and must have "
                                 f"n_atoms={self.n_atoms} rows, got shape {x.shape}; pass "
                                 f"several structures as (B, {self.n_atoms}, 3)")
            x = x[None]
        if x.ndim != 3 or x.shape[2] != 3 or x.shape[1] < self.n_atoms:
            raise ValueError(f"positions must be (B, n_atoms, 3) or (n_atoms, 3) in nm with "
                             f"n_atoms >= {self.n_atoms}; got shape {x.shape}")
        return x

    def chi(self, positions: Any, batch_size: int = 8192) -> np.ndarray:
        """χ of (B, n, 3) or (n, 3) positions (nm; array or Quantity) as float64 array (B,)."""
        x = self._positions(positions)
        out = []
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                xb = torch.as_tensor(x[s:s + batch_size], dtype=self.dtype, device=self.device)
                out.append(self(xb).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def grad(self, positions: Any, batch_size: int = 4096) -> np.ndarray:
        """∇χ (nm⁻¹) at (B, n, 3) or (n, 3) positions, as float64 array (B, n, 3)."""
        return self.chi_and_grad(positions, batch_size)[1]

    def chi_and_grad(self, positions: Any, batch_size: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(χ (B,), ∇χ (B, n, 3)) in one autograd pass."""
        x = self._positions(positions)
        chis, grads = [], []
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[s:s + batch_size], dtype=self.dtype,
                                 device=self.device).requires_grad_(True)
            with torch.enable_grad():
                c = self(xb)
                (g,) = torch.autograd.grad(c.sum(), xb)
            chis.append(c.detach().double().cpu().numpy())
            grads.append(g.double().cpu().numpy())
        return np.concatenate(chis), np.concatenate(grads)

    # -- persistence ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (stored with saved and exported models)."""
        return {
            "format": FORMAT, "version": FORMAT_VERSION,
            "n_atoms": self.n_atoms, "n_features": self.n_features,
            "featurizer": self.featurizer_kind,
            "featurizer_spec": self.featurizer.spec() if hasattr(self.featurizer, "spec") else None,
            "feature_names": self.feature_names,
            "featurized_atoms": self.featurized_atoms.tolist(),
            "network_spec": self.network_spec,
            "metadata": to_jsonable(self.metadata),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Save weights, specs and the optimizer state (``torch.save``, atomic); :meth:`load`
        reads it back."""
        payload = {"describe": self.describe(),
                   "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                   "dtype": str(self.dtype).replace("torch.", ""),
                   "optimizer_state": self.optimizer_state}
        if self.network_spec is None:
            payload["network_module"] = copy.deepcopy(self.network).cpu()
        buf = io.BytesIO()
        torch.save(payload, buf)
        return atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChiModel":
        """Load a model written by :meth:`save` or :meth:`export_torchscript`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"χ model file {path} does not exist")
        if is_torchscript(path):
            return cls._from_torchscript(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            # a custom (non-spec) network is pickled as a module; only load files you trust
            payload = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(payload, dict) or "describe" not in payload:
            raise ValueError(f"{path} is not a χ model saved by ChiModel.save")
        desc = payload["describe"]
        model = cls._build(desc, payload["state_dict"], payload.get("network_module"),
                           getattr(torch, payload.get("dtype", "float32")), str(path))
        model.optimizer_state = payload.get("optimizer_state")
        return model

    @classmethod
    def _build(cls, desc: dict[str, Any], state: dict[str, torch.Tensor],
               network_module: nn.Module | None, dtype: torch.dtype, where: str) -> "ChiModel":
        if desc.get("format") != FORMAT:
            raise ValueError(f"{where} is not an amore χ model (format {desc.get('format')!r})")
        if desc.get("featurizer_spec") is None:
            raise ValueError(f"{where}: the featurizer is not serialisable; rebuild the model")
        n_out = int((desc.get("network_spec") or {}).get("n_out", 1))
        if n_out != 1 and not cls.vector_output:
            raise ValueError(f"{where} holds {n_out} memberships (n_chi={n_out}); load it with "
                             "amore_openmm.multichi.MultiChiModel.load, or pick one transition "
                             "with multichi.pair_model")
        feat = featurizer_from_spec(desc["featurizer_spec"])
        net = network_module if network_module is not None else desc["network_spec"]
        if net is None:
            raise ValueError(f"{where} has no network spec or module")
        model = cls(feat, net, metadata=desc.get("metadata") or {})
        model.load_state_dict(state)
        return model.to(dtype)

    @classmethod
    def _from_torchscript(cls, path: Path) -> "ChiModel":
        meta = read_torchscript_metadata(path)
        if meta.get("network_spec") is None:
            raise ValueError(f"{path}: χ exported with a custom network cannot be turned back "
                             "into a ChiModel; load it with torch.jit.load instead")
        scripted = torch.jit.load(str(path), map_location="cpu")
        state = {k[len("model."):]: v for k, v in scripted.state_dict().items()
                 if k.startswith("model.")}
        return cls._build(meta, state, None, torch.float32, str(path))

    def export_torchscript(self, path: str | os.PathLike, training: dict[str, Any] | None = None
                           ) -> Path:
        """Write the TorchScript file OpenMM loads (``openmmtorch.TorchForce(path)``).

        The scripted module (:class:`~amore_openmm.chi.export.ExportedChi`) computes in
        float64 from float32 or float64 positions: (n, 3) nm → χ as a 0-dim tensor, (B, n, 3)
        → χ of shape (B,). Its extra file ``amore_chi.json`` holds :meth:`describe` (atom
        count, featurizer, feature names, featurized atoms, network spec) and the training
        summary (``training`` replaces ``metadata["training"]`` when given).
        """
        desc = self.describe()
        if training is not None:
            desc["metadata"] = dict(desc["metadata"], training=to_jsonable(training))
        return write_torchscript(self, path, desc)

    def scripted(self) -> torch.jit.ScriptModule:
        """The exported TorchScript module in memory (what :meth:`export_torchscript` saves)."""
        return torch.jit.script(ExportedChi(self))

    def __repr__(self) -> str:
        return (f"ChiModel({self.featurizer_kind}: {self.n_atoms} atoms → {self.n_features} "
                f"features, network {self.network_spec or type(self.network).__name__})")
