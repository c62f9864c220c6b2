"""The Müller–Brown toy: one particle in the standard 4-term potential, overdamped dynamics."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import openmm
from openmm import app

from .common import BOLTZ
from .molecular import MolecularSystem

__all__ = ["MULLER_BROWN", "MULLER_BROWN_Z_SPRING", "muller_brown_expression",
           "muller_brown_energy", "muller_brown_system"]

MULLER_BROWN = {
    "A": (-200.0, -100.0, -170.0, 15.0),
    "a": (-1.0, -1.0, -6.5, 0.7),
    "b": (0.0, 0.0, 11.0, 0.6),
    "c": (-10.0, -10.0, -6.5, 0.7),
    "x0": (1.0, 0.0, -0.5, -1.0),
    "y0": (0.0, 0.5, 1.5, 1.0),
}
#: harmonic restraint holding the particle near z = 0 (kJ/mol/nm²); dt·k = 0.1 keeps the
#: Brownian step stable and z never enters the x–y dynamics.
MULLER_BROWN_Z_SPRING = 1000.0


def muller_brown_expression() -> str:
    """The potential as an OpenMM custom-force expression in x and y (nm → kJ/mol)."""
    p = MULLER_BROWN
    terms = []
    for A, a, b, c, x0, y0 in zip(p["A"], p["a"], p["b"], p["c"], p["x0"], p["y0"]):
        terms.append(f"({A})*exp(({a})*(x-({x0}))^2+({b})*(x-({x0}))*(y-({y0}))"
                     f"+({c})*(y-({y0}))^2)")
    return "+".join(terms)


def muller_brown_energy(xy: np.ndarray) -> np.ndarray:
    """The Müller–Brown potential (kJ/mol) at points ``xy`` of shape (..., 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    p = MULLER_BROWN
    e = np.zeros_like(x)
    for A, a, b, c, x0, y0 in zip(p["A"], p["a"], p["b"], p["c"], p["x0"], p["y0"]):
        e = e + A * np.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
    return e


def muller_brown_system(sigma: float = 5.0, timestep: float = 1e-4, lag_steps: int = 10,
                        start: Sequence[float] = (-0.558, 1.442)) -> MolecularSystem:
    """One particle (1 amu) in the Müller–Brown potential, overdamped, β = 2/σ².

    With ``BrownianIntegrator``, mass 1 amu and friction 1/ps, mγ = 1 and
    dx = F dt + sqrt(2 kT dt) ξ, so σ = 5 gives kT = σ²/2 = 12.5 kJ/mol.
    """
    system = openmm.System()
    system.addParticle(1.0)
    force = openmm.CustomExternalForce(
        f"{muller_brown_expression()}+0.5*{MULLER_BROWN_Z_SPRING}*z^2")
    force.addParticle(0, [])
    force.setName("MullerBrown")
    system.addForce(force)
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MB", chain)
    top.addAtom("P", None, res)
    kT = sigma**2 / 2.0
    pos = np.array([[start[0], start[1], 0.0]])
    return MolecularSystem(system=system, topology=top, positions=[pos],
                           temperature=kT / BOLTZ, timestep=timestep, friction=1.0,
                           integrator="brownian", lag_steps=lag_steps,
                           featurizer="coordinates", name="muller_brown",
                           source="muller_brown", coordinate_dims=(0, 1))
