"""When a χ-MEP node counts as a result: the certificate and the force it measures.

A node is a *level-set minimum*: the lowest energy on the level set χ = z (within the
constraint manifold when the System has constraints). It is **certified** when all of

1. ``|χ − z| ≤ chi_error`` — the restraint held the level set;
2. the node is stationary — the RMS gradient of energy + restraint (constrained components
   projected out) is at most ``orth_force`` (or the minimiser tolerance, if larger) at the
   final positions. Whether the minimiser reached its own, usually stricter tolerance is
   recorded per node (``converged``) but not required: the orthogonal part of that gradient
   is test 3's residual, so demanding the minimiser tolerance (1 kJ/mol/nm for the χ-MEP)
   would silently replace test 3's threshold by 1 (measured: alanine dipeptide's nodes at
   χ ≈ 0.49 stopped at RMS 1.1–1.6 with κ ~ 3·10⁴, ending every default-preset path there);
3. the *orthogonal force residual* ``‖(I − n̂n̂ᵀ)F‖`` (n̂ = ∇χ/‖∇χ‖, F the physical force,
   constrained directions projected out as well) is at most ``orth_force``; it is reported
   as an **RMS per force component** in kJ/mol/nm (norm / √(3n)), the same convention as the
   tolerance of ``openmm.LocalEnergyMinimizer``;
4. its energy is at most ``energy_window_kT``·kT above the path's lowest node that passes
   1–3 (and above ``energy_reference`` when the tracer is given one);
5. energy, χ and ∇χ are finite.

Why these numbers (all in :data:`CERTIFICATE`, the one place they are stated):

* ``orth_force = 10 kJ/mol/nm``: OpenMM's default minimiser tolerance. The thermal force
  scale of a covalent system is far larger: by ⟨F²⟩ = kT·⟨∂²U/∂x²⟩ a bond of stiffness
  k ≈ 3·10⁵ kJ/mol/nm² at 300 K gives an RMS force of √(kT·k) ≈ 900 kJ/mol/nm, so 10 is ~1 % of
  it; along a soft torsional mode (k ≈ 10³) a residual of 10 displaces the node by
  F/k ≈ 0.01 nm and changes its energy by F²/2k ≈ 0.05 kJ/mol ≪ kT. (On Müller–Brown,
  kT = 12.5 kJ/mol and curvatures ~10³, the thermal force is ~100: still ≤ 10 %.)
* ``chi_error = 1e-3``: a tenth of the default step Δχ = 0.01, so consecutive nodes lie on
  distinct, ordered level sets.
* ``energy_window_kT = 60``: χ is learned from MD bursts, so the process it describes is one
  the dynamics cross on simulation time scales. By Eyring, a barrier ΔE gives a rate
  (kT/h)·e^(−ΔE/kT) ≈ 6·10¹² s⁻¹·e^(−ΔE/kT): anything the data can show (rates ≥ 1/ms) has
  ΔE ≲ 23 kT, and 60 kT (rate ~10⁻¹⁴ s⁻¹) leaves more than a factor 2 for the difference
  between a potential-energy path and a free-energy barrier. A node higher than that is an
  artefact (a κ at its cap pulling atoms through each other, a torn structure), not a
  mechanism. At 310 K the window is 155 kJ/mol; alanine dipeptide's χ-MEP barriers are
  tens of kJ/mol, Müller–Brown's is 8.5 kT.

With constraints (``HBonds``, rigid water) the force along a constrained bond is balanced by
the constraint, not by the potential, so those directions are projected out (the exact
Euclidean projection onto the tangent space of all constraints and of the level set).
Particles of zero mass are fixed by OpenMM's minimiser and are left out likewise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Certificate", "CERTIFICATE", "ConstraintProjector", "orthogonal_force_rms",
           "rms"]


@dataclass(frozen=True)
class Certificate:
    """Thresholds a χ-MEP node must meet (see the module docstring for their physics).

    Attributes:
        chi_error: max |χ − z| (dimensionless).
        orth_force: max orthogonal force residual, kJ/mol/nm, RMS per force component.
        energy_window_kT: max energy above the path's lowest node passing the other tests, in
            units of kT of the System's temperature.
        require_stationary: the restrained energy must be stationary to ``orth_force``
            (test 2; on by default).
    """

    chi_error: float = 1e-3
    orth_force: float = 10.0
    energy_window_kT: float = 60.0
    require_stationary: bool = True

    def __post_init__(self) -> None:
        for name in ("chi_error", "orth_force", "energy_window_kT"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"Certificate.{name} must be a positive number, got {value}")

    def local_ok(self, level_error: float, total_force: float, orth_force: float,
                 energy: float, tolerance: float = 0.0) -> bool:
        """Tests 1, 2, 3 and 5 (everything except the energy window). ``total_force``: RMS
        gradient of energy + restraint; ``tolerance``: the minimiser's (kJ/mol/nm)."""
        stationary = total_force <= max(self.orth_force, tolerance) * (1 + 1e-9)
        return bool(math.isfinite(energy) and math.isfinite(orth_force)
                    and level_error <= self.chi_error
                    and (stationary or not self.require_stationary)
                    and orth_force <= self.orth_force)

    def window(self, kT: float) -> float:
        """The energy window in kJ/mol at thermal energy ``kT`` (kJ/mol)."""
        return self.energy_window_kT * float(kT)

    def as_dict(self) -> dict:
        return asdict(self)


#: the thresholds used unless a caller passes another :class:`Certificate`
CERTIFICATE = Certificate()


def rms(v: np.ndarray) -> float:
    """RMS per component of a force (or gradient) array."""
    v = np.asarray(v, dtype=np.float64)
    return float(np.sqrt(np.mean(v * v))) if v.size else 0.0


class ConstraintProjector:
    """Projects (n, 3) vectors onto the tangent space of a System's distance constraints.

    Args:
        pairs: (m, 2) atom indices of the constraints (empty: no constraints).
        fixed: (n,) boolean mask of particles that do not move (zero mass).
    """

    def __init__(self, pairs: np.ndarray, fixed: np.ndarray):
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.fixed = np.asarray(fixed, dtype=bool)

    @classmethod
    def from_system(cls, system) -> "ConstraintProjector":
        """From an ``openmm.System`` (its constraints and zero-mass particles)."""
        pairs = [system.getConstraintParameters(k)[:2]
                 for k in range(system.getNumConstraints())]
        fixed = np.array([system.getParticleMass(i)._value == 0
                          for i in range(system.getNumParticles())])
        return cls(np.array(pairs, dtype=np.int64).reshape(-1, 2), fixed)

    def __call__(self, positions: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Project each of ``vectors`` (k, n, 3) at ``positions`` (n, 3); returns (k, n, 3)."""
        v = np.array(vectors, dtype=np.float64)
        v[:, self.fixed] = 0.0
        if len(self.pairs) == 0:
            return v
        from scipy import sparse
        from scipy.sparse.linalg import spsolve
        n = positions.shape[0]
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        e = positions[i] - positions[j]
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = len(self.pairs)
        cols = np.concatenate([3 * i[:, None] + np.arange(3), 3 * j[:, None] + np.arange(3)],
                              axis=1)
        a = sparse.csr_matrix((np.concatenate([e, -e], axis=1).ravel(),
                               (np.repeat(np.arange(m), 6), cols.ravel())), shape=(m, 3 * n))
        flat = v.reshape(len(v), -1).T                       # (3n, k)
        y = spsolve((a @ a.T).tocsc(), a @ flat)
        y = np.asarray(y).reshape(m, -1)
        return (flat - a.T @ y).T.reshape(v.shape)


def orthogonal_force_rms(force: np.ndarray, grad_chi: np.ndarray, positions: np.ndarray,
                         projector: ConstraintProjector | None = None) -> float:
    """‖(I − n̂n̂ᵀ)F‖ as RMS per component (kJ/mol/nm), n̂ = ∇χ/‖∇χ‖.

    ``force`` and ``grad_chi`` are (n, 3); with a ``projector`` both are first projected onto
    the constraints' tangent space, so the result is the force component that is orthogonal to
    ∇χ *and* free to move. A vanishing ∇χ leaves the whole (projected) force.
    """
    if projector is not None:
        force, g = projector(positions, np.stack([force, grad_chi]))
    else:
        g = np.asarray(grad_chi, dtype=np.float64)
    g2 = float((g * g).sum())
    perp = force - (float((force * g).sum()) / g2) * g if g2 > 0 else force
    return rms(perp)
