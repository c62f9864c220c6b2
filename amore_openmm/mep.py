"""χ-minimum-energy paths (χ-MEPs): follow ∇χ with energy minimisation on χ level sets.

Algorithm (paper eq. 3 and DESIGN.md, "χ-MEP"):

1. One OpenMM Context holds a *copy* of the physical System plus a
   :class:`~amore_openmm.forces.ChiRestraintForce` ``0.5·κ·(χ − z)²`` in its own force group.
2. Node 0: ``z = χ(x0)``, ``LocalEnergyMinimizer.minimize`` → the lowest-energy point on the
   level set through x0 (at that minimum the physical force has no component orthogonal to
   ∇χ: the "orthogonal energy minimisation").
3. Euler step ``x ← x ± h·∇χ/‖∇χ‖²`` (``step_mode="chi"``: Δχ ≈ h) or the paper's
   ``x ← x ± ε·∇χ/‖∇χ‖`` (``step_mode="fixed"``); ``z ← χ(x)``; minimise again; record.
4. Repeat in both directions from node 0 until χ leaves ``chi_range``, χ stops advancing, or
   ``max_nodes``; the two branches are joined into one path ordered by χ.

Recorded per node: positions, χ, the potential energy *without* the restraint (energy of the
physical force groups only), ‖∇χ‖, per-atom ‖∇ᵢχ‖², the level z and the κ used.

Choosing κ. At the restrained minimum the restraint balances the physical force along ∇χ:
``κ·|χ − z|·‖∇χ‖ ≈ |F·∇χ|/‖∇χ‖``, so holding ``|χ − z| ≤ δ`` needs
``κ ≳ |F·∇χ| / (δ·‖∇χ‖²)``. With ``kappa=None`` each node starts from that estimate (F: the
physical force at the stepped positions, δ = ``chi_tolerance``/2, never below
``kappa_min``), then checks ``|χ − z|`` after minimising and, while it exceeds
``chi_tolerance``, raises κ by ``max(10, 4·|χ − z|/δ)`` and minimises again (up to
``kappa_max``). A small ‖∇χ‖ (deep in a basin, where χ saturates) therefore gets a large κ
automatically. Measured: on Müller–Brown κ = 1e4 lets the minimizer slide back in χ while
~1e7 holds; on alanine dipeptide ~1e5 holds χ to 1e-3.

Constraints. ``LocalEnergyMinimizer`` enforces the System's constraints itself; after each
Euler step the positions are projected back with ``Context.applyConstraints``. Systems
with constraints therefore work unchanged (the Euler step in constrained directions is
simply removed).

Threads. :func:`trace_chi_meps` traces many paths in a thread pool, one Context per thread
(minimisation draws no random numbers, so the result does not depend on scheduling).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openmm
from openmm import unit

from .data import atomic_path, atomic_write_text
from .sensitivity import chi_gradients
from .systems import MolecularSystem

__all__ = ["ChiPath", "trace_chi_mep", "trace_chi_meps", "transition_states",
           "write_path_pdb", "write_path_dcd", "STOP_REASONS"]

KJ = unit.kilojoule_per_mole
KJ_NM = unit.kilojoule_per_mole / unit.nanometer

#: why a branch of a path ended
STOP_REASONS = {
    "chi_range": "χ left chi_range (reached the basin)",
    "stalled": "χ stopped advancing (flat χ or the minimizer pulled back)",
    "max_nodes": "max_nodes reached",
    "restraint": "the restraint could not hold the level set even at kappa_max",
    "nonfinite": "non-finite energy or ∇χ",
    "zero_gradient": "‖∇χ‖ vanished: no direction to step",
    "jump": "the next level-set minimum lies farther than max_node_rmsd even with the step "
            "halved max_halvings times (a discontinuity of the χ-MEP)",
}


# ----------------------------------------------------------------------------------------
# ChiPath
# ----------------------------------------------------------------------------------------
@dataclass
class ChiPath:
    """A χ-minimum-energy path, nodes ordered by increasing χ.

    Attributes:
        positions: (M, n_atoms, 3) nm.
        chi: (M,) χ at each node.
        energy: (M,) potential energy without the restraint, kJ/mol.
        grad_norm: (M,) ‖∇χ‖, nm⁻¹.
        atom_grad_sq: (M, n_atoms) per-atom ‖∇ᵢχ‖², nm⁻².
        z: (M,) the level each node was minimised on; kappa: (M,) the κ that held it.
        start_index: index of the node minimised from x0.
        stop_reasons: {"forward": reason, "backward": reason} (keys of ``STOP_REASONS``);
            "forward" is the branch along +∇χ (increasing χ).
    """

    positions: np.ndarray
    chi: np.ndarray
    energy: np.ndarray
    grad_norm: np.ndarray
    atom_grad_sq: np.ndarray
    z: np.ndarray
    kappa: np.ndarray
    start_index: int
    stop_reasons: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.chi)

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def level_error(self) -> np.ndarray:
        """|χ − z| per node: how well the restraint held the level set."""
        return np.abs(self.chi - self.z)

    @property
    def max_energy(self) -> float:
        """Highest energy along the path (the χ-MEP's barrier top), kJ/mol."""
        return float(np.max(self.energy))

    @property
    def highest_node(self) -> int:
        return int(np.argmax(self.energy))

    def node_rmsd(self, superpose: bool = True) -> np.ndarray:
        """(M−1,) RMSD (nm) between consecutive nodes.

        With ``superpose`` (default) after optimal rigid-body superposition (Kabsch): χ built
        on internal coordinates does not fix the overall position/orientation, so only the
        internal change counts. Without it, the raw coordinate RMSD.
        """
        a, b = self.positions[:-1], self.positions[1:]
        if superpose and self.n_atoms > 1:
            a = a - a.mean(axis=1, keepdims=True)
            b = b - b.mean(axis=1, keepdims=True)
            h = np.einsum("mni,mnj->mij", a, b)
            u, _, vt = np.linalg.svd(h)
            sign = np.sign(np.linalg.det(np.einsum("mij,mjk->mik", u, vt)))
            u[:, :, -1] *= sign[:, None]
            rot = np.einsum("mij,mjk->mik", u, vt)    # a @ rot best matches b
            a = np.einsum("mni,mij->mnj", a, rot)
        d = b - a
        return np.sqrt((d ** 2).sum(-1).mean(-1))

    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``.npz`` (atomic write)."""
        from .data import atomic_save_npz
        keys = sorted(self.stop_reasons)
        return atomic_save_npz(path, positions=self.positions, chi=self.chi,
                               energy=self.energy, grad_norm=self.grad_norm,
                               atom_grad_sq=self.atom_grad_sq, z=self.z, kappa=self.kappa,
                               start_index=self.start_index,
                               stop_keys=np.asarray(keys, dtype=str),
                               stop_values=np.asarray([self.stop_reasons[k] for k in keys],
                                                      dtype=str))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChiPath":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ChiPath file {path} does not exist")
        with np.load(path) as d:
            return cls(positions=d["positions"], chi=d["chi"], energy=d["energy"],
                       grad_norm=d["grad_norm"], atom_grad_sq=d["atom_grad_sq"], z=d["z"],
                       kappa=d["kappa"], start_index=int(d["start_index"]),
                       stop_reasons=dict(zip((str(k) for k in d["stop_keys"]),
                                             (str(v) for v in d["stop_values"]))))

    def to_mdtraj(self, topology: Any):
        """An ``mdtraj.Trajectory`` of the nodes (topology: OpenMM or mdtraj Topology, or a
        MolecularSystem)."""
        import mdtraj as md
        top = getattr(topology, "topology", topology)
        if not isinstance(top, md.Topology):
            top = md.Topology.from_openmm(top)
        if top.n_atoms != self.n_atoms:
            raise ValueError(f"topology has {top.n_atoms} atoms but the path has "
                             f"{self.n_atoms}")
        return md.Trajectory(self.positions.astype(np.float32), top)


# ----------------------------------------------------------------------------------------
# tracing
# ----------------------------------------------------------------------------------------
_SCRIPT_LOCK = threading.Lock()


def _restraint_group(system: openmm.System) -> int | None:
    used = {system.getForce(i).getForceGroup() for i in range(system.getNumForces())}
    free = [g for g in range(31, -1, -1) if g not in used]
    return free[0] if free else None


class _Tracer:
    """One Context (System copy + χ restraint) and the per-node operations."""

    def __init__(self, ms: MolecularSystem, model: Any, platform: str,
                 properties: dict | None, restraint_factory: Any = None,
                 scripted: Any = None):
        from . import forces  # imported here: forces pulls in openmmtorch
        self.model = model
        self.n = ms.n_atoms
        system = openmm.XmlSerializer.clone(ms.system)  # never modify the user's System
        self.group = _restraint_group(system)
        if self.group is None:
            raise ValueError("all 32 force groups of the System are in use; free one so the "
                             "χ restraint can be evaluated separately")
        factory = restraint_factory or forces.ChiRestraintForce
        with _SCRIPT_LOCK:  # TorchScript compilation is not thread-safe
            restraint = factory(model if scripted is None else scripted, 0.5, 1.0)
        restraint.setForceGroup(self.group)
        system.addForce(restraint)
        self.z_param = forces.ChiRestraintForce.Z_PARAM
        self.k_param = forces.ChiRestraintForce.KAPPA_PARAM
        self.phys_groups = sum(1 << g for g in range(32) if g != self.group)
        plat = openmm.Platform.getPlatformByName(platform)
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), plat,
                                      properties or {})
        self.has_constraints = system.getNumConstraints() > 0

    def set_positions(self, x: np.ndarray) -> np.ndarray:
        self.context.setPositions(x)
        if self.has_constraints:
            self.context.applyConstraints(1e-6)
        return self.positions()

    def positions(self) -> np.ndarray:
        return self.context.getState(getPositions=True).getPositions(asNumpy=True) \
            .value_in_unit(unit.nanometer)

    def physical(self) -> tuple[float, np.ndarray]:
        st = self.context.getState(getEnergy=True, getForces=True, groups=self.phys_groups)
        return (st.getPotentialEnergy().value_in_unit(KJ),
                st.getForces(asNumpy=True).value_in_unit(KJ_NM))

    def chi_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        chi, g = chi_gradients(self.model, x[None])
        return float(chi[0]), g[0]

    def minimize(self, z: float, kappa: float, tolerance: float, max_iterations: int) -> None:
        self.context.setParameter(self.z_param, z)
        self.context.setParameter(self.k_param, kappa)
        openmm.LocalEnergyMinimizer.minimize(self.context, tolerance, max_iterations)


@dataclass
class _Node:
    x: np.ndarray
    chi: float
    energy: float
    grad: np.ndarray
    z: float
    kappa: float
    ok: bool


def _relax(tr: _Tracer, x: np.ndarray, z: float, kappa: float | None, opts: dict) -> _Node:
    """Minimise on the level set χ = z starting from x, raising κ until it holds."""
    x = tr.set_positions(x)
    tol_chi = opts["chi_tolerance"]
    if kappa is None:
        _, f = tr.physical()
        _, g = tr.chi_grad(x)
        g2 = float((g * g).sum())
        fpar = abs(float((f * g).sum()))
        k = fpar / (0.5 * tol_chi * g2) if g2 > 0 else opts["kappa_min"]
        k = float(np.clip(k, opts["kappa_min"], opts["kappa_max"]))
        adaptive = True
    else:
        k, adaptive = float(kappa), False
    while True:
        tr.minimize(z, k, opts["tolerance"], opts["max_iterations"])
        x = tr.positions()
        e, _ = tr.physical()
        chi, g = tr.chi_grad(x)
        err = abs(chi - z)
        if err <= tol_chi or not adaptive or k >= opts["kappa_max"] or not math.isfinite(chi):
            return _Node(x, chi, e, g, z, k, err <= tol_chi and math.isfinite(e))
        k = min(opts["kappa_max"], k * max(10.0, 4.0 * err / (0.5 * tol_chi)))


def _branch(tr: _Tracer, start: _Node, sign: int, opts: dict) -> tuple[list[_Node], str]:
    nodes: list[_Node] = []
    cur = start
    lo, hi = opts["chi_range"]
    stalls = 0
    while True:
        if len(nodes) + 1 >= opts["max_nodes_branch"]:
            return nodes, "max_nodes"
        if (sign > 0 and cur.chi >= hi) or (sign < 0 and cur.chi <= lo):
            return nodes, "chi_range"
        g = cur.grad
        g2 = float((g * g).sum())
        if not (g2 > 0 and math.isfinite(g2)):
            return nodes, "zero_gradient" if g2 == 0 else "nonfinite"
        node, why = None, ""
        for halving in range(opts["max_halvings"] + 1):
            h = opts["step"] * 0.5 ** halving
            dx = h * g / (g2 if opts["step_mode"] == "chi" else math.sqrt(g2))
            # a saturated χ (tiny ‖∇χ‖) would give a huge Δχ-step: cap the displacement
            rms = math.sqrt(float((dx * dx).sum()) / tr.n)
            if rms > opts["max_displacement"]:
                dx *= opts["max_displacement"] / rms
            x = tr.set_positions(cur.x + sign * dx)
            z, _ = tr.chi_grad(x)
            if not math.isfinite(z):
                return nodes, "nonfinite"
            node = _relax(tr, x, z, opts["kappa"], opts)
            if not (math.isfinite(node.energy) and math.isfinite(node.chi)):
                return nodes, "nonfinite"
            if opts["max_node_rmsd"] is None or \
                    _rmsd(cur.x, node.x) <= opts["max_node_rmsd"]:
                why = ""
                break
            why = "jump"  # the level-set minimum moved too far: retry with half the step
        if why:
            return nodes, why
        if not node.ok and opts["kappa"] is None:
            nodes.append(node)
            return nodes, "restraint"
        advance = sign * (node.chi - cur.chi)
        if advance <= 0:  # the minimizer slid back: repeating the same step would too
            return nodes, "stalled"
        stalls = stalls + 1 if advance < opts["min_advance"] * h / opts["step"] else 0
        if stalls >= opts["stall_nodes"]:
            return nodes, "stalled"
        nodes.append(node)
        cur = node


def _rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (nm) after optimal superposition (plain distance for one particle)."""
    path = ChiPath(positions=np.stack([a, b]), chi=np.zeros(2), energy=np.zeros(2),
                   grad_norm=np.zeros(2), atom_grad_sq=np.zeros((2, len(a))), z=np.zeros(2),
                   kappa=np.zeros(2), start_index=0)
    return float(path.node_rmsd()[0])


def _as_structure(x0: Any, n: int) -> np.ndarray:
    arr = np.asarray(x0._value if unit.is_quantity(x0) else x0, dtype=np.float64)
    if unit.is_quantity(x0):
        arr = np.asarray(x0.value_in_unit(unit.nanometer), dtype=np.float64)
    if arr.shape == (2,) and n == 1:
        arr = np.array([[arr[0], arr[1], 0.0]])
    if arr.shape != (n, 3):
        raise ValueError(f"x0 must have shape ({n}, 3) in nm, got {arr.shape}")
    return arr


def trace_chi_mep(system: MolecularSystem, model: Any, x0: Any, step: float = 0.01, *,
                  kappa: float | None = None, tolerance: float = 1.0,
                  max_iterations: int = 250, chi_range: tuple[float, float] = (0.02, 0.98),
                  max_nodes: int = 200, step_mode: str = "chi",
                  direction: str = "both", chi_tolerance: float = 1e-3,
                  kappa_min: float = 1e3, kappa_max: float = 1e10,
                  max_displacement: float = 0.02, min_advance: float | None = None,
                  stall_nodes: int = 3, max_node_rmsd: float | None = None,
                  max_halvings: int = 4, platform: str = "Reference",
                  properties: dict | None = None, _tracer: _Tracer | None = None) -> ChiPath:
    """Trace a χ-minimum-energy path through ``x0``.

    Args:
        system: the :class:`MolecularSystem` (its System is copied, never modified).
        model: χ as a torch module (B, n, 3) nm -> (B,), e.g. a ``ChiModel``; it is put into
            the Context as a TorchForce inside the χ restraint and used for ∇χ by autograd.
        x0: starting structure (n, 3) nm (or (x, y) for Müller–Brown).
        step: h (Δχ per node) for ``step_mode="chi"``; ε (nm) for ``step_mode="fixed"``.
        kappa: restraint stiffness (kJ/mol); None (default) chooses it per node from the
            force along ∇χ and ‖∇χ‖² and raises it until |χ − z| ≤ ``chi_tolerance`` (see the
            module docstring); a number fixes κ (no check).
        tolerance, max_iterations: passed to ``LocalEnergyMinimizer.minimize`` (kJ/mol/nm).
        chi_range: a branch stops once χ leaves this range.
        max_nodes: at most this many nodes per path (split between the two branches).
        step_mode: "chi" (x ± h∇χ/‖∇χ‖²) or "fixed" (x ± ε∇χ/‖∇χ‖, paper eq. 3).
        direction: "both", "forward" (increasing χ) or "backward".
        chi_tolerance: the level set must hold to this |χ − z|.
        kappa_min, kappa_max: bounds of the automatic κ.
        max_displacement: cap on an Euler step's RMS displacement per atom (nm); guards the
            h/‖∇χ‖² step where χ is flat.
        min_advance: a node advancing χ less than this counts as a stall (default step/10
            in "chi" mode, 1e-4 in "fixed" mode); ``stall_nodes`` stalls in a row end the
            branch.
        max_node_rmsd: if set (nm, e.g. 0.05 for molecules), a node farther than this from
            the previous one (RMSD after superposition) is retried with the step halved, up to
            ``max_halvings`` times; if it still jumps the branch stops with reason "jump".
            Off by default (a genuine χ-MEP discontinuity, e.g. on Müller–Brown where the
            level-set minimum switches valleys, would end the path).
        platform, properties: OpenMM platform of the Context ("Reference" or "CPU").

    Returns:
        A :class:`ChiPath` ordered by χ, with ``stop_reasons`` per branch.
    """
    if not isinstance(system, MolecularSystem):
        raise TypeError(f"system must be a MolecularSystem (load_system(...)), got "
                        f"{type(system).__name__}")
    if step_mode not in ("chi", "fixed"):
        raise ValueError(f"step_mode must be 'chi' or 'fixed', got {step_mode!r}")
    if direction not in ("both", "forward", "backward"):
        raise ValueError(f"direction must be 'both', 'forward' or 'backward', got "
                         f"{direction!r}")
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    if not (0 <= chi_range[0] < chi_range[1]):
        raise ValueError(f"chi_range must be (low, high) with low < high, got {chi_range}")
    if kappa is not None and not kappa > 0:
        raise ValueError(f"kappa must be positive or None (automatic), got {kappa}")
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    x0 = _as_structure(x0, system.n_atoms)
    opts = dict(step=float(step), kappa=kappa, tolerance=float(tolerance),
                max_iterations=int(max_iterations), chi_range=tuple(chi_range),
                step_mode=step_mode, chi_tolerance=float(chi_tolerance),
                kappa_min=float(kappa_min), kappa_max=float(kappa_max),
                max_displacement=float(max_displacement),
                min_advance=float(min_advance if min_advance is not None else
                                  (step / 10 if step_mode == "chi" else 1e-4)),
                stall_nodes=int(stall_nodes), max_halvings=int(max_halvings),
                max_node_rmsd=None if max_node_rmsd is None else float(max_node_rmsd))
    tr = _tracer or _Tracer(system, model, platform, properties)
    x = tr.set_positions(x0)
    z0, _ = tr.chi_grad(x)
    start = _relax(tr, x, z0, kappa, opts)
    signs = {"both": (1, -1), "forward": (1,), "backward": (-1,)}[direction]
    branches: dict[int, list[_Node]] = {1: [], -1: []}
    reasons: dict[str, str] = {}
    budget = max_nodes - 1
    for sign in signs:
        share = budget if len(signs) == 1 else (budget + (sign > 0)) // 2
        opts["max_nodes_branch"] = share + 1
        nodes, why = _branch(tr, start, sign, opts)
        branches[sign] = nodes
        reasons["forward" if sign > 0 else "backward"] = why
    if not start.ok and kappa is None:
        reasons["start"] = "restraint"
    ordered = branches[-1][::-1] + [start] + branches[1]
    return _collect(ordered, len(branches[-1]), reasons)


def _collect(nodes: list[_Node], start_index: int, reasons: dict[str, str]) -> ChiPath:
    grads = np.stack([n.grad for n in nodes])
    g2 = (grads ** 2).sum(-1)
    return ChiPath(positions=np.stack([n.x for n in nodes]),
                   chi=np.array([n.chi for n in nodes]),
                   energy=np.array([n.energy for n in nodes]),
                   grad_norm=np.sqrt(g2.sum(-1)), atom_grad_sq=g2,
                   z=np.array([n.z for n in nodes]), kappa=np.array([n.kappa for n in nodes]),
                   start_index=int(start_index), stop_reasons=reasons)


def trace_chi_meps(system: MolecularSystem, model: Any, starts: Any,
                   pool_size: int | None = None, platform: str = "Reference",
                   properties: dict | None = None, progress: bool = False,
                   **kwargs: Any) -> list[ChiPath]:
    """Trace one χ-MEP from each structure in ``starts`` (S, n, 3), in parallel threads.

    Each worker thread owns one Context (System copy + χ restraint) and reuses it for all the
    paths it traces. Paths come back in the order of ``starts``. ``pool_size`` defaults to
    the number of CPU cores; ``kwargs`` go to :func:`trace_chi_mep`. Use the "Reference" or
    "CPU" platform (with "CPU", set ``properties={"Threads": "1"}`` when running one thread
    per core).
    """
    starts = np.asarray(getattr(starts, "x", starts), dtype=np.float64)
    if starts.ndim == 2:
        starts = starts[None]
    if starts.ndim != 3 or starts.shape[1:] != (system.n_atoms, 3):
        raise ValueError(f"starts must be (S, {system.n_atoms}, 3) in nm, got {starts.shape}")
    size = max(1, min(int(pool_size or os.cpu_count() or 1), len(starts)))
    local = threading.local()
    from .forces import load_chi_module
    with _SCRIPT_LOCK:
        scripted = load_chi_module(model)  # compile once, shared by all Contexts

    def work(i: int) -> ChiPath:
        tr = getattr(local, "tracer", None)
        if tr is None:
            tr = local.tracer = _Tracer(system, model, platform, properties,
                                        scripted=scripted)
        return trace_chi_mep(system, model, starts[i], _tracer=tr, **kwargs)

    if size == 1:
        return [work(i) for i in range(len(starts))]
    with ThreadPoolExecutor(max_workers=size, thread_name_prefix="chi-mep") as ex:
        futures = [ex.submit(work, i) for i in range(len(starts))]
        if progress:
            from tqdm import tqdm
            return [f.result() for f in tqdm(futures, desc="χ-MEPs")]
        return [f.result() for f in futures]


def transition_states(model: Any, data_or_positions: Any, system: MolecularSystem | None = None,
                      window: tuple[float, float] = (0.49, 0.51), n: int | None = None,
                      return_indices: bool = False, platform: str = "Reference"
                      ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Candidate χ-MEP starts: structures with χ in ``window``, lowest energy first.

    Args:
        model: χ (torch module).
        data_or_positions: a KoopmanData (its ``x`` are used) or (N, n, 3) positions, nm.
        system: used for the energies; without it the structures are ordered by |χ − 0.5|.
        window: (low, high) χ window (the paper uses (0.49, 0.51)).
        n: keep at most this many.
        return_indices: also return the indices into the input.

    Returns:
        (m, n_atoms, 3) positions (and (m,) indices). Raises ``ValueError`` when no
        structure falls in the window (widen it, or sample/train more).
    """
    x = np.asarray(getattr(data_or_positions, "x", data_or_positions), dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"data_or_positions must be KoopmanData or (N, n, 3) positions, got "
                         f"shape {x.shape}")
    import torch
    with torch.no_grad():
        chi = np.concatenate([
            model(torch.as_tensor(x[i:i + 4096], dtype=_dtype(model))).double().numpy()
            .reshape(-1) for i in range(0, len(x), 4096)])
    sel = np.flatnonzero((chi >= window[0]) & (chi <= window[1]))
    if sel.size == 0:
        raise ValueError(f"no structure has χ in window {window} (χ range of the data: "
                         f"{chi.min():.3f}..{chi.max():.3f}); widen the window")
    if system is not None:
        ctx = system.make_context(platform)
        e = np.empty(sel.size)
        for k, i in enumerate(sel):
            ctx.setPositions(x[i])
            e[k] = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
        order = np.argsort(e, kind="stable")
    else:
        order = np.argsort(np.abs(chi[sel] - 0.5), kind="stable")
    sel = sel[order][:n]
    return (x[sel], sel) if return_indices else x[sel]


def _dtype(model: Any):
    import torch
    for p in model.parameters():
        return p.dtype
    return torch.float64


# ----------------------------------------------------------------------------------------
# writing paths
# ----------------------------------------------------------------------------------------
def _node_bfactors(path: ChiPath, sensitivity: Any, scale: float) -> np.ndarray:
    """(M, n) per-node ‖∇ᵢχ‖² normalised to the node's maximum, times ``scale``."""
    if sensitivity is not None:
        vals = sensitivity.levelset[:, sensitivity.bin_index(path.chi)].T
        vals = np.where(np.isfinite(vals), vals, 0.0)
    else:
        vals = path.atom_grad_sq
    top = vals.max(axis=1, keepdims=True)
    return scale * np.divide(vals, top, out=np.zeros_like(vals), where=top > 0)


def write_path_pdb(path: str | os.PathLike, chipath: ChiPath, topology: Any,
                   sensitivity: Any = None, bfactor_scale: float = 100.0) -> Path:
    """Multi-model PDB of the path; B-factor = normalised ‖∇ᵢχ‖² at each node.

    Each MODEL is one node. The B-factor column holds ``bfactor_scale·‖∇ᵢχ‖²/maxⱼ‖∇ⱼχ‖²``
    of that node (0–100 by default), so colouring by B-factor in PyMOL/VMD shows which atoms
    drive χ along the path. With a :class:`~amore_openmm.sensitivity.Sensitivity` the
    level-set average ⟨‖∇ᵢχ‖²⟩_z at the node's χ is used instead of the node's own gradient.
    """
    top = getattr(topology, "topology", topology)
    atoms = list(top.atoms())
    if len(atoms) != chipath.n_atoms:
        raise ValueError(f"topology has {len(atoms)} atoms but the path has {chipath.n_atoms}")
    bf = _node_bfactors(chipath, sensitivity, bfactor_scale)
    lines = ["REMARK   1 AMORE chi-MEP; B-factor = normalised |grad_i chi|^2 per node "
             f"(scale {bfactor_scale:g})"]
    for m in range(len(chipath)):
        lines.append(f"MODEL     {m + 1:4d}")
        lines.append(f"REMARK   2 node {m} chi {chipath.chi[m]:.5f} energy "
                     f"{chipath.energy[m]:.3f} kJ/mol")
        xyz = chipath.positions[m] * 10.0  # nm -> Å
        for i, a in enumerate(atoms):
            name = a.name if len(a.name) >= 4 else f" {a.name:<3s}"
            chain = (a.residue.chain.id or "A")[:1]
            elem = a.element.symbol if a.element is not None else ""
            resid = str(a.residue.id)[-4:]
            lines.append(
                f"{'HETATM' if a.residue.name == 'MB' else 'ATOM  '}{(i + 1) % 100000:5d} "
                f"{name[:4]:4s} {a.residue.name[:3]:>3s} {chain}{resid:>4s}    "
                f"{xyz[i, 0]:8.3f}{xyz[i, 1]:8.3f}{xyz[i, 2]:8.3f}{1.0:6.2f}"
                f"{min(bf[m, i], 999.99):6.2f}          {elem:>2s}")
        lines.append("ENDMDL")
    lines.append("END")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_path_dcd(path: str | os.PathLike, chipath: ChiPath, topology: Any) -> Path:
    """Write the path nodes as a DCD trajectory (via mdtraj)."""
    with atomic_path(path, suffix=".dcd") as tmp:
        chipath.to_mdtraj(topology).save_dcd(str(tmp))
    return Path(path)
