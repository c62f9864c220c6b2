"""Run settings for the AMORE pipeline: :class:`RunConfig`, presets and their resolution.

Every setting has a default. They are layered, later layers winning:

1. the generic defaults of :class:`RunConfig`;
2. the built-in ``default`` preset of the system (bundled systems have tuned sizes);
3. the system's ``system.toml`` ``[run]`` table (its top-level keys);
4. for ``preset != "default"``: the built-in preset of that name, then ``[run.<preset>]``;
5. a ``--config file.toml`` (keys at the top level or in a ``[run]`` table);
6. command-line flags / keyword overrides.

Only a bundled system's name or the ``name`` in a folder's ``system.toml`` selects built-in
presets (layers 2 and 4); a file on disk (``.pdb``, ``.prmtop``, System ``.xml``) gets the
generic presets whatever its name. Unknown keys are errors that name the key and the file.

The resolved configuration is written to ``config.toml`` in the run directory. When a run
starts, the settings that the system's defaults decide (temperature, lag, featurizer) are
written there too, and logged, so that no value is chosen silently; the remaining ``None``
settings are written as the string "auto" (χ-MEP ``path_step``/``path_max_nodes``/``kappa``:
:func:`~amore_openmm.mep.trace_chi_mep`'s defaults). :func:`check_settings` applies the same
checks to the arguments of the pipeline's single-stage functions and the CLI flags.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .data import atomic_write_text
from .presets import GENERIC_PRESETS, PRESET_NAMES, PRESETS
from .settings import (MEPSettings, SamplingSettings, SensitivitySettings, TrainingSettings,
                       build_stage, stage_field)
from .systems import manifest_run_table, read_toml
from .systems.molecular import DEFAULT_TEMPERATURE

__all__ = ["RunConfig", "ConfigError", "PRESETS", "resolve_config", "load_config_file",
           "apply_settings", "check_settings", "RESUME_MUTABLE", "SYSTEM_SETTINGS",
           "TRAINING_SETTINGS", "PIPELINE_DEFAULTS"]

AUTO = "auto"

#: the one place where the pipeline's defaults differ from the library's (TrainingSettings,
#: one fit): a run's first fit is followed by ``iterations_per_generation`` more per
#: generation, continuing from the weights, and over the default n_starts a minibatch of 100
#: gives ~10 optimizer steps per outer iteration where the library's would give one.
#: A run's fits keep their lowest validation loss (restore_best): past it a fit learns the
#: noise of Kχ (amore_openmm.isokann_validation). Measured with it on alanine
#: dipeptide's default preset (4 sensitivity fits, seeds 0–2): the top 5 holds all three of
#: the paper's atoms, against 1–2 without.
PIPELINE_DEFAULTS: dict[str, Any] = {"iterations": 500, "minibatch": 100, "restore_best": True}


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names the key and the fix."""


@dataclass
class RunConfig:
    """Every setting of an AMORE run (units: steps, ps, nm, kJ/mol).

    ``None`` means "auto" (derived from the system or the machine at run time). Stage settings
    take default and help from :mod:`amore_openmm.settings` (but :data:`PIPELINE_DEFAULTS`);
    ``cfg.sampling``/``training``/``mep``/``sensitivity`` are the typed settings.
    """

    system: str = field(default="", metadata={"help": "system: bundled name, folder, .pdb, "
                                              ".prmtop or System .xml"})
    preset: str = field(default="default", metadata={"help": "size preset: default, quick, "
                                                     "paper or science (vgvapg)"})
    seed: int = field(default=0, metadata={"help": "master seed (bursts, training, choices)"})
    platform: str = field(default="auto", metadata={"help": "OpenMM platform for bursts: "
                                                    "auto, Reference, CPU, CUDA, OpenCL"})
    workers: int | None = field(default=None, metadata={"help": "parallel OpenMM contexts "
                                                        "(auto: CPU cores)"})
    replicas: int = field(default=1, metadata={
        "help": "bursts per Context step: M > 1 packs M copies of a small molecule into one "
                "System (exact in vacuum; pays off on CPU/GPU platforms)"})
    scheduler: str = field(default="", metadata={
        "help": "Dask scheduler address (e.g. tcp://host:8786) to run bursts on its workers; "
                "empty: this machine"})
    # -- the system (file inputs; bundled systems and folders bring their own) --------------
    temperature: float | None = field(default=None, metadata={
        "help": f"temperature in K (auto: the system's: system.toml, else "
                f"{DEFAULT_TEMPERATURE:g} K)"})
    forcefield: str = field(default="", metadata={
        "help": "force-field XML files for a .pdb, comma-separated (empty: amber14-all.xml)"})
    implicit_solvent: str = field(default="", metadata={
        "help": "implicit-solvent XML for a .pdb (e.g. implicit/obc2.xml) or model name for "
                "a .prmtop (e.g. OBC2); empty: none"})
    atoms: str = field(default="", metadata={
        "help": "mdtraj selection of the molecule of interest (empty: every atom that is not "
                "water or a monatomic ion)"})
    pdb: str = field(default="", metadata={
        "help": "structure (.pdb) for a System .xml input"})
    # -- the science reproduction (vgvapg preset `science`) ----------------------------------
    science: bool = field(default=False, metadata={
        "help": "science run: per-generation transitions and stopping rule, a second χ on "
                "the backbone dihedrals, transition channels, paper_comparison.md"})
    equilibrium_replicas: int = field(default=0, metadata={
        "help": "> 0: the initial data are an equilibrium ensemble of this many packed "
                "replicas (frames every lag, Koopman pairs of consecutive frames, n_koopman "
                "= 1); 0: frames from the initial structures"})
    equilibrium_steps: int = field(default=0, metadata={
        "help": "integrator steps per replica kept for the equilibrium ensemble"})
    equilibration_steps: int = field(default=0, metadata={
        "help": "integrator steps per replica run first and discarded (equilibration)"})
    equilibrium_method: str = field(default="plain", metadata={
        "help": "equilibrium ensemble of a science run: plain (packed replicas of MD, "
                "Koopman pairs of consecutive frames) or remd (temperature replica exchange, "
                "frames at the base temperature; Koopman data: bursts of the original system "
                "from those frames); remd ignores equilibrium_replicas/equilibrium_steps"})
    remd_replicas: int = field(default=4, metadata={
        "help": "remd: temperatures of the geometric ladder (base temperature first)"})
    remd_t_max: float | None = field(default=None, metadata={
        "help": "remd: top temperature in K (auto: 1.35 × the base temperature)"})
    remd_exchanges: int = field(default=0, metadata={
        "help": "remd: exchange attempts; one base-temperature frame after each (the first "
                "equilibration_steps × the system's timestep are discarded)"})
    remd_ps_per_exchange: float = field(default=1.0, metadata={
        "help": "remd: ps of dynamics between exchange attempts"})
    hmr: bool = field(default=True, metadata={
        "help": "remd: HBond constraints, 3 amu hydrogens and a 4 fs step for the replicas "
                "(configurations only; the Koopman bursts use the original system)"})
    # -- initial data -----------------------------------------------------------------------
    n_starts: int = field(default=1000, metadata={"help": "trajectory frames used as "
                                                  "initial starts (over all structures)"})
    stride_steps: int | None = field(default=None, metadata={
        "help": "integrator steps between trajectory frames (auto: lag_steps)"})
    n_koopman: int = stage_field("sampling", "n_koopman")
    lag_steps: int | None = stage_field("sampling", "lag_steps")
    # -- χ training -------------------------------------------------------------------------
    featurizer: str = field(default="auto", metadata={
        "help": "auto, pairwise_sym, pairwise_all, pairwise_heavy, pairwise_polar, dihedrals, "
                "coordinates (auto: pairwise_sym for bundled peptides)"})
    iterations: int = stage_field("training", "iterations", PIPELINE_DEFAULTS["iterations"],
                                  "ISOKANN iterations, first fit")
    iterations_per_generation: int = field(default=200, metadata={
        "help": "ISOKANN iterations per adaptive generation (continuing from the weights)"})
    minibatch: int = stage_field("training", "minibatch", PIPELINE_DEFAULTS["minibatch"])
    optimizer: str = stage_field("training", "optimizer")
    lr: float = stage_field("training", "lr")
    weight_decay: float = stage_field("training", "weight_decay")
    restore_best: bool = stage_field("training", "restore_best",
                                     PIPELINE_DEFAULTS["restore_best"])
    # not in cfg.training: the generations always train one χ; k > 1 is the transitions stage
    n_chi: int = field(default=1, metadata={
        "help": "memberships k: > 1 adds a transitions stage (k states fitted on all data, "
                "rate matrix, χ-MEPs, sensitivities and channels per pair: transitions/)"})
    # -- adaptive generations ---------------------------------------------------------------
    generations: int = field(default=2, metadata={"help": "adaptive generations G"})
    paths_per_generation: int = field(default=2, metadata={
        "help": "χ-MEPs traced per generation"})
    starts_per_path: int = field(default=20, metadata={
        "help": "path nodes (evenly spaced) used as new burst starts per path"})
    # -- χ-MEPs -----------------------------------------------------------------------------
    ts_low: float = field(default=0.45, metadata={"help": "transition-state window, low χ"})
    ts_high: float = field(default=0.55, metadata={"help": "transition-state window, high χ"})
    path_step: float | None = stage_field("mep", "step", auto=True)
    path_max_nodes: int | None = stage_field("mep", "max_nodes", auto=True)
    kappa: float | None = stage_field("mep", "kappa")
    final_paths: int = field(default=4, metadata={"help": "χ-MEPs traced with the final χ"})
    path_tracer: str = field(default="auto", metadata={
        "help": "pool: χ-MEPs one at a time on the workers' Contexts; batched: the paths of a "
                "stage in packed Contexts of copies, one per worker process (6x faster "
                "than pool on 34 vacuum alanine paths, 2.7x on one; a periodic System is "
                "traced with pool); auto: batched in vacuum without constraints where χ "
                "is batch-invariant (paths repeat to the bit), else pool"})
    # -- sensitivity / report ---------------------------------------------------------------
    sensitivity_bins: int = stage_field("sensitivity", "bins")
    sensitivity_samples: int = stage_field("sensitivity", "samples")
    top_k: int = stage_field("sensitivity", "top_k")
    sensitivity_fits: int = stage_field("sensitivity", "fits")
    figures: bool = field(default=True, metadata={"help": "write figures/*.png"})
    # -- free energy along χ and stratified starts (pipeline/fes_stages.py) -----------------
    free_energy: str = field(default="auto", metadata={
        "help": "F(χ) and ΔF‡ from umbrella windows along the final χ (fes/): on, off, auto "
                "(on for periodic systems, where the χ-MEP energy is a whole-box energy)"})
    fes_windows: int = field(default=21, metadata={"help": "umbrella windows of the F(χ) "
                                                   "stage"})
    fes_frames: int = field(default=1000, metadata={"help": "frames kept per F(χ) window"})
    fes_stride: int | None = field(default=None, metadata={
        "help": "integrator steps between umbrella frames (auto: lag_steps)"})
    fes_equilibration: int = field(default=100, metadata={
        "help": "frames run and discarded at the start of each F(χ) window"})
    fes_kappa: float | None = field(default=None, metadata={
        "help": "umbrella stiffness kJ/mol (auto: thermal width = window spacing)"})
    fes_bootstrap: int = field(default=100, metadata={"help": "MBAR bootstrap resamples "
                                                      "(the ΔF‡ error)"})
    fes_bins: int = field(default=50, metadata={
        "help": "χ bins of F(χ) and ΔF‡ (fewer for few frames: the barrier is the highest "
                "bin, and a noisy bin raises it)"})
    generation_starts: str = field(default="mep", metadata={
        "help": "burst starts of a generation: mep (χ-MEP nodes), stratified (uniform in χ "
                "from short umbrella windows along the current χ; bursts stay unbiased), "
                "both"})
    stratified_windows: int = field(default=11, metadata={
        "help": "umbrella windows per generation for stratified starts"})
    stratified_frames: int = field(default=20, metadata={
        "help": "frames per window for stratified starts (half as many run first, discarded)"})

    # -- the typed settings of the stages ----------------------------------------------------
    @property
    def sampling(self) -> SamplingSettings:
        return build_stage("sampling", self)

    @property
    def training(self) -> TrainingSettings:
        """The first fit's settings (``iterations_per_generation`` is the pipeline's own)."""
        return build_stage("training", self, featurizer=None if self.featurizer == AUTO
                           else self.featurizer)

    @property
    def mep(self) -> MEPSettings:
        return build_stage("mep", self)

    @property
    def sensitivity(self) -> SensitivitySettings:
        return build_stage("sensitivity", self)

    # -- helpers ----------------------------------------------------------------------------
    def system_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~amore_openmm.systems.load_system` from these
        settings (only those that are set)."""
        kw: dict[str, Any] = {}
        if self.lag_steps is not None:
            kw["lag_steps"] = self.lag_steps
        if self.temperature is not None:
            kw["temperature"] = self.temperature
        if self.forcefield:
            kw["forcefield"] = [f.strip() for f in self.forcefield.split(",") if f.strip()]
        if self.implicit_solvent:
            kw["implicit_solvent"] = self.implicit_solvent
        if self.atoms:
            kw["atoms"] = self.atoms
        if self.pdb:
            kw["pdb"] = self.pdb
        return kw

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``None`` kept)."""
        return dataclasses.asdict(self)

    def to_toml_dict(self) -> dict[str, Any]:
        """Dict for TOML: ``None`` becomes the string "auto"."""
        return {k: (AUTO if v is None else v) for k, v in self.to_dict().items()}

    def write(self, path: str | os.PathLike) -> Path:
        """Write ``config.toml`` atomically (a ``[run]`` table)."""
        import tomli_w

        text = ("# resolved amore_openmm run settings; \"auto\" = derived at run time\n"
                + tomli_w.dumps({"run": self.to_toml_dict()}))
        return atomic_write_text(path, text)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "RunConfig":
        """Read a ``config.toml`` written by :meth:`write` (unknown keys are errors)."""
        data = load_config_file(path)
        cfg = cls()
        return apply_settings(cfg, data, where=str(path))

    def digest(self, keys: Any = None) -> str:
        """Hash of the settings that decide results (all but :data:`RESUME_MUTABLE`)."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in RESUME_MUTABLE and (keys is None or k in keys)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def incompatibilities(self, other: "RunConfig") -> list[str]:
        """Settings (outside :data:`RESUME_MUTABLE`) where ``other`` differs from self."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} in the run, {b[k]!r} now" for k in a
                if k not in RESUME_MUTABLE and a[k] != b[k]]


#: settings that may change when a run is resumed (they do not change completed results;
#: more ``generations`` extends the run, the final stages are then redone)
RESUME_MUTABLE = frozenset({"platform", "workers", "generations", "figures", "top_k",
                            "preset", "scheduler", "path_tracer"})

#: settings of ISOKANN training only: a resumed run may change them until its first χ is fitted
TRAINING_SETTINGS = ("lr", "weight_decay", "optimizer", "iterations", "minibatch", "featurizer",
                     "restore_best")

#: settings that choose or build the system (passed to load_system)
SYSTEM_SETTINGS = ("temperature", "forcefield", "implicit_solvent", "atoms", "pdb")

FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
_CHOICES = {"optimizer": TrainingSettings.OPTIMIZERS,
            "platform": ("auto", "Reference", "CPU", "CUDA", "OpenCL", "HIP"),
            "preset": PRESET_NAMES,
            "free_energy": ("auto", "on", "off"),
            "generation_starts": ("mep", "stratified", "both"),
            "path_tracer": ("auto", "pool", "batched"), "equilibrium_method": ("plain", "remd")}
_MIN = {"fes_windows": 2, "fes_frames": 2, "fes_stride": 1, "fes_equilibration": 0,
        "fes_bootstrap": 2, "fes_bins": 3, "stratified_windows": 2, "stratified_frames": 2,
        "n_starts": 2, "n_koopman": 1, "n_chi": 1, "lag_steps": 1, "stride_steps": 1, "iterations": 1,
        "iterations_per_generation": 0, "minibatch": 1, "generations": 0,
        "paths_per_generation": 1, "starts_per_path": 1, "path_max_nodes": 3,
        "final_paths": 0, "sensitivity_bins": 1, "sensitivity_samples": 1, "top_k": 1,
        "sensitivity_fits": 1,
        "workers": 1, "equilibrium_replicas": 0, "equilibrium_steps": 0,
        "equilibration_steps": 0, "remd_replicas": 2, "remd_exchanges": 0}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys or a ``[run]`` table (not both kinds mixed
    ambiguously: a key given in both places is an error)."""
    path = Path(path)
    data = read_toml(path, ConfigError, "give a TOML config file with run settings "
                     "(see `amore run --help`)")
    run = data.pop("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: 'run' must be a table [run]")
    both = set(run) & set(data)
    if both:
        raise ConfigError(f"{path}: {sorted(both)} given both at the top level and in [run]; "
                          "keep one")
    return {**data, **run}


def _check_value(key: str, value: Any, where: str) -> Any:
    """Type-check and coerce one setting."""
    f = {f.name: f for f in fields(RunConfig)}[key]
    default = f.default
    optional = "None" in str(f.type)
    if value is None or (optional and value == AUTO):
        if not optional:
            raise ConfigError(f"{where}: setting '{key}' cannot be auto/None; give a value "
                              f"like {default!r}")
        return None
    base = str(f.type).replace(" | None", "")
    ok: Any
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: setting '{key}' = {value!r} must be true or false")
        ok = value
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            elif isinstance(value, str):
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(f"{where}: setting '{key}' = {value!r} must be an "
                                      "integer") from None
            else:
                raise ConfigError(f"{where}: setting '{key}' = {value!r} must be an integer")
        ok = int(value)
    elif base == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{where}: setting '{key}' = {value!r} must be a number")
        try:
            ok = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: setting '{key}' = {value!r} must be a number") from None
    else:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: setting '{key}' = {value!r} must be a string")
        ok = value
    choices = _choices(key)
    if choices and ok not in choices:
        raise ConfigError(f"{where}: setting '{key}' = {ok!r} is not one of "
                          f"{', '.join(choices)}")
    if key in _MIN and ok < _MIN[key]:
        raise ConfigError(f"{where}: setting '{key}' = {ok!r} must be >= {_MIN[key]}")
    if key in ("lr", "path_step", "temperature", "remd_ps_per_exchange", "remd_t_max") and \
            not ok > 0:
        raise ConfigError(f"{where}: setting '{key}' = {ok!r} must be > 0")
    if key in ("weight_decay",) and ok < 0:
        raise ConfigError(f"{where}: setting '{key}' = {ok!r} must be >= 0")
    if key in ("fes_kappa", "kappa") and not ok > 0:
        raise ConfigError(f"{where}: setting '{key}' = {ok!r} must be > 0 (or \"auto\")")
    return ok


def _choices(key: str) -> tuple[str, ...] | None:
    """Allowed values of a string setting (featurizer kinds come from amore_openmm.chi)."""
    if key == "featurizer":
        from .chi import FEATURIZER_KINDS
        return tuple(FEATURIZER_KINDS)
    return _CHOICES.get(key)


def check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check values against the rules of the :class:`RunConfig` settings of the same name
    (``None`` means "auto" and is skipped); returns the coerced values.

    Raises :class:`ConfigError` naming ``where`` and the setting."""
    return {k: _check_value(k, v, where) for k, v in settings.items() if v is not None}


def unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown setting '{key}'{hint}; known settings: "
                       f"{', '.join(FIELD_NAMES)}")


def apply_settings(cfg: RunConfig, settings: Mapping[str, Any], where: str) -> RunConfig:
    """A copy of ``cfg`` with ``settings`` applied (unknown keys and bad values are errors)."""
    updates = {}
    for key, value in settings.items():
        key = str(key).replace("-", "_")
        if key not in FIELD_NAMES:
            raise unknown_key_error(key, where)
        updates[key] = _check_value(key, value, where)
    return dataclasses.replace(cfg, **updates)


def _check_consistency(cfg: RunConfig) -> None:
    if cfg.equilibrium_replicas and (cfg.n_koopman != 1 or cfg.equilibrium_steps < 2 * (
            cfg.lag_steps or 1)):
        raise ConfigError(f"equilibrium_replicas = {cfg.equilibrium_replicas} needs n_koopman = "
                          f"1 (got {cfg.n_koopman}) and equilibrium_steps >= 2 lags (got "
                          f"{cfg.equilibrium_steps}); set them or equilibrium_replicas = 0")
    if cfg.equilibrium_method == "remd" and cfg.remd_exchanges < 2:
        raise ConfigError(f"equilibrium_method = remd needs remd_exchanges >= 2 (got "
                          f"{cfg.remd_exchanges}); set it or equilibrium_method = plain")
    if not 0.0 <= cfg.ts_low < cfg.ts_high <= 1.0:
        raise ConfigError(f"transition-state window ts_low={cfg.ts_low}, ts_high={cfg.ts_high}"
                          ": need 0 <= ts_low < ts_high <= 1")


def _absolute_paths(cfg: RunConfig, system: str) -> RunConfig:
    """System and structure paths stored absolute, so that a run resumes from any working
    directory; ``pdb`` only belongs to a System .xml."""
    path = Path(str(system)).expanduser()
    updates: dict[str, Any] = {"system": str(path.resolve()) if path.exists() else str(system)}
    if cfg.pdb:
        if path.suffix.lower() != ".xml":
            raise ConfigError(f"pdb = {cfg.pdb!r}: a structure file is only needed for a "
                              f"System .xml input, not for {system!r}; remove --pdb")
        updates["pdb"] = str(Path(cfg.pdb).expanduser().resolve())
    return dataclasses.replace(cfg, **updates)


def resolve_config(system: str, preset: str = "default",
                   config_file: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Resolve every setting for a run of ``system`` (see the module docstring for layers).

    Raises :class:`ConfigError` for unknown keys (naming the file), bad values or an
    unknown preset.
    """
    if preset not in _CHOICES["preset"]:
        raise ConfigError(f"preset {preset!r} is not known; use one of "
                          f"{', '.join(_CHOICES['preset'])}")
    name, run_table = manifest_run_table(system)
    if preset == "science" and "science" not in PRESETS.get(name or "", {}):
        raise ConfigError(f"preset 'science' is the VGVAPG reproduction (system vgvapg); "
                          f"{system!r} has none: use --preset default, quick or paper, or set "
                          "science = true and the equilibrium_* settings in a --config file")
    where_manifest = run_table.pop("__where__", "system.toml")
    cfg = RunConfig(system=str(system), preset=preset)
    builtin = PRESETS.get(name or "", GENERIC_PRESETS)
    cfg = apply_settings(cfg, builtin.get("default", {}), f"built-in preset {name}/default")
    top = {k: v for k, v in run_table.items() if not isinstance(v, dict)}
    sub = {k: v for k, v in run_table.items() if isinstance(v, dict)}
    for k in sub:
        if k not in _CHOICES["preset"]:
            raise ConfigError(f"{where_manifest}: unknown table [run.{k}]; preset tables are "
                              f"[run.quick], [run.paper] or [run.default]")
    cfg = apply_settings(cfg, top, f"{where_manifest} [run]")
    if preset != "default":
        cfg = apply_settings(cfg, builtin.get(preset, GENERIC_PRESETS.get(preset, {})),
                             f"built-in preset {name}/{preset}")
    cfg = apply_settings(cfg, sub.get(preset, {}), f"{where_manifest} [run.{preset}]")
    if config_file is not None:
        file_settings = load_config_file(config_file)
        file_settings.pop("system", None) if file_settings.get("system") in (None, "") else None
        if "system" in file_settings and file_settings["system"] != str(system):
            raise ConfigError(f"{config_file}: system = {file_settings['system']!r} differs "
                              f"from the system given ({system!r}); remove it from the file")
        if "preset" in file_settings and file_settings["preset"] != preset:
            raise ConfigError(f"{config_file}: preset = {file_settings['preset']!r}; choose "
                              "the preset with --preset instead")
        cfg = apply_settings(cfg, file_settings, str(config_file))
    if overrides:
        cfg = apply_settings(cfg, {k: v for k, v in overrides.items() if v is not None},
                             "command line")
    cfg = dataclasses.replace(_absolute_paths(cfg, system), preset=preset)
    _check_consistency(cfg)
    return cfg
