"""ISOKANN's validation starts: the held-out split, and the network of the lowest validation
loss (``TrainingSettings.restore_best``), for the scalar and the k-membership estimators.

ISOKANN fits χ to S(Kχ), and Kχ of a start is a mean over only K bursts: a network trained
long enough fits that noise. On alanine dipeptide (2,000 starts, K = 2, minibatch 100) the
validation loss is lowest after a few hundred outer iterations and rises after it while the
training loss keeps falling (600 → 3,000 iterations: validation 0.004–0.007 → 0.006–0.016),
and the atoms' χ-sensitivity ranking moves with it: the mean top 5 over four fits keeps 3–4
of its atoms from 600 to 3,000 iterations and holds 1–2 of the paper's three (0-based 5, 15,
17). Restoring the best network, the four top 5s (k = 1 and k = 2, 600 and 3,000 iterations)
all hold the three and share their top 4 (``benchmarks/multichi.py --only ala --fits 4
--restore-best``). Checked every ``1/CHECKS`` of a fit's iterations, against the target of
that iteration. Runs restore by default (:data:`amore_openmm.config.PIPELINE_DEFAULTS`); the
estimator's own default is off.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np

__all__ = ["validation_split", "BestWeights", "CHECKS"]

#: validation checks per fit
CHECKS = 100


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) start indices: start i is held out when u_i < ``fraction``, with
    u = ``default_rng(seed).random(n)``. Data appended later (merged generations) keep the
    assignment of the earlier starts. At least one start is held out when fraction > 0 and
    n ≥ 3; none when that would leave fewer than two training starts."""
    if fraction <= 0 or n < 3:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    u = np.random.default_rng(seed).random(n)
    val = u < fraction
    if not val.any():
        val[int(np.argmin(u))] = True
    if n - val.sum() < 2:
        val[:] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


class BestWeights:
    """Tracks the validation loss during a fit and restores the best network at its end.

    ``enabled`` False (or no validation starts) makes every call a no-op."""

    def __init__(self, iterations: int, enabled: bool) -> None:
        self.every = max(1, math.ceil(int(iterations) / CHECKS)) if enabled else 0
        self.iterations = int(iterations)
        self.loss = math.inf
        self.iteration = 0
        self._state: dict[str, Any] | None = None

    def check(self, it: int, net: Any, val_loss: Callable[[], float]) -> None:
        """At iteration ``it`` (1-based) of the fit: evaluate and keep ``net`` if best."""
        if not self.every or (it % self.every and it != self.iterations):
            return
        loss = float(val_loss())
        if loss < self.loss:          # NaN never wins
            self.loss, self.iteration = loss, int(it)
            self._state = copy.deepcopy(net.state_dict())

    def restore(self, net: Any) -> dict[str, Any]:
        """Load the best weights into ``net``; returns what the summary records."""
        if self._state is None:
            return {}
        net.load_state_dict(self._state)
        return {"restored_best": True, "best_iteration": self.iteration,
                "best_val_loss": self.loss}
