"""train_chi refits a fresh χ that collapsed to a constant, from other initial weights."""
from __future__ import annotations

import numpy as np
import pytest

from amore_openmm.isokann import IsokannError
from amore_openmm.pipeline import stages


class _Data:
    x = np.zeros((50, 1, 3))


class _Model:
    def __init__(self, span: float) -> None:
        self.span, self.metadata = span, {"training": {}}

    def chi(self, x):
        return np.linspace(0.5, 0.5 + self.span, len(x))


def _fits(monkeypatch, outcomes):
    seeds = []

    def fake(data, system, iterations, model, *args, **initial):
        seeds.append(args[-2])
        out = outcomes[len(seeds) - 1]
        if isinstance(out, Exception):
            raise out
        return _Model(out), [0.1]
    monkeypatch.setattr(stages, "_fit_once", fake)
    return seeds


def test_flat_first_fit_is_refitted_with_another_seed(monkeypatch):
    seeds = _fits(monkeypatch, [0.001, IsokannError("Kχ is constant"), 0.8])
    with pytest.warns(RuntimeWarning, match="collapsed") as caught:   # run.log gets these
        model, _ = stages.train_chi(_Data(), "muller_brown", 10, seed=7)
    assert model.span == 0.8 and model.metadata["training"]["first_fit_attempt"] == 3
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert sum("collapsed" in str(w.message) for w in caught) == 2


def test_continued_fit_is_not_retried_and_last_error_is_raised(monkeypatch):
    seeds = _fits(monkeypatch, [0.001])
    model, _ = stages.train_chi(_Data(), "muller_brown", 10, model=object(), seed=1)
    assert model.span == 0.001 and len(seeds) == 1
    n = stages.FIRST_FIT_TRIES + stages.REDUCED_LR_TRIES
    _fits(monkeypatch, [IsokannError(f"try {k}") for k in range(n)])
    with pytest.warns(RuntimeWarning), pytest.raises(IsokannError, match=f"try {n - 1}") as exc:
        stages.train_chi(_Data(), "muller_brown", 10, seed=1, lr=1e-3)
    assert f"all {n} ISOKANN fits" in str(exc.value) and "--lr 1e-05" in str(exc.value)


def test_collapsed_fits_end_with_a_smaller_learning_rate_that_the_chi_keeps(monkeypatch):
    """After FIRST_FIT_TRIES collapses at lr, the fits at lr/10 start again from the run's
    seed (the fit `--resume --lr` would do); the χ found there keeps lr/10 for its
    continued fits, which at lr would saturate it again."""
    lrs = []

    def fake(data, system, iterations, model, featurizer, minibatch, optimizer, lr, *rest,
             **initial):
        lrs.append((lr, rest[-2]))
        span = 0.9 if lr < 1e-3 else 0.0
        out = model if model is not None else _Model(span)
        out.metadata["training"] = {"lr": lr}     # a fit replaces the training summary
        return out, [0.1]
    monkeypatch.setattr(stages, "_fit_once", fake)
    with pytest.warns(RuntimeWarning, match="divided by 10") as caught:
        model, _ = stages.train_chi(_Data(), "muller_brown", 10, seed=7, lr=1e-3)
    k = stages.FIRST_FIT_TRIES
    assert [lr for lr, _ in lrs] == [1e-3] * k + [1e-4]
    assert lrs[0][1] == 7 and lrs[k][1] == 7 and len({s for _, s in lrs[:k]}) == k
    assert model.metadata["training"]["first_fit_attempt"] == k + 1
    assert model.metadata["training"]["lr_reduced_to"] == 1e-4 and len(caught) == k
    lrs.clear()
    model, _ = stages.train_chi(_Data(), "muller_brown", 10, model=model, seed=8, lr=1e-3)
    assert lrs == [(1e-4, 8)] and model.metadata["training"]["lr_reduced_to"] == 1e-4


def test_pipeline_writes_the_retries_to_run_log(monkeypatch, tmp_path):
    """In a run, a collapsed first fit is retried and the retry is in run.log (not only on
    stderr): the first fit raises, the second is the real one."""
    import torch

    from amore_openmm.pipeline import AmoreRun
    real, calls = stages._fit_once, []

    def first_collapses(*args, **initial):
        calls.append(args[-2])
        if len(calls) == 1:
            raise IsokannError("Kχ is constant over the data (test)")
        return real(*args, **initial)
    monkeypatch.setattr(stages, "_fit_once", first_collapses)
    torch.set_num_threads(1)
    tiny = {"n_starts": 500, "stride_steps": 1000, "n_koopman": 2, "iterations": 200,
            "minibatch": 100, "workers": 1, "platform": "Reference", "seed": 0}
    with AmoreRun(tmp_path / "run", "muller_brown", preset="quick", overrides=tiny,
                  quiet=True) as run:
        run.run(until="train_0")
        record = run.gen_record(0)          # the report's note on the refit comes from here
        assert record["fit_attempt"] == 2 and record["lr_reduced_to"] is None
        assert record["chi_range"][1] - record["chi_range"][0] > 0.5   # the refit found χ
    log = (tmp_path / "run" / "run.log").read_text()
    n = stages.FIRST_FIT_TRIES + stages.REDUCED_LR_TRIES
    assert f"ISOKANN fit 1 of {n} collapsed" in log and "Kχ is constant over the data (test)" in log
    assert len(calls) == 2 and calls[0] != calls[1]     # another seed after the collapse
