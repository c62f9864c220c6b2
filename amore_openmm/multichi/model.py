"""k memberships χ = (χ_1..χ_k) on the simplex, their TorchScript export, and the pair view.

:class:`MultiChiModel` is a :class:`~amore_openmm.chi.ChiModel` whose network ends in k outputs
that sum to 1 (spec ``"n_out": k``): ``chi(x)`` is (B, k). The head is affine (k − 1 linear
outputs, the k-th 1 minus their sum), not clamped, like the scalar χ: for k = 2, χ_1 is computed
by the scalar χ's network (same layers, same initialisation for one seed), so k = 2 trains
today's k = 1 χ. Models saved with the earlier softmax head still load.
:func:`pair_model` turns memberships (i, j) into the scalar χ_ij = (χ_i − χ_j + 1)/2 as an
ordinary ChiModel, so the χ-MEP tracer, the χ restraint forces (TorchForce and PythonForce) and
the sensitivities run unchanged on each transition i ↔ j (χ_ij = 1 in state i, 0 in state j).
"""
from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..chi import ChiModel
from ..chi.export import METADATA_FILE, ExportedChi
from ..chi.network import default_network_spec
from ..data import atomic_write_bytes, to_jsonable

__all__ = ["MultiChiModel", "ExportedMultiChi", "PairNetwork", "pair_model", "multichi_spec",
           "memberships"]

FORMAT_KIND = "multichi"


def multichi_spec(featurizer: nn.Module, n_chi: int, network: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The network spec of k memberships: ``network`` (default: the featurizer's default)
    with ``n_out = n_chi`` and the affine head (k − 1 outputs and 1 minus their sum, see
    :func:`~amore_openmm.chi.network.build_network`) unless ``network`` names a head."""
    spec = dict(network) if network is not None else default_network_spec(featurizer)
    spec["n_out"] = int(n_chi)
    spec.setdefault("head", "affine")
    return spec


class MultiChiModel(ChiModel):
    """k memberships χ(x) (rows sum to 1; the ISOKANN targets lie on the simplex Δ^{k−1});
    ``chi`` returns (B, k).

    Build with ``MultiChiModel(featurizer, multichi_spec(featurizer, k), seed=...)``;
    :meth:`load` reads :meth:`save` and :meth:`export_torchscript` files.
    """

    vector_output = True

    @property
    def n_chi(self) -> int:
        return int((self.network_spec or {}).get("n_out", 1))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(features)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MultiChiModel":
        """Load a k-membership model (``save`` or ``export_torchscript`` file); a file with
        one χ is refused (load it with ``ChiModel.load``)."""
        model = super().load(path)
        if model.n_chi < 2:
            raise ValueError(f"{path} holds one χ, not k >= 2 memberships; train them with "
                             "`amore train --n-chi K` (Isokann(n_chi=K)) or load it with "
                             "ChiModel.load")
        return model

    def chi_and_grad(self, positions: Any, batch_size: int = 4096) -> Any:
        raise TypeError("memberships are a vector: take ∇ of one transition with "
                        "multichi.pair_model(model, i, j).chi_and_grad")

    def pair(self, i: int, j: int) -> ChiModel:
        """The transition i ↔ j as a scalar ChiModel (see :func:`pair_model`)."""
        return pair_model(self, i, j)

    def export_torchscript(self, path: str | os.PathLike, training: dict[str, Any] | None = None
                           ) -> Path:
        """TorchScript of the vector χ: (n, 3) nm → (k,), (B, n, 3) → (B, k), float64, with
        ``amore_chi.json`` (``describe()``, ``"kind": "multichi"``)."""
        desc = self.describe()
        desc["kind"] = FORMAT_KIND
        if training is not None:
            desc["metadata"] = dict(desc["metadata"], training=to_jsonable(training))
        buf = io.BytesIO()
        torch.jit.save(self.scripted(), buf, _extra_files={METADATA_FILE: json.dumps(desc)})
        return atomic_write_bytes(Path(path), buf.getvalue())

    def scripted(self) -> torch.jit.ScriptModule:
        return torch.jit.script(ExportedMultiChi(self))

    def __repr__(self) -> str:
        return (f"MultiChiModel(n_chi={self.n_chi}, {self.featurizer_kind}: {self.n_atoms} "
                f"atoms → {self.n_features} features)")


class ExportedMultiChi(ExportedChi):
    """The vector χ in float64: (n, 3) → (k,), (B, n, 3) → (B, k); extra atom rows ignored.
    The layout of :class:`~amore_openmm.chi.ExportedChi` ("model.featurizer",
    "model.network"), so ChiModel.load rebuilds the weights from it; only the output is k-wide."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64)
        if x.dim() == 2:
            return self.model.network(self.model.featurizer(x.unsqueeze(0)))[0]
        if x.dim() == 3:
            return self.model.network(self.model.featurizer(x))
        raise ValueError("exported multichi takes positions of shape (n, 3) or (B, n, 3) in nm")


class PairNetwork(nn.Module):
    """features → χ_ij = (χ_i − χ_j + 1)/2 of a k-membership network (TorchScript-able)."""

    def __init__(self, network: nn.Module, i: int, j: int) -> None:
        super().__init__()
        self.network = network
        self.i, self.j = int(i), int(j)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m = self.network(features)
        return 0.5 * (m[:, self.i] - m[:, self.j] + 1.0)


def pair_model(model: MultiChiModel, i: int, j: int) -> ChiModel:
    """χ_ij = (χ_i − χ_j + 1)/2 ∈ [0, 1] as a ChiModel (a copy of the weights): 1 in state i,
    0 in state j, ½ on the i|j boundary and wherever neither i nor j holds (a third state).

    Its ``export_torchscript``/``scripted`` give the scalar file TorchForce and PythonForce
    load; ``metadata["pair"] = [i, j]``."""
    k = model.n_chi
    if not (0 <= int(i) < k and 0 <= int(j) < k and int(i) != int(j)):
        raise ValueError(f"pair (i, j) = ({i}, {j}) must be two different states of "
                         f"0..{k - 1} (the model has n_chi={k})")
    net = PairNetwork(copy.deepcopy(model.network), i, j)
    meta = dict(copy.deepcopy(model.metadata), pair=[int(i), int(j)], n_chi=k)
    out = ChiModel(copy.deepcopy(model.featurizer), net, metadata=meta)
    return out.to(model.dtype)


def memberships(model: MultiChiModel, positions: Any) -> np.ndarray:
    """χ (B, k) float64 of positions (B, n, 3) nm."""
    return np.asarray(model.chi(positions), dtype=np.float64).reshape(-1, model.n_chi)
