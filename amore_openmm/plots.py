"""Figures (PNG, matplotlib without a display): landscapes with paths, Ramachandran plots,
level-set sensitivity heatmaps and atom rankings.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot state, so it is safe
from threads and needs no display), writes the PNG atomically and returns its path.
Atom indices in labels are 0-based (OpenMM order), as everywhere in amore_openmm.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import atomic_path

__all__ = ["plot_muller_brown", "plot_ramachandran", "plot_levelset_heatmap",
           "plot_atom_ranking", "plot_path_profile", "plot_channels_phi_psi"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _xy(p: Any) -> np.ndarray:
    """(M, 2) x–y coordinates from a ChiPath/StringPath/(M,1,3)/(M,3)/(M,2) array."""
    arr = np.asarray(getattr(p, "positions", getattr(p, "images", p)), dtype=float)
    if arr.ndim == 3:
        arr = arr[:, 0, :]
    if arr.ndim == 1:
        arr = arr[None]
    return arr[:, :2]


def plot_muller_brown(path: str | os.PathLike, *, model: Any = None,
                      samples: np.ndarray | None = None, string: Any = None,
                      chi_paths: Sequence[Any] = (), starts: np.ndarray | None = None,
                      arrows: int = 300, xlim: tuple[float, float] = (-1.6, 1.2),
                      ylim: tuple[float, float] = (-0.4, 2.0), e_max: float = 100.0,
                      seed: int = 0, title: str = "Müller–Brown: string MEP and χ-MEPs"
                      ) -> Path:
    """Energy landscape with the string MEP, χ-MEPs, start states and ∇χ arrows (paper Fig. 1).

    Args:
        path: PNG file to write.
        model: χ model; with ``samples`` draws ∇χ arrows (unit length, coloured by χ) on up
            to ``arrows`` randomly chosen samples.
        samples: (N, 1, 3) or (N, 2) sample positions (drawn as small grey dots).
        string: a StringPath (black curve, saddle marked).
        chi_paths: ChiPaths (blue curves).
        starts: (S, 1, 3) or (S, 2) χ-MEP start states (magenta diamonds).
        e_max: contour levels are clipped at this energy (kJ/mol).
    """
    from .systems import muller_brown_energy
    fig = _figure(7.0, 5.6)
    ax = fig.add_subplot()
    gx, gy = np.meshgrid(np.linspace(*xlim, 300), np.linspace(*ylim, 300))
    e = muller_brown_energy(np.stack([gx, gy], axis=-1))
    levels = np.linspace(e.min(), e_max, 25)
    cs = ax.contourf(gx, gy, np.minimum(e, e_max), levels=levels, cmap="Greys_r", alpha=0.85)
    ax.contour(gx, gy, e, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="energy (kJ/mol)", shrink=0.8)
    if samples is not None:
        s = _xy(samples)
        ax.plot(s[:, 0], s[:, 1], ".", ms=1.0, color="0.55", alpha=0.4, zorder=1)
        if model is not None and arrows:
            from .sensitivity import chi_gradients
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(s), size=min(int(arrows), len(s)), replace=False)
            pos = np.zeros((len(pick), 1, 3))
            pos[:, 0, :2] = s[pick]
            chi, g = chi_gradients(model, pos)
            g = g[:, 0, :2]
            norm = np.linalg.norm(g, axis=1, keepdims=True)
            u = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
            q = ax.quiver(s[pick, 0], s[pick, 1], u[:, 0], u[:, 1], chi, cmap="coolwarm",
                          clim=(0, 1), scale=40, width=0.003, zorder=3)
            fig.colorbar(q, ax=ax, label="χ (arrows: ∇χ direction)", shrink=0.8)
    if string is not None:
        xy = _xy(string)
        ax.plot(xy[:, 0], xy[:, 1], "-", color="k", lw=2.2, label="string MEP", zorder=4)
        k = getattr(string, "saddle_index", None)
        if k is not None:
            ax.plot(*xy[k], "*", ms=14, mfc="gold", mec="k", zorder=6, label="string saddle")
    for j, cp in enumerate(chi_paths):
        xy = _xy(cp)
        ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:blue", lw=1.4, alpha=0.8, zorder=5,
                label="χ-MEP" if j == 0 else None)
    if starts is not None:
        st = _xy(starts)
        ax.plot(st[:, 0], st[:, 1], "D", ms=6, mfc="magenta", mec="k", zorder=7,
                label="χ-MEP starts")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return _save(fig, path)


def phi_psi_quads(topology: Any) -> dict[int, tuple[list[int], list[int]]]:
    """{0-based residue index: (φ atoms C(i-1) N CA C, ψ atoms N CA C N(i+1))} for residues
    that have both."""
    top = getattr(topology, "topology", topology)
    idx = {(a.residue.index, a.name): a.index for a in top.atoms()}
    out = {}
    for r in top.residues():
        i = r.index
        phi = [idx.get((i - 1, "C")), idx.get((i, "N")), idx.get((i, "CA")), idx.get((i, "C"))]
        psi = phi[1:] + [idx.get((i + 1, "N"))]
        if None not in phi and None not in psi:
            out[i] = (phi, psi)
    return out


def _phi_psi(topology: Any, positions: np.ndarray, residue: int | None
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """φ and ψ (degrees) of one residue over frames (N, n, 3) nm."""
    from .systems import dihedral_angles
    quads = phi_psi_quads(topology)
    if not quads:
        raise ValueError("the topology has no backbone φ/ψ pair; a Ramachandran plot needs a "
                         "peptide")
    r = min(quads) if residue is None else residue
    if r not in quads:
        raise ValueError(f"residue index {r} (0-based) has no φ/ψ pair; choose one of "
                         f"{sorted(quads)}")
    top = getattr(topology, "topology", topology)
    name = next(f"{res.name}{res.id}" for res in top.residues() if res.index == r)
    ang = np.degrees(dihedral_angles(np.asarray(positions, dtype=float), np.array(quads[r])))
    ang = ang.reshape(-1, 2)
    return ang[:, 0], ang[:, 1], name


def plot_ramachandran(path: str | os.PathLike, topology: Any, positions: np.ndarray, *,
                      chi: np.ndarray | None = None, chi_paths: Sequence[Any] = (),
                      starts: np.ndarray | None = None, residue: int | None = None,
                      title: str | None = None) -> Path:
    """Ramachandran (φ, ψ) scatter of the data, coloured by χ, with χ-MEP nodes and starts.

    Args:
        topology: OpenMM/mdtraj Topology or MolecularSystem.
        positions: (N, n, 3) nm, the data.
        chi: (N,) χ of the data (colour); grey when None.
        chi_paths: ChiPaths: nodes drawn as connected dots coloured by their χ.
        starts: (S, n, 3) start states (magenta diamonds).
        residue: 0-based residue index for φ/ψ (default: the first with both).
    """
    phi, psi, name = _phi_psi(topology, positions, residue)
    fig = _figure(6.4, 5.4)
    ax = fig.add_subplot()
    if chi is None:
        ax.plot(phi, psi, ".", ms=1.5, color="0.6", alpha=0.5)
    else:
        sc = ax.scatter(phi, psi, c=np.asarray(chi), s=2, cmap="coolwarm", vmin=0, vmax=1,
                        alpha=0.6, linewidths=0)
        fig.colorbar(sc, ax=ax, label="χ")
    for j, cp in enumerate(chi_paths):
        p_phi, p_psi, _ = _phi_psi(topology, cp.positions, residue)
        # break the line where a dihedral wraps around ±180°
        jump = np.abs(np.diff(p_phi)) > 180
        jump |= np.abs(np.diff(p_psi)) > 180
        seg_start = 0
        for k in list(np.flatnonzero(jump) + 1) + [len(p_phi)]:
            ax.plot(p_phi[seg_start:k], p_psi[seg_start:k], "-", color="k", lw=1.0, zorder=4)
            seg_start = k
        ax.scatter(p_phi, p_psi, c=cp.chi, cmap="coolwarm", vmin=0, vmax=1, s=18,
                   edgecolors="k", linewidths=0.4, zorder=5,
                   label="χ-MEP nodes" if j == 0 else None)
    if starts is not None:
        s_phi, s_psi, _ = _phi_psi(topology, starts, residue)
        ax.plot(s_phi, s_psi, "D", ms=6, mfc="magenta", mec="k", zorder=6, label="starts")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-180, 180)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-180, 181, 60))
    ax.set_xlabel("φ (degrees)")
    ax.set_ylabel("ψ (degrees)")
    ax.set_title(title or f"Ramachandran plot, {name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _atom_names(sens: Any) -> list[str]:
    labels = list(getattr(sens, "labels", []) or [f"atom{i}" for i in range(sens.n_atoms)])
    return [f"{i} {lab}" for i, lab in enumerate(labels)]


def plot_levelset_heatmap(path: str | os.PathLike, sensitivity: Any, *,
                          atoms: Sequence[int] | None = None, max_atoms: int = 60,
                          log: bool = False, title: str = "χ-sensitivity ⟨‖∇ᵢχ‖²⟩_z"
                          ) -> Path:
    """Heatmap atoms × χ of the level-set sensitivity; empty bins are shown hatched grey.

    With more than ``max_atoms`` atoms only the ``max_atoms`` most sensitive are shown (in
    index order), unless ``atoms`` selects them (0-based).
    """
    n = sensitivity.n_atoms
    if atoms is None:
        atoms = np.arange(n) if n <= max_atoms else np.sort(sensitivity.ranking[:max_atoms])
    atoms = np.asarray(atoms, dtype=int)
    data = np.asarray(sensitivity.levelset, dtype=float)[atoms]
    if log:
        data = np.log10(np.where(data > 0, data, np.nan))
    names = _atom_names(sensitivity)
    fig = _figure(8.0, max(3.0, 0.16 * len(atoms) + 1.4))
    ax = fig.add_subplot()
    edges = sensitivity.bin_edges
    ax.set_facecolor("0.85")
    ax.fill_between([edges[0], edges[-1]], -0.5, len(atoms) - 0.5, hatch="///",
                    facecolor="0.85", edgecolor="0.6", lw=0)
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", origin="lower",
                   extent=(edges[0], edges[-1], -0.5, len(atoms) - 0.5), cmap="viridis",
                   interpolation="nearest", zorder=2)
    fig.colorbar(im, ax=ax, label=("log₁₀ " if log else "") + "⟨‖∇ᵢχ‖²⟩_z (nm⁻²)")
    ax.set_yticks(range(len(atoms)))
    ax.set_yticklabels([names[i] for i in atoms], fontsize=7)
    ax.set_xlabel("χ (level set z); grey hatched: no samples")
    ax.set_ylabel("atom (0-based index, residue:name)")
    ax.set_title(title)
    return _save(fig, path)


def plot_atom_ranking(path: str | os.PathLike, sensitivity: Any, k: int = 20, *,
                      highlight: Sequence[int] = (),
                      title: str = "Atom ranking ⟨‖∇ᵢχ‖²⟩_ρ") -> Path:
    """Horizontal bar chart of the ``k`` most sensitive atoms (largest on top).

    ``highlight``: 0-based atom indices drawn in a second colour (e.g. atoms named in a paper).
    """
    order = sensitivity.ranking[:k]
    names = _atom_names(sensitivity)
    vals = sensitivity.per_atom[order]
    fig = _figure(6.4, max(2.5, 0.28 * len(order) + 1.2))
    ax = fig.add_subplot()
    hl = set(int(h) for h in highlight)
    colors = ["tab:orange" if int(i) in hl else "tab:blue" for i in order]
    ax.barh(np.arange(len(order))[::-1], vals, color=colors)
    ax.set_yticks(np.arange(len(order))[::-1])
    ax.set_yticklabels([names[i] for i in order], fontsize=8)
    ax.set_xlabel("⟨‖∇ᵢχ‖²⟩_ρ (nm⁻²)")
    ax.set_title(title)
    return _save(fig, path)


def plot_path_profile(path: str | os.PathLike, chi_paths: Sequence[Any], *,
                      title: str = "χ-MEP energy profile") -> Path:
    """Energy (kJ/mol, relative to each path's minimum) and ‖∇χ‖ against χ along paths."""
    fig = _figure(6.4, 5.0)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for cp in chi_paths:
        ax1.plot(cp.chi, cp.energy - cp.energy.min(), "-", lw=1, alpha=0.8)
        ax2.semilogy(cp.chi, cp.grad_norm, "-", lw=1, alpha=0.8)
    ax1.set_ylabel("E − min E (kJ/mol)")
    ax2.set_ylabel("‖∇χ‖ (nm⁻¹)")
    ax2.set_xlabel("χ")
    ax1.set_title(title)
    return _save(fig, path)


def plot_channels_phi_psi(path: str | os.PathLike, ensemble: np.ndarray,
                          weights: np.ndarray | None, channels: Sequence[Sequence[np.ndarray]],
                          shares: Sequence[float] = (), *, residue: str = "",
                          others: Sequence[np.ndarray] = (), bins: int = 72) -> Path:
    """Transition channels in one residue's (φ, ψ) plane: the weighted equilibrium density
    of ``ensemble`` (N, 2) radians as a grey histogram (log scale), and each channel's paths
    (lists of (M, 2) radians) as coloured nodes joined by lines, labelled with its share;
    ``others``: paths in no channel (too short to compare), drawn in black."""
    from matplotlib.colors import LogNorm
    deg = np.degrees(np.asarray(ensemble, dtype=float).reshape(-1, 2))
    fig = _figure(6.4, 5.4)
    ax = fig.add_subplot()
    edges = np.linspace(-180, 180, bins + 1)
    h, _, _ = np.histogram2d(deg[:, 0], deg[:, 1], bins=[edges, edges], weights=weights)
    if h.sum() > 0:
        h = np.where(h > 0, h / h.sum(), np.nan)
        ax.pcolormesh(edges, edges, h.T, cmap="Greys", norm=LogNorm(), alpha=0.8)
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:cyan",
               "tab:olive", "tab:brown"]
    groups = [(colours[c % len(colours)], f"channel {c + 1}"
               + (f" ({shares[c]:.0%})" if c < len(shares) else ""), m)
              for c, m in enumerate(channels)]
    if len(others):
        groups.append(("k", "paths in no channel", others))
    for col, label, members in groups:
        for j, a in enumerate(members):
            a = np.degrees(np.asarray(a, dtype=float).reshape(-1, 2))
            if not len(a):
                continue
            jump = np.flatnonzero(np.any(np.abs(np.diff(a, axis=0)) > 180, axis=1)) + 1
            for seg in np.split(a, jump):
                ax.plot(seg[:, 0], seg[:, 1], "-", color=col, lw=1.0, zorder=4)
            ax.plot(a[:, 0], a[:, 1], "o", ms=3, color=col, zorder=5,
                    label=label if j == 0 else None)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-180, 180)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-180, 181, 60))
    ax.set_xlabel(f"φ {residue} (degrees)")
    ax.set_ylabel(f"ψ {residue} (degrees)")
    ax.set_title(f"Transition channels in the (φ, ψ) plane of {residue}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
