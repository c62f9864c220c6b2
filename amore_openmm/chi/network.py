"""The network ν of χ = ν ∘ f: the paper's "pairnet" and the small MLP for 2-D toys."""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["build_network", "default_network_spec"]


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
    (:mod:`amore_openmm.multichi`) ends in Linear(→k) and a softmax: k memberships that are
    nonnegative and sum to 1.
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
    layers.append(nn.Linear(prev, n_out))
    if n_out > 1:
        layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)
