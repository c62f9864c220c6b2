"""The network ν of χ = ν ∘ f: the paper's "pairnet" and the small MLP for 2-D toys."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["build_network", "default_network_spec", "SimplexPlane", "MEMBERSHIP_HEADS"]

#: output layers of k > 1 memberships: "affine" (k − 1 linear outputs, the k-th is 1 minus
#: their sum: unclamped like the scalar χ, and for k = 2 exactly the scalar χ's network) and
#: "softmax" (k logits; the head of models saved before the affine one, still loadable)
MEMBERSHIP_HEADS = ("affine", "softmax")


def default_network_spec(featurizer: nn.Module) -> dict[str, Any]:
    """pairnet for distances/dihedrals; the paper's 2→8→8→8→1 net for raw coordinates."""
    n = int(featurizer.n_features)
    if getattr(featurizer, "kind", "") == "coordinates":
        # LayerNorm over two raw coordinates would map every point to (±1) and destroy the
        # information
        return {"kind": "mlp", "n_in": n, "hidden": [8, 8, 8], "layernorm": False}
    return {"kind": "pairnet", "n_in": n,
            "hidden": [max(1, round(n ** (2 / 3))), max(1, round(n ** (1 / 3)))],
            "layernorm": True}


def build_network(spec: dict[str, Any]) -> nn.Sequential:
    """A sigmoid MLP from a spec {"n_in", "hidden": [...], "layernorm": bool}.

    "pairnet" (the default for distances/dihedrals) is LayerNorm(n) → Linear(n→n^(2/3))
    sigmoid → Linear(→n^(1/3)) sigmoid → Linear(→1); χ is not clamped. ``"n_out": k > 1``
    (:mod:`amore_openmm.multichi`) gives k memberships that sum to 1, by ``"head"``: "affine"
    ends in Linear(→k−1) and :class:`SimplexPlane`; "softmax" (the default of specs without a
    head, as saved before "affine") in Linear(→k) and a softmax.
    """
    n_in, hidden = int(spec["n_in"]), [int(h) for h in spec["hidden"]]
    layers: list[nn.Module] = []
    if spec.get("layernorm", False):
        layers.append(nn.LayerNorm(n_in))
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.Sigmoid()]
        prev = h
    n_out = int(spec.get("n_out", 1))
    head = spec.get("head", "softmax") if n_out > 1 else None
    if head not in (None,) + MEMBERSHIP_HEADS:
        raise ValueError(f"network spec head={head!r}: use one of {MEMBERSHIP_HEADS}")
    # the same shapes in the same order as k = 1 up to the last layer, so one seed gives one
    # initialisation of the hidden layers for every k
    layers.append(nn.Linear(prev, n_out - 1 if head == "affine" else n_out))
    if head == "affine":
        layers.append(SimplexPlane())
    elif head == "softmax":
        layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


class SimplexPlane(nn.Module):
    """(B, k−1) → (B, k): appends 1 − Σ, so rows sum to 1 (the simplex's affine plane)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, 1.0 - z.sum(dim=-1, keepdim=True)], dim=-1)
