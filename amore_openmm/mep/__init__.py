"""χ-minimum-energy paths (χ-MEPs): follow ∇χ with energy minimisation on χ level sets.

Algorithm (paper eq. 3, arXiv 2511.15514):

1. One OpenMM Context holds a *copy* of the physical System plus a
   :class:`~amore_openmm.forces.ChiRestraintForce` ``0.5·κ·(χ − z)²`` in its own force group
   (:class:`LevelSetTracer`).
2. Node 0: ``z = χ(x0)``, ``LocalEnergyMinimizer.minimize`` → the lowest-energy point on the
   level set through x0 (at that minimum the physical force has no component orthogonal to
   ∇χ: the "orthogonal energy minimisation").
3. Euler step ``x ← x ± h·∇χ/‖∇χ‖²`` (``step_mode="chi"``: Δχ ≈ h) or the paper's
   ``x ← x ± ε·∇χ/‖∇χ‖`` (``step_mode="fixed"``); ``z ← χ(x)``; minimise again; record.
4. Repeat in both directions from node 0 until χ leaves ``chi_range``, χ stops advancing,
   ``max_nodes``, or a node fails its certificate; the two branches are joined into one path
   ordered by χ.

Every node is certified (:mod:`.certify`, thresholds in :data:`CERTIFICATE`): |χ − z|, the
minimiser's convergence and iterations, the force orthogonal to ∇χ, and an energy window
above the path's lowest node. A failing node is retried (more iterations, stiffer κ, the
step halved); if it still fails, its branch ends with stop reason "uncertified" and the node
stays in the path with ``certified=False``. Use only certified nodes as results
(:meth:`ChiPath.barrier` does).

Constraints. ``LocalEnergyMinimizer`` enforces the System's constraints itself; after each
Euler step the positions are projected back with ``Context.applyConstraints``; the
certificate projects constrained directions out of the forces.

Many paths at once: :func:`trace_chi_meps_batched` traces P paths in one Context holding P
packed copies, with one batched χ evaluation per force call (:mod:`.batched`). Its nodes are
minimised by ``LocalEnergyMinimizer`` on the packed System, or (``minimizer="copies"``) by a
per-copy L-BFGS (:mod:`.copy_lbfgs`), or (``"fire"``) a per-copy FIRE (:mod:`.fire`); the
certificate is the same.

Modules: :mod:`.trace` (trace_chi_mep, trace_chi_meps, transition_states),
:mod:`.batched` (trace_chi_meps_batched), :mod:`.packed_levels` (its packed Context),
:mod:`.copy_lbfgs` (per-copy L-BFGS), :mod:`.fire` (per-copy FIRE),
:mod:`.tracer` (LevelSetTracer), :mod:`.certify`, :mod:`.path` (ChiPath), :mod:`.pathio`
(PDB/DCD), :mod:`.geometry`.
"""
from .batched import trace_chi_meps_batched
from .certify import CERTIFICATE, Certificate, orthogonal_force_rms
from .geometry import as_structure, superposed_rmsd
from .path import JUMP_FACTOR, JUMP_MIN_RMSD, NODE_FIELDS, STOP_REASONS, ChiPath
from .pathio import path_bfactors, write_path_dcd, write_path_pdb
from .trace import default_tolerance, trace_chi_mep, trace_chi_meps, transition_states
from .tracer import LevelSetNode, LevelSetTracer, RelaxSettings, as_chi_model

__all__ = ["ChiPath", "JUMP_FACTOR", "JUMP_MIN_RMSD", "trace_chi_mep", "trace_chi_meps",
           "trace_chi_meps_batched", "transition_states", "default_tolerance",
           "write_path_pdb", "write_path_dcd", "path_bfactors", "STOP_REASONS", "NODE_FIELDS",
           "LevelSetTracer", "LevelSetNode", "RelaxSettings", "CERTIFICATE", "Certificate",
           "orthogonal_force_rms", "as_chi_model", "as_structure", "superposed_rmsd"]
