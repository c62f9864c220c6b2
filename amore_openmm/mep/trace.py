"""Tracing χ-MEPs: Euler steps along ∇χ, level-set minimisation, certificates per node."""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from openmm import unit

from ..settings import MEPSettings, merge_settings
from ..systems import MolecularSystem
from ..interrupt import check_interrupt
from ..progress import progress_bar
from ..threads import JoinedThreadPool
from .certify import CERTIFICATE, Certificate
from .geometry import as_structure, superposed_rmsd
from .path import ChiPath
from .tracer import (SCRIPT_LOCK, TOLERANCE, LevelSetNode, LevelSetTracer, RelaxSettings,
                     as_chi_model)

__all__ = ["trace_chi_mep", "trace_chi_meps", "transition_states", "default_tolerance",
           "TOLERANCE"]

KJ = unit.kilojoule_per_mole


@dataclass
class _Walk:
    """Options of one trace and the running energy reference of the certificate."""

    step: float
    kappa: float | None
    chi_range: tuple[float, float]
    step_mode: str
    max_displacement: float
    min_advance: float
    stall_nodes: int
    max_halvings: int
    max_node_rmsd: float | None
    window: float                  # kJ/mol
    e_low: float = math.inf        # lowest energy of a locally certified node so far
    max_nodes_branch: int = 0

    def in_window(self, node: LevelSetNode) -> bool:
        return node.energy - min(self.e_low, node.energy) <= self.window

    def accept(self, node: LevelSetNode) -> bool:
        """The node passes the whole certificate (local tests + energy window so far)."""
        return node.local_ok and self.in_window(node)

    def record(self, node: LevelSetNode) -> None:
        if node.local_ok:
            self.e_low = min(self.e_low, node.energy)


def _euler_step(cur: LevelSetNode, sign: int, h: float, walk: _Walk, n: int) -> np.ndarray:
    g = cur.grad
    g2 = float((g * g).sum())
    dx = h * g / (g2 if walk.step_mode == "chi" else math.sqrt(g2))
    # a saturated χ (tiny ‖∇χ‖) would give a huge Δχ-step: cap the displacement
    size = math.sqrt(float((dx * dx).sum()) / n)
    if size > walk.max_displacement:
        dx *= walk.max_displacement / size
    return cur.x + sign * dx


def _next_node(tr: LevelSetTracer, cur: LevelSetNode, sign: int, walk: _Walk
               ) -> tuple[LevelSetNode | None, float, str]:
    """The next node, retried with the step halved while it jumps or fails its certificate.

    Returns (node, step used, problem) with problem "" (a certified node), "nonfinite",
    "jump" or "uncertified" (the last node tried is returned with it).
    """
    node, h, why = None, walk.step, ""
    for halving in range(walk.max_halvings + 1):
        check_interrupt()  # between relaxations: a requested stop ends the path here
        h = walk.step * 0.5 ** halving
        x = tr.set_positions(_euler_step(cur, sign, h, walk, tr.n_atoms))
        z, _ = tr.chi_grad(x)
        if not math.isfinite(z):
            return None, h, "nonfinite"
        node = tr.relax(x, z, walk.kappa)
        if not (math.isfinite(node.energy) and math.isfinite(node.chi)):
            return None, h, "nonfinite"
        if walk.max_node_rmsd is not None and \
                float(superposed_rmsd(cur.x, node.x)) > walk.max_node_rmsd:
            why = "jump"           # the level-set minimum moved too far
        elif not walk.accept(node):
            why = "uncertified"
        else:
            return node, h, ""
    return node, h, why


def _branch(tr: LevelSetTracer, start: LevelSetNode, sign: int, walk: _Walk
            ) -> tuple[list[LevelSetNode], str]:
    nodes: list[LevelSetNode] = []
    cur = start
    lo, hi = walk.chi_range
    stalls = 0
    while True:
        if len(nodes) + 1 >= walk.max_nodes_branch:
            return nodes, "max_nodes"
        if (sign > 0 and cur.chi >= hi) or (sign < 0 and cur.chi <= lo):
            return nodes, "chi_range"
        g2 = float((cur.grad * cur.grad).sum())
        if not (g2 > 0 and math.isfinite(g2)):
            return nodes, "zero_gradient" if g2 == 0 else "nonfinite"
        node, h, why = _next_node(tr, cur, sign, walk)
        if why == "uncertified":
            nodes.append(node)     # kept, marked certified=False
            return nodes, why
        if why:
            return nodes, why
        advance = sign * (node.chi - cur.chi)
        if advance <= 0:  # the minimiser slid back: repeating the same step would too
            return nodes, "stalled"
        stalls = stalls + 1 if advance < walk.min_advance * h / walk.step else 0
        if stalls >= walk.stall_nodes:
            return nodes, "stalled"
        nodes.append(node)
        walk.record(node)
        cur = node


def default_tolerance(system: MolecularSystem, certificate: Certificate = CERTIFICATE
                      ) -> float:
    """The minimiser tolerance of χ-MEP nodes: :data:`TOLERANCE` (1 kJ/mol/nm), or for a
    periodic (solvated) System the certificate's ``orth_force`` (10, OpenMM's default).

    Why: every node minimises the whole box, water included, and the frustrated hydrogen-bond
    network of a water box does not reach an RMS force of 1 within thousands of L-BFGS
    evaluations (measured on alanine dipeptide in 1,288-atom TIP3P: RMS 5–7 after 3,000–4,000
    evaluations on CPU and Reference), so every node would stay "not converged" and
    uncertified; 10 is reached in a few hundred evaluations and is the bound the
    certificate's orthogonal force residual already uses.
    """
    return float(certificate.orth_force) if system.is_periodic else TOLERANCE


def _check_args(system: Any, s: MEPSettings) -> None:
    if not isinstance(system, MolecularSystem):
        raise TypeError(f"system must be a MolecularSystem (load_system(...)), got "
                        f"{type(system).__name__}")
    s.check()


def relax_settings(s: MEPSettings, system: MolecularSystem,
                   certificate: Certificate = CERTIFICATE) -> RelaxSettings:
    """The :class:`RelaxSettings` of the nodes of a trace with settings ``s``."""
    tolerance = default_tolerance(system, certificate) if s.tolerance is None else s.tolerance
    chi_tol = certificate.chi_error if s.chi_tolerance is None else s.chi_tolerance
    return RelaxSettings(tolerance=float(tolerance), max_iterations=int(s.max_iterations),
                         chi_tolerance=float(chi_tol), kappa_min=float(s.kappa_min),
                         kappa_max=float(s.kappa_max), retry_factor=int(s.retry_factor),
                         certificate=certificate)


def _walk(s: MEPSettings, window: float, energy_reference: float | None) -> _Walk:
    min_advance = s.min_advance if s.min_advance is not None else \
        (s.step / 10 if s.step_mode == "chi" else 1e-4)
    return _Walk(step=float(s.step), kappa=s.kappa, chi_range=tuple(s.chi_range),
                 step_mode=s.step_mode, max_displacement=float(s.max_displacement),
                 min_advance=float(min_advance), stall_nodes=int(s.stall_nodes),
                 max_halvings=int(s.max_halvings),
                 max_node_rmsd=None if s.max_node_rmsd is None else float(s.max_node_rmsd),
                 window=window,
                 e_low=math.inf if energy_reference is None else float(energy_reference))


def trace_chi_mep(system: MolecularSystem, model: Any, x0: Any, step: float | None = None, *,
                  settings: MEPSettings | None = None, certificate: Certificate = CERTIFICATE,
                  energy_reference: float | None = None, platform: str = "Reference",
                  properties: dict | None = None, tracer: LevelSetTracer | None = None,
                  **overrides: Any) -> ChiPath:
    """Trace a certified χ-minimum-energy path through ``x0``.

    The knobs are a :class:`~amore_openmm.settings.MEPSettings` (``settings``, default
    ``MEPSettings()``, whose fields hold the defaults); a keyword of the same name (``step``,
    ``kappa``, ``max_nodes``, ...) overrides its field, an unknown keyword is an
    :class:`~amore_openmm.settings.UnknownSettingError` (a TypeError and ValueError).

    Args:
        system: the :class:`MolecularSystem` (its System is copied, never modified).
        model: χ: a ``ChiModel`` or the path of a saved/exported one. It runs in the Context
            as a TorchForce inside the χ restraint; ∇χ comes from ``ChiModel.chi_and_grad``.
        x0: starting structure (n, 3) nm (or (x, y) for Müller–Brown).
        step: h (Δχ per node) for ``step_mode="chi"``; ε (nm) for ``step_mode="fixed"``.
        kappa: restraint stiffness (kJ/mol); None (default) chooses it per node and raises it
            until |χ − z| ≤ ``chi_tolerance`` (see :mod:`amore_openmm.mep.tracer`); a number
            fixes κ (no adaptation; nodes that do not hold the level set are uncertified).
        tolerance, max_iterations: passed to ``LocalEnergyMinimizer.minimize`` (RMS force,
            kJ/mol/nm); a node that did not converge is retried with 4× the iterations.
            ``tolerance=None`` (default): :func:`default_tolerance` (1 in vacuum and implicit
            solvent, 10 for a periodic solvated System).
        chi_range: a branch stops once χ leaves this range.
        max_nodes: at most this many nodes per path (split between the two branches).
        step_mode: "chi" (x ± h∇χ/‖∇χ‖²) or "fixed" (x ± ε∇χ/‖∇χ‖, paper eq. 3).
        direction: "both", "forward" (increasing χ) or "backward".
        chi_tolerance: |χ − z| the κ controller aims at (default ``certificate.chi_error``).
        kappa_min, kappa_max: bounds of the automatic κ.
        max_displacement: cap on an Euler step's RMS displacement per atom (nm).
        min_advance: a node advancing χ less than this counts as a stall (default step/10
            in "chi" mode, 1e-4 in "fixed" mode); ``stall_nodes`` stalls in a row end the
            branch.
        max_node_rmsd: if set (nm, e.g. 0.05 for molecules), a node farther than this from
            the previous one (RMSD after superposition) is retried with the step halved; if
            it still jumps the branch stops with reason "jump". Off by default.
        max_halvings: how often a jumping or uncertified node is retried with half the step.
        certificate: the thresholds a node must meet (:data:`~amore_openmm.mep.CERTIFICATE`).
            A node failing them after the retries ends its branch with "uncertified"; it is
            kept in the path with ``certified=False``.
        energy_reference: optional absolute energy (kJ/mol) of a basin; nodes more than the
            certificate's window above it are uncertified too.
        platform, properties: OpenMM platform of the Context ("Reference" or "CPU").
        tracer: a :class:`LevelSetTracer` to reuse (its settings are replaced by these).

    Returns:
        A :class:`ChiPath` ordered by χ, with ``stop_reasons`` per branch and the per-node
        certificate arrays.
    """
    opts = merge_settings(MEPSettings, settings,
                          {**({} if step is None else {"step": step}), **overrides},
                          "trace_chi_mep")
    _check_args(system, opts)
    x0 = as_structure(x0, system.n_atoms, "x0")
    tr = tracer or LevelSetTracer(system, model, platform, properties)
    tr.settings = relax_settings(opts, system, certificate)
    walk = _walk(opts, certificate.window(tr.kT), energy_reference)
    kappa, max_nodes = opts.kappa, opts.max_nodes
    x = tr.set_positions(x0)
    start = tr.relax(x, tr.chi_grad(x)[0], kappa)
    walk.record(start)
    signs = {"both": (1, -1), "forward": (1,), "backward": (-1,)}[opts.direction]
    branches: dict[int, list[LevelSetNode]] = {1: [], -1: []}
    reasons: dict[str, str] = {}
    budget = max_nodes - 1
    for sign in signs:
        key = "forward" if sign > 0 else "backward"
        if not walk.accept(start):
            reasons[key] = "uncertified"   # no path grows from an uncertified start
            continue
        walk.max_nodes_branch = (budget if len(signs) == 1 else (budget + (sign > 0)) // 2) + 1
        branches[sign], reasons[key] = _branch(tr, start, sign, walk)
    ordered = branches[-1][::-1] + [start] + branches[1]
    return _collect(ordered, len(branches[-1]), reasons, certificate, tr.kT, energy_reference)


def _collect(nodes: list[LevelSetNode], start_index: int, reasons: dict[str, str],
             certificate: Certificate, kT: float, energy_reference: float | None) -> ChiPath:
    """Assemble the ChiPath and judge every node against the final energy reference."""
    grads = np.stack([n.grad for n in nodes])
    g2 = (grads ** 2).sum(-1)
    energy = np.array([n.energy for n in nodes])
    local = np.array([n.local_ok for n in nodes], dtype=bool)
    low = energy[local].min() if local.any() else math.inf
    if energy_reference is not None:
        low = min(low, float(energy_reference))
    certified = local & (energy - low <= certificate.window(kT))
    rel = energy - energy[certified].min() if certified.any() else np.full(len(nodes), np.nan)
    return ChiPath(positions=np.stack([n.x for n in nodes]),
                   chi=np.array([n.chi for n in nodes]), energy=energy,
                   grad_norm=np.sqrt(g2.sum(-1)), atom_grad_sq=g2,
                   z=np.array([n.z for n in nodes]), kappa=np.array([n.kappa for n in nodes]),
                   start_index=int(start_index), stop_reasons=reasons, certified=certified,
                   converged=np.array([n.converged for n in nodes], dtype=bool),
                   iterations=np.array([n.iterations for n in nodes], dtype=np.int64),
                   orth_force=np.array([n.orth_force for n in nodes]), energy_rel=rel,
                   certificate=dict(certificate.as_dict(), kT=kT,
                                    energy_reference=energy_reference))


def trace_chi_meps(system: MolecularSystem, model: Any, starts: Any,
                   pool_size: int | None = None, platform: str = "Reference",
                   properties: dict | None = None, progress: bool = False,
                   settings: MEPSettings | None = None, **kwargs: Any) -> list[ChiPath]:
    """Trace one χ-MEP from each structure in ``starts`` (S, n, 3), in parallel threads.

    Each worker thread owns one :class:`LevelSetTracer` (Context) and reuses it for all the
    paths it traces; minimisation draws no random numbers, so the result does not depend on
    scheduling. Paths come back in the order of ``starts``. ``pool_size`` defaults to the
    number of CPU cores; ``settings`` and ``kwargs`` (setting overrides, ``certificate``,
    ``energy_reference``) go to :func:`trace_chi_mep`. Use the "Reference" or "CPU"
    platform (with "CPU", set ``properties={"Threads": "1"}`` when running one thread per core).
    """
    starts = np.asarray(getattr(starts, "x", starts), dtype=np.float64)
    if starts.ndim == 2:
        starts = starts[None]
    if starts.ndim != 3 or starts.shape[1:] != (system.n_atoms, 3):
        raise ValueError(f"starts must be (S, {system.n_atoms}, 3) in nm, got {starts.shape}")
    size = max(1, min(int(pool_size or os.cpu_count() or 1), len(starts)))
    passed = {k: kwargs.pop(k) for k in ("certificate", "energy_reference") if k in kwargs}
    opts = merge_settings(MEPSettings, settings, kwargs, "trace_chi_meps")  # checked up front
    model = as_chi_model(model)
    local = threading.local()
    from ..forces import load_chi_module
    with SCRIPT_LOCK:
        scripted = load_chi_module(model)  # compile once, shared by all Contexts

    def work(i: int) -> ChiPath:
        tr = getattr(local, "tracer", None)
        if tr is None:
            tr = local.tracer = LevelSetTracer(system, model, platform, properties,
                                               scripted=scripted)
        return trace_chi_mep(system, model, starts[i], settings=opts, tracer=tr, **passed)

    if size == 1:
        return [work(i) for i in range(len(starts))]
    with JoinedThreadPool(max_workers=size, thread_name_prefix="chi-mep") as ex:
        futures = [ex.submit(work, i) for i in range(len(starts))]
        bar = progress_bar(len(futures), desc="χ-MEPs", unit="path") if progress else None
        out = []
        for f in futures:
            out.append(f.result())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out


def transition_states(model: Any, data_or_positions: Any, system: MolecularSystem | None = None,
                      window: tuple[float, float] = (0.49, 0.51), n: int | None = None,
                      return_indices: bool = False, platform: str = "Reference"
                      ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Candidate χ-MEP starts: structures with χ in ``window``, lowest energy first.

    Args:
        model: χ (a ChiModel or the path of a saved one).
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
    chi = as_chi_model(model).chi(x)
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
