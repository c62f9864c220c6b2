"""Figures of k memberships: the simplex scatter and the rate-matrix heatmap (PNG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["simplex_figure", "rate_figure"]


def _simplex_xy(chi: np.ndarray) -> np.ndarray:
    """Barycentric (N, k) → 2-D: the k vertices on a regular polygon."""
    k = chi.shape[1]
    ang = np.pi / 2 + 2 * np.pi * np.arange(k) / k
    corners = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return chi @ corners, corners


def simplex_figure(path: str | os.PathLike, chi: np.ndarray, at_minima: np.ndarray | None = None
                   ) -> Path:
    """Samples' memberships on the simplex (k vertices of a polygon), state minima marked."""
    from matplotlib.figure import Figure
    chi = np.asarray(chi, dtype=float)
    xy, corners = _simplex_xy(chi)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(111)
    ax.fill(corners[:, 0], corners[:, 1], fill=False, lw=1, color="k")
    ax.scatter(xy[:, 0], xy[:, 1], s=3, c=np.argmax(chi, axis=1), cmap="tab10", alpha=0.5,
               vmin=0, vmax=9)
    for i, c in enumerate(corners):
        ax.annotate(f"χ{i + 1}", c * 1.08, ha="center", va="center")
    if at_minima is not None:
        m, _ = _simplex_xy(np.asarray(at_minima, dtype=float))
        ax.scatter(m[:, 0], m[:, 1], marker="*", s=150, c="k", label="state minima")
        ax.legend(loc="lower right")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"memberships of {len(chi)} samples (k = {chi.shape[1]})")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)


def rate_figure(path: str | os.PathLike, rates: dict[str, Any]) -> Path:
    """Heatmap of the rate matrix Q (1/ps) with ± errors; the certificate in the title."""
    from matplotlib.figure import Figure
    q = np.asarray(rates["rates"], dtype=float)
    err = np.asarray(rates["rates_err"], dtype=float)
    k = len(q)
    fig = Figure(figsize=(1.6 * k + 2, 1.4 * k + 1.5))
    ax = fig.add_subplot(111)
    lim = max(np.abs(q).max(), 1e-12)
    im = ax.imshow(q, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{q[i, j]:.3g}\n±{err[i, j]:.2g}", ha="center", va="center",
                    fontsize=8)
    ax.set_xticks(range(k), [f"→{j + 1}" for j in range(k)])
    ax.set_yticks(range(k), [f"{i + 1}" for i in range(k)])
    ax.set_title(f"rates Q (1/ps), τ = {rates['lag_time_ps']:.3g} ps, "
                 f"{'valid' if rates['valid'] else 'INVALID'}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)
