"""Umbrella windows along χ inside OpenMM: :class:`UmbrellaSampler` → :class:`UmbrellaSamples`.

Window k runs the system's own dynamics (its integrator, temperature, timestep, friction)
plus the restraint 0.5·κ_k·(χ − z_k)² (:class:`~amore_openmm.forces.ChiRestraintForce`).
One Context serves every window: z and κ change with ``Context.setParameter``, and window k
starts from the last structure of window k − 1, so the windows walk along χ.
Units: nm, ps, kJ/mol, K; χ is dimensionless.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import openmm
import torch
from openmm import unit

from ..data import atomic_save_npz
from ..interrupt import check_interrupt
from ..progress import progress_bar
from ..systems import MolecularSystem

__all__ = ["UmbrellaSampler", "UmbrellaSamples", "check_chi_model", "evaluate_chi_batch",
           "auto_kappa", "chi_grad_metric", "STIFFNESS_LIMIT"]

#: largest restraint stiffness number a window may reach: dt·κ·G/γ (Brownian) or dt²·κ·G
#: (Langevin), G = Σᵢ‖∇ᵢχ‖²/mᵢ. Euler–Maruyama widens a harmonic well of stiffness k by
#: 1/(1 − k·dt/2) in variance: 0.2 keeps that ≤ 11 % (the Müller–Brown system itself runs
#: at k·dt ≈ 0.3 in its minima), so MBAR's bias model stays about right
STIFFNESS_LIMIT = 0.2


def check_chi_model(model: Any, n_atoms: int | None = None) -> Any:
    """``model`` if it is a χ (ChiModel, TorchScript module or existing file path), else
    ValueError naming what was passed."""
    from ..chi import ChiModel
    if model is None:
        raise ValueError("model: a χ is required (a ChiModel, a TorchScript χ module or the "
                         "path of a file from ChiModel.export_torchscript), got None")
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise ValueError(f"model: χ file {model} does not exist; export it with "
                             "ChiModel.export_torchscript(path)")
    elif not isinstance(model, (ChiModel, torch.jit.ScriptModule)):
        raise ValueError(f"model must be a χ (ChiModel, TorchScript module or file path), got "
                         f"{type(model).__name__}")
    if n_atoms is not None and isinstance(model, ChiModel) and model.n_atoms > n_atoms:
        raise ValueError(f"model: χ needs {model.n_atoms} atoms but the system has {n_atoms}")
    return model


def evaluate_chi_batch(model: Any, positions: np.ndarray) -> np.ndarray:
    """χ (B,) of positions (B, n, 3) nm for a ChiModel, TorchScript module or file path."""
    x = np.asarray(positions, dtype=np.float64)
    if hasattr(model, "chi"):
        return np.asarray(model.chi(x), dtype=np.float64)
    from ..forces import load_chi_module
    module = load_chi_module(model)
    out = []
    with torch.no_grad():
        for s in range(0, len(x), 4096):
            out.append(module(torch.as_tensor(x[s:s + 4096])).double().reshape(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def chi_grad_metric(model: Any, positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """G = Σᵢ‖∇ᵢχ‖²/mᵢ (nm⁻²/amu), (B,), of positions (B, n, 3) nm: κ·G is the restraint's
    stiffness along ∇χ in the dynamics' own (mass-weighted) units."""
    x = np.asarray(positions, dtype=np.float64)
    if hasattr(model, "grad"):
        g = np.asarray(model.grad(x), dtype=np.float64)
    else:
        from ..forces import load_chi_module
        module = load_chi_module(model)
        t = torch.as_tensor(x).requires_grad_(True)
        (grad,) = torch.autograd.grad(module(t).sum(), t)
        g = grad.double().numpy()
    m = np.asarray(masses, dtype=np.float64)[:g.shape[1]]
    inv = np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), 0.0)   # massless: fixed, no motion
    return np.einsum("bnd,n->b", g * g, inv)


def auto_kappa(windows: np.ndarray, kT: float) -> float:
    """κ (kJ/mol) with thermal width sqrt(kT/κ) equal to the window spacing Δz.

    Neighbouring windows then overlap well (what MBAR needs) even where F(χ) is steep, and
    the restraint stays soft: a stiffer one adds curvature κ‖∇χ‖² that a finite timestep
    samples too broadly (measured on Müller–Brown, Brownian dt = 1e-4, with width Δz/2:
    window χ std 0.030 for the nominal 0.025, and F(χ) off by 0.35 kT)."""
    z = np.sort(np.asarray(windows, dtype=float))
    dz = float(np.min(np.diff(z))) if len(z) > 1 else 0.1
    return float(kT / dz ** 2)


def _kj(value: Any, name: str) -> float:
    if unit.is_quantity(value):
        return float(value.value_in_unit(unit.kilojoule_per_mole))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in kJ/mol (or an energy Quantity), got "
                         f"{value!r}") from None


@dataclass
class UmbrellaSamples:
    """Saved frames of umbrella windows along χ (equilibration frames already dropped).

    Attributes:
        positions: (N, n, 3) nm, frames of all windows, window 0 first.
        chi: (N,) χ of each frame.
        energy: (N,) potential energy of the physical System (kJ/mol, no restraint).
        window: (N,) window index of each frame (non-decreasing).
        z: (K,) restraint centres. kappa: (K,) stiffnesses (kJ/mol).
        kT: thermal energy (kJ/mol). timestep: ps. stride: integrator steps between frames.
        substeps: (K,) each window ran stride·substeps steps of timestep/substeps per frame.
        stiffness: (K,) the largest restraint stiffness number a window's frames reached
            (see :data:`STIFFNESS_LIMIT`).
    """

    positions: np.ndarray
    chi: np.ndarray
    energy: np.ndarray
    window: np.ndarray
    z: np.ndarray
    kappa: np.ndarray
    kT: float
    timestep: float = float("nan")
    stride: int = 1
    substeps: np.ndarray | None = None
    stiffness: np.ndarray | None = None

    @property
    def n_windows(self) -> int:
        return len(self.z)

    @property
    def n_samples(self) -> int:
        return len(self.chi)

    @property
    def counts(self) -> np.ndarray:
        """(K,) frames per window."""
        return np.bincount(self.window, minlength=self.n_windows)

    def bias_kT(self) -> np.ndarray:
        """(K, N) reduced bias 0.5·κ_k·(χ_n − z_k)²/kT of every frame in every window."""
        d = self.chi[None, :] - self.z[:, None]
        return 0.5 * self.kappa[:, None] * d * d / self.kT

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` (atomic)."""
        return atomic_save_npz(path, positions=self.positions, chi=self.chi, energy=self.energy,
                               window=self.window, z=self.z, kappa=self.kappa, kT=self.kT,
                               timestep=self.timestep, stride=self.stride,
                               substeps=self._or_nan(self.substeps),
                               stiffness=self._or_nan(self.stiffness))

    def _or_nan(self, a: np.ndarray | None) -> np.ndarray:
        return np.full(self.n_windows, np.nan) if a is None else np.asarray(a, dtype=float)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UmbrellaSamples":
        with np.load(path) as f:
            opt = {k: f[k] for k in ("substeps", "stiffness") if k in f.files}
            if "substeps" in opt:
                opt["substeps"] = opt["substeps"].astype(np.int64)
            return cls(positions=f["positions"], chi=f["chi"], energy=f["energy"],
                       window=f["window"].astype(np.int64), z=f["z"], kappa=f["kappa"],
                       kT=float(f["kT"]), timestep=float(f["timestep"]),
                       stride=int(f["stride"]), **opt)


class UmbrellaSampler:
    """Umbrella sampling along χ with the restraint 0.5·κ·(χ − z)² inside OpenMM.

    Args:
        system: a :class:`~amore_openmm.systems.MolecularSystem` (its dynamics settings are
            used unchanged).
        model: the χ (ChiModel, TorchScript module or exported file path).
        windows: restraint centres z in [0, 1] (default 21 equally spaced).
        kappa: stiffness in kJ/mol (number, Quantity, or one per window); "auto" gives
            thermal width sqrt(kT/κ) equal to the window spacing (:func:`auto_kappa`).
        platform: OpenMM platform name. backend: χ force backend ("auto", "torchforce",
            "pythonforce"; "auto" on Reference/CPU is "pythonforce" with numpy χ passes
            where the model has them, :func:`~amore_openmm.forces.backend.backend_for`).
            prefix: the restraint's global-parameter prefix.
        substeps: integrator substeps per step (one, or one per window; the timestep is
            divided by it, the physical time per frame kept); "auto" raises it during a
            window whenever a frame's stiffness number dt·κ·Σᵢ‖∇ᵢχ‖²/(mᵢγ) (Brownian) or
            dt²·κ·Σᵢ‖∇ᵢχ‖²/mᵢ (Langevin) would exceed ``stiffness_limit``, up to
            ``max_substeps`` — a steep χ (ISOKANN's saddle) with a stiff κ needs it. It is
            checked once per frame, so a window that enters the steep region within one
            frame can be under-resolved there: the frames' largest number is recorded
            (``UmbrellaSamples.stiffness``), and ``min_substeps`` (one, or one per window,
            e.g. a pilot's) is where "auto" starts.
    """

    def __init__(self, system: MolecularSystem, model: Any,
                 windows: Sequence[float] | np.ndarray | None = None, kappa: Any = "auto",
                 platform: str = "Reference", backend: str = "auto",
                 prefix: str = "amore_umbrella", substeps: Any = 1,
                 stiffness_limit: float = STIFFNESS_LIMIT, max_substeps: int = 64,
                 min_substeps: Any = 1) -> None:
        if not isinstance(system, MolecularSystem):
            raise ValueError(f"system must be a MolecularSystem (load_system(...)), got "
                             f"{type(system).__name__}")
        self.system = system
        self.model = check_chi_model(model, system.n_atoms)
        z = np.linspace(0.0, 1.0, 21) if windows is None else \
            np.asarray(windows, dtype=np.float64).reshape(-1)
        if len(z) == 0 or not np.all(np.isfinite(z)):
            raise ValueError(f"windows must be a non-empty list of finite χ values, got {windows}")
        if z.min() < 0.0 or z.max() > 1.0:
            bad = z[(z < 0) | (z > 1)]
            raise ValueError(f"windows: every restraint centre must lie in [0, 1] (χ's range), "
                             f"got {bad.tolist()}; use e.g. np.linspace(0, 1, K)")
        self.z = z
        if isinstance(kappa, str):
            if kappa != "auto":
                raise ValueError(f"kappa must be a number (kJ/mol) or 'auto', got {kappa!r}")
            k = np.full(len(z), auto_kappa(z, system.kT))
        elif np.ndim(kappa) == 0 or unit.is_quantity(kappa):
            k = np.full(len(z), _kj(kappa, "kappa"))
        else:
            k = np.array([_kj(v, "kappa") for v in kappa], dtype=np.float64)
            if k.shape != z.shape:
                raise ValueError(f"kappa: {len(k)} values for {len(z)} windows; give one κ or "
                                 "one per window")
        if not np.all(np.isfinite(k)) or np.any(k <= 0):
            raise ValueError(f"kappa must be > 0 kJ/mol (a restraint that pulls), got "
                             f"{k.min():g}")
        self.kappa = k
        self.platform, self.backend, self.prefix = platform, backend, prefix
        self.auto_substeps = isinstance(substeps, str)
        if self.auto_substeps and substeps != "auto":
            raise ValueError(f"substeps must be a positive integer, one per window, or 'auto', "
                             f"got {substeps!r}")
        try:
            sub = np.broadcast_to(np.asarray(min_substeps if self.auto_substeps else
                                             substeps, dtype=float).reshape(-1),
                                  z.shape).copy()
        except (TypeError, ValueError):
            sub = np.zeros(1)
        if np.any(sub < 1) or np.any(sub != np.round(sub)):
            raise ValueError(f"substeps must be a positive integer (or one per window, or "
                             f"'auto'), got {substeps!r}")
        self.substeps = sub.astype(np.int64)
        if not (float(stiffness_limit) > 0 and int(max_substeps) >= 1):
            raise ValueError(f"stiffness_limit must be > 0 and max_substeps >= 1, got "
                             f"{stiffness_limit}, {max_substeps}")
        self.stiffness_limit, self.max_substeps = float(stiffness_limit), int(max_substeps)
        masses = [system.system.getParticleMass(i).value_in_unit(unit.dalton)
                  for i in range(system.n_atoms)]
        self.masses = np.asarray(masses, dtype=np.float64)

    def stiffness_number(self, positions: np.ndarray, kappa: float) -> np.ndarray:
        """Restraint stiffness number (B,) at positions (B, n, 3) nm for stiffness κ, at the
        system's own timestep (substeps s divide it by s (Brownian) or s² (Langevin))."""
        g = chi_grad_metric(self.model, positions, self.masses)
        dt = self.system.timestep
        if self.system.integrator == "brownian":
            return dt * kappa * g / self.system.friction
        return dt * dt * kappa * g

    def needed_substeps(self, number: float) -> int:
        """Substeps that bring a stiffness number to the limit (capped at max_substeps)."""
        r = max(float(number), 0.0) / self.stiffness_limit
        n = r if self.system.integrator == "brownian" else np.sqrt(r)
        return int(min(self.max_substeps, max(1, np.ceil(n))))

    @staticmethod
    def _restore(path: Path, key: np.ndarray, ctx: openmm.Context, pos: list, ene: list,
                 subs: np.ndarray, stiff: np.ndarray) -> int:
        """Windows restored from a :meth:`run` checkpoint into ``pos``/``ene`` and the Context
        (0 when there is none for these settings)."""
        if not path.is_file():
            return 0
        with np.load(path) as f:
            if f["key"].shape != key.shape or not np.array_equal(f["key"], key):
                return 0  # another run's checkpoint: start over (it is overwritten)
            ctx.loadCheckpoint(f["context"].tobytes())
            pos.extend(f["positions"])
            ene.extend(f["energy"])
            subs[:] = f["substeps"]
            stiff[:] = f["stiffness"]
            return int(f["windows_done"])

    def _context(self, seed: int) -> tuple[openmm.Context, Any]:
        from ..forces import ChiRestraintForce, backend_for
        omm = openmm.XmlSerializer.clone(self.system.system)  # the user's System stays bare
        restraint = ChiRestraintForce(self.model, float(self.z[0]), float(self.kappa[0]),
                                      backend=backend_for(self.backend, self.platform,
                                                          self.model), prefix=self.prefix)
        omm.addForce(restraint)
        used = {omm.getForce(i).getForceGroup() for i in range(omm.getNumForces() - 1)}
        group = next((g for g in range(31, -1, -1) if g not in used), None)
        if group is None:
            raise ValueError("all 32 force groups of the System are in use; free one for the "
                             "χ restraint")
        restraint.setForceGroup(group)
        ctx = self.system.make_context(self.platform, seed=seed, system=omm)
        self._physical = sum(1 << g for g in range(32) if g != group)
        return ctx, restraint

    def run(self, frames: int = 1000, stride: int | None = None, equilibration: int = 100,
            seed: int = 0, start: Any = None, progress: bool = False,
            checkpoint: str | os.PathLike | None = None) -> UmbrellaSamples:
        """Run every window and return its saved frames.

        Args:
            frames: frames saved per window (after equilibration).
            stride: integrator steps between frames (default: the system's ``lag_steps``).
            equilibration: frames run and discarded at the start of each window.
            seed: seed of the integrator noise and the initial velocities.
            start: (n, 3) nm start of window 0 (default: the system's first structure).
            progress: show progress on stderr (one step per window).
            checkpoint: an ``.npz`` written after every window (frames so far and the
                Context's state); a run with the same settings resumes from it and gives the
                frames an uninterrupted run gives. The caller removes it when done.
        """
        frames, equilibration = int(frames), int(equilibration)
        stride = int(self.system.lag_steps if stride is None else stride)
        if frames < 2 or stride < 1 or equilibration < 0:
            raise ValueError(f"frames must be >= 2, stride >= 1 and equilibration >= 0; got "
                             f"{frames}, {stride}, {equilibration}")
        ctx, restraint = self._context(seed)
        if start is not None:
            ctx.setPositions(np.asarray(start, dtype=np.float64).reshape(-1, 3))
        integ = ctx.getIntegrator()
        dt = integ.getStepSize()
        pos, ene = [], []
        subs, stiff = self.substeps.copy(), np.zeros(len(self.z))
        key = np.concatenate([self.z, self.kappa, self.substeps,
                              [frames, stride, equilibration, seed, self.system.n_atoms,
                               self.auto_substeps, self.stiffness_limit, self.max_substeps]])
        ck = None if checkpoint is None else Path(checkpoint)
        first = self._restore(ck, key, ctx, pos, ene, subs, stiff) if ck is not None else 0
        bar = progress_bar(len(self.z), desc="umbrella windows", unit="window",
                           initial=first) if progress else None
        for k in range(first, len(self.z)):
            kap = float(self.kappa[k])
            restraint.set(ctx, z=float(self.z[k]), kappa=kap)
            ctx.setVelocitiesToTemperature(self.system.temperature, int(seed) * 1000 + k + 1)
            sub = int(subs[k])

            def advance(n_steps: int, sub: int) -> tuple[Any, int]:
                # the window's stiffness is checked at every frame; "auto" refines the step
                # before the next one (never coarsens it: the window's frames stay valid)
                integ.setStepSize(dt / sub)
                integ.step(n_steps * sub)
                st = ctx.getState(getPositions=True, getEnergy=True, groups=self._physical)
                x = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                num = float(self.stiffness_number(x[None], kap)[0])
                stiff[k] = max(stiff[k], num / (sub if self.system.integrator == "brownian"
                                                else sub * sub))
                if self.auto_substeps:
                    sub = max(sub, self.needed_substeps(1.2 * num))   # 1.2: the frame moves
                return st, sub

            if self.auto_substeps:
                x0 = ctx.getState(getPositions=True).getPositions(asNumpy=True)
                sub = max(sub, self.needed_substeps(1.2 * float(self.stiffness_number(
                    x0.value_in_unit(unit.nanometer)[None], kap)[0])))
            stiff[k] = 0.0
            for _ in range(equilibration):
                check_interrupt()
                _, sub = advance(stride, sub)
            stiff[k] = 0.0          # only the saved frames count
            for _ in range(frames):
                check_interrupt()
                st, sub = advance(stride, sub)
                pos.append(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
                ene.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            subs[k] = sub
            integ.setStepSize(dt)
            if ck is not None:
                atomic_save_npz(ck, key=key, windows_done=k + 1, positions=np.asarray(pos),
                                energy=np.asarray(ene), substeps=subs, stiffness=stiff,
                                context=np.frombuffer(ctx.createCheckpoint(), dtype=np.uint8))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        x = np.asarray(pos)
        if not np.all(np.isfinite(x)) or np.abs(x).max() > 100.0:
            raise RuntimeError("umbrella MD blew up (non-finite or > 100 nm coordinates): "
                               "lower kappa or the timestep")
        chi = evaluate_chi_batch(self.model, x)
        window = np.repeat(np.arange(len(self.z)), frames)
        return UmbrellaSamples(positions=x, chi=chi, energy=np.asarray(ene), window=window,
                               z=self.z.copy(), kappa=self.kappa.copy(), kT=self.system.kT,
                               timestep=self.system.timestep, stride=stride, substeps=subs,
                               stiffness=stiff)
