"""The "pythonforce" backend: the same TorchScript χ evaluated by torch inside an
``openmm.PythonForce`` callback (OpenMM ≥ 8.5), with no openmm-torch.

The callback is a :class:`ChiComputation`: a small picklable object holding the bytes of the
exported TorchScript file. OpenMM pickles it when a System is serialised, so a System with a
χ force still goes through ``XmlSerializer`` and gives the same energy after reloading (the
reloading process needs ``amore_openmm`` importable). The TorchScript module is loaded lazily,
once per process and model.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import threading
from typing import Any

import numpy as np
import openmm
import torch
from openmm import unit

from .common import DEFAULT_PREFIX, ModelLike, ChiRestraintBase, chi_module_bytes, evaluate_chi, \
    kj, parameter_names

NAME = "pythonforce"
_MODULES: dict[str, Any] = {}   # sha256 of the TorchScript bytes -> loaded module
_LOCK = threading.Lock()        # TorchScript loading/compilation is not thread-safe


def _load(key: str, data: bytes) -> Any:
    with _LOCK:
        module = _MODULES.get(key)
        if module is None:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            module.eval()
            _MODULES[key] = module
    return module


class ChiComputation:
    """PythonForce callback: energy χ (``restraint=False``) or 0.5·κ·(χ − z)² with κ and z
    read from the State's global parameters ``<prefix>_kappa`` and ``<prefix>_z`` (default
    ``amore_chi_kappa`` and ``amore_chi_z``).

    Positions arrive in float64 nm (unwrapped unless the force uses periodic boundary
    conditions); χ and ∇χ are computed in float64 by the TorchScript module, or, with
    ``fast`` (the hand-written numpy passes of a default ChiModel, see
    :class:`BatchedChiRestraint`), by those: alanine dipeptide with a χ restraint runs
    1.6–2.3× the steps/s of TorchForce on Reference (``benchmarks/chi_overhead.py``). The
    first call checks them against the module and drops them if χ or ∇χ differ beyond
    round-off.
    """

    def __init__(self, module_bytes: bytes, restraint: bool, prefix: str = DEFAULT_PREFIX,
                 fast: Any = None) -> None:
        self.module_bytes = bytes(module_bytes)
        self.restraint = bool(restraint)
        self.prefix = prefix
        self.z_param, self.kappa_param = parameter_names(prefix)
        self.key = hashlib.sha256(self.module_bytes).hexdigest()
        self.fast = fast
        self.checked = fast is None

    def __getstate__(self) -> dict[str, Any]:
        return {"module_bytes": self.module_bytes, "restraint": self.restraint,
                "prefix": self.prefix, "fast": self.fast}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pickles written before prefixes (or the numpy passes) existed have none
        self.__init__(state["module_bytes"], state["restraint"],
                      state.get("prefix", DEFAULT_PREFIX), state.get("fast"))

    @property
    def module(self) -> Any:
        """The TorchScript χ module (loaded on first use in this process)."""
        module = _MODULES.get(self.key)
        return module if module is not None else _load(self.key, self.module_bytes)

    def chi_and_grad(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """χ and ∇χ (n, 3) nm⁻¹ at ``positions`` (n, 3) nm."""
        if self.fast is not None:
            c, g = self.fast(np.asarray(positions, dtype=np.float64)[None])
            chi, grad = float(c[0]), g[0]
            if self.checked:
                return chi, grad
            ref_chi, ref_grad = evaluate_chi(self.module, positions)
            assert ref_grad is not None
            scale = max(1.0, float(np.abs(ref_grad).max()))
            self.checked = True
            if abs(chi - ref_chi) <= 1e-9 and np.abs(grad - ref_grad).max() <= 1e-9 * scale:
                return chi, grad
            self.fast = None            # not the module's χ: the module from now on
            return ref_chi, ref_grad
        chi, grad = evaluate_chi(self.module, positions)
        assert grad is not None
        return chi, grad

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        chi, grad = self.chi_and_grad(x)
        if not self.restraint:
            return chi, -grad
        params = state.getParameters()
        dz = chi - params[self.z_param]
        kappa = params[self.kappa_param]
        return 0.5 * kappa * dz * dz, (-kappa * dz) * grad


def numpy_passes(model: ModelLike) -> "_NumpyChi | None":
    """The numpy passes of ``model`` when it is a ChiModel they cover (else None: a file or
    TorchScript module goes through torch)."""
    return _NumpyChi.from_model(model) if hasattr(model, "featurizer") else None


def python_chi_force(model: ModelLike, force_group: int | None = None) -> openmm.PythonForce:
    """χ as an ``openmm.PythonForce`` whose energy is χ (forces −∇χ); no periodic boundary
    conditions, so the model sees the Context's unwrapped positions."""
    force = openmm.PythonForce(ChiComputation(chi_module_bytes(model), restraint=False,
                                              fast=numpy_passes(model)), {})
    force.setUsesPeriodicBoundaryConditions(False)
    force.setName("AmoreChi")
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return force


class PythonChiRestraint(ChiRestraintBase, openmm.PythonForce):
    """0.5·κ·(χ − z)² as one ``openmm.PythonForce`` (see ChiRestraintForce)."""

    backend = NAME

    def __init__(self, model: ModelLike, z: float = 0.5, kappa: Any = 1e5,
                 force_group: int | None = None, prefix: str = DEFAULT_PREFIX) -> None:
        z_param, kappa_param = self._use_prefix(prefix)
        self.computation = ChiComputation(chi_module_bytes(model), restraint=True,
                                          prefix=prefix, fast=numpy_passes(model))
        openmm.PythonForce.__init__(self, self.computation,
                                    {z_param: float(z), kappa_param: kj(kappa)})
        self.setUsesPeriodicBoundaryConditions(False)
        self.setName("AmoreChiRestraint")
        if force_group is not None:
            self.setForceGroup(int(force_group))

    def chi(self, context: openmm.Context) -> float:
        """χ at the Context's current (unwrapped) positions, by the force's own model."""
        x = context.getState(getPositions=True).getPositions(asNumpy=True)
        return evaluate_chi(self.computation.module, x.value_in_unit(unit.nanometer),
                            gradient=False)[0]


def recover_python_restraint(force: openmm.PythonForce) -> PythonChiRestraint | None:
    """``force`` as a :class:`PythonChiRestraint` when it is one that lost its Python class
    (``System.getForce``, an XML round trip), else None."""
    # getPickledFunction() returns an unwrapped C++ vector; the XML carries the same bytes
    # hex-encoded in its "function" attribute
    match = re.search(r'function="([0-9a-fA-F]*)"', openmm.XmlSerializer.serialize(force))
    try:
        computation = pickle.loads(bytes.fromhex(match.group(1))) if match else None
    except Exception:  # another callable, or one that does not unpickle here
        return None
    if not isinstance(computation, ChiComputation) or not computation.restraint:
        return None
    force.__class__ = PythonChiRestraint    # the same C++ force; the Python methods come back
    force.computation = computation
    force._use_prefix(computation.prefix)
    return force


class BatchedChiRestraint:
    """PythonForce callback for P non-interacting packed copies of one molecule (see
    :func:`~amore_openmm.sampling.pack_replicas`): one batched χ evaluation per call.

    The packed positions (P·n, 3) are reshaped to (P, n, 3), the per-copy ``shifts`` (the
    packing offsets) are subtracted, and the :class:`~amore_openmm.chi.ChiModel` evaluates χ
    and ∇χ of all copies in one forward/backward pass (float64). Energy
    ``Σ_p 0.5·κ_p·(χ_p − z_p)²`` with per-copy levels :attr:`z` and stiffnesses :attr:`kappa`
    (plain arrays held here, set from Python between calls: OpenMM global parameters are
    scalars).

    Held copies. A copy with ``held[p]`` set carries no χ restraint but the "hold"
    ``f_p·(x_p − a_p) + 0.5·k_hold·‖x_p − a_p‖²`` with anchor ``a_p`` = :attr:`hold_x` and
    ``f_p`` = :attr:`hold_f`. When ``hold_f`` is the copy's physical force at the anchor, the
    total force on the copy there is zero, so a minimiser (L-BFGS: its steps are built from
    gradients) leaves it where it is while the other copies move; ``k_hold`` makes the anchor
    a minimum should it move anyway. That parks a copy without rebuilding the Context.

    χ of a pairwise-distance featurizer followed by a LayerNorm/Linear/Sigmoid network (the
    default ChiModel) is evaluated with hand-written float64 numpy forward and backward passes
    (a few times faster than torch autograd at this size; equal to round-off); any other model
    goes through TorchScript autograd.

    :attr:`count` counts calls (energy/force evaluations). The callable pickles with the
    model (torch modules pickle), so a System holding it serialises.
    """

    def __init__(self, model: Any, copies: int, n_atoms: int,
                 shifts: np.ndarray | None = None, hold_k: float = 1e4) -> None:
        import copy as _copy
        self.model = _copy.deepcopy(model).cpu().double()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.copies, self.n_atoms = int(copies), int(n_atoms)
        shape = (self.copies, self.n_atoms, 3)
        self.shifts = np.zeros((self.copies, 3)) if shifts is None else \
            np.asarray(shifts, dtype=np.float64).reshape(self.copies, 3)
        self.z = np.full(self.copies, 0.5)
        self.kappa = np.zeros(self.copies)
        self.held = np.zeros(self.copies, dtype=bool)
        self.hold_x = np.zeros(shape)
        self.hold_f = np.zeros(shape)
        self.hold_k = float(hold_k)
        self.count = 0
        self._scripted: Any = None
        self._fast = _NumpyChi.from_model(self.model)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_scripted"] = state["_fast"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fast = _NumpyChi.from_model(self.model)

    @property
    def numpy_path(self) -> bool:
        """True when χ is evaluated by the hand-written numpy passes (else torch autograd)."""
        return self._fast is not None

    def _module(self) -> Any:
        if self._scripted is None:
            with _LOCK:
                self._scripted = torch.jit.script(_BatchedChi(self.model))
        return self._scripted

    def chi_and_grad(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """χ (B,) and ∇χ (B, n, 3) nm⁻¹ of (B, n, 3) unshifted positions, one pass."""
        if self._fast is not None:
            return self._fast(np.asarray(x, dtype=np.float64))
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).requires_grad_(True)
        with torch.enable_grad():
            c = self._module()(xt)
            (g,) = torch.autograd.grad(c.sum(), xt, allow_unused=True)
        grad = np.zeros(x.shape) if g is None else g.numpy()
        return c.detach().numpy().astype(np.float64), grad

    def batch_invariant(self, x: np.ndarray) -> bool:
        """True when χ and ∇χ of each of the structures x (B, n, 3) come out the same to the
        bit alone, in the whole batch and in a batch of every other one: what makes batched
        χ-MEPs repeat (a path then does not depend on which copies share its force calls).
        The numpy passes are built for it (:class:`_NumpyChi`); TorchScript's are not."""
        if self._fast is None:
            return False
        x = np.asarray(x, dtype=np.float64)
        chi, grad = self.chi_and_grad(x)
        parts = [np.arange(len(x))[1::2]] + [np.array([i]) for i in range(len(x))]
        for idx in parts:
            c, g = self.chi_and_grad(x[idx])
            if not (np.array_equal(c, chi[idx]) and np.array_equal(g, grad[idx])):
                return False
        return True

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        self.count += 1
        x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        x = np.asarray(x).reshape(self.copies, self.n_atoms, 3)
        forces = np.zeros_like(x)
        energy = 0.0
        free = np.flatnonzero(~self.held)
        if free.size:
            chi, grad = self.chi_and_grad(x[free] - self.shifts[free, None, :])
            dz = chi - self.z[free]
            k = self.kappa[free]
            energy += float(0.5 * (k * dz * dz).sum())
            forces[free] = -(k * dz)[:, None, None] * grad
        held = np.flatnonzero(self.held)
        if held.size:
            d = x[held] - self.hold_x[held]
            f = self.hold_f[held]
            energy += float((f * d).sum() + 0.5 * self.hold_k * (d * d).sum())
            forces[held] = -f - self.hold_k * d
        return energy, forces.reshape(-1, 3)

    def force(self, force_group: int | None = None) -> openmm.PythonForce:
        """A new ``openmm.PythonForce`` calling this object (no periodic boundary
        conditions)."""
        f = openmm.PythonForce(self, {})
        f.setUsesPeriodicBoundaryConditions(False)
        f.setName("AmoreBatchedChiRestraint")
        if force_group is not None:
            f.setForceGroup(int(force_group))
        return f


class _BatchedChi(torch.nn.Module):
    """(B, n, 3) positions → χ (B,), float64: the ChiModel's featurizer and network."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.featurizer = model.featurizer
        self.network = model.network

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.network(self.featurizer(positions)).reshape(-1)


class _NumpyChi:
    """χ and ∇χ of a ChiModel with a ``PairwiseDistances`` or ``SymmetricPairwiseDistances``
    featurizer and an ``nn.Sequential`` of LayerNorm / Linear / Sigmoid layers, in float64
    numpy. For the symmetric featurizer each sorted block is argsorted per structure and the
    feature gradients are scattered back to the pairs they came from."""

    def __init__(self, pairs: np.ndarray, n_atoms: int, layers: list[tuple],
                 sorted_blocks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> None:
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.n_atoms = int(n_atoms)
        self.layers = layers
        self.sorted_blocks = sorted_blocks          # (plain, blocks, keep) pair indices
        self._difference_matrices()

    def _difference_matrices(self) -> None:
        f = len(self.pairs)
        self.diff = np.zeros((f, self.n_atoms))     # row k: x_j − x_i of pair k
        self.diff[np.arange(f), self.pairs[:, 1]] += 1.0
        self.diff[np.arange(f), self.pairs[:, 0]] -= 1.0
        self.diff_t = np.ascontiguousarray(self.diff.T)

    def __getstate__(self) -> dict[str, Any]:
        # the dense difference matrices (pairs × atoms, 2 × 2.4 MB for 231 pairs of a
        # 1,288-atom box) are rebuilt from the pairs: a System's XML stays small
        return {k: v for k, v in self.__dict__.items() if k not in ("diff", "diff_t")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._difference_matrices()

    @classmethod
    def from_model(cls, model: Any) -> "_NumpyChi | None":
        from ..chi import PairwiseDistances, SymmetricPairwiseDistances
        feat, net = getattr(model, "featurizer", None), getattr(model, "network", None)
        if not isinstance(net, torch.nn.Sequential):
            return None
        if type(feat) is PairwiseDistances:
            pairs, sorted_blocks = feat.pairs, None
        elif type(feat) is SymmetricPairwiseDistances:
            pairs = np.stack([feat.i.cpu().numpy(), feat.j.cpu().numpy()], axis=1)
            sorted_blocks = tuple(t.cpu().numpy().copy() for t in
                                  (feat.plain, feat.blocks, feat.keep))
        else:
            return None

        def arr(t: Any) -> np.ndarray:
            return t.detach().cpu().double().numpy().copy()

        layers: list[tuple] = []
        for layer in net:
            if type(layer) is torch.nn.LayerNorm and layer.weight is not None and \
                    len(layer.normalized_shape) == 1:
                layers.append(("norm", arr(layer.weight), arr(layer.bias), float(layer.eps)))
            elif type(layer) is torch.nn.Linear and layer.bias is not None:
                layers.append(("linear", arr(layer.weight), arr(layer.bias)))
            elif type(layer) is torch.nn.Sigmoid:
                layers.append(("sigmoid",))
            else:
                return None
        return cls(np.asarray(pairs), feat.n_atoms, layers, sorted_blocks)

    def _features(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (F, B) of the pair distances r (P, B), and for sorted blocks the pair
        index (F_sorted, B) behind each sorted feature."""
        if self.sorted_blocks is None:
            return r, None
        plain, blocks, keep = self.sorted_blocks
        b = r.shape[1]
        rp = np.vstack([r, np.full((1, b), np.inf)])              # pad index = P
        blk = rp[blocks]                                          # (nb, w, B)
        order = np.argsort(blk, axis=1, kind="stable")
        src = np.take_along_axis(np.broadcast_to(blocks[:, :, None], blk.shape), order, axis=1)
        src = src.reshape(-1, b)[keep]                            # (F_sorted, B)
        return np.vstack([r[plain], np.take_along_axis(rp, src, axis=0)]), src

    def _pair_grad(self, g: np.ndarray, src: np.ndarray | None, n_pairs: int) -> np.ndarray:
        """∂χ/∂r (P, B) from ∂χ/∂features g (B, F): every pair is one feature."""
        if src is None:
            return g.T
        plain = self.sorted_blocks[0]
        gr = np.zeros((n_pairs, g.shape[0]))
        gr[plain] = g[:, :len(plain)].T
        gr[src, np.arange(g.shape[0])[None, :]] = g[:, len(plain):].T
        return gr

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Every product is a stack of per-structure matrix products and every reduction runs
        # along a contiguous axis of fixed length, so a structure's χ and ∇χ do not depend
        # on which others share its batch, to the bit (one BLAS call per structure and
        # layer; a single (B, F) GEMM rounds a column differently by its place in the
        # kernel's tiles). Measured: 7-14 % slower than single GEMMs at B = 8-34.
        b = len(x)
        xs = x[:, :self.n_atoms].transpose(1, 0, 2).reshape(self.n_atoms, -1)
        # one GEMM is exact here (two non-zero terms per row: x_j − x_i rounded once)
        d = (self.diff @ xs).reshape(-1, b, 3).transpose(1, 0, 2)             # (B, P, 3)
        r = np.sqrt((d * d).sum(-1)).T                            # (P, B)
        feats, src = self._features(r)
        h, cache = np.ascontiguousarray(feats.T)[:, None, :], []  # (B, 1, F)
        for layer in self.layers:
            if layer[0] == "norm":
                xc = h - h.mean(-1, keepdims=True)
                inv = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + layer[3])
                cache.append((xc * inv, inv))
                h = cache[-1][0] * layer[1] + layer[2]
            elif layer[0] == "linear":
                cache.append(None)
                h = np.matmul(h, layer[1].T) + layer[2]
            else:
                h = 1.0 / (1.0 + np.exp(-h))
                cache.append(h)
        chi = h.reshape(b).copy()
        g = np.ones_like(h)
        for layer, c in zip(reversed(self.layers), reversed(cache)):
            if layer[0] == "linear":
                g = np.matmul(g, layer[1])
            elif layer[0] == "sigmoid":
                g = g * c * (1.0 - c)
            else:
                xh, inv = c
                gx = g * layer[1]
                g = inv * (gx - gx.mean(-1, keepdims=True)
                           - xh * (gx * xh).mean(-1, keepdims=True))
        gd = (self._pair_grad(g[:, 0, :], src, len(r)) / r).T[..., None] * d   # (B, P, 3)
        grad = np.zeros(x.shape)
        grad[:, :self.n_atoms] = np.matmul(self.diff_t[None], gd)
        return chi, grad
