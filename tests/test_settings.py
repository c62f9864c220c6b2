"""Typed stage settings (amore_openmm.settings): every default lives in one place, the run
settings are made of them, and the library functions take them or keyword overrides alike."""
import dataclasses
import inspect

import numpy as np
import pytest
import torch

from amore_openmm.chi import ChiModel, Coordinates
from amore_openmm.config import PIPELINE_DEFAULTS, RunConfig, resolve_config
from amore_openmm.isokann import Isokann
from amore_openmm.mep import RelaxSettings, trace_chi_mep, trace_chi_meps
from amore_openmm.presets import GENERIC_PRESETS, PRESET_NAMES, PRESETS
from amore_openmm.sampling import BurstSampler, ContextPool
from amore_openmm.settings import (STAGE_SETTINGS, MEPSettings, SamplingSettings,
                                   SensitivitySettings, TrainingSettings, UnknownSettingError,
                                   setting_help)
from amore_openmm.systems import load_system
from amore_openmm.systems.molecular import DEFAULT_TEMPERATURE, MolecularSystem

torch.set_num_threads(1)
SADDLE = np.array([-0.822, 0.624])


@pytest.fixture(scope="module")
def mb():
    return load_system("muller_brown")


def _stage_fields():
    return [f for f in dataclasses.fields(RunConfig) if "stage" in f.metadata]


def test_run_config_stage_defaults_come_from_the_settings_classes():
    cfg = RunConfig()
    shared = _stage_fields()
    assert {f.metadata["stage"] for f in shared} == set(STAGE_SETTINGS)
    for f in shared:
        stage, name = f.metadata["stage"], f.metadata["setting"]
        lib = getattr(STAGE_SETTINGS[stage](), name)
        typed = getattr(getattr(cfg, stage), name)
        if f.name in PIPELINE_DEFAULTS:
            assert getattr(cfg, f.name) == typed == PIPELINE_DEFAULTS[f.name] != lib, f.name
            continue
        # None ("auto") in the run settings means the settings class's default
        assert getattr(cfg, f.name) in (None, lib) and typed == lib, f.name
        assert setting_help(STAGE_SETTINGS[stage], name) in f.metadata["help"], f.name


def test_library_signatures_restate_no_setting_default():
    """A setting that is also a named parameter defaults to None: "the settings' value"."""
    for func, cls in ((BurstSampler.run, SamplingSettings), (trace_chi_mep, MEPSettings),
                      (Isokann.__init__, TrainingSettings)):
        params = inspect.signature(func).parameters
        assert "settings" in params
        for name in set(params) & set(cls.names()):
            assert params[name].default is None, (func.__qualname__, name)
    est = Isokann()
    assert est.settings == TrainingSettings() and est.iterations == TrainingSettings().iterations
    relax, mep = RelaxSettings(), MEPSettings()
    for name in ("max_iterations", "kappa_min", "kappa_max", "retry_factor"):
        assert getattr(relax, name) == getattr(mep, name)
    assert MolecularSystem.__dataclass_fields__["temperature"].default == DEFAULT_TEMPERATURE


def test_defaults_restated_outside_this_change_agree():
    """Signature defaults in modules that do not take the settings yet (sample_trajectory's
    displacement guard, chi_sensitivity's bins) must not drift from the settings."""
    from amore_openmm.sampling import DEFAULT_MAX_DISPLACEMENT
    from amore_openmm.sensitivity import chi_sensitivity
    assert SamplingSettings().max_displacement == DEFAULT_MAX_DISPLACEMENT
    bins = inspect.signature(chi_sensitivity).parameters["bins"].default
    assert SensitivitySettings().bins == bins


def test_preset_names_have_one_home():
    for table in [GENERIC_PRESETS, *PRESETS.values()]:
        assert set(table) <= set(PRESET_NAMES)
    from amore_openmm.cli import build_parser
    for name in PRESET_NAMES:   # the CLI offers exactly these
        args = build_parser().parse_args(["run", "muller_brown", "--out", "o", "--preset", name])
        assert args.preset == name
    with pytest.raises(Exception, match="invalid choice: 'huge'"):
        build_parser().parse_args(["run", "muller_brown", "--out", "o", "--preset", "huge"])


def test_unknown_setting_names_the_key_and_close_matches(mb):
    with pytest.raises(UnknownSettingError, match=r"'n_koopmann'.*did you mean 'n_koopman'"):
        SamplingSettings().replace(n_koopmann=2)
    err = pytest.raises(UnknownSettingError, MEPSettings().replace, max_node=3).value
    assert isinstance(err, ValueError) and isinstance(err, TypeError)
    assert "'max_nodes'" in str(err)
    with pytest.raises(UnknownSettingError, match="'iteratons'.*'iterations'"):
        Isokann(iteratons=5)
    with pytest.raises(UnknownSettingError, match="'stpe'"):
        trace_chi_mep(mb, _chi(), SADDLE, stpe=0.1)
    with pytest.raises(UnknownSettingError, match="'stpe'"):   # before any Context is built
        trace_chi_meps(mb, _chi(), np.array([[[*SADDLE, 0.0]]]), stpe=0.1)
    with pytest.raises(TypeError, match="TrainingSettings"):
        Isokann(MEPSettings())
    with ContextPool(mb, size=1, platform="Reference") as pool:
        with pytest.raises(UnknownSettingError, match="'max_retry'.*'max_retries'"):
            BurstSampler(pool).run(np.zeros((2, 1, 3)), 1, max_retry=1, progress=False)


def test_keywords_and_settings_give_the_same_bursts(mb):
    x = np.zeros((6, 1, 3))
    x[:, 0, :2] = [-0.55, 1.44]
    with ContextPool(mb, size=1, platform="Reference") as pool:
        kw = BurstSampler(pool).run(x, 3, 20, seed=5, max_retries=1, chunk_size=2,
                                    progress=False)
        typed = BurstSampler(pool).run(x, settings=SamplingSettings(
            n_koopman=3, lag_steps=20, max_retries=1, chunk_size=2), seed=5, progress=False)
        # a keyword overrides the settings field of the same name
        mixed = BurstSampler(pool).run(x, 3, seed=5, settings=SamplingSettings(
            n_koopman=7, lag_steps=20), progress=False)
    assert kw.y.shape == typed.y.shape == mixed.y.shape == (6, 3, 1, 3)
    np.testing.assert_allclose(kw.y, typed.y, atol=1e-9)
    np.testing.assert_allclose(kw.y, mixed.y, atol=1e-9)
    assert np.ptp(kw.y[:, :, 0, :2]) > 0   # the bursts moved


def _chi() -> ChiModel:
    """An analytic χ = sigmoid(4 u·(r − saddle)) of Müller–Brown."""
    u = np.array([0.8, -0.6])
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(4 * u[None, :]))
        net[0].bias.fill_(float(-4 * u @ SADDLE))
    return ChiModel(Coordinates(1, dims=(0, 1)), network=net)


def test_run_config_mep_settings_round_trip_to_trace_chi_mep(mb):
    cfg = resolve_config("muller_brown", "quick", overrides={"path_max_nodes": 5})
    assert cfg.mep == MEPSettings(step=cfg.path_step, max_nodes=5)
    model = _chi()
    typed = trace_chi_mep(mb, model, SADDLE, settings=cfg.mep)
    kw = trace_chi_mep(mb, model, SADDLE, step=cfg.path_step, max_nodes=cfg.path_max_nodes,
                       kappa=cfg.kappa)
    assert len(typed) == len(kw) == 5
    np.testing.assert_allclose(typed.chi, kw.chi, atol=1e-8)
    np.testing.assert_allclose(typed.positions, kw.positions, atol=1e-8)
    assert np.all(np.diff(typed.chi) > 0)   # ordered by χ along the path


def test_run_config_training_and_sensitivity_settings():
    cfg = resolve_config("muller_brown", "quick", overrides={"lr": 2e-3})
    est = Isokann(settings=cfg.training, seed=1)
    assert (est.iterations, est.minibatch, est.lr, est.optimizer) == (
        cfg.iterations, cfg.minibatch, 2e-3, cfg.optimizer)
    assert est.featurizer is None   # "auto": the system's featurizer
    assert cfg.sensitivity == SensitivitySettings(bins=cfg.sensitivity_bins,
                                                  samples=cfg.sensitivity_samples,
                                                  top_k=cfg.top_k)
    assert RunConfig(featurizer="dihedrals").training.featurizer == "dihedrals"


def test_stage_context_of_a_run(tmp_path):
    from amore_openmm.pipeline import AmoreRun
    from amore_openmm.pipeline.state import StageContext, stage_seed
    with AmoreRun(tmp_path / "run", "muller_brown", preset="quick", quiet=True) as run:
        ctx = run.context()
        assert isinstance(ctx, StageContext)
        assert ctx.config is run.config and ctx.out == run.out and ctx.paths is run.paths
        assert ctx.system is run.system and ctx.lag_steps == run.lag_steps
        assert ctx.seed("train/0") == stage_seed(run.config.seed, "train/0")
        assert ctx.progress is False and ctx.completed == []
        with pytest.raises(dataclasses.FrozenInstanceError):
            ctx.config = RunConfig()
