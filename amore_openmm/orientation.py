"""Orienting χ: :func:`orient` (χ ↦ 1 − χ when χ is near 1 at the reference structures),
re-exported by :mod:`amore_openmm.isokann`."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from .chi import ChiModel

__all__ = ["orient"]


def _flip_momentum(model: ChiModel) -> None:
    """After w ← −w, b ← 1 − b of the last layer, the loss gradient with respect to w and b
    changes sign (hidden layers are unchanged): negate their first-moment/momentum buffers in
    ``model.optimizer_state`` so continued training does not start against its momentum."""
    saved = model.optimizer_state
    if not saved:
        return
    n_params = len(list(model.network.parameters()))
    for i, st in saved["state"].get("state", {}).items():
        if int(i) >= n_params - 2:
            for key in ("exp_avg", "momentum_buffer"):
                if st.get(key) is not None:
                    st[key] = -st[key]


class _Flip(nn.Module):
    """χ ↦ 1 − χ for networks whose last layer is not Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def orient(model: ChiModel, reference_positions: Any, target: float = 0.0) -> ChiModel:
    """A copy of ``model`` whose χ at ``reference_positions`` is near ``target`` (0 or 1).

    χ's orientation is arbitrary after training. If the mean χ over the reference structures
    ((n, 3) or (B, n, 3) nm) lies on the other side of 0.5, χ is replaced by 1 − χ by negating
    the last linear layer (w ← −w, b ← 1 − b), so the result is still a plain network; the
    saved optimizer state (``optimizer_state``) is flipped to match.
    """
    if target not in (0.0, 1.0, 0, 1):
        raise ValueError(f"target must be 0 or 1, got {target}")
    out = copy.deepcopy(model)
    mean = float(np.mean(out.chi(reference_positions)))
    flip = (mean > 0.5) if float(target) == 0.0 else (mean < 0.5)
    if flip:
        last = out.network[-1] if isinstance(out.network, nn.Sequential) else None
        with torch.no_grad():
            if isinstance(last, nn.Linear):
                last.weight.neg_()
                last.bias.copy_(1.0 - last.bias)
                _flip_momentum(out)
            else:
                out.network = nn.Sequential(out.network, _Flip())
                out.network_spec = None
    out.metadata["orientation"] = {"flipped": bool(flip), "target": float(target),
                                   "reference_chi_before": mean,
                                   "reference_chi": float(np.mean(out.chi(reference_positions)))}
    return out
