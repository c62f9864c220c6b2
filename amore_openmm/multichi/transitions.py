"""Per transition i ↔ j of k memberships: states, χ-MEPs, sensitivities, channels, files.

Each pair (i, j) becomes the scalar χ_ij = (χ_i − χ_j + 1)/2 (:func:`~.model.pair_model`), and
the existing machinery runs on it unchanged: transition states (χ_ij in the window, among the
samples where i and j together dominate, χ_i + χ_j ≥ ``dominance``, lowest energy first),
the certified χ-MEP tracer, the χ-sensitivities and (for molecules with backbone dihedrals)
the channel clustering. For a pair with no such sample (two states that never meet, e.g.
joined only through a third) the window's lowest-energy samples are used: χ_ij = ½ also
holds in the third state, so the level-set minimisation starts there and the path runs
i ← third → j, which is the string method's path between i and j.
"""
from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from openmm import unit

from ..data import write_json
from ..settings import MEPSettings
from .model import MultiChiModel, memberships, pair_model
from .rates import rate_matrix

__all__ = ["state_minima", "pair_starts", "trace_pair", "transitions", "transition_segment"]

KJ = unit.kilojoule_per_mole


def state_minima(model: MultiChiModel, system: Any, positions: np.ndarray,
                 platform: str = "Reference") -> tuple[np.ndarray, np.ndarray]:
    """(minima (k, n, 3), their memberships (k, k)): for each state the sample of largest
    membership, energy-minimised by OpenMM."""
    import openmm
    chi = memberships(model, positions)
    ctx = system.make_context(platform)
    out = []
    for i in range(model.n_chi):
        ctx.setPositions(np.asarray(positions[int(np.argmax(chi[:, i]))], dtype=np.float64))
        openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 2000)
        out.append(ctx.getState(getPositions=True).getPositions(asNumpy=True)
                   .value_in_unit(unit.nanometer))
    minima = np.asarray(out)
    return minima, memberships(model, minima)


def _energies(system: Any, x: np.ndarray, platform: str) -> np.ndarray:
    ctx = system.make_context(platform)
    e = np.empty(len(x))
    for n, xi in enumerate(x):
        ctx.setPositions(np.asarray(xi, dtype=np.float64))
        e[n] = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    return e


def pair_starts(model: MultiChiModel, system: Any, positions: np.ndarray, i: int, j: int,
                n: int = 1, window: float = 0.02, dominance: float = 0.5,
                platform: str = "Reference") -> tuple[np.ndarray, str]:
    """(≤ n starts (m, n_atoms, 3), how they were chosen) of the i ↔ j paths: samples with
    |χ_ij − ½| ≤ ``window`` and χ_i + χ_j ≥ ``dominance``, lowest energy first; without
    any, the window's lowest-energy samples ("via a third state"). With no sample in the
    window (a sharp χ: few samples near the boundary) it is doubled until one is, and
    ``how`` names the window used: the tracer then starts off the boundary and walks to it."""
    chi = memberships(model, positions)
    cij = 0.5 * (chi[:, i] - chi[:, j] + 1.0)
    width = float(window)
    while not np.any(np.abs(cij - 0.5) <= width) and width < 0.5:
        width *= 2.0
    near = np.abs(cij - 0.5) <= width
    dom = near & (chi[:, i] + chi[:, j] >= dominance)
    how = "boundary"
    if not dom.any():
        dom, how = near, "via a third state"
    if width > window:
        how += (f" (window widened to ±{width:.3g}: no sample within ±{window:g} of "
                f"χ_{i}{j} = ½)")
    sel = np.flatnonzero(dom)
    e = _energies(system, positions[sel], platform)
    return positions[sel[np.argsort(e, kind="stable")][:int(n)]], how


def trace_pair(model: MultiChiModel, system: Any, positions: np.ndarray, i: int, j: int,
               n_paths: int = 1, step: float = MEPSettings().step, platform: str = "Reference",
               workers: int | None = 1, **kwargs: Any) -> tuple[Any, list[Any], str]:
    """(pair ChiModel, certified χ-MEPs of χ_ij, how the starts were chosen)."""
    from ..mep import trace_chi_meps
    pm = pair_model(model, i, j)
    starts, how = pair_starts(model, system, positions, i, j, n_paths, platform=platform)
    paths = trace_chi_meps(system, pm, starts, pool_size=workers, platform=platform,
                           step=step, **kwargs)
    return pm, paths, how


def transition_segment(path: Any, via_third: bool = False) -> np.ndarray:
    """Indices of the path's transition: the certified nodes joined to the start between the
    lowest node on each side of it (as :meth:`ChiPath.barrier`); nodes beyond a side's
    lowest node climb the far wall of a basin where χ_ij keeps rising. ``via_third`` (a
    path started in a third state, :func:`pair_starts`): all those nodes, since the start
    sits in the intermediate basin and both sides are transitions."""
    idx = np.flatnonzero(np.asarray(path.certified) & path.continuous())
    if idx.size == 0 or via_third:
        return idx
    e = np.asarray(path.energy)
    left, right = idx[idx <= path.start_index], idx[idx >= path.start_index]
    lo = left[np.argmin(e[left])] if left.size else idx[0]
    hi = right[np.argmin(e[right])] if right.size else idx[-1]
    return idx[(idx >= lo) & (idx <= hi)]


def _channels(system: Any, paths: list[Any], ens: np.ndarray) -> dict[str, Any]:
    """Channels of the certified nodes in φ/ψ (molecules with backbone dihedrals only)."""
    from ..channels import find_channels
    from ..chi.featurizers import backbone_quads
    from ..systems.geometry import dihedral_angles
    try:
        quads, names = backbone_quads(system.topology)
    except ValueError:
        quads, names = [], []
    if not len(quads):
        return {"channels": [], "note": "no backbone dihedrals: channels not clustered"}
    quads = np.asarray(quads, dtype=np.int64)
    chis, angs = [], []
    for p in paths:
        c = np.asarray(p.certified, dtype=bool)
        if c.sum() >= 2:
            chis.append(np.asarray(p.chi)[c])
            angs.append(dihedral_angles(np.asarray(p.positions)[c], quads))
    if not chis:
        return {"channels": [], "note": "no path with two certified nodes"}
    chans, info = find_channels(chis, angs, dihedral_angles(ens, quads))
    return {"channels": [{"members": ch.members, "share": ch.share,
                          "representative": ch.representative, "density": ch.density}
                         for ch in chans],
            "silhouette": info.get("silhouette"), "skipped": info.get("skipped", []),
            "dihedrals": list(names)}


def transitions(model: MultiChiModel, data: Any, system: Any, out: str | os.PathLike, *,
                n_paths: int = 1, step: float = MEPSettings().step, platform: str = "Reference",
                workers: int | None = 1, n_boot: int = 200, bins: int = 50,
                top_k: int = 5, figures: bool = True, ensemble: Any = None,
                **trace_kwargs: Any) -> dict[str, Any]:
    """Everything per transition into ``out``: ``rates.json`` (K_c, Q with errors and the
    certificate), ``states.json`` (minima and their memberships), ``pair_I_J/`` (paths.npz,
    path PDBs, atoms.csv, levelset.npz, features.csv, pair.json) per pair, ``summary.json``
    and figures (``simplex.png``, ``rates.png``). Returns the summary.

    ``ensemble``: (N, n, 3) nm, the Boltzmann samples of the per-pair sensitivities,
    channels and the simplex figure (default: every start of ``data``; give the weight > 0
    starts when the data also hold path-node bursts). Minima and path starts come from every
    start of ``data`` (path nodes are where the transition states are)."""
    from ..pipeline.runio import write_path_files
    from ..pipeline.stages import write_sensitivity
    from ..pipeline.state import check_out_dir
    from ..systems import load_system
    if not isinstance(model, MultiChiModel) or model.n_chi < 2:
        raise ValueError("transitions needs a MultiChiModel (trained with n_chi >= 2; "
                         "`amore train --n-chi K`)")
    out = check_out_dir(Path(out))
    out.mkdir(parents=True, exist_ok=True)
    ms = load_system(system)
    x = np.asarray(data.x, dtype=np.float64)   # minima and path starts: every start
    x_ens = x if ensemble is None else np.asarray(ensemble, dtype=np.float64)
    if x_ens.ndim != 3 or len(x_ens) == 0 or x_ens.shape[1:] != x.shape[1:]:
        raise ValueError(f"transitions: ensemble must be (N >= 1, {x.shape[1]}, 3) positions, "
                         f"got shape {x_ens.shape}")
    k = model.n_chi
    rates = rate_matrix(model, data, n_boot=n_boot)
    write_json(out / "rates.json", rates)
    minima, chi_min = state_minima(model, ms, x, platform)
    np.save(out / "state_minima.npy", minima)
    write_json(out / "states.json", {"memberships_at_minima": chi_min,
                                     "argmax": np.argmax(chi_min, axis=1),
                                     "distinct": len(set(np.argmax(chi_min, 1))) == k})
    chi_ens = memberships(model, x_ens)
    pairs: dict[str, Any] = {}
    all_paths: dict[tuple[int, int], list[Any]] = {}
    for i, j in itertools.combinations(range(k), 2):
        pdir = out / f"pair_{i}_{j}"
        pm, paths, how = trace_pair(model, ms, x, i, j, n_paths, step, platform, workers,
                                    **trace_kwargs)
        all_paths[(i, j)] = paths
        write_path_files(pdir, paths, ms.topology, atoms=ms.selection)
        ens = x_ens[chi_ens[:, i] + chi_ens[:, j] >= 0.5]   # the samples this transition describes
        entry: dict[str, Any] = {"pair": [i, j], "starts": how, "n_paths": len(paths),
                                 "certified_nodes": [int(p.n_certified) for p in paths],
                                 "nodes": [len(p) for p in paths],
                                 "barrier_kj_mol": [float(p.barrier()) for p in paths],
                                 "rate_ij_per_ps": float(rates["rates"][i, j]),
                                 "rate_ji_per_ps": float(rates["rates"][j, i]),
                                 "rates_valid": bool(rates["valid"])}
        if len(ens) >= 10:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sens = write_sensitivity(pdir, pm, ms, ens, paths=paths, bins=bins,
                                         top_k=top_k)
            entry["top_atoms"] = sens["top_atoms"]
            entry["path_mse"] = sens["path_mse"]
        else:
            entry["top_atoms"], entry["note"] = [], "fewer than 10 samples: no sensitivity"
        entry["channels"] = _channels(ms, paths, ens if len(ens) else x_ens)
        write_json(pdir / "pair.json", entry)
        pairs[f"{i}-{j}"] = entry
    summary = {"n_chi": k, "n_starts": int(data.n_starts), "rates_valid": rates["valid"],
               "rates_notes": rates["notes"], "timescales_ps": rates["timescales_ps"],
               "pairs": pairs}
    if figures:
        from .figures import rate_figure, simplex_figure
        summary["figures"] = [str(simplex_figure(out / "simplex.png", chi_ens,
                                                 chi_min)),
                              str(rate_figure(out / "rates.png", rates))]
    write_json(out / "summary.json", summary)
    summary["paths"] = all_paths
    summary["minima"] = minima
    summary["rates"] = rates
    return summary
