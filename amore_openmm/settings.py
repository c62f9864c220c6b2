"""Typed settings per stage: the one home of every library default.

:class:`SamplingSettings` (:meth:`~amore_openmm.sampling.BurstSampler.run`),
:class:`TrainingSettings` (:class:`~amore_openmm.isokann.Isokann`), :class:`MEPSettings`
(:func:`~amore_openmm.mep.trace_chi_mep`) and :class:`SensitivitySettings` (the pipeline's
sensitivity stage) are frozen dataclasses; each field's default and help text live here once.
The library functions take ``settings=`` and keyword overrides of the same names;
:class:`~amore_openmm.config.RunConfig` takes its stage defaults from these classes and builds
them (``cfg.sampling``, ``cfg.training``, ``cfg.mep``, ``cfg.sensitivity``).

This module imports nothing of the package, so every module may import it.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, TypeVar

__all__ = ["SamplingSettings", "TrainingSettings", "MEPSettings", "SensitivitySettings",
           "SettingsError", "UnknownSettingError", "STAGE_SETTINGS", "merge_settings",
           "setting_help", "stage_field", "build_stage", "check_names"]

S = TypeVar("S", bound="_Settings")


class SettingsError(ValueError):
    """A setting has a bad value; the message names it and the fix."""


class UnknownSettingError(SettingsError, TypeError):
    """A setting name that the settings class does not have (also a TypeError, as for an
    unknown keyword argument); the message lists the close matches."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


class _Settings:
    """Shared methods of the settings dataclasses."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes``; an unknown name raises :class:`UnknownSettingError`."""
        check_names(type(self), changes, f"{type(self).__name__}.replace")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


def check_names(cls: type, names: Any, where: str) -> None:
    """Raise :class:`UnknownSettingError` for the first name ``cls`` has no field of."""
    known = cls.names()  # type: ignore[attr-defined]
    for key in names:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownSettingError(f"{where}: unknown setting {key!r}{hint} (settings of "
                                      f"{cls.__name__}: {', '.join(known)})")


def merge_settings(cls: type[S], settings: S | None, overrides: Mapping[str, Any],
                   where: str) -> S:
    """``settings`` (default ``cls()``) with the keyword ``overrides`` of the same names."""
    base = cls() if settings is None else settings
    if not isinstance(base, cls):
        raise TypeError(f"{where}: settings must be a {cls.__name__}, got "
                        f"{type(base).__name__}; give the knobs as keywords or in a "
                        f"{cls.__name__}(...)")
    check_names(cls, overrides, where)
    return dataclasses.replace(base, **overrides) if overrides else base  # type: ignore


def _check(settings: Any, problems: list[tuple[bool, str]]) -> None:
    for ok, message in problems:
        if not ok:
            raise SettingsError(f"{type(settings).__name__}: {message}")


def setting_help(cls: type, name: str) -> str:
    """The help text of setting ``name`` of ``cls``."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)}[name]


@dataclass(frozen=True)
class SamplingSettings(_Settings):
    """Knobs of :meth:`~amore_openmm.sampling.BurstSampler.run` (see there for details)."""

    n_koopman: int = _opt(4, "bursts per start (K)")
    lag_steps: int | None = _opt(None, "integrator steps per burst (auto: the system's)")
    max_retries: int = _opt(3, "retries (new derived seed) of a failing burst before its "
                               "start is dropped")
    max_displacement: float = _opt(100.0, "nm; a burst moving any coordinate further fails")
    chunk_size: int | None = _opt(None, "starts per task sent to a slot (auto: ~0.2 s of "
                                        "work)")
    checkpoint_interval: float = _opt(10.0, "seconds between commits to a checkpoint file")
    reseed: str = _opt("auto", "random streams keyed per burst, per block of starts, or "
                               "auto (burst on Reference, block elsewhere)")
    reseed_block: int = _opt(8, "starts per block for reseed = block")
    memory_budget_gb: float | None = _opt(None, "refuse a run whose data exceed this many GB "
                                                "(auto: $AMORE_MEMORY_BUDGET_GB or 4)")


@dataclass(frozen=True)
class TrainingSettings(_Settings):
    """Knobs of :class:`~amore_openmm.isokann.Isokann` (see there for details)."""

    iterations: int = _opt(1000, "ISOKANN outer iterations")
    minibatch: int = _opt(1000, "ISOKANN minibatch size")
    optimizer: str = _opt("adam", "adam or nesterov")
    lr: float = _opt(1e-3, "learning rate")
    weight_decay: float = _opt(1e-4, "weight decay (decoupled for adam, L2 for nesterov)")
    steps_per_iteration: int | None = _opt(None, "minibatch steps per outer iteration "
                                                 "(auto: one pass over the training starts)")
    featurizer: str | None = _opt(None, "featurizer kind of a new χ (auto: the system's)")
    network: Any = _opt(None, "network spec or module of a new χ (auto: the featurizer's)")
    validation_fraction: float = _opt(0.1, "fraction of starts held out for the validation "
                                           "loss")
    shift_scale: str = _opt("minmax", "shift-scale of Kχ: minmax or quantile")
    shift_quantile: float = _opt(0.005, "lower quantile of shift_scale = quantile")
    memory_budget_gb: float | None = _opt(None, "refuse training that needs more GB (auto: "
                                                "$AMORE_MEMORY_BUDGET_GB or 4)")
    n_chi: int = _opt(1, "memberships k (1: the scalar χ)")
    restore_best: bool = _opt(False, "end each fit with the network of its lowest validation "
                                     "loss (checked 100 times per fit)")

    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "nesterov")
    SHIFT_SCALES: ClassVar[tuple[str, ...]] = ("minmax", "quantile")

    def check(self) -> "TrainingSettings":
        """Raise :class:`SettingsError` for a bad value; returns self."""
        _check(self, [
            (self.optimizer in self.OPTIMIZERS,
             f"optimizer must be one of {self.OPTIMIZERS}, got {self.optimizer!r}"),
            (self.shift_scale in self.SHIFT_SCALES,
             f"shift_scale must be one of {self.SHIFT_SCALES}, got {self.shift_scale!r}"),
            (0.0 <= float(self.shift_quantile) < 0.5,
             f"shift_quantile must lie in [0, 0.5), got {self.shift_quantile}"),
            (0.0 <= float(self.validation_fraction) < 1.0,
             f"validation_fraction must lie in [0, 1), got {self.validation_fraction}; use "
             "0 to train on every start"),
            (int(self.iterations) >= 0, f"iterations must be >= 0, got {self.iterations}"),
            (int(self.minibatch) >= 1, f"minibatch must be >= 1, got {self.minibatch}"),
            (self.steps_per_iteration is None or int(self.steps_per_iteration) >= 1,
             f"steps_per_iteration must be >= 1 or None, got {self.steps_per_iteration}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}")])
        return self


@dataclass(frozen=True)
class MEPSettings(_Settings):
    """Knobs of :func:`~amore_openmm.mep.trace_chi_mep` (see there for details)."""

    step: float = _opt(0.01, "χ-MEP step: Δχ per node (step_mode chi) or nm (fixed)")
    kappa: float | None = _opt(None, "level-set restraint stiffness kJ/mol (auto: scaled "
                                     "from ‖∇χ‖ per node)")
    tolerance: float | None = _opt(None, "minimiser RMS force kJ/mol/nm (auto: 1, or 10 for "
                                         "a periodic System)")
    max_iterations: int = _opt(250, "minimiser iterations per node")
    chi_range: tuple[float, float] = _opt((0.02, 0.98), "a branch stops once χ leaves this")
    max_nodes: int = _opt(200, "maximum nodes per χ-MEP, both directions together")
    step_mode: str = _opt("chi", "chi (x ± h∇χ/‖∇χ‖²) or fixed (x ± ε∇χ/‖∇χ‖)")
    direction: str = _opt("both", "both, forward (increasing χ) or backward")
    chi_tolerance: float | None = _opt(None, "|χ − z| the κ controller aims at (auto: the "
                                             "certificate's)")
    kappa_min: float = _opt(1e3, "lower bound of the automatic κ")
    kappa_max: float = _opt(1e10, "upper bound of the automatic κ")
    max_displacement: float = _opt(0.02, "cap on an Euler step's RMS displacement per atom, "
                                         "nm")
    min_advance: float | None = _opt(None, "a node advancing χ less is a stall (auto: "
                                           "step/10, or 1e-4 for step_mode fixed)")
    stall_nodes: int = _opt(3, "stalls in a row that end a branch")
    max_node_rmsd: float | None = _opt(None, "nm; a node farther from the previous one is "
                                             "retried with half the step (off: None)")
    max_halvings: int = _opt(4, "retries of a jumping or uncertified node with half the "
                                "step")
    retry_factor: int = _opt(4, "iteration factor of the one retry of a non-converged node")

    def check(self) -> "MEPSettings":
        """Raise :class:`SettingsError` for a bad value; returns self."""
        _check(self, [
            (self.step_mode in ("chi", "fixed"),
             f"step_mode must be 'chi' or 'fixed', got {self.step_mode!r}"),
            (self.direction in ("both", "forward", "backward"),
             f"direction must be 'both', 'forward' or 'backward', got {self.direction!r}"),
            (self.step > 0, f"step must be positive, got {self.step}"),
            (0 <= self.chi_range[0] < self.chi_range[1],
             f"chi_range must be (low, high) with low < high, got {self.chi_range}"),
            (self.kappa is None or self.kappa > 0,
             f"kappa must be positive or None (automatic), got {self.kappa}"),
            (self.max_nodes >= 1, f"max_nodes must be >= 1, got {self.max_nodes}")])
        return self


@dataclass(frozen=True)
class SensitivitySettings(_Settings):
    """Knobs of the χ-sensitivity stage (:func:`~amore_openmm.pipeline.write_sensitivity`)."""

    bins: int = _opt(100, "χ bins of the level-set sensitivity")
    samples: int = _opt(5000, "max. ensemble samples for the sensitivity (subsampled, "
                              "seeded)")
    top_k: int = _opt(10, "atoms/features listed in the report")
    fits: int = _opt(1, "χ fits (training seeds, the final data) whose sensitivities are "
                        "averaged: the ranking's error then holds the training variance")


#: stage name -> settings class (the properties of RunConfig of the same names)
STAGE_SETTINGS: dict[str, type] = {"sampling": SamplingSettings, "training": TrainingSettings,
                                   "mep": MEPSettings, "sensitivity": SensitivitySettings}

_UNSET: Any = object()


def stage_field(stage: str, name: str, default: Any = _UNSET, text: str | None = None,
                auto: bool = False) -> Any:
    """A field of a flat settings table (:class:`~amore_openmm.config.RunConfig`) that is
    setting ``name`` of ``stage``: its default and help text come from the settings class
    unless ``default``/``text`` say otherwise; ``auto``: the default is None ("auto"),
    meaning the settings class's default (named in the help text)."""
    cls = STAGE_SETTINGS[stage]
    lib = getattr(cls(), name)
    text = setting_help(cls, name) if text is None else text
    if auto:
        default, text = None, f"{text} (auto: {lib!r})"
    return field(default=lib if default is _UNSET else default,
                 metadata={"help": text, "stage": stage, "setting": name})


def build_stage(stage: str, table: Any, **extra: Any) -> Any:
    """The settings of ``stage`` from the :func:`stage_field` fields of ``table`` (a None
    value: the settings class's default) and ``extra``."""
    values = {f.metadata["setting"]: getattr(table, f.name) for f in fields(table)
              if f.metadata.get("stage") == stage}
    values = {k: v for k, v in {**values, **extra}.items() if v is not None}
    return merge_settings(STAGE_SETTINGS[stage], None, values, f"{type(table).__name__}.{stage}")
