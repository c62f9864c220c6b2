"""ChiPath: the nodes of one χ-minimum-energy path with their certificates."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import superposed_rmsd

__all__ = ["ChiPath", "STOP_REASONS", "NODE_FIELDS", "JUMP_FACTOR", "JUMP_MIN_RMSD"]

#: consecutive nodes farther apart (RMSD) than this many times the path's median node
#: distance mark a jump: the level-set minimum switched to another valley, so the nodes on
#: either side are not joined by a path and no barrier may be read across them. Node steps
#: of a continuous χ-MEP vary by a few-fold (Δχ/‖∇χ‖ with ‖∇χ‖ changing along the path).
JUMP_FACTOR = 10.0
#: ... and farther than this (nm RMSD): steps below a thermal displacement amplitude (~0.05 nm
#: for atoms at 300 K) are part of one valley even where the median step is tiny (alanine
#: dipeptide's χ-MEPs step ~0.003 nm; their 0.03–0.04 nm relaxations of side groups at χ ≈
#: 0.65 and 0.9 are not valley switches)
JUMP_MIN_RMSD = 0.05

#: why a branch of a path ended
STOP_REASONS = {
    "chi_range": "χ left chi_range (reached the basin)",
    "stalled": "χ stopped advancing (flat χ or the minimizer pulled back)",
    "max_nodes": "max_nodes reached",
    "uncertified": "a node failed its certificate (mep.CERTIFICATE: level error, stationarity, "
                   "orthogonal force or energy window) even after the retries "
                   "(more iterations, a stiffer κ, the step halved); the node is kept, marked "
                   "certified=False, and the branch ends there",
    "nonfinite": "non-finite energy or ∇χ",
    "zero_gradient": "‖∇χ‖ vanished: no direction to step",
    "jump": "the next level-set minimum lies farther than max_node_rmsd even with the step "
            "halved max_halvings times (a discontinuity of the χ-MEP)",
}

#: per-node arrays of a ChiPath, in the order :meth:`ChiPath.node_arrays` returns them
NODE_FIELDS = ("positions", "chi", "energy", "grad_norm", "atom_grad_sq", "z", "kappa",
               "certified", "converged", "iterations", "orth_force", "energy_rel")


@dataclass
class ChiPath:
    """A χ-minimum-energy path, nodes ordered by increasing χ.

    Attributes:
        positions: (M, n_atoms, 3) nm.
        chi: (M,) χ at each node.
        energy: (M,) potential energy without the restraint, kJ/mol.
        grad_norm: (M,) ‖∇χ‖, nm⁻¹.
        atom_grad_sq: (M, n_atoms) per-atom ‖∇ᵢχ‖² at the node, nm⁻².
        z: (M,) the level each node was minimised on; kappa: (M,) the κ that held it.
        start_index: index of the node minimised from x0.
        stop_reasons: {"forward": reason, "backward": reason} (keys of ``STOP_REASONS``);
            "forward" is the branch along +∇χ (increasing χ).
        certified: (M,) bool, the node passed :data:`~amore_openmm.mep.CERTIFICATE` (or the
            certificate given to the tracer; its values are in ``certificate``).
        converged: (M,) bool, the minimiser converged (RMS gradient ≤ its tolerance).
        iterations: (M,) int, the minimiser's work on the node: energy/force evaluations
            over all κ and retries (L-BFGS iterations plus line-search evaluations, so an
            upper bound on the iterations; OpenMM's iteration reporter cannot run beside a
            TorchForce); -1 where not counted.
        orth_force: (M,) orthogonal force residual ‖(I − n̂n̂ᵀ)F‖, kJ/mol/nm, **RMS per force
            component** (norm/√(3n)), constrained directions projected out.
        energy_rel: (M,) energy above the path's lowest *certified* node, kJ/mol (NaN for all
            nodes when none is certified).
        certificate: the thresholds the nodes were judged by, plus ``kT`` (kJ/mol).

    A path made without certificates (e.g. loaded from an old file) gets certified=False,
    converged=False, iterations=-1 and NaN orth_force/energy_rel: unknown is not certified.
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
    certified: np.ndarray | None = None
    converged: np.ndarray | None = None
    iterations: np.ndarray | None = None
    orth_force: np.ndarray | None = None
    energy_rel: np.ndarray | None = None
    certificate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = len(self.chi)
        defaults = {"certified": (False, bool), "converged": (False, bool),
                    "iterations": (-1, np.int64), "orth_force": (np.nan, np.float64),
                    "energy_rel": (np.nan, np.float64)}
        for name, (fill, dtype) in defaults.items():
            value = getattr(self, name)
            arr = np.full(m, fill, dtype=dtype) if value is None else np.asarray(value, dtype)
            if arr.shape != (m,):
                raise ValueError(f"ChiPath.{name} must have one value per node ({m}), got "
                                 f"shape {arr.shape}")
            setattr(self, name, arr)
        self.start_index = int(self.start_index)

    def __len__(self) -> int:
        return len(self.chi)

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def n_certified(self) -> int:
        """Number of certified nodes."""
        return int(np.count_nonzero(self.certified))

    @property
    def level_error(self) -> np.ndarray:
        """|χ − z| per node: how well the restraint held the level set."""
        return np.abs(self.chi - self.z)

    @property
    def max_energy(self) -> float:
        """Highest energy along the path, all nodes (certified or not), kJ/mol."""
        return float(np.max(self.energy))

    @property
    def highest_node(self) -> int:
        return int(np.argmax(self.energy))

    def jumps(self) -> np.ndarray:
        """(M−1,) bool: True where nodes k and k+1 are more than :data:`JUMP_FACTOR` times
        the median node distance and more than :data:`JUMP_MIN_RMSD` apart (a discontinuity
        of the χ-MEP)."""
        d = self.node_rmsd()
        if len(d) < 3:
            return np.zeros(len(d), dtype=bool)
        return d > max(JUMP_FACTOR * float(np.median(d)), JUMP_MIN_RMSD)

    def continuous(self) -> np.ndarray:
        """(M,) bool: the nodes joined to the start node without crossing a jump."""
        mask = np.zeros(len(self), dtype=bool)
        if len(self) == 0:
            return mask
        cut = np.concatenate([[True], self.jumps(), [True]])   # cut[k]: jump before node k
        i = min(max(self.start_index, 0), len(self) - 1)
        lo = max(k for k in range(i + 1) if cut[k])
        hi = min(k for k in range(i + 1, len(self) + 1) if cut[k])
        mask[lo:hi] = True
        return mask

    def barrier(self) -> float:
        """The transition's barrier, kJ/mol, from the *certified* nodes joined to the start node
        without a jump (:meth:`continuous`): the highest of them between the lowest one on
        each side of the start, minus the lower of those two. Nodes beyond a side's lowest
        node climb the wall where χ saturates past a basin and are not part of the transition.
        NaN if no node qualifies."""
        idx = np.flatnonzero(self.certified & self.continuous())
        if idx.size == 0:
            return float("nan")
        e = self.energy
        left, right = idx[idx <= self.start_index], idx[idx >= self.start_index]
        if left.size == 0 or right.size == 0:
            return float(e[idx].max() - e[idx].min())
        i, j = left[np.argmin(e[left])], right[np.argmin(e[right])]
        between = idx[(idx >= i) & (idx <= j)]
        return float(e[between].max() - min(e[i], e[j]))

    def node_rmsd(self, superpose: bool = True) -> np.ndarray:
        """(M−1,) RMSD (nm) between consecutive nodes.

        With ``superpose`` (default) after optimal rigid-body superposition (Kabsch): χ built
        on internal coordinates does not fix the overall position/orientation, so only the
        internal change counts. Without it, the raw coordinate RMSD.
        """
        return superposed_rmsd(self.positions[:-1], self.positions[1:], superpose)

    def node_arrays(self) -> dict[str, np.ndarray]:
        """The per-node arrays (:data:`NODE_FIELDS`) by name, e.g. to store many paths in one
        file; rebuild with :meth:`from_node_arrays`."""
        return {name: np.asarray(getattr(self, name)) for name in NODE_FIELDS}

    @classmethod
    def from_node_arrays(cls, arrays: dict[str, Any], start_index: int,
                         stop_reasons: dict[str, str],
                         certificate: dict[str, Any] | None = None) -> "ChiPath":
        """Inverse of :meth:`node_arrays`; missing certificate arrays get the defaults."""
        kw = {name: arrays[name] for name in NODE_FIELDS if name in arrays}
        return cls(start_index=int(start_index), stop_reasons=dict(stop_reasons),
                   certificate=dict(certificate or {}), **kw)

    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``.npz`` (atomic write), certificates included."""
        from ..data import atomic_save_npz
        keys = sorted(self.stop_reasons)
        return atomic_save_npz(path, **self.node_arrays(), start_index=self.start_index,
                               stop_keys=np.asarray(keys, dtype=str),
                               stop_values=np.asarray([self.stop_reasons[k] for k in keys],
                                                      dtype=str),
                               certificate=np.asarray(json.dumps(self.certificate)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChiPath":
        """Load a file written by :meth:`save` (files without certificates load as
        uncertified)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ChiPath file {path} does not exist")
        with np.load(path) as d:
            arrays = {k: d[k] for k in d.files}
        reasons = dict(zip((str(k) for k in arrays["stop_keys"]),
                           (str(v) for v in arrays["stop_values"])))
        cert = json.loads(str(arrays["certificate"])) if "certificate" in arrays else {}
        return cls.from_node_arrays(arrays, int(arrays["start_index"]), reasons, cert)

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
