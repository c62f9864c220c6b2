"""train_chi refits a fresh χ that collapsed to a constant, from other initial weights."""
from __future__ import annotations

import logging

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

    def fake(data, system, iterations, model, *args):
        seeds.append(args[-2])
        out = outcomes[len(seeds) - 1]
        if isinstance(out, Exception):
            raise out
        return _Model(out), [0.1]
    monkeypatch.setattr(stages, "_fit_once", fake)
    return seeds


def test_flat_first_fit_is_refitted_with_another_seed(monkeypatch, caplog):
    seeds = _fits(monkeypatch, [0.001, IsokannError("Kχ is constant"), 0.8])
    with caplog.at_level(logging.WARNING):
        model, _ = stages.train_chi(_Data(), "muller_brown", 10, seed=7)
    assert model.span == 0.8 and model.metadata["training"]["first_fit_attempt"] == 3
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert caplog.text.count("collapsed") == 2


def test_continued_fit_is_not_retried_and_last_error_is_raised(monkeypatch):
    seeds = _fits(monkeypatch, [0.001])
    model, _ = stages.train_chi(_Data(), "muller_brown", 10, model=object(), seed=1)
    assert model.span == 0.001 and len(seeds) == 1
    n = stages.FIRST_FIT_TRIES
    _fits(monkeypatch, [IsokannError(f"try {k}") for k in range(n)])
    with pytest.raises(IsokannError, match=f"try {n - 1}"):
        stages.train_chi(_Data(), "muller_brown", 10, seed=1)
