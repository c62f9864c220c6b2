"""Reference χ and exact F(χ) for 2-D toys (Müller–Brown): a fixed projection χ and
F(χ) = −kT ln ∫ δ(χ(x, y) − s) e^{−V/kT} dx dy by grid integration."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["projection_chi", "sigmoid_chi", "grid_free_energy"]


def projection_chi(a: Sequence[float], b: Sequence[float], n_atoms: int = 1,
                   dims: Sequence[int] = (0, 1)) -> Any:
    """A fixed χ-like model: the projection of the coordinates onto the segment a → b,
    χ = (r − a)·(b − a)/‖b − a‖² (0 at a, 1 at b), as a ChiModel over ``Coordinates``."""
    from ..chi import ChiModel, Coordinates
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b_ - a_
    if a_.shape != (len(dims),) or not d @ d > 0:
        raise ValueError(f"a and b must be two different points with {len(dims)} coordinates")
    lin = nn.Linear(len(dims), 1)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(d / (d @ d))[None])
        lin.bias.fill_(float(-(a_ @ d) / (d @ d)))
    lin.requires_grad_(False)
    return ChiModel(Coordinates(n_atoms, dims=dims), network=nn.Sequential(lin),
                    metadata={"kind": "projection", "a": a_.tolist(), "b": b_.tolist()})


def sigmoid_chi(a: Sequence[float], b: Sequence[float], steepness: float = 12.0,
                n_atoms: int = 1, dims: Sequence[int] = (0, 1)) -> Any:
    """A fixed χ shaped like ISOKANN's — flat in the basins, steep between them:
    σ(steepness·(p − ½)) of the projection p of :func:`projection_chi` (≈ 0 at a, 1 at b)."""
    from ..chi import ChiModel
    if not float(steepness) > 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    proj = projection_chi(a, b, n_atoms, dims)
    lin = proj.network[0]
    with torch.no_grad():
        lin.weight.mul_(float(steepness))
        lin.bias.copy_(float(steepness) * (lin.bias - 0.5))
    return ChiModel(proj.featurizer, network=nn.Sequential(lin, nn.Sigmoid()),
                    metadata={"kind": "sigmoid_projection", "a": list(map(float, a)),
                              "b": list(map(float, b)), "steepness": float(steepness)})


def grid_free_energy(model: Any, energy: Callable[[np.ndarray], np.ndarray], kT: float,
                     edges: np.ndarray, xlim: tuple[float, float] = (-2.0, 1.5),
                     ylim: tuple[float, float] = (-0.8, 2.5), n: int = 800
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Exact (centres, F in kT, min 0) of χ over the bins ``edges`` for one particle in the
    2-D potential ``energy((..., 2) nm) → kJ/mol``: Boltzmann factors on an n × n grid over
    xlim × ylim, histogrammed by χ(x, y). Empty bins: inf."""
    xs, ys = np.linspace(*xlim, n), np.linspace(*ylim, n)
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    e = energy(pts)
    w = np.exp(-(e - e.min()) / kT)
    x = np.zeros((len(pts), 1, 3))
    x[:, 0, :2] = pts
    chi = np.asarray(model.chi(x), dtype=float)
    p, _ = np.histogram(chi, edges, weights=w)
    with np.errstate(divide="ignore"):
        f = -np.log(p / np.diff(edges))
    return 0.5 * (edges[1:] + edges[:-1]), f - f[np.isfinite(f)].min()
