"""Stage 3b — ISOKANN: learn χ from Koopman pairs; orientation and exit rates.

ISOKANN iterates χ ← S K χ, where Kχ(x) = mean_k χ(y_k) over the K burst end points of start x
and S is the shift-scale map t = (Kχ − min Kχ)/(max Kχ − min Kχ) over the whole data set. Each
outer iteration recomputes the target t with the current network (no gradient through it) and
then fits χ(x) to t by minibatch mean-squared error (one pass over the data by default). The
features of x and y are computed once per fit: they do not change, only the network does.

Fitting again (``Isokann.fit(more_data, model=chi)``) continues from the current weights; the
adaptive loop relies on this.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .chi import ChiModel, make_featurizer
from .data import KoopmanData

__all__ = ["Isokann", "IsokannError", "orient", "exit_rates", "koopman_chi"]

OPTIMIZERS = ("adam", "nesterov")


class IsokannError(ValueError):
    """ISOKANN cannot learn χ from the data given (the message says why and what to do)."""


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def _featurize(featurizer: nn.Module, x: np.ndarray, dtype: torch.dtype, device: torch.device,
               chunk: int = 4096) -> torch.Tensor:
    """Features of (M, n, 3) positions, computed in chunks, as an (M, F) tensor on device."""
    out = []
    for s in range(0, len(x), chunk):
        xb = torch.as_tensor(np.asarray(x[s:s + chunk]), device=device).to(dtype)
        out.append(featurizer(xb))
    return torch.cat(out) if out else torch.zeros((0, featurizer.n_features), dtype=dtype,
                                                    device=device)


class Isokann:
    """The ISOKANN estimator: ``Isokann(...).fit(data) -> ChiModel``.

    Args:
        iterations: outer iterations (each: recompute the target, then ``steps_per_iteration``
            minibatch steps).
        minibatch: minibatch size (clipped to the number of starts).
        optimizer: "adam" or "nesterov" (SGD with Nesterov momentum 0.9).
        lr: learning rate. weight_decay: L2 weight decay (coupled, as in the reference code).
        seed: seeds the weight initialisation (new models) and the minibatch order.
        device: torch device; None uses CUDA when available, else CPU. The returned model is
            always on the CPU.
        steps_per_iteration: minibatch steps per outer iteration; None means one pass over the
            data (ceil(N / minibatch) steps), as in the reference implementation.
        featurizer: featurizer kind for new models (see :func:`~amore_openmm.chi.make_featurizer`);
            None uses the system's default.
        network: network spec or module for new models (None: the default for the featurizer).
        dtype: training precision (float32 is plenty; export is always float64).
        progress: show a tqdm bar.

    After :meth:`fit`: ``model_`` (the ChiModel), ``loss_history`` (mean minibatch MSE per
    outer iteration, over all fits of this estimator), ``summary_`` (dict of the last fit).
    """

    def __init__(self, iterations: int = 1000, minibatch: int = 1000, optimizer: str = "adam",
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                 device: str | torch.device | None = None,
                 steps_per_iteration: int | None = None, featurizer: str | None = None,
                 network: dict[str, Any] | nn.Module | None = None,
                 dtype: torch.dtype = torch.float32, progress: bool = False) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if int(iterations) < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        if int(minibatch) < 1:
            raise ValueError(f"minibatch must be >= 1, got {minibatch}")
        if steps_per_iteration is not None and int(steps_per_iteration) < 1:
            raise ValueError(f"steps_per_iteration must be >= 1 or None, got "
                             f"{steps_per_iteration}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.iterations = int(iterations)
        self.minibatch = int(minibatch)
        self.optimizer = optimizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.device = device
        self.steps_per_iteration = steps_per_iteration
        self.featurizer = featurizer
        self.network = network
        self.dtype = dtype
        self.progress = progress
        self.loss_history: list[float] = []
        self.model_: ChiModel | None = None
        self.summary_: dict[str, Any] = {}
        self._opt: torch.optim.Optimizer | None = None
        self._opt_model: ChiModel | None = None
        self._fits = 0

    def _make_optimizer(self, model: ChiModel) -> torch.optim.Optimizer:
        params = list(model.network.parameters())
        if self.optimizer == "adam":
            # decoupled decay (AdamW): coupled L2 inside Adam is rescaled by Adam's tiny
            # second-moment estimate near the ISOKANN fixed point and then dominates the
            # O(τ) per-iteration signal; on Müller–Brown it biased χ(saddle) by ~0.15
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True,
                               weight_decay=self.weight_decay)

    def fit(self, data: KoopmanData, model: ChiModel | None = None, system: Any = None,
            iterations: int | None = None) -> ChiModel:
        """Train χ on ``data`` and return the (same, updated) ChiModel.

        Args:
            data: Koopman pairs (x: N×n×3, y: N×K×n×3, nm).
            model: continue training this model (weights are kept, and the optimizer state
                when it is the model this estimator trained last). None builds a new model
                from ``system`` (featurizer per ``self.featurizer`` or the system default).
            system: the MolecularSystem (needed only when ``model`` is None).
            iterations: outer iterations for this call (default ``self.iterations``).

        Raises:
            IsokannError: fewer than two starts, or Kχ constant over the data (no signal).
        """
        iters = self.iterations if iterations is None else int(iterations)
        if not isinstance(data, KoopmanData):
            raise TypeError(f"data must be a KoopmanData, got {type(data).__name__}")
        if data.n_starts < 2:
            raise IsokannError(f"ISOKANN needs at least 2 starts, data has {data.n_starts}; "
                               "sample more bursts")
        if model is None:
            if system is None:
                raise ValueError("Isokann.fit needs model= (to continue training) or system= "
                                 "(to build a new χ model with the system's featurizer)")
            if system.n_atoms != data.n_atoms:
                raise ValueError(f"system {getattr(system, 'name', '')!r} has {system.n_atoms} "
                                 f"atoms but the data have {data.n_atoms}")
            feat = make_featurizer(system, self.featurizer)
            model = ChiModel(feat, self.network, seed=self.seed,
                             metadata={"system_name": getattr(system, "name", "")})
        if data.n_atoms < model.n_atoms:
            raise ValueError(f"the χ model needs {model.n_atoms} atoms but the data have "
                             f"{data.n_atoms}; data and model belong to different systems")

        dev = _device(self.device)
        model.to(device=dev, dtype=self.dtype)
        if self._opt is None or self._opt_model is not model:
            self._opt = self._make_optimizer(model)
            self._opt_model = model
        opt = self._opt
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self._fits)
        self._fits += 1

        t0 = time.perf_counter()
        n, k = data.n_starts, data.n_koopman
        fx = _featurize(model.featurizer, data.x, self.dtype, dev)
        fy = _featurize(model.featurizer, data.y.reshape(n * k, data.n_atoms, 3),
                        self.dtype, dev)
        t_feat = time.perf_counter() - t0
        net = model.network
        mb = min(self.minibatch, n)
        steps = (math.ceil(n / mb) if self.steps_per_iteration is None
                 else int(self.steps_per_iteration))

        def target() -> torch.Tensor:
            with torch.no_grad():
                kchi = net(fy).reshape(n, k).mean(dim=1)
                lo, hi = kchi.min(), kchi.max()
                span = float(hi - lo)
                if not math.isfinite(span):
                    raise IsokannError("Kχ is not finite: the network diverged; lower lr")
                if span <= 1e-6 * max(1.0, abs(float(hi)), abs(float(lo))):
                    raise IsokannError(
                        f"Kχ is constant over the data (range {span:.3g}): the bursts carry no "
                        "signal of a slow process. Typical causes: trajectory too short or "
                        "confined to one basin, identical burst end points, or a lag time far "
                        "longer than the slowest relaxation. Sample longer/more diverse starts.")
                return (kchi - lo) / (hi - lo)

        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=iters, desc="ISOKANN", leave=False)
        history: list[float] = []
        net.train()
        for _ in range(iters):
            t = target()
            perm = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            for s in range(steps):
                lo = (s * mb) % n
                idx = perm[lo:lo + mb]
                pred = net(fx[idx]).reshape(-1)
                loss = torch.mean((pred - t[idx]) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            history.append(total / steps)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.2e}")
        if bar is not None:
            bar.close()
        if iters == 0:
            target()  # still validate the data
        net.eval()
        wall = time.perf_counter() - t0
        model.to(device="cpu")
        self.loss_history.extend(history)
        self.model_ = model
        prev = (model.metadata.get("training") or {})
        self.summary_ = {
            "iterations": iters,
            "iterations_total": int(prev.get("iterations_total", 0)) + iters,
            "fits": int(prev.get("fits", 0)) + 1,
            "n_starts": n, "n_koopman": k,
            "lag_steps": data.lag_steps, "timestep_ps": data.timestep,
            "lag_time_ps": data.lag_time,
            "optimizer": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay,
            "minibatch": mb, "steps_per_iteration": steps, "seed": self.seed,
            "device": str(dev), "dtype": str(self.dtype).replace("torch.", ""),
            "final_loss": history[-1] if history else None,
            "wall_s": wall, "featurize_s": t_feat,
            "samples_per_s": (iters * steps * mb / max(wall - t_feat, 1e-9)) if iters else 0.0,
            "system_name": data.system_name,
        }
        model.metadata["training"] = self.summary_
        if data.system_name:
            model.metadata.setdefault("system_name", data.system_name)
        return model


def koopman_chi(model: ChiModel, data: KoopmanData) -> tuple[np.ndarray, np.ndarray]:
    """(χ(x) (N,), Kχ(x) = mean_k χ(y_k) (N,)) as float64 arrays."""
    chi_x = model.chi(data.x)
    n, k = data.n_starts, data.n_koopman
    chi_y = model.chi(data.y.reshape(n * k, data.n_atoms, 3)).reshape(n, k)
    return chi_x, chi_y.mean(axis=1)


class _Flip(nn.Module):
    """χ ↦ 1 − χ for networks whose last layer is not Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def orient(model: ChiModel, reference_positions: Any, target: float = 0.0) -> ChiModel:
    """A copy of ``model`` whose χ at ``reference_positions`` is near ``target`` (0 or 1).

    χ's orientation is arbitrary after training. If the mean χ over the reference structures
    ((n, 3) or (B, n, 3) nm) lies on the other side of 0.5, χ is replaced by 1 − χ by negating
    the last linear layer (w ← −w, b ← 1 − b), so the result is still a plain network.
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
            else:
                out.network = nn.Sequential(out.network, _Flip())
                out.network_spec = None
    out.metadata["orientation"] = {"flipped": bool(flip), "target": float(target),
                                   "reference_chi_before": mean,
                                   "reference_chi": float(np.mean(out.chi(reference_positions)))}
    return out


def exit_rates(model: ChiModel, data: KoopmanData, lag_time: float | None = None
               ) -> dict[str, Any]:
    """Macroscopic rates from eq. (1) of the paper, Lχ = −ε₁χ + ε₂(1 − χ).

    On span{1, χ} the Koopman operator acts as Kτχ = aχ + b with a = exp(−(ε₁+ε₂)τ) and
    b = ε₂/(ε₁+ε₂)·(1 − a). a and b are fitted by least squares of Kχ(x) against χ(x) over
    the data, giving ε₁ + ε₂ = −ln(a)/τ and ε₂ = b(ε₁+ε₂)/(1 − a).

    Args:
        model: trained χ. data: Koopman pairs. lag_time: τ in ps (default ``data.lag_time``).

    Returns:
        dict with ``epsilon1`` (exit rate of the χ≈1 set, 1/ps), ``epsilon2`` (exit rate of
        the χ≈0 set), ``rate_sum``, ``timescale_ps`` (1/(ε₁+ε₂)), ``a``, ``b``, ``r2`` (fit
        quality), ``population_chi1`` (ε₂/(ε₁+ε₂)), ``lag_time_ps``, ``valid`` and ``note``.
        ``valid`` is False (rates NaN) when a ∉ (0, 1): χ does not decay over τ.
    """
    from openmm import unit

    if lag_time is None:
        tau = float(data.lag_time)
    elif unit.is_quantity(lag_time):
        tau = float(lag_time.value_in_unit(unit.picosecond))
    else:
        tau = float(lag_time)
    if not tau > 0:
        raise ValueError("lag_time must be positive (ps); the data carry no lag time "
                         "(lag_steps·timestep = 0), pass lag_time=")
    chi_x, kchi = koopman_chi(model, data)
    var = float(np.var(chi_x))
    if var <= 0:
        raise IsokannError("χ is constant over the data; exit rates are undefined")
    a = float(np.cov(chi_x, kchi, bias=True)[0, 1] / var)
    b = float(np.mean(kchi) - a * np.mean(chi_x))
    resid = kchi - (a * chi_x + b)
    r2 = float(1.0 - np.var(resid) / max(np.var(kchi), 1e-300))
    out: dict[str, Any] = {"a": a, "b": b, "r2": r2, "lag_time_ps": tau,
                           "n_starts": data.n_starts}
    if 0.0 < a < 1.0:
        rate_sum = -math.log(a) / tau
        eps2 = b * rate_sum / (1.0 - a)
        eps1 = rate_sum - eps2
        out.update(epsilon1=eps1, epsilon2=eps2, rate_sum=rate_sum,
                   timescale_ps=1.0 / rate_sum, population_chi1=eps2 / rate_sum,
                   valid=bool(eps1 > 0 and eps2 > 0), note="")
        if not out["valid"]:
            out["note"] = ("a rate came out negative: χ is not a good membership function for "
                           "these data (train longer or sample both states)")
    else:
        nan = float("nan")
        out.update(epsilon1=nan, epsilon2=nan, rate_sum=nan, timescale_ps=nan,
                   population_chi1=nan, valid=False,
                   note=f"Kχ ≈ aχ + b gave a = {a:.4g} outside (0, 1): χ does not decay over "
                        "the lag time; train longer or use a longer lag")
    return out
