"""Memory side of ISOKANN training: features of selected-atom data and the memory guard.

``KoopmanData.y`` may hold only the molecule of interest (``data.atoms``, e.g. the 22 atoms of
alanine dipeptide in a 1,288-atom water box) while the featurizer indexes atoms of the full
system. :func:`featurize` and :func:`chi_of_ends` place each chunk of such positions into a
full-size buffer (zeros elsewhere: the featurizer never reads those atoms) before featurizing,
so memory grows with the chunk, not with N·K·n_atoms.

:func:`estimate_training_bytes` estimates what training holds at once (features of x and of
every burst end point, the network with gradients and optimizer moments, minibatch
activations, the data) and :func:`check_training_memory` refuses, with
:class:`~amore_openmm.data.MemoryBudgetError` (a ValueError: the command line exits with
code 2), before any large tensor or network is allocated.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .data import MemoryBudgetError, memory_budget_bytes

__all__ = ["featurize", "chi_of_ends", "network_shapes", "estimate_training_bytes",
           "check_training_memory", "chunk_rows"]

#: elements (floats) one featurization chunk may hold, ~64 MB in float32
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(width: int, limit: int = 4096) -> int:
    """Rows per chunk so that a (rows, width) block stays under :data:`CHUNK_ELEMENTS`."""
    return int(max(1, min(limit, CHUNK_ELEMENTS // max(1, int(width)))))


def _check_atoms(featurizer: nn.Module, atoms: np.ndarray) -> None:
    used = np.asarray(getattr(featurizer, "featurized_atoms",
                              np.arange(int(featurizer.n_atoms))), dtype=np.int64)
    missing = np.setdiff1d(used, atoms)
    if missing.size:
        raise ValueError(f"the χ featurizer reads atoms {missing[:8].tolist()}"
                         f"{' ...' if missing.size > 8 else ''} that the data do not hold "
                         f"(data.atoms has {len(atoms)} atoms): sample the data with a "
                         "selection that contains every featurized atom (store_atoms) or "
                         "build χ on the system's selection")


@torch.no_grad()
def featurize(featurizer: nn.Module, x: np.ndarray, dtype: torch.dtype, device: torch.device,
              atoms: np.ndarray | None = None) -> torch.Tensor:
    """Features (M, F) on ``device`` of positions x (M, n, 3) nm, computed in chunks.

    ``atoms``: the 0-based system indices of x's n atoms when x holds a selection only
    (``KoopmanData.y``); each chunk is then placed into a full-size zero buffer of
    ``featurizer.n_atoms`` atoms. Raises ValueError when the featurizer reads an atom that
    ``atoms`` does not hold.
    """
    n_full = int(featurizer.n_atoms)
    if atoms is not None and np.shape(x)[1] == n_full:
        atoms = None                      # full positions: nothing to place
    if atoms is not None:
        atoms = np.asarray(atoms, dtype=np.int64)
        if np.shape(x)[1] != len(atoms):
            raise ValueError(f"positions hold {np.shape(x)[1]} atoms but atoms= names "
                             f"{len(atoms)} (the featurizer expects {n_full})")
        _check_atoms(featurizer, atoms)
        idx = torch.as_tensor(atoms, device=device)
    n_feat = int(featurizer.n_features)
    chunk = chunk_rows(max(3 * n_full, 4 * n_feat))
    out = []
    for s in range(0, len(x), chunk):
        xb = torch.as_tensor(np.asarray(x[s:s + chunk]), device=device).to(dtype)
        if atoms is not None:
            full = torch.zeros((len(xb), n_full, 3), dtype=dtype, device=device)
            full[:, idx] = xb
            xb = full
        out.append(featurizer(xb))
    return torch.cat(out) if out else torch.zeros((0, n_feat), dtype=dtype, device=device)


def chi_of_ends(model: Any, y: np.ndarray, atoms: np.ndarray | None) -> np.ndarray:
    """χ (M,) float64 of burst end points y (M, n_sel, 3) that hold the atoms ``atoms``."""
    with torch.no_grad():
        f = featurize(model.featurizer, y, model.dtype, model.device, atoms)
        out = [model.from_features(f[s:s + 65536]).double().cpu().numpy()
               for s in range(0, len(f), 65536)]
    return np.concatenate(out) if out else np.zeros(0)


def network_shapes(network: Any, n_features: int) -> tuple[int, list[int]]:
    """(number of parameters, widths of the hidden activations) of a network spec dict or
    module, without building it."""
    if isinstance(network, nn.Module):
        widths = [int(m.out_features) for m in network.modules() if isinstance(m, nn.Linear)]
        return sum(int(p.numel()) for p in network.parameters()), widths
    spec = dict(network)
    prev, params, widths = int(spec.get("n_in", n_features)), 0, []
    if spec.get("layernorm", False):
        params += 2 * prev
        widths.append(prev)
    for h in [int(v) for v in spec.get("hidden", [])] + [1]:
        params += prev * h + h
        widths.append(h)
        prev = h
    return params, widths


def estimate_training_bytes(n_starts: int, n_koopman: int, n_features: int, network: Any,
                            minibatch: int, data_bytes: int = 0, dtype_bytes: int = 4,
                            n_atoms: int = 0) -> dict[str, int]:
    """Bytes ISOKANN training holds at once, by part, and their ``"total"``.

    * ``features``: x and every burst end point featurized, N·(K+1)·F·b (b = dtype bytes),
      plus one copy of the training features for the loss records (N·F·b);
    * ``network``: weights, gradients and two optimizer moments (4·P·b; the first layer of
      the default pairnet alone has F·F^(2/3) weights);
    * ``activations``: one minibatch forward and backward (2·mb·(2F + Σ widths)·b) and one
      chunk of the target/featurization passes;
    * ``data``: the KoopmanData coordinates (``data_bytes``).
    """
    n_params, widths = network_shapes(network, n_features)
    b = int(dtype_bytes)
    mb = max(1, min(int(minibatch), int(n_starts)))
    rows = chunk_rows(max(3 * int(n_atoms), 4 * int(n_features)))
    parts = {
        "features": (int(n_starts) * (int(n_koopman) + 2)) * int(n_features) * b,
        "network": 4 * n_params * b,
        "activations": 2 * mb * (2 * int(n_features) + sum(widths)) * b
        + rows * (3 * int(n_atoms) + 4 * int(n_features) + sum(widths)) * b,
        "data": int(data_bytes),
    }
    parts["total"] = sum(parts.values())
    parts["n_params"] = int(n_params)
    return parts


def check_training_memory(n_starts: int, n_koopman: int, featurizer: nn.Module, network: Any,
                          minibatch: int, data_bytes: int = 0, dtype: torch.dtype = torch.float32,
                          budget_gb: float | None = None, where: str = "ISOKANN training"
                          ) -> dict[str, int]:
    """Raise :class:`~amore_openmm.data.MemoryBudgetError` when training would need more
    than the memory budget (:func:`~amore_openmm.data.memory_budget_bytes`: ``budget_gb``,
    else ``$AMORE_MEMORY_BUDGET_GB``, else 4 GB); return the estimate otherwise.

    ``network``: the network module, or the spec dict it will be built from (checked before
    it is built: the first layer of a pairnet over 280,000 features holds ~10⁹ weights).
    """
    n_feat = int(featurizer.n_features)
    b = torch.finfo(dtype).bits // 8
    est = estimate_training_bytes(n_starts, n_koopman, n_feat, network, minibatch, data_bytes,
                                  b, int(getattr(featurizer, "n_atoms", 0)))
    budget = memory_budget_bytes(budget_gb)
    if est["total"] <= budget:
        return est
    kind = getattr(featurizer, "kind", type(featurizer).__name__)
    n_used = len(getattr(featurizer, "featurized_atoms", []))
    gb = {k: v / 1e9 for k, v in est.items()}
    raise MemoryBudgetError(
        f"{where} would need ≈ {gb['total']:.3g} GB, over the memory budget of "
        f"{budget / 1e9:.3g} GB ($AMORE_MEMORY_BUDGET_GB): featurizer {kind!r} gives "
        f"{n_feat:,} features from {n_used:,} atoms; features of {n_starts:,} starts × "
        f"({n_koopman} bursts + 1) = {gb['features']:.3g} GB, network of "
        f"{est['n_params']:,} weights with gradients and optimizer state = "
        f"{gb['network']:.3g} GB, activations {gb['activations']:.3g} GB, data "
        f"{gb['data']:.3g} GB. Featurize fewer atoms: select the molecule of interest "
        "(--atoms 'not water', or atoms = \"...\" in system.toml) or choose a smaller "
        "featurizer (--featurizer pairwise_heavy or dihedrals); or use fewer starts, or "
        "raise the budget (AMORE_MEMORY_BUDGET_GB)")
