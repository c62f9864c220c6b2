"""What biased windows give the adaptive loop: stratified starts and reweighted sensitivities."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import (MEMORY_BUDGET_ENV, MemoryBudgetError, atomic_path,
                    memory_budget_bytes)
from .mbar import SEGMENTS, ChiFreeEnergy
from .umbrella import UmbrellaSamples

__all__ = ["stratified_starts", "reweighted_sensitivity", "window_sensitivity",
           "write_window_sensitivities"]


def _samples_of(obj: Any) -> UmbrellaSamples:
    if isinstance(obj, ChiFreeEnergy):
        if obj.samples is None:
            raise ValueError("samples_or_fes: this ChiFreeEnergy has no samples attached; "
                             "load it with ChiFreeEnergy.load(path, samples=...)")
        return obj.samples
    if isinstance(obj, UmbrellaSamples):
        return obj
    raise ValueError(f"samples_or_fes must be UmbrellaSamples or a ChiFreeEnergy, got "
                     f"{type(obj).__name__}")


def stratified_starts(samples_or_fes: Any, n: int, rng: Any = None, bins: int | None = None,
                      chi_range: tuple[float, float] = (0.0, 1.0),
                      return_indices: bool = False) -> Any:
    """``n`` start structures (n, atoms, 3) nm drawn uniformly in χ from biased frames.

    χ over ``chi_range`` is cut into ``bins`` equal bins (default min(n, 20)); every
    populated bin gets the same number of starts (the remainder goes to randomly chosen
    bins), drawn without replacement within a bin while it has enough frames. Bursts from
    these starts run plain (unbiased) MD, so the Koopman data stay unbiased; only the start
    density is flat in χ. ``rng``: a numpy Generator or seed.
    """
    s = _samples_of(samples_or_fes)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(rng)
    nb = int(bins) if bins is not None else min(n, 20)
    lo, hi = float(chi_range[0]), float(chi_range[1])
    if nb < 1 or not hi > lo:
        raise ValueError(f"bins must be >= 1 and chi_range (low, high) with high > low; got "
                         f"{bins}, {chi_range}")
    inside = np.flatnonzero((s.chi >= lo) & (s.chi <= hi))
    if len(inside) == 0:
        raise ValueError(f"no frame has χ in chi_range {chi_range}")
    idx = np.clip(((s.chi[inside] - lo) / (hi - lo) * nb).astype(int), 0, nb - 1)
    members = [inside[idx == b] for b in range(nb)]
    full = [b for b in range(nb) if len(members[b])]
    per = np.full(len(full), n // len(full))
    per[rng.choice(len(full), n % len(full), replace=False)] += 1
    pick = [rng.choice(members[b], c, replace=c > len(members[b]))
            for b, c in zip(full, per) if c]
    chosen = rng.permutation(np.concatenate(pick))
    x = s.positions[chosen]
    return (x, chosen) if return_indices else x


def reweighted_sensitivity(fes: ChiFreeEnergy, model: Any, segments: int = SEGMENTS,
                           **kwargs: Any) -> tuple[Any, float]:
    """Ensemble ⟨‖∇ᵢχ‖²⟩ of the unbiased Boltzmann ensemble from the biased frames:
    :func:`~amore_openmm.sensitivity.chi_sensitivity` with the MBAR weights.

    Its error is the larger of two:

    * a block bootstrap within windows with MBAR re-solved per resample
      (:func:`~amore_openmm.biased.mbar.bootstrap_weights`), so the error of the window free
      energies is in it; ``block`` defaults to the larger statistical inefficiency of χ and
      of ‖∇χ‖² (inside a window χ is held and the gradient can decorrelate slower);
    * a batch-means error over ``segments`` consecutive time segments of every window, MBAR
      solved on each (:func:`~amore_openmm.biased.mbar.segment_weights`; 0: none), which
      also sees windows still drifting and modes slower than any block
      (``Sensitivity.segment_per_atom`` keeps the segments' values).

    ``gradients``: (χ, ∇χ) of the frames when the caller has them (:func:`chi_gradients`).

    Returns (Sensitivity, Kish effective sample size of the weights)."""
    from ..sensitivity import chi_gradients, chi_sensitivity
    from .mbar import bootstrap_weights, segment_weights, statistical_inefficiency
    s = _samples_of(fes)
    n_boot = int(kwargs.pop("bootstrap", 200))
    seed = int(kwargs.get("seed", 0))
    gradients = kwargs.pop("gradients", None)
    if gradients is None:
        gradients = chi_gradients(model, s.positions, kwargs.get("batch_size", 4096))
    g2 = np.einsum("bij,bij->bi", gradients[1], gradients[1])
    block = kwargs.pop("block", None)
    if block is None:
        block = max(int(fes.block), int(np.ceil(statistical_inefficiency(s, g2.sum(axis=1)))))
    resample = None
    if n_boot > 1:
        resample = (fes.boot_weights if fes.boot_weights.shape == (n_boot, s.n_samples)
                    and int(block) == int(fes.block)
                    else bootstrap_weights(s, n_boot, int(block), seed, fes.f_k))
    sens = chi_sensitivity(model, s.positions, weights=fes.weights, bootstrap=n_boot,
                           block=int(block), resample_weights=resample,
                           gradients=gradients, **kwargs)
    if int(segments) >= 2 and int(s.counts.min()) >= int(segments):
        w = segment_weights(s, int(segments))
        seg = w @ g2 / w.sum(axis=1, keepdims=True)
        seg[:, ~sens.featurized] = np.nan
        batch_err = seg.std(axis=0, ddof=1) / np.sqrt(len(seg))
        sens.per_atom_err = np.fmax(sens.per_atom_err, batch_err)
        sens.segment_per_atom = seg
    return sens, fes.effective_sample_size


def window_sensitivity(samples: UmbrellaSamples, model: Any, halfwidth: float | None = None,
                       bootstrap: int = 100, block: int = 1, seed: int = 0,
                       gradients: Any = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Level-set averages ⟨‖∇ᵢχ‖²⟩_z from the window at each z: plain means over the
    window's frames with |χ − z| ≤ ``halfwidth`` (default half the window spacing).
    ``gradients``: (χ, ∇χ) of all the frames when the caller has them.

    Returns (z (K,), mean (K, n) nm⁻², bootstrap s.e. (K, n), frames used (K,)); windows with
    fewer than 2 frames in range are NaN.
    """
    from ..sensitivity import chi_sensitivity
    z = samples.z
    if halfwidth is None:
        halfwidth = 0.5 * float(np.min(np.diff(np.sort(z)))) if len(z) > 1 else 0.05
    n_atoms = samples.positions.shape[1]
    if gradients is not None and not (len(gradients[0]) == len(gradients[1])
                                      == samples.n_samples):
        raise ValueError(f"gradients must be (χ, ∇χ) of all {samples.n_samples} frames, got "
                         f"{len(gradients[0])} and {len(gradients[1])}")
    mean = np.full((len(z), n_atoms), np.nan)
    err = np.full((len(z), n_atoms), np.nan)
    used = np.zeros(len(z), dtype=np.int64)
    for k in range(len(z)):
        sel = (samples.window == k) & (np.abs(samples.chi - z[k]) <= halfwidth)
        used[k] = int(sel.sum())
        if used[k] < 2:
            continue
        given = None if gradients is None else (gradients[0][sel], gradients[1][sel])
        sens = chi_sensitivity(model, samples.positions[sel], bins=1, bootstrap=bootstrap,
                               min_count=1, block=block, seed=seed + k, gradients=given)
        mean[k], err[k] = sens.per_atom, sens.per_atom_err
    return z.copy(), mean, err, used


def write_window_sensitivities(fes: ChiFreeEnergy, model: Any, out_dir: Any,
                               labels: Any = None, atoms: Any = None, bins: int = 20,
                               bootstrap: int = 100, top_k: int = 5, seed: int = 0
                               ) -> dict[str, Any]:
    """The χ-sensitivities of umbrella windows into ``out_dir``:

    * ``reweighted_atoms.csv`` and ``reweighted_sensitivity.npz``: ⟨‖∇ᵢχ‖²⟩ of the unbiased
      ensemble (:func:`reweighted_sensitivity`, its errors holding the window free energies'
      error and the time segments');
    * ``window_levelsets.csv``: the level-set averages ⟨‖∇ᵢχ‖²⟩_z from the frames of the
      window at each z (:func:`window_sensitivity`): z, atom, mean, error, frames.

    ``labels``: a MolecularSystem, Topology or names; ``atoms``: the atoms listed (e.g. the
    system's selection: no solvent). Returns what ``fes.json`` keeps: the effective sample
    size and the ``top_k`` atoms (index, label, mean, error, top-k frequency)."""
    out = Path(out_dir)
    s = _samples_of(fes)
    # gradients (N, n, 3) once, ‖∇ᵢχ‖² (N, n) twice, the resample weights
    need = 8 * s.n_samples * (5 * s.positions.shape[1] + 2 * int(bootstrap))
    if need > memory_budget_bytes():
        raise MemoryBudgetError(
            f"the χ-sensitivities of {s.n_samples} umbrella frames of {s.positions.shape[1]} "
            f"atoms need ~{need / 1e9:.1f} GB, more than the memory budget "
            f"{memory_budget_bytes() / 1e9:.1f} GB; raise {MEMORY_BUDGET_ENV} or call "
            "reweighted_sensitivity on a subset of the windows' frames")
    if isinstance(model, (str, Path)):          # a χ file: its TorchScript module
        from ..forces import load_chi_module
        model = load_chi_module(model)
    from ..sensitivity import chi_gradients
    gradients = chi_gradients(model, s.positions)
    sens, ess = reweighted_sensitivity(fes, model, bins=bins, bootstrap=bootstrap,
                                       seed=seed, labels=labels, min_count=1,
                                       gradients=gradients)
    sens.save(out / "reweighted_sensitivity.npz")
    sens.write_ranking_csv(out / "reweighted_atoms.csv", k=top_k, atoms=atoms)
    z, mean, err, used = window_sensitivity(s, model, bootstrap=bootstrap, seed=seed,
                                            gradients=gradients)
    del gradients
    listed = range(mean.shape[1]) if atoms is None else np.asarray(atoms, dtype=np.int64)
    with atomic_path(out / "window_levelsets.csv") as tmp, open(tmp, "w") as fh:
        fh.write("z,atom_index_0based,label,mean_grad_sq_nm-2,stderr_nm-2,frames\n")
        for k in np.argsort(z):
            for i in listed:
                if np.isfinite(mean[k, i]):
                    fh.write(f"{z[k]:.6g},{i},{sens.labels[i]},{mean[k, i]:.6g},"
                             f"{err[k, i]:.4g},{used[k]}\n")
    freq = sens.top_frequency(top_k)
    pool = set(range(sens.n_atoms)) if atoms is None else set(int(a) for a in atoms)
    ranked = [int(i) for i in sens.ranking
              if int(i) in pool and np.isfinite(sens.per_atom[i])][:int(top_k)]
    return {"effective_sample_size": float(ess), "top_k": int(top_k),
            "top_atoms": [{"index_0based": i, "label": sens.labels[i],
                           "mean_grad_sq": float(sens.per_atom[i]),
                           "mean_grad_sq_err": float(sens.per_atom_err[i]),
                           "top_k_frequency": float(freq[i])} for i in ranked]}
