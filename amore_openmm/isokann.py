"""Stage 3b — ISOKANN: learn χ from Koopman pairs; orientation and exit rates.

ISOKANN iterates χ ← S K χ, where Kχ(x) = mean_k χ(y_k) over the K burst end points of start x
and S is the shift-scale map t = (Kχ − lo)/(hi − lo): ``shift_scale="minmax"`` (default) takes
lo, hi = min, max of Kχ over the training starts, ``"quantile"`` the q and 1 − q quantiles
(robust when K = 1 makes the extremes noise; targets outside [0, 1] are clipped to it). Each
outer iteration recomputes the target t with the current network (no gradient through it) and
then fits χ(x) to t by minibatch mean-squared error (one pass over the training starts by
default). The features of x and y are computed once per fit: only the network changes.

A seeded fraction of the starts (``validation_fraction``, default 0.1) is held out: the
validation loss is the same MSE against the same target on those starts, reported with the
train loss in ``model.metadata["training"]``; ``restore_best`` ends a fit with the network of
its lowest validation loss (:mod:`amore_openmm.isokann_validation`).

Fitting again (``Isokann.fit(more_data, model=chi)``) continues from the current weights and
the optimizer's state (kept on the estimator and in ``model.optimizer_state``, which
``ChiModel.save``/``load`` carry); the adaptive loop relies on this.
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
from .chi.network import default_network_spec
from .data import KoopmanData
from .interrupt import check_interrupt, stop_requested
from .isokann_memory import check_training_memory, chi_of_ends, chunk_rows, featurize
from .isokann_validation import BestWeights, validation_split
from .orientation import orient
from .settings import TrainingSettings, merge_settings

__all__ = ["Isokann", "IsokannError", "orient", "exit_rates", "koopman_chi", "koopman_targets",
           "validation_split", "lag_time_ps",
           "check_system_matches", "training_device"]

OPTIMIZERS = TrainingSettings.OPTIMIZERS
SHIFT_SCALES = TrainingSettings.SHIFT_SCALES
#: number of train/validation loss records per fit (every 10 % of the iterations)
LOSS_RECORDS = 10


class IsokannError(ValueError):
    """ISOKANN cannot learn χ from the data given (the message says why and what to do)."""


def training_device(device: str | torch.device | None) -> torch.device:
    """The torch device to train on: ``device``, else CUDA when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_system_matches(system: Any, data: KoopmanData) -> None:
    """A new model needs the system (its featurizer), and the system must be the data's."""
    if system is None:
        raise ValueError("Isokann.fit needs model= (to continue training) or system= "
                         "(to build a new χ model with the system's featurizer)")
    if system.n_atoms != data.n_atoms:
        raise ValueError(f"system {getattr(system, 'name', '')!r} has {system.n_atoms} "
                         f"atoms but the data have {data.n_atoms}")


def _shift_scale(kchi: torch.Tensor, mode: str, q: float) -> tuple[float, float]:
    """(lo, hi) of the shift-scale from Kχ of the training starts."""
    if mode == "quantile":
        qs = torch.quantile(kchi.double(), torch.tensor([q, 1.0 - q], dtype=torch.float64,
                                                        device=kchi.device))
        return float(qs[0]), float(qs[1])
    return float(kchi.min()), float(kchi.max())


def _targets(net: nn.Module, fy: torch.Tensor, n: int, k: int, train: torch.Tensor,
             mode: str, q: float) -> torch.Tensor:
    """ISOKANN targets t = S(Kχ) for all n starts, S fitted on the training starts."""
    with torch.no_grad():
        rows = chunk_rows(fy.shape[1], 65536)
        kchi = torch.cat([net(fy[s:s + rows]).reshape(-1) for s in range(0, len(fy), rows)]
                         ).reshape(n, k).mean(dim=1)
        lo, hi = _shift_scale(kchi[train], mode, q)
        span = hi - lo
        if not math.isfinite(span):
            raise IsokannError("Kχ is not finite: the network diverged; lower lr")
        if span <= 1e-6 * max(1.0, abs(hi), abs(lo)):
            raise IsokannError(
                f"Kχ is constant over the data (range {span:.3g}): either the network "
                "saturated onto a constant (a learning rate too large for the feature "
                "count: try a smaller lr) or the bursts carry no signal of a slow process "
                "(trajectory too short or confined to one basin, identical burst end "
                "points, or a lag time far longer than the slowest relaxation: sample "
                "longer or more diverse starts).")
        # minmax: exact on the training starts; quantile and held-out starts: clipped
        return ((kchi - lo) / span).clamp(0.0, 1.0)


@torch.no_grad()
def _mse(net: nn.Module, f: torch.Tensor, t: torch.Tensor, chunk: int = 65536) -> float:
    """Mean squared error of net(f) against t, in chunks (nan for no rows)."""
    if len(f) == 0:
        return float("nan")
    total = 0.0
    chunk = chunk_rows(f.shape[1], chunk)
    for s in range(0, len(f), chunk):
        total += float(((net(f[s:s + chunk]).reshape(-1) - t[s:s + chunk]) ** 2).sum())
    return total / len(f)


def _cpu(obj: Any) -> Any:
    """A deep copy of an optimizer state dict with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _state_matches(state: dict[str, Any], params: list[torch.Tensor]) -> bool:
    """True when a saved optimizer state belongs to parameters of these shapes."""
    groups = state.get("param_groups") or []
    if sum(len(g.get("params", [])) for g in groups) != len(params):
        return False
    for i, st in (state.get("state") or {}).items():
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            buf = st.get(key) if isinstance(st, dict) else None
            if buf is not None and (int(i) >= len(params) or
                                    tuple(buf.shape) != tuple(params[int(i)].shape)):
                return False
    return True


class Isokann:
    """The ISOKANN estimator: ``Isokann(...).fit(data) -> ChiModel``.

    The training knobs (iterations, minibatch, optimizer, lr, weight_decay,
    steps_per_iteration, featurizer, network, validation_fraction, shift_scale,
    shift_quantile, memory_budget_gb, n_chi, restore_best) are a
    :class:`~amore_openmm.settings.TrainingSettings` (``settings``, default
    ``TrainingSettings()``: the defaults and what each means live there); a keyword of the
    same name overrides its field, an unknown keyword is an
    :class:`~amore_openmm.settings.UnknownSettingError`. They are also attributes of the
    estimator (``est.iterations``, ``est.lr``, ...). "adam" is AdamW (decoupled weight
    decay), "nesterov" SGD with Nesterov momentum 0.9 and coupled L2 weight decay, as in the
    reference code; ``steps_per_iteration=None`` is one pass over the training starts;
    ``n_chi`` > 1 trains k memberships (:mod:`amore_openmm.multichi`, ``fit`` returns a
    :class:`~amore_openmm.multichi.MultiChiModel`); ``memory_budget_gb``: see
    :mod:`amore_openmm.isokann_memory`.

    Args:
        seed: seeds the weight initialisation (new models), the validation split and the
            minibatch order.
        device: torch device; None uses CUDA when available, else CPU. The returned model is
            always on the CPU.
        dtype: training precision (float32 is plenty; export is always float64).
        progress: show progress (a tqdm bar on a terminal, a few lines otherwise).

    After :meth:`fit`: ``model_`` (the ChiModel), ``loss_history`` (mean minibatch MSE per
    outer iteration, over all fits of this estimator), ``records_`` (train/validation loss
    records of all fits), ``summary_`` (dict of the last fit, also in
    ``model.metadata["training"]``).
    """

    def __init__(self, settings: TrainingSettings | None = None, *, seed: int = 0,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 progress: bool = False, **overrides: Any) -> None:
        st = merge_settings(TrainingSettings, settings, overrides, "Isokann").check()
        from .multichi.estimator import check_n_chi
        self.n_chi = check_n_chi(st.n_chi)
        self.settings = st
        self.iterations, self.minibatch = int(st.iterations), int(st.minibatch)
        self.optimizer, self.lr = st.optimizer, float(st.lr)
        self.weight_decay = float(st.weight_decay)
        self.seed, self.device, self.dtype, self.progress = int(seed), device, dtype, progress
        self.steps_per_iteration = st.steps_per_iteration
        self.featurizer, self.network = st.featurizer, st.network
        self.validation_fraction = float(st.validation_fraction)
        self.shift_scale, self.shift_quantile = st.shift_scale, float(st.shift_quantile)
        self.memory_budget_gb = st.memory_budget_gb
        self.restore_best = bool(st.restore_best)
        self.loss_history: list[float] = []
        self.records_: list[dict[str, Any]] = []
        self.model_: ChiModel | None = None
        self.summary_: dict[str, Any] = {}
        self._opt: torch.optim.Optimizer | None = None
        self._opt_model: ChiModel | None = None
        self._fits = 0

    def minibatch_generator(self) -> torch.Generator:
        """The generator of the next fit's minibatch order: from ``seed`` and the number of
        fits this estimator has made (k = 1 and k > 1 alike), so a fit repeats bit for bit."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self._fits)
        self._fits += 1
        return gen

    def make_optimizer(self, model: ChiModel) -> torch.optim.Optimizer:
        """A new optimizer of this estimator's settings over ``model``'s network."""
        params = list(model.network.parameters())
        if self.optimizer == "adam":
            # decoupled decay (AdamW): coupled L2 inside Adam is rescaled by Adam's tiny
            # second-moment estimate near the ISOKANN fixed point and then dominates the
            # O(τ) per-iteration signal; on Müller–Brown it biased χ(saddle) by ~0.15
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9, nesterov=True,
                               weight_decay=self.weight_decay)

    def _optimizer_for(self, model: ChiModel) -> tuple[torch.optim.Optimizer, str]:
        """The optimizer for ``model`` and where its state came from: "estimator" (the model
        this estimator trained last), "model" (``model.optimizer_state``, e.g. after
        ``ChiModel.load``) or "new"."""
        if self._opt is not None and self._opt_model is model:
            return self._opt, "estimator"
        opt, source = self.make_optimizer(model), "new"
        saved = model.optimizer_state
        if saved and saved.get("optimizer") == self.optimizer and \
                _state_matches(saved["state"], list(model.network.parameters())):
            opt.load_state_dict(saved["state"])
            for group in opt.param_groups:       # this estimator's settings win
                group["lr"], group["weight_decay"] = self.lr, self.weight_decay
            source = "model"
        self._opt, self._opt_model = opt, model
        return opt, source

    def _new_model(self, data: KoopmanData, system: Any) -> ChiModel:
        check_system_matches(system, data)
        feat = make_featurizer(system, self.featurizer)
        net = self.network if self.network is not None else default_network_spec(feat)
        self._check_memory(data, feat, net)
        return ChiModel(feat, self.network, seed=self.seed,
                        metadata={"system_name": getattr(system, "name", "")})

    def _check_memory(self, data: KoopmanData, featurizer: nn.Module, network: Any) -> None:
        """Refuse (MemoryBudgetError) training that would exceed the memory budget."""
        check_training_memory(data.n_starts, data.n_koopman, featurizer, network,
                              self.minibatch, data.nbytes, self.dtype, self.memory_budget_gb)

    def fit(self, data: KoopmanData, model: ChiModel | None = None, system: Any = None,
            iterations: int | None = None, initial_target: Any = None,
            initial_iterations: int = 0) -> ChiModel:
        """Train χ on ``data`` and return the (same, updated) ChiModel.

        Args:
            data: Koopman pairs (x: N×n×3, y: N×K×n×3, nm).
            model: continue training this model (weights are kept, and the optimizer state:
                see :meth:`_optimizer_for`). None builds a new model from ``system``
                (featurizer per ``self.featurizer`` or the system default).
            system: the MolecularSystem (needed only when ``model`` is None).
            iterations: outer iterations for this call (default ``self.iterations``).
            initial_target: (N,) values in [0, 1], one per start: for the first
                ``initial_iterations`` outer iterations χ is regressed onto them instead of
                onto the ISOKANN target; the ``iterations`` ISOKANN iterations follow. Use:
                carry another χ (its values over the same starts) into a new feature basis,
                so that the power iteration continues from that χ's process instead of
                starting from random weights.
            initial_iterations: outer iterations of that regression.

        Raises:
            IsokannError: fewer than two starts, or Kχ constant over the data (no signal).
        """
        iters = self.iterations if iterations is None else int(iterations)
        if not isinstance(data, KoopmanData):
            raise TypeError(f"data must be a KoopmanData, got {type(data).__name__}")
        if data.n_starts < 2:
            raise IsokannError(f"ISOKANN needs at least 2 starts, data has {data.n_starts}; "
                               "sample more bursts")
        if self.n_chi > 1 or self.n_chi > data.n_starts:
            # k memberships: the simplex power iteration of amore_openmm.multichi
            from .multichi.estimator import fit_multichi
            return fit_multichi(self, data, model, system, iterations)
        if model is None:
            model = self._new_model(data, system)
        if data.n_atoms < model.n_atoms:
            raise ValueError(f"the χ model needs {model.n_atoms} atoms but the data have "
                             f"{data.n_atoms}; data and model belong to different systems")
        self._check_memory(data, model.featurizer, model.network)
        dev = training_device(self.device)
        model.to(device=dev, dtype=self.dtype)
        opt, source = self._optimizer_for(model)
        t0 = time.perf_counter()
        n, k = data.n_starts, data.n_koopman
        fx = featurize(model.featurizer, data.x, self.dtype, dev)
        fy = featurize(model.featurizer, data.y.reshape(n * k, data.n_selected, 3),
                       self.dtype, dev, data.atoms)
        t_feat = time.perf_counter() - t0
        train, val = validation_split(n, self.validation_fraction, self.seed)
        fixed = None
        if initial_target is not None and initial_iterations > 0:
            fixed = np.asarray(initial_target, dtype=np.float64).reshape(-1)
            if fixed.shape != (n,) or not np.all(np.isfinite(fixed)):
                raise ValueError(f"initial_target must hold {n} finite values (one per start), "
                                 f"got shape {fixed.shape}")
            fixed = torch.as_tensor(fixed.clip(0.0, 1.0), dtype=self.dtype, device=dev)
            iters += int(initial_iterations)
        run = self._train(model.network, opt, fx, fy, (n, k), train, val, iters, dev,
                          fixed, int(initial_iterations) if fixed is not None else 0)
        model.to(device="cpu")
        model.optimizer_state = {"optimizer": self.optimizer, "state": _cpu(opt.state_dict())}
        self.loss_history.extend(run["history"])
        self.model_ = model
        self.summary_ = self._summary(model, data, run, iters, dev, source,
                                      time.perf_counter() - t0, t_feat)
        if fixed is not None:
            self.summary_["initial_iterations"] = int(initial_iterations)
        model.metadata["training"] = self.summary_
        if data.system_name:
            model.metadata.setdefault("system_name", data.system_name)
        return model

    def _train(self, net: nn.Module, opt: torch.optim.Optimizer, fx: torch.Tensor,
               fy: torch.Tensor, nk: tuple[int, int], train_np: np.ndarray,
               val_np: np.ndarray, iters: int, dev: torch.device,
               fixed: torch.Tensor | None = None, n_fixed: int = 0) -> dict[str, Any]:
        """The outer loop; returns the loss history and the train/validation records. The
        first ``n_fixed`` iterations regress onto ``fixed`` (see :meth:`fit`)."""
        n, k = nk
        train = torch.as_tensor(train_np, device=dev)
        val = torch.as_tensor(val_np, device=dev)
        done = [0]

        def target() -> torch.Tensor:
            done[0] += 1
            if fixed is not None and done[0] <= n_fixed:
                return fixed
            return _targets(net, fy, n, k, train, self.shift_scale, self.shift_quantile)

        mb = min(self.minibatch, len(train))
        steps = (math.ceil(len(train) / mb) if self.steps_per_iteration is None
                 else int(self.steps_per_iteration))
        gen = self.minibatch_generator()
        marks = {max(1, math.ceil(iters * r / LOSS_RECORDS)) for r in range(1, LOSS_RECORDS + 1)}
        bar = None
        if self.progress:
            from .progress import progress_bar
            bar = progress_bar(iters, desc="ISOKANN", unit="iteration", leave=False)
        history: list[float] = []
        records: list[dict[str, Any]] = []
        best = BestWeights(iters, self.restore_best and len(val) > 0)
        net.train()
        for it in range(1, iters + 1):
            if bar is not None and stop_requested():
                bar.close()  # its last line says where training stopped
            check_interrupt()
            t = target()
            perm = train[torch.randperm(len(train), generator=gen).to(dev)]
            total = 0.0
            for s in range(steps):
                lo = (s * mb) % len(train)
                idx = perm[lo:lo + mb]
                loss = torch.mean((net(fx[idx]).reshape(-1) - t[idx]) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            history.append(total / steps)
            if it in marks:
                records.append({"iteration": it, "train_loss": _mse(net, fx[train], t[train]),
                                "val_loss": _mse(net, fx[val], t[val]) if len(val) else None})
            best.check(it, net, lambda: _mse(net, fx[val], t[val]))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.2e}")
        if bar is not None:
            bar.close()
        if iters == 0:
            target()  # still validate the data
        net.eval()
        restored = best.restore(net)
        if restored:  # the summary's losses describe the network the fit returns
            restored.update(train_loss=_mse(net, fx[train], t[train]),
                            val_loss=_mse(net, fx[val], t[val]))
        return {"history": history, "records": records, "minibatch": mb, "steps": steps,
                "n_train": len(train_np), "n_val": len(val_np), "best": restored}

    def _summary(self, model: ChiModel, data: KoopmanData, run: dict[str, Any], iters: int,
                 dev: torch.device, source: str, wall: float, t_feat: float
                 ) -> dict[str, Any]:
        """The training summary (``model.metadata["training"]``); loss records accumulate
        over fits, their "iteration" counts iterations over all fits of the model."""
        prev = model.metadata.get("training") or {}
        done = int(prev.get("iterations_total", 0))
        records = [dict(r, iteration=done + r["iteration"]) for r in run["records"]]
        self.records_.extend(records)
        last = records[-1] if records else {}
        steps, mb = run["steps"], run["minibatch"]
        return {
            "iterations": iters, "iterations_total": done + iters,
            "fits": int(prev.get("fits", 0)) + 1,
            "n_starts": data.n_starts, "n_koopman": data.n_koopman,
            "n_train": run["n_train"], "n_val": run["n_val"],
            "validation_fraction": self.validation_fraction,
            "lag_steps": data.lag_steps, "timestep_ps": data.timestep,
            "lag_time_ps": data.lag_time,
            "optimizer": self.optimizer, "optimizer_state_from": source,
            "lr": self.lr, "weight_decay": self.weight_decay,
            "shift_scale": self.shift_scale, "shift_quantile": self.shift_quantile,
            "minibatch": mb, "steps_per_iteration": steps, "seed": self.seed,
            "device": str(dev), "dtype": str(self.dtype).replace("torch.", ""),
            "final_loss": run["history"][-1] if run["history"] else None,
            "train_loss": last.get("train_loss"),
            "val_loss": last.get("val_loss"),
            "loss_records": list(prev.get("loss_records", [])) + records,
            "wall_s": wall, "featurize_s": t_feat,
            "samples_per_s": (iters * steps * mb / max(wall - t_feat, 1e-9)) if iters else 0.0,
            "system_name": data.system_name, **run["best"],
        }


def koopman_chi(model: ChiModel, data: KoopmanData) -> tuple[np.ndarray, np.ndarray]:
    """(χ(x) (N,), Kχ(x) = mean_k χ(y_k) (N,)) as float64 arrays."""
    chi_x = model.chi(data.x)
    n, k = data.n_starts, data.n_koopman
    chi_y = chi_of_ends(model, data.y.reshape(n * k, data.n_selected, 3),
                        data.atoms).reshape(n, k)
    return chi_x, chi_y.mean(axis=1)


def koopman_targets(model: ChiModel, data: KoopmanData, shift_scale: str = "minmax",
                    shift_quantile: float = 0.005) -> np.ndarray:
    """The ISOKANN targets S(Kχ) (N,) in [0, 1] of ``model`` on ``data`` (S fitted on all
    starts), as :meth:`Isokann.fit` computes them."""
    if shift_scale not in SHIFT_SCALES:
        raise ValueError(f"shift_scale must be one of {SHIFT_SCALES}, got {shift_scale!r}")
    n, k = data.n_starts, data.n_koopman
    fy = featurize(model.featurizer, data.y.reshape(n * k, data.n_selected, 3), model.dtype,
                   model.device, data.atoms)
    t = _targets(model.network, fy, n, k, torch.arange(n, device=model.device), shift_scale,
                 float(shift_quantile))
    return t.double().cpu().numpy()


def lag_time_ps(data: KoopmanData, lag_time: Any = None) -> float:
    """τ in ps: ``lag_time`` (ps or an openmm Quantity) or the data's lag time."""
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
    return tau


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
    tau = lag_time_ps(data, lag_time)
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
