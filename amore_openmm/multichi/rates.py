"""The rate matrix between k metastable states from the memberships, with bootstrap errors.

On span{χ_1..χ_k} the Koopman operator acts as Kχ ≈ χ·K_c: K_c (k×k) is fitted by least
squares of Kχ(x) against χ(x) over the starts (rows sum to 1 when χ's rows do), and the
generator is Q = logm(K_c)/τ (rows sum to 0; Q_ij, i ≠ j, the rate i → j in 1/ps).
Errors: the standard deviation over bootstrap resamples of the starts.

Certificate (``valid``): K_c's eigenvalues real and in (0, 1 + ``EIG_TOL``], K_c's rows sum
to 1, Q real, no eigenvalue of Q above 0 by more than ``rel_tol``·max|Q_ii| (a growing mode),
and every off-diagonal Q_ij ≥ −(2·error + ``rel_tol``·max|Q_ii|) (a negative
rate beyond that means the memberships are not a Markov model at this lag). Why the relative
term: the bootstrap error is sampling noise only; fuzzy memberships add a projection bias of a
few % of the fastest rate (measured on Müller–Brown: |Q_AB| ≈ 3–5 % of |Q_CC| for two
states that are never adjacent), which is not evidence of a rate. And at least one rate
exceeds twice its error (else no transition is resolved at this lag: K_c ≈ I). Failing any marks the result invalid
and ``notes`` say which; the numbers stay for inspection but are not results.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.linalg import logm

__all__ = ["rate_matrix", "koopman_memberships", "fit_koopman_matrix", "generator_timescales"]

ROW_SUM_TOL = 1e-6
#: eigenvalues of K_c up to 1 + EIG_TOL count as 1 (a process too slow to see at this lag)
EIG_TOL = 0.01
#: default relative tolerance of negative off-diagonal rates (see the module docstring)
REL_TOL = 0.05
IMAG_TOL = 1e-8


def koopman_memberships(model: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """(χ(x) (N, k), Kχ(x) = mean over bursts of χ(y) (N, k)), float64."""
    from ..isokann_memory import chi_of_ends
    k = model.n_chi
    chi_x = np.asarray(model.chi(data.x), dtype=np.float64).reshape(-1, k)
    n, nk = data.n_starts, data.n_koopman
    chi_y = np.asarray(chi_of_ends(model, data.y.reshape(n * nk, data.n_selected, 3),
                                   data.atoms), dtype=np.float64).reshape(n, nk, k)
    return chi_x, chi_y.mean(axis=1)


def fit_koopman_matrix(chi_x: np.ndarray, kchi: np.ndarray) -> np.ndarray:
    """K_c = argmin ‖χ K_c − Kχ‖ (k×k)."""
    return np.linalg.lstsq(chi_x, kchi, rcond=None)[0]


def generator_timescales(q: np.ndarray) -> tuple[list[float], float]:
    """Implied timescales −1/λ (ps) of a generator's eigenvalues, slowest first, and the
    largest of them that grows (0 when none does).

    The stationary eigenvalue is the one nearest 0 (Q's rows sum to 0), not the largest:
    a slightly positive one (K_c's eigenvalue just above 1, a process too slow to see at
    this lag) is then listed as ``inf`` rather than taking the stationary one's place."""
    lam = np.linalg.eigvals(np.asarray(q, dtype=np.float64)).real
    rest = np.delete(lam, int(np.argmin(np.abs(lam)))) if lam.size else lam
    rest = np.sort(rest)[::-1]
    ts = [float(-1.0 / v) if v < -1e-300 else math.inf for v in rest]
    return ts, float(max(0.0, rest.max())) if rest.size else 0.0


def _generator(kc: np.ndarray, tau: float) -> np.ndarray:
    q = logm(kc)
    return np.asarray(q, dtype=np.complex128) / tau


def rate_matrix(model: Any, data: Any, lag_time: float | None = None, n_boot: int = 200,
                seed: int = 0, rel_tol: float = REL_TOL) -> dict[str, Any]:
    """K_c, Q = logm(K_c)/τ with bootstrap errors, timescales and the certificate.

    Returns a dict: ``koopman`` and ``koopman_err`` (k×k), ``rates`` and ``rates_err``
    (Q, 1/ps), ``timescales_ps`` (−1/λ of Q's non-zero eigenvalues, slowest first),
    ``stationary`` (π with πQ = 0), ``r2``, ``lag_time_ps``, ``valid``, ``notes``.
    """
    from ..isokann import lag_time_ps
    tau = lag_time_ps(data, lag_time)
    if int(n_boot) < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    chi_x, kchi = koopman_memberships(model, data)
    k = chi_x.shape[1]
    kc = fit_koopman_matrix(chi_x, kchi)
    resid = kchi - chi_x @ kc
    r2 = float(1.0 - resid.var(axis=0).sum() / max(kchi.var(axis=0).sum(), 1e-300))
    notes: list[str] = []
    eig = np.linalg.eigvals(kc)
    if np.abs(eig.imag).max() > IMAG_TOL or eig.real.min() <= 0 or eig.real.max() > 1 + EIG_TOL:
        notes.append(f"K_c eigenvalues {np.round(eig, 6).tolist()} are not all real in (0, 1]")
    if np.abs(kc.sum(axis=1) - 1.0).max() > ROW_SUM_TOL:
        notes.append("K_c rows do not sum to 1 (memberships do not sum to 1)")
    qc = _generator(kc, tau)
    if np.abs(qc.imag).max() > IMAG_TOL * max(1.0, np.abs(qc.real).max()):
        notes.append("logm(K_c) is complex: no real generator")
    q = qc.real
    rng = np.random.default_rng(seed)
    boots_k, boots_q = [], []
    n = len(chi_x)
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        kb = fit_koopman_matrix(chi_x[idx], kchi[idx])
        try:
            qb = _generator(kb, tau).real
        except (ValueError, np.linalg.LinAlgError):
            continue
        boots_k.append(kb)
        boots_q.append(qb)
    nan = np.full((k, k), np.nan)
    k_err = np.std(boots_k, axis=0, ddof=1) if len(boots_k) > 1 else nan
    q_err = np.std(boots_q, axis=0, ddof=1) if len(boots_q) > 1 else nan
    off = ~np.eye(k, dtype=bool)
    slack = 2.0 * np.nan_to_num(q_err, nan=0.0) + float(rel_tol) * np.abs(np.diag(q)).max()
    bad = off & (q < -slack)
    if bad.any():
        pairs = ", ".join(f"{i}→{j}: {q[i, j]:.3g} ± {q_err[i, j]:.2g}"
                          for i, j in zip(*np.nonzero(bad)))
        notes.append(f"negative rates beyond 2 errors ({pairs}): the memberships are not a "
                     "Markov model at this lag (train longer, use a longer lag, or lower "
                     "n_chi)")
    if not np.isfinite(q_err).all():
        notes.append("no bootstrap errors (n_boot < 2)")
    # rates consistent with 0 within the certificate's slack: reported as 0 in "rates_clipped"
    clipped = np.where(off & (q < 0) & ~bad, 0.0, q)
    clipped[~off] = 0.0
    clipped[~off] = -clipped.sum(axis=1)
    ts, rising = generator_timescales(q)
    if rising > float(rel_tol) * np.abs(np.diag(q)).max():
        notes.append(f"Q has a growing mode (eigenvalue +{rising:.3g}/ps beyond rel_tol × "
                     "the fastest rate): the memberships are not a Markov model at this lag")
    w, vl = np.linalg.eig(q.T)
    pi = np.real(vl[:, int(np.argmin(np.abs(w)))])
    pi = pi / pi.sum() if abs(pi.sum()) > 0 else pi
    if np.isfinite(q_err).all() and not (off & (q > 2.0 * q_err)).any():
        notes.append("no rate exceeds twice its error: no transition is resolved at this lag "
                     "(more or longer bursts, a longer lag, or lower n_chi)")
    return {"n_chi": k, "koopman": kc, "koopman_err": k_err, "rates": q, "rates_err": q_err,
            "rates_clipped": clipped, "rel_tol": float(rel_tol),
            "timescales_ps": ts, "stationary": pi, "r2": r2, "lag_time_ps": tau,
            "n_starts": n, "n_boot": len(boots_q), "valid": not notes, "notes": notes}
