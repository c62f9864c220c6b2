"""Zero-temperature string method (the classical MEP baseline for χ-MEPs).

The string is a chain of images between two states. Each iteration moves every image along
the physical force from an OpenMM Context (x ← x + dt·F), then redistributes the images at
equal arc length along the piecewise-linear curve (the "simplified" string method of
E, Ren & Vanden-Eijnden, J. Chem. Phys. 126, 164103 (2007)). Converged, the force on each
image has no component normal to the string: the string is a minimum-energy path.

With ``climbing=True`` the highest-energy image is, after a warm-up, moved with the force
with its tangential component reversed (F − 2(F·τ)τ) and kept out of the reparametrisation,
so it climbs to the saddle point exactly instead of sitting between two images (the climbing
string of Ren & Vanden-Eijnden). The two halves of the string are reparametrised separately.

Only the coordinates listed in ``dims`` move (for Müller–Brown ``(0, 1)``: the particle's z is
held by a spring and stays where it starts); the others keep their initial values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import openmm
from openmm import unit

from .mep.geometry import as_structure
from .systems import MolecularSystem, get_platform

__all__ = ["string_method", "StringPath", "path_distance", "reparametrize"]


@dataclass
class StringPath:
    """A converged (or last) string.

    Attributes:
        images: (M, n_atoms, 3) positions in nm, ordered from ``a`` to ``b``.
        energy: (M,) potential energy of each image, kJ/mol.
        arc: (M,) normalised arc length in [0, 1] (over the moving coordinates).
        saddle_index: index of the highest-energy image (the climbing image when
            ``climbing=True``).
        iterations: iterations run; converged: whether the residual fell below tolerance.
        residual: final max over images of the displacement per iteration / dt (kJ/mol/nm):
            the effective force still moving the string.
        history: residual every 100 iterations (for diagnostics).
    """

    images: np.ndarray
    energy: np.ndarray
    arc: np.ndarray
    saddle_index: int
    iterations: int
    converged: bool
    residual: float
    history: list[float] = field(default_factory=list)

    @property
    def saddle(self) -> np.ndarray:
        """(n_atoms, 3) positions of the highest-energy image (the saddle estimate)."""
        return self.images[self.saddle_index]

    @property
    def saddle_energy(self) -> float:
        return float(self.energy[self.saddle_index])

    @property
    def barrier(self) -> float:
        """Saddle energy minus the lower end point's energy (kJ/mol)."""
        return float(self.energy[self.saddle_index] - min(self.energy[0], self.energy[-1]))

    def save(self, path: str) -> None:
        """Save as ``.npz`` (atomic write)."""
        from .data import atomic_save_npz
        atomic_save_npz(path, images=self.images, energy=self.energy, arc=self.arc,
                        saddle_index=self.saddle_index, iterations=self.iterations,
                        converged=self.converged, residual=self.residual,
                        history=np.asarray(self.history, dtype=float))

    @classmethod
    def load(cls, path: str) -> "StringPath":
        with np.load(path) as z:
            return cls(images=z["images"], energy=z["energy"], arc=z["arc"],
                       saddle_index=int(z["saddle_index"]), iterations=int(z["iterations"]),
                       converged=bool(z["converged"]), residual=float(z["residual"]),
                       history=list(z["history"]))


# ----------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------
def _arc(flat: np.ndarray) -> np.ndarray:
    seg = np.linalg.norm(np.diff(flat, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def reparametrize(flat: np.ndarray, n: int | None = None) -> np.ndarray:
    """Redistribute the points of a polyline ``flat`` (M, d) at equal arc length.

    Linear interpolation between the existing points; the end points stay. Returns (n, d)
    (n defaults to M).
    """
    flat = np.asarray(flat, dtype=np.float64)
    n = len(flat) if n is None else int(n)
    s = _arc(flat)
    if s[-1] <= 0:
        return np.repeat(flat[:1], n, axis=0)
    target = np.linspace(0.0, s[-1], n)
    out = np.empty((n, flat.shape[1]))
    for j in range(flat.shape[1]):  # loop over coordinates, not points
        out[:, j] = np.interp(target, s, flat[:, j])
    return out


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (P, S) from points p (P, d) to segments a[k]→b[k] (S, d)."""
    ab = b - a                                           # (S, d)
    ap = p[:, None, :] - a[None, :, :]                   # (P, S, d)
    denom = np.einsum("sd,sd->s", ab, ab)
    t = np.where(denom > 0, np.einsum("psd,sd->ps", ap, ab) / np.where(denom > 0, denom, 1),
                 0.0)
    t = np.clip(t, 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - closest, axis=-1)


def _points_to_polyline(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    if len(q) == 1:
        return np.linalg.norm(p - q[0], axis=1)
    return _point_segment_distance(p, q[:-1], q[1:]).min(axis=1)


def _as_polyline(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(getattr(x, "positions", getattr(x, "images", x)), dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim > 2:
        arr = arr.reshape(len(arr), -1)
    if arr.ndim != 2 or len(arr) < 1:
        raise ValueError(f"{name} must be a polyline of shape (M, d) or (M, n_atoms, 3) with "
                         f"M >= 1 points, got shape {np.shape(arr)}")
    return arr


def path_distance(p: Any, q: Any) -> tuple[float, float]:
    """Mean and Hausdorff distance between two polylines.

    ``p`` and ``q`` are (M, d) arrays, (M, n, 3) arrays (flattened per point), or objects
    with ``.positions`` / ``.images`` (a :class:`~amore_openmm.mep.ChiPath`, a
    :class:`StringPath`). For Müller–Brown pass the x–y columns, e.g.
    ``path.positions[:, 0, :2]``.

    Returns:
        (mean, hausdorff): ``mean`` is the average over the vertices of ``p`` of their
        distance to the polyline ``q`` (segments included, not only its vertices), i.e. how far
        ``p`` runs from ``q``; ``hausdorff`` is the symmetric Hausdorff distance between the
        two polylines' vertex sets measured to the other polyline's segments.
    """
    P, Q = _as_polyline(p, "p"), _as_polyline(q, "q")
    if P.shape[1] != Q.shape[1]:
        raise ValueError(f"p and q have different dimensions ({P.shape[1]} vs {Q.shape[1]}); "
                         "select the same coordinates from both")
    dpq = _points_to_polyline(P, Q)
    dqp = _points_to_polyline(Q, P)
    return float(dpq.mean()), float(max(dpq.max(), dqp.max()))


# ----------------------------------------------------------------------------------------
# the string method
# ----------------------------------------------------------------------------------------
class _ForceEvaluator:
    """Energies and forces of many structures from one Context (positions reused)."""

    def __init__(self, system: openmm.System, platform: str, properties: dict | None):
        plat = get_platform(platform)
        self.context = openmm.Context(system, openmm.VerletIntegrator(1e-6), plat,
                                      properties or {})

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.empty(len(images))
        f = np.empty_like(images)
        for k, x in enumerate(images):
            self.context.setPositions(x)
            st = self.context.getState(getEnergy=True, getForces=True)
            e[k] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            f[k] = st.getForces(asNumpy=True).value_in_unit(
                unit.kilojoule_per_mole / unit.nanometer)
        return e, f


def string_method(system: MolecularSystem | openmm.System, a: Any, b: Any,
                  n_images: int = 50, *, images: np.ndarray | None = None,
                  dt: float = 1e-4, max_iterations: int = 20000,
                  tolerance: float = 0.1, climbing: bool = True,
                  climb_after: int = 500, max_step: float = 0.01,
                  dims: Sequence[int] | None = None, platform: str = "Reference",
                  properties: dict | None = None) -> StringPath:
    """Zero-temperature string method between structures ``a`` and ``b``.

    Args:
        system: a :class:`MolecularSystem` or a plain ``openmm.System``. Forces come from one
            Context on ``platform``; constraints are not applied (use a System without
            constraints, or expect the string to move constrained coordinates).
        a, b: end structures, (n_atoms, 3) nm (or (x, y) for Müller–Brown). They are not
            minimised here: give the minima. The end images move along the force too, so they
            slide into the nearest minimum.
        n_images: images on the string (initially the straight line a→b unless ``images``).
        images: optional initial string (M, n_atoms, 3) (overrides ``a``, ``b``, ``n_images``).
        dt: step of the gradient flow, nm²·mol/kJ. Explicit Euler is stable for
            dt < 2/λ_max (largest Hessian eigenvalue): 1e-4 suits Müller–Brown; all-atom
            force fields need ~1e-6.
        max_iterations: iteration limit; ``StringPath.converged`` says whether it was reached
            with the residual below ``tolerance``.
        tolerance: convergence threshold on the string's motion per iteration divided by
            ``dt`` (max over images, kJ/mol/nm): the effective force still moving the images,
            after reparametrisation (the climbing image's full climbing force included).
        climbing: climb the highest-energy image to the saddle (recommended: the saddle is
            then exact, not limited by the image spacing).
        climb_after: iterations of the plain string before the climbing image is switched on
            (or earlier if the plain string has already converged).
        max_step: cap on any image's displacement per iteration (nm), against the large forces
            of a poor initial string.
        dims: which of x, y, z move (default: ``system.coordinate_dims`` for a
            MolecularSystem, else all three).
        platform, properties: OpenMM platform for the force Context.

    Returns:
        A :class:`StringPath`; its ``saddle`` is the highest-energy image.
    """
    omm_system, dims = _resolve_system(system, dims)
    n_atoms = omm_system.getNumParticles()
    images = _initial_images(a, b, n_images, images, n_atoms)
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be positive, got {dt}")
    mask = np.zeros(3, dtype=bool)
    mask[list(dims)] = True
    evaluate = _ForceEvaluator(omm_system, platform, properties)
    template = images.copy()

    def energies_forces(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        full = template.copy()
        full[:, :, mask] = X.reshape(len(X), n_atoms, mask.sum())
        energy, force = evaluate(full)
        return energy, force[:, :, mask].reshape(len(X), -1)

    X = images[:, :, mask].reshape(len(images), -1)
    X, climb, it, converged, residual, history = _evolve(
        X, energies_forces, dt=dt, max_iterations=max_iterations, tolerance=tolerance,
        climbing=climbing, climb_after=climb_after, max_step=max_step)
    images = template.copy()
    images[:, :, mask] = X.reshape(len(X), n_atoms, mask.sum())
    energy, _ = evaluate(images)
    saddle = climb if climb >= 0 else int(np.argmax(energy[1:-1])) + 1
    s = _arc(X)
    arc = s / s[-1] if s[-1] > 0 else s
    return StringPath(images=images, energy=energy, arc=arc, saddle_index=saddle,
                      iterations=it, converged=converged, residual=residual, history=history)


def _resolve_system(system: Any, dims: Sequence[int] | None
                    ) -> tuple[openmm.System, tuple[int, ...]]:
    if isinstance(system, MolecularSystem):
        omm_system = system.system
        if dims is None and system.coordinate_dims is not None:
            dims = system.coordinate_dims
    elif isinstance(system, openmm.System):
        omm_system = system
    else:
        raise TypeError(f"system must be a MolecularSystem or openmm.System, got "
                        f"{type(system).__name__}")
    dims = tuple(range(3)) if dims is None else tuple(int(d) for d in dims)
    if not dims or any(d not in (0, 1, 2) for d in dims):
        raise ValueError(f"dims must be a non-empty subset of (0, 1, 2), got {dims}")
    return omm_system, dims


def _initial_images(a: Any, b: Any, n_images: int, images: np.ndarray | None,
                    n_atoms: int) -> np.ndarray:
    if images is None:
        if n_images < 3:
            raise ValueError(f"n_images must be >= 3, got {n_images}")
        xa, xb = as_structure(a, n_atoms, "a"), as_structure(b, n_atoms, "b")
        t = np.linspace(0.0, 1.0, n_images)[:, None, None]
        return (1 - t) * xa[None] + t * xb[None]
    images = np.array(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1:] != (n_atoms, 3) or len(images) < 3:
        raise ValueError(f"images must have shape (M >= 3, {n_atoms}, 3), got {images.shape}")
    return images


def _evolve(X: np.ndarray, energies_forces: Any, *, dt: float, max_iterations: int,
            tolerance: float, climbing: bool, climb_after: int, max_step: float
            ) -> tuple[np.ndarray, int, int, bool, float, list[float]]:
    """The string iterations on the flattened moving coordinates X (M, d).

    Returns (X, climbing image or -1, iterations, converged, residual, history).
    """
    climb, history, residual, it, converged = -1, [], math.inf, 0, False
    for it in range(1, max_iterations + 1):
        energy, F = energies_forces(X)
        if not np.all(np.isfinite(energy)):
            raise FloatingPointError(
                f"string_method: non-finite energy at iteration {it}; reduce dt (now {dt}) "
                "or give end points with finite energy")
        tau = np.zeros_like(X)
        tau[1:-1] = X[2:] - X[:-2]
        norm = np.linalg.norm(tau, axis=1, keepdims=True)
        tau = np.divide(tau, norm, out=np.zeros_like(tau), where=norm > 0)
        Fpar = np.sum(F * tau, axis=1, keepdims=True) * tau
        if climbing and climb < 0 and (it > climb_after or residual < tolerance):
            climb = int(np.argmax(energy[1:-1])) + 1
            residual = math.inf  # the climbing image must converge too
        elif residual < tolerance:
            converged = True
            break
        step = dt * F
        if climb >= 0:
            step[climb] = dt * (F[climb] - 2 * Fpar[climb])
        length = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, max_step / np.maximum(length, 1e-300))
        X_old = X
        X = X + step
        if climb >= 0:
            X = np.concatenate([reparametrize(X[:climb + 1]), reparametrize(X[climb:])[1:]])
            # re-elect the climbing image if a neighbour has become higher
            top = int(np.argmax(energy[1:-1])) + 1
            if abs(top - climb) == 1 and energy[top] > energy[climb] + 1e-9:
                climb = top
        else:
            X = reparametrize(X)
        # The fixed point of "step + reparametrise" is the discrete MEP; its residual
        # normal force is O(spacing²) and never reaches 0, so converge on the motion.
        residual = float(np.linalg.norm(X - X_old, axis=1).max() / dt)
        if it % 100 == 1:
            history.append(residual)
    return X, climb, it, converged, residual, history
