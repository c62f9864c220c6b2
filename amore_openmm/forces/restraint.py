"""The public χ force factories: :func:`chi_force`, :class:`ChiRestraintForce`,
:func:`chi_from_context`, each on the backend chosen by ``backend=`` (see :mod:`.backend`)."""
from __future__ import annotations

import abc
from typing import Any

import openmm

from .backend import resolve_backend
from .common import CV_NAME, DEFAULT_PREFIX, KAPPA_PARAM, Z_PARAM, ModelLike, ChiRestraintBase
from .pythonforce import PythonChiRestraint, python_chi_force, recover_python_restraint
from .torchforce import TorchChiRestraint, recover_torch_restraint, torch_chi_force

_RESTRAINTS = {TorchChiRestraint.backend: TorchChiRestraint,
               PythonChiRestraint.backend: PythonChiRestraint}


def chi_force(model: ModelLike, force_group: int | None = None, backend: str = "auto"
              ) -> openmm.Force:
    """The χ collective variable as an OpenMM force whose energy is χ (forces −∇χ).

    Args:
        model: a :class:`~amore_openmm.chi.ChiModel`, a TorchScript module, or the path of a
            file written by ``ChiModel.export_torchscript``.
        force_group: optional force group (e.g. to read −∇χ with ``getState(groups={g})``).
        backend: "auto", "torchforce" (an ``openmmtorch.TorchForce``) or "pythonforce" (an
            ``openmm.PythonForce``); see :func:`~amore_openmm.forces.backend_info`.

    Adding the returned force to a System directly would add χ (in kJ/mol) to the energy;
    normally it is a collective variable of a ``CustomCVForce`` (both backends work there).
    Neither backend uses periodic boundary conditions: χ sees unwrapped positions.
    """
    name, _ = resolve_backend(backend)
    factory = torch_chi_force if name == TorchChiRestraint.backend else python_chi_force
    return factory(model, force_group)


class ChiRestraintForce(ChiRestraintBase, metaclass=abc.ABCMeta):
    """Harmonic restraint on χ: E = 0.5·κ·(χ − z)² (kJ/mol).

    Args:
        model: ChiModel, TorchScript module or exported file path.
        z: restraint centre (dimensionless χ value).
        kappa: stiffness in kJ/mol (χ is dimensionless); a Quantity in energy units is accepted.
            For MD choose it with :func:`~amore_openmm.forces.md_kappa`.
        force_group: optional force group of the restraint.
        backend: "auto", "torchforce" or "pythonforce".
        prefix: the global parameters are ``<prefix>_z`` and ``<prefix>_kappa`` (default
            ``amore_chi``); give each χ restraint of one System its own prefix.

    Constructing it returns the backend's force: a ``CustomCVForce`` over a TorchForce χ
    ("torchforce") or one ``openmm.PythonForce`` ("pythonforce"); both are instances of this
    class. On both the global parameters are :attr:`z_param` and :attr:`kappa_param`
    (by default :attr:`Z_PARAM` ``amore_chi_z`` and :attr:`KAPPA_PARAM` ``amore_chi_kappa``):
    change them on a live Context with ``context.setParameter`` or ``force.set(context, z=,
    kappa=)``, no rebuild needed (``ChiRestraintForce.set`` on the class sets the default
    names). :meth:`chi` reads χ of a Context; :attr:`backend` names the backend. Neither
    uses periodic boundary conditions, so χ sees the Context's unwrapped positions.

    ``System.getForce(i)`` and an XML round trip hand back a plain ``CustomCVForce`` or
    ``PythonForce``: :meth:`from_force` (or :func:`find_chi_restraints`) makes it a
    ChiRestraintForce again.
    """

    Z_PARAM = Z_PARAM
    KAPPA_PARAM = KAPPA_PARAM
    CV_NAME = CV_NAME

    def __new__(cls, model: ModelLike, z: float = 0.5, kappa: Any = 1e5,
                force_group: int | None = None, backend: str = "auto",
                prefix: str = DEFAULT_PREFIX) -> Any:
        name, _ = resolve_backend(backend)
        return _RESTRAINTS[name](model, z, kappa, force_group, prefix)

    @staticmethod
    def from_force(force: openmm.Force) -> Any:
        """A χ restraint taken out of a System (``system.getForce(i)``, or a System read back
        with ``XmlSerializer``) as a ChiRestraintForce again: :meth:`set`, :meth:`chi` and its
        parameter names work as on the force that was added. Raises ValueError for a force
        that is not a χ restraint."""
        if isinstance(force, ChiRestraintBase):
            return force
        recovered = None
        if isinstance(force, openmm.PythonForce):
            recovered = recover_python_restraint(force)
        elif isinstance(force, openmm.CustomCVForce):
            recovered = recover_torch_restraint(force)
        if recovered is None:
            raise ValueError(f"force {force.getName()!r} ({type(force).__name__}) is not a χ "
                             "restraint; find them with find_chi_restraints(system)")
        return recovered


for _cls in _RESTRAINTS.values():
    ChiRestraintForce.register(_cls)


def find_chi_restraints(system: openmm.System) -> dict[int, Any]:
    """The χ restraints of ``system`` (e.g. read from XML) by force index, each as a
    :class:`ChiRestraintForce`."""
    found = {}
    for i in range(system.getNumForces()):
        try:
            found[i] = ChiRestraintForce.from_force(system.getForce(i))
        except ValueError:
            continue
    return found


def chi_from_context(context: openmm.Context, force: Any, index: int = 0) -> float:
    """χ of ``context`` read through ``force``: a :class:`ChiRestraintForce` (either
    backend) or any ``CustomCVForce`` whose collective variable ``index`` is χ."""
    if isinstance(force, ChiRestraintForce):
        return float(force.chi(context))
    if isinstance(force, openmm.CustomCVForce):
        return float(force.getCollectiveVariableValues(context)[index])
    raise TypeError(f"force must be a ChiRestraintForce or a CustomCVForce, got "
                    f"{type(force).__name__}")
