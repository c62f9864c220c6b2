"""k-dimensional ISOKANN: power iteration χ ← S(Kχ) with S the inner-simplex transform.

χ (N, k) are memberships (rows sum to 1). Each outer iteration computes Y = Kχ (mean of χ over
the K burst ends of each start; rows sum to 1 because χ's do), finds k vertices of the simplex
spanned by Y's rows on the training starts (the inner simplex algorithm of PCCA+: the row
farthest from the mean, then repeatedly the row farthest from the affine span of those
chosen), and maps them onto the unit vectors: T = Y·A with A = Y[vertices]⁻¹. Rows of T sum
to 1 (A1 = 1); rows outside the simplex are clipped to it (negative entries → 0,
renormalised). T's columns are then matched to Kχ's (Hungarian assignment on their
covariance), so the labels do not swap between iterations, and χ is fitted to T by minibatch
MSE (the mean over rows and columns). For k = 1 this would be the constant;
``Isokann(n_chi=1)`` keeps the scalar ISOKANN.

For k = 2 this is the scalar ISOKANN, not an approximation of it: the two vertices are the
extreme rows of Kχ_1, so T_1 is the min–max shift-scale; χ_2 = 1 − χ_1 makes both columns'
errors equal, so the loss is the scalar loss; the affine head makes χ_1 the scalar network
with the same initialisation, and the minibatch order is the scalar fit's
(:meth:`~amore_openmm.isokann.Isokann.minibatch_generator`). So k = 2 and k = 1 on the same
data and seed give the same χ up to rounding (``tests/test_multichi.py``), and the pair view
χ_01 = (χ_1 − χ_2 + 1)/2 = χ_1 gives k = 1's sensitivities.

Why ISA and not an orthogonalising (SVD) transform: the targets stay memberships on the
simplex at every iteration, and the span of T is the span of Kχ (a subspace iteration towards
the k slowest processes, the constant included).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..chi import make_featurizer
from ..interrupt import check_interrupt
from ..isokann import IsokannError, check_system_matches, training_device
from ..isokann_memory import check_training_memory, chunk_rows, featurize
from ..isokann_validation import BestWeights, validation_split
from .model import MultiChiModel, multichi_spec

__all__ = ["fit_multichi", "isa_vertices", "isa_targets", "check_n_chi"]

#: Y[vertices] with a condition number above this: Kχ spans fewer than k dimensions
MAX_CONDITION = 1e8
#: ``shift_scale="quantile"``: each vertex is the mean of this top fraction of the rows
VERTEX_QUANTILE = 0.01


def check_n_chi(n_chi: Any, n_samples: int | None = None) -> int:
    """``n_chi`` as an int ≥ 1 and ≤ ``n_samples``; else ValueError naming the fix."""
    try:
        k = int(n_chi)
    except (TypeError, ValueError):
        raise ValueError(f"n_chi must be an integer >= 1 (the number of metastable states), "
                         f"got {n_chi!r}") from None
    if k != n_chi or k < 1:
        raise ValueError(f"n_chi must be an integer >= 1 (the number of metastable states), "
                         f"got {n_chi!r}; use n_chi=1 for one χ")
    if n_samples is not None and k > int(n_samples):
        raise IsokannError(f"n_chi={k} exceeds the number of samples ({n_samples} starts): k "
                           "memberships need at least k starts (many more in practice); "
                           "lower n_chi or sample more starts")
    return k


def isa_vertices(y: np.ndarray, quantile: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (k, k), indices (k,)) of the simplex spanned by the rows of ``y`` (N, k): the
    inner simplex algorithm. ``quantile`` > 0: each vertex is the mean of the rows with the
    top ``quantile`` fraction of scores (not the single extreme row, which with few bursts
    per start is mostly noise); the index is the extreme row's."""
    n, k = y.shape
    top = max(1, int(math.ceil(float(quantile) * n)))

    def pick(score: np.ndarray) -> tuple[int, np.ndarray]:
        best = np.argpartition(-score, top - 1)[:top] if top < n else np.arange(n)
        return int(best[np.argmax(score[best])]), best

    first, rows = pick(((y - y.mean(axis=0)) ** 2).sum(axis=1))
    chosen, verts = [first], [y[rows].mean(axis=0)]
    r = y - verts[0]
    for _ in range(k - 1):
        idx, rows = pick((r ** 2).sum(axis=1))
        chosen.append(idx)
        verts.append(y[rows].mean(axis=0))
        d = r[rows].mean(axis=0)
        d = d / math.sqrt(max(float(d @ d), 1e-300))
        r = r - np.outer(r @ d, d)
    return np.stack(verts), np.asarray(chosen, dtype=np.int64)


def isa_targets(y: np.ndarray, fit_rows: np.ndarray, match_to: np.ndarray | None = None,
                quantile: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(T (N, k) on the simplex, vertex indices into ``y``): the ISA transform of Kχ = ``y``
    fitted on ``fit_rows``. With ``match_to`` (N, k; the estimator passes ``y``) T's columns
    are ordered by the assignment of largest summed covariance over ``fit_rows``: T_j grows
    with Kχ_j, the scalar shift-scale's orientation, and labels do not swap between
    iterations. (Raw overlaps would let near-constant columns, as at initialisation, flip.)"""
    a, idx = isa_vertices(y[fit_rows], quantile)
    vert = fit_rows[idx]
    cond = float(np.linalg.cond(a))
    if not math.isfinite(cond) or cond > MAX_CONDITION:
        raise IsokannError(
            f"Kχ spans fewer than n_chi={y.shape[1]} directions over the data (condition "
            f"{cond:.3g}): the network saturated, or the data hold fewer than n_chi slow "
            "processes; lower n_chi, lower lr, or sample more diverse starts")
    t = y @ np.linalg.inv(a)
    t = np.clip(t, 0.0, None)
    t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-12)
    if match_to is not None:
        m, tf = match_to[fit_rows], t[fit_rows]
        cov = (m - m.mean(axis=0)).T @ (tf - tf.mean(axis=0))    # (k, k): column × T column
        rows, cols = linear_sum_assignment(-cov)
        order = cols[np.argsort(rows)]
        t, vert = t[:, order], vert[order]
    return t, vert


@torch.no_grad()
def _net_rows(net: torch.nn.Module, f: torch.Tensor) -> torch.Tensor:
    rows = chunk_rows(f.shape[1], 65536)
    return torch.cat([net(f[s:s + rows]) for s in range(0, len(f), rows)])


def _new_model(est: Any, data: Any, system: Any) -> MultiChiModel:
    check_system_matches(system, data)
    feat = make_featurizer(system, est.featurizer)
    net = est.network if isinstance(est.network, dict) or est.network is None else None
    if est.network is not None and net is None:
        raise ValueError("n_chi > 1 needs network=None or a spec dict (the membership "
                         "output layer is added to it), not a module")
    return MultiChiModel(feat, multichi_spec(feat, est.n_chi, net), seed=est.seed,
                         metadata={"system_name": getattr(system, "name", "")})


def fit_multichi(est: Any, data: Any, model: MultiChiModel | None = None, system: Any = None,
                 iterations: int | None = None) -> MultiChiModel:
    """Train k = ``est.n_chi`` memberships on ``data`` with the settings of the
    :class:`~amore_openmm.isokann.Isokann` ``est``; returns the MultiChiModel (CPU)."""
    k = check_n_chi(est.n_chi, data.n_starts)
    iters = est.iterations if iterations is None else int(iterations)
    if model is None:
        model = _new_model(est, data, system)
    if not isinstance(model, MultiChiModel) or model.n_chi != k:
        raise ValueError(f"model= must be a MultiChiModel with n_chi={k} to continue training, "
                         f"got {model!r}")
    check_training_memory(data.n_starts, data.n_koopman, model.featurizer, model.network,
                          est.minibatch, data.nbytes, est.dtype, est.memory_budget_gb)
    dev = training_device(est.device)
    model.to(device=dev, dtype=est.dtype)
    net = model.network
    opt = est.make_optimizer(model)
    t0 = time.perf_counter()
    n, nk = data.n_starts, data.n_koopman
    fx = featurize(model.featurizer, data.x, est.dtype, dev)
    fy = featurize(model.featurizer, data.y.reshape(n * nk, data.n_selected, 3), est.dtype,
                   dev, data.atoms)
    train, val = validation_split(n, est.validation_fraction, est.seed)
    train_t = torch.as_tensor(train, device=dev)
    mb = min(est.minibatch, len(train))
    steps = (math.ceil(len(train) / mb) if est.steps_per_iteration is None
             else int(est.steps_per_iteration))
    gen = est.minibatch_generator()
    history: list[float] = []
    vert = np.zeros(k, dtype=np.int64)
    quantile = VERTEX_QUANTILE if est.shift_scale == "quantile" else 0.0
    val_t = torch.as_tensor(val, device=dev)
    best = BestWeights(iters, est.restore_best and len(val) > 0)

    def val_loss(t: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((_net_rows(net, fx[val_t]) - t[val_t]) ** 2).mean())

    net.train()
    for it in range(1, iters + 1):
        check_interrupt()
        y = _net_rows(net, fy).reshape(n, nk, k).mean(dim=1).double().cpu().numpy()
        t_np, vert = isa_targets(y, train, y, quantile)
        t = torch.as_tensor(t_np, dtype=est.dtype, device=dev)
        perm = train_t[torch.randperm(len(train), generator=gen).to(dev)]
        total = 0.0
        for s in range(steps):
            lo = (s * mb) % len(train)
            idx = perm[lo:lo + mb]
            loss = torch.mean((net(fx[idx]) - t[idx]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append(total / steps)
        best.check(it, net, lambda: val_loss(t))
    net.eval()
    restored = best.restore(net)
    last_val = val_loss(t) if len(val) and iters else None
    model.to(device="cpu")
    est.loss_history.extend(history)
    summary = {"n_chi": k, "iterations": iters, "n_starts": n, "n_koopman": nk,
               "n_train": len(train), "n_val": len(val), "lag_steps": data.lag_steps,
               "timestep_ps": data.timestep, "lag_time_ps": data.lag_time,
               "optimizer": est.optimizer, "lr": est.lr, "weight_decay": est.weight_decay,
               "minibatch": mb, "steps_per_iteration": steps, "seed": est.seed,
               "device": str(dev), "transform": "isa", "vertex_quantile": quantile,
               "final_loss": history[-1] if history else None, "val_loss": last_val,
               "isa_vertices": [int(v) for v in vert], "wall_s": time.perf_counter() - t0,
               "system_name": data.system_name, **restored}
    model.metadata["training"] = summary
    if data.system_name:
        model.metadata.setdefault("system_name", data.system_name)
    est.model_, est.summary_ = model, summary
    return model
