"""Transition channels: clustering χ-minimum-energy paths by where they cross.

Many χ-MEPs traced from distinct transition states often follow a few distinct routes
("channels", paper Fig. 3). A path is described by its angular coordinates (e.g. the
backbone dihedrals, in radians) sampled at fixed χ levels, embedded as (cos, sin) so that
distances respect periodicity. Paths are clustered by average linkage on those descriptors;
the number of channels is the k in 2..max_channels with the highest silhouette score among
the splits whose channels differ somewhere by at least ``min_separation`` (0.5 rad RMS over
the angles, at the χ level where they differ most: closer routes are one route with thermal
width), and a single channel when no such split reaches ``min_silhouette`` (0.25). Channels are ranked by the stationary
density around them: the weighted fraction of ensemble samples within a kernel of the
channel's nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MIN_SILHOUETTE = 0.25
MIN_SEPARATION = 0.5  # rad
DEFAULT_LEVELS = np.linspace(0.1, 0.9, 17)


@dataclass
class Channel:
    """One transition channel.

    Attributes:
        members: indices of the paths in the channel.
        share: fraction of all clustered paths in it.
        representative: the member path closest to the channel's mean descriptor.
        density: weighted fraction of ensemble samples near the channel's nodes (ranks channels).
        centroid: (n_levels, d) mean angles (radians) of the channel at each χ level.
    """

    members: list[int]
    share: float
    representative: int
    density: float
    centroid: np.ndarray = field(repr=False)


def _embed(angles: np.ndarray) -> np.ndarray:
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1)


def path_descriptor(chi: np.ndarray, angles: np.ndarray,
                    levels: np.ndarray = DEFAULT_LEVELS) -> np.ndarray | None:
    """(n_levels, 2d) cos/sin of a path's angles interpolated at fixed χ levels.

    ``chi`` (M,) and ``angles`` (M, d) are the path's nodes. Interpolation is done on the
    (cos, sin) embedding, so a path that crosses ±π is not torn apart. Returns None when the
    path does not span the levels (it cannot be compared with the others).
    """
    chi = np.asarray(chi, dtype=float)
    emb = _embed(np.asarray(angles, dtype=float).reshape(len(chi), -1))
    order = np.argsort(chi)
    chi, emb = chi[order], emb[order]
    if len(chi) < 2 or chi[0] > levels[0] or chi[-1] < levels[-1]:
        return None
    return np.stack([np.interp(levels, chi, emb[:, j]) for j in range(emb.shape[1])], axis=1)


def _silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    ks = np.unique(labels)
    if len(ks) < 2:
        return -1.0
    s = np.zeros(len(labels))
    for i in range(len(labels)):
        own = labels == labels[i]
        if own.sum() == 1:
            continue  # singleton: silhouette 0 by convention
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == k].mean() for k in ks if k != labels[i])
        s[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(s.mean())


def _separation(desc: np.ndarray, labels: np.ndarray) -> float:
    """Smallest, over channel pairs, of the largest RMS chord distance between their mean
    descriptors over the χ levels (≈ radians for small angles)."""
    d = desc.shape[2] // 2
    means = [desc[labels == k].mean(axis=0) for k in np.unique(labels)]
    return min(float(np.sqrt(((a - b) ** 2).sum(axis=1) / d).max())
               for i, a in enumerate(means) for b in means[i + 1:])


def cluster_descriptors(desc: np.ndarray, max_channels: int = 8,
                        min_silhouette: float = MIN_SILHOUETTE,
                        min_separation: float = MIN_SEPARATION) -> tuple[np.ndarray, float]:
    """Labels (P,) and the silhouette of the chosen split for descriptors (P, ...)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    flat = desc.reshape(len(desc), -1)
    if len(flat) < 3:
        return np.zeros(len(flat), dtype=int), -1.0
    condensed = pdist(flat) / np.sqrt(desc.shape[1])  # RMS over levels
    dist = squareform(condensed)
    tree = linkage(condensed, method="average")
    best, best_score = np.zeros(len(flat), dtype=int), -1.0
    for k in range(2, min(max_channels, len(flat) - 1) + 1):
        labels = fcluster(tree, k, criterion="maxclust") - 1
        score = _silhouette(dist, labels)
        if score > best_score and _separation(desc, labels) >= min_separation:
            best, best_score = labels, score
    if best_score < min_silhouette:
        return np.zeros(len(flat), dtype=int), best_score
    return best, best_score


def channel_density(nodes: np.ndarray, ensemble: np.ndarray, weights: np.ndarray | None,
                    width: float = 0.5) -> float:
    """Weighted fraction of ensemble samples within ``width`` (radians, RMS over angles) of
    any node. ``nodes`` (M, d) and ``ensemble`` (N, d) are angles."""
    ens = _embed(ensemble)
    w = np.ones(len(ens)) if weights is None else np.asarray(weights, dtype=float)
    if w.sum() <= 0:
        return float("nan")
    near = np.zeros(len(ens), dtype=bool)
    d = ensemble.shape[1]
    # chord distance on the embedding ≈ angle difference for small differences
    for node in _embed(nodes):
        near |= np.sqrt(((ens - node) ** 2).sum(axis=1) / d) < width
    return float(w[near].sum() / w.sum())


def find_channels(chis: Sequence[np.ndarray], angles: Sequence[np.ndarray],
                  ensemble_angles: np.ndarray, weights: np.ndarray | None = None, *,
                  levels: np.ndarray = DEFAULT_LEVELS, max_channels: int = 8,
                  min_silhouette: float = MIN_SILHOUETTE,
                  min_separation: float = MIN_SEPARATION, width: float = 0.5
                  ) -> tuple[list[Channel], dict]:
    """Cluster paths into channels, ranked by the stationary density around them.

    ``chis[p]`` (M_p,) and ``angles[p]`` (M_p, d) are the nodes of path p (certified nodes
    only: the caller filters). Paths that do not span ``levels`` are left out and listed in
    the returned info under "skipped".
    """
    if len(chis) != len(angles):
        raise ValueError(f"find_channels: {len(chis)} χ arrays but {len(angles)} angle arrays")
    descs, kept, skipped = [], [], []
    for p, (c, a) in enumerate(zip(chis, angles)):
        dsc = path_descriptor(c, a, levels)
        (kept if dsc is not None else skipped).append(p)
        if dsc is not None:
            descs.append(dsc)
    info = {"skipped": skipped, "silhouette": None, "criterion":
            (f"average linkage; k maximises the silhouette among splits separated by "
             f"≥ {min_separation} rad; one channel below silhouette {min_silhouette}")}
    if not descs:
        return [], info
    desc = np.stack(descs)
    labels, score = cluster_descriptors(desc, max_channels, min_silhouette, min_separation)
    info["silhouette"] = score
    channels = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        mean = desc[idx].mean(axis=0)
        rep = idx[np.argmin(((desc[idx] - mean) ** 2).sum(axis=(1, 2)))]
        d = desc.shape[2] // 2
        centroid = np.arctan2(mean[:, d:], mean[:, :d])
        nodes = np.concatenate([np.asarray(angles[kept[i]]).reshape(len(chis[kept[i]]), -1)
                                for i in idx])
        channels.append(Channel(members=[kept[i] for i in idx], share=len(idx) / len(kept),
                                representative=kept[rep],
                                density=channel_density(nodes, ensemble_angles, weights, width),
                                centroid=centroid))
    channels.sort(key=lambda ch: -ch.density)
    return channels, info
