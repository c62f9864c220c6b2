"""Per-copy L-BFGS (mep.copy_lbfgs): its preconditioner and its nonsmooth stationarity test."""
import numpy as np
import pytest

from amore_openmm.mep.copy_lbfgs import (K_REF, CopyLBFGS, min_norm_combination,
                                         minimize_copies)


def _rotated_hessian(rng, n, low, high):
    q, _ = np.linalg.qr(rng.standard_normal((3 * n, 3 * n)))
    return q @ np.diag(np.linspace(low, high, 3 * n)) @ q.T


def _run(opt, forces, stiff=None):
    """Drive ``opt`` to the end; ``stiff(idx, x)`` gives the stiff directions per call."""
    while opt.busy:
        idx, pts = opt.pending()
        opt.update(idx, forces(idx, pts), None if stiff is None else stiff(idx, pts))


def test_min_norm_combination_is_the_shortest_vector_of_the_convex_hull():
    g = np.array([[[1.0, 0.0], [-1.0, 0.0], [5.0, 5.0]],       # opposite: the origin
                  [[1.0, 0.0], [-1.0, 2.0], [9.0, 9.0]],       # segment: t = 1/4
                  [[3.0, 4.0], [-1.0, 0.0], [0.0, 0.0]]])      # one point: itself
    mask = np.array([[True, True, False], [True, True, False], [True, False, False]])
    v = min_norm_combination(g, mask, sweeps=200)
    np.testing.assert_allclose(v, [[0.0, 0.0], [0.5, 0.5], [3.0, 4.0]], atol=1e-6)


def test_preconditioner_removes_the_restraint_stiffness_and_an_exact_metric_is_newton():
    """A quadratic whose stiffest mode is a χ-restraint-like rank-one term κ ŵŵᵀ (κ 10⁷
    kJ/mol/nm², 10³ times the rest): with the stiff direction w = √(κ/K_REF)·ŵ the copy
    converges to the same minimum in fewer force calls; with the rest of the Hessian as its
    metric as well, H₀ is the exact inverse Hessian and the first step lands on the
    minimum."""
    rng = np.random.default_rng(11)
    n, kappa = 4, 1e7
    soft = _rotated_hessian(rng, n, 10.0, 1e4)
    w_hat = rng.standard_normal(3 * n)
    w_hat /= np.linalg.norm(w_hat)
    hess = soft + kappa * np.outer(w_hat, w_hat)
    x_min = rng.normal(scale=0.05, size=(n, 3))
    x0 = x_min + rng.normal(scale=0.01, size=(n, 3))

    def forces(idx, xs):
        return -((xs - x_min).reshape(len(idx), -1) @ hess).reshape(xs.shape)

    def stiff(idx, xs):
        return np.broadcast_to(np.sqrt(kappa / K_REF) * w_hat.reshape(n, 3), xs.shape)

    runs = {}
    for name, metric, directions in (("plain", None, None), ("stiff", None, stiff),
                                     ("newton", soft / K_REF, stiff)):
        opt = CopyLBFGS(1, (n, 3), max_step=0.05, kink_radius=None)
        opt.start(0, x0, 1e-3, 2000, metric=metric)
        _run(opt, forces, directions)
        x, f = opt.result(0)
        assert np.sqrt(np.mean(f ** 2)) <= 1e-3, name
        d = (x - x_min).reshape(-1)
        # |F| ≤ 1e-3·√12 over the softest mode (10): E − E_min ≤ |F|²/(2·10) ≈ 6e-7
        assert 0.5 * d @ hess @ d < 1e-6, name
        runs[name] = int(opt.evaluations[0])
    assert runs["stiff"] < 0.5 * runs["plain"], runs
    assert runs["newton"] <= 3, runs            # the step, and the check that it converged


def _kinked(hess, x_min, c, a):
    """E = ½dᵀHd + c|a·d| (d = x − x_min): a crease through the minimum, as where two sorted
    distances of the symmetric featurizer cross; returns energy(x) and forces(idx, xs)."""
    def energy(x):
        d = (x - x_min).reshape(-1)
        return 0.5 * d @ hess @ d + c * abs(a @ d)

    def forces(idx, xs):
        d = (xs - x_min).reshape(len(idx), -1)
        return (-(d @ hess) - c * np.sign(d @ a)[:, None] * a).reshape(xs.shape)
    return energy, forces


def test_a_minimum_on_a_crease_converges_by_the_nonsmooth_test_and_not_without_it():
    """On a crease the force never gets small (RMS ≥ ~c/√d on either side), so the RMS test
    cannot pass; the smallest combination of the forces at points within the radius r can.
    The copy stops, reports that combination as its force, is marked ``kinked`` and lies within
    the stated energy bound of the minimum (½·λ_max·r² for the smooth part plus c·r for the
    crease); without the test it stalls unconverged. (L-BFGS circles this synthetic crease
    ~3·10⁻³ nm wide, hence r = 10⁻²; on alanine χ-MEP nodes it comes within the default
    10⁻⁴ nm, see the module docstring.)"""
    rng = np.random.default_rng(5)
    n, c, radius, top = 4, 20.0, 1e-2, 5000.0
    hess = _rotated_hessian(rng, n, 50.0, top)
    x_min = rng.normal(scale=0.05, size=(n, 3))
    a = rng.standard_normal(3 * n)
    a /= np.linalg.norm(a)
    energy, forces = _kinked(hess, x_min, c, a)
    x0 = (x_min + 0.02)[None]
    with_test = minimize_copies(forces, x0, 1.0, 2000, kink_radius=radius)
    without = minimize_copies(forces, x0, 1.0, 2000, kink_radius=None)
    assert with_test.converged[0] and not without.converged[0]
    assert np.sqrt(np.mean(with_test.force ** 2)) <= 1.0
    assert np.sqrt(np.mean(forces([0], with_test.x) ** 2)) > 1.0   # not the point's force
    assert energy(with_test.x[0]) - energy(x_min) < 0.5 * top * radius ** 2 + c * radius
    assert energy(x0[0]) - energy(x_min) > 1.0                       # it came a long way
    assert with_test.evaluations[0] < 0.1 * without.evaluations[0]


def test_nonsmooth_test_does_not_stop_a_copy_on_a_crease_that_still_slopes():
    """A valley with a crease along its floor that slopes down to the minimum at x₀ = 3: on
    the crease the forces along the valley do not cancel in any combination, so even with a
    wide ball (r = 10⁻²) the copy is not stopped on the way; it gets as far down the valley
    as without the test. A smooth copy beside it converges by the RMS test, not marked."""
    y0 = 0.0123456789                     # the crease's offset: no iterate lands on it exactly

    def forces(idx, xs):
        x = xs.reshape(len(idx), 3)
        y = x[:, 1] - y0
        f = np.stack([-(x[:, 0] - 3.0), -y - 5.0 * np.sign(y), -x[:, 2]], 1)
        f[idx == 1, 1] = -y[idx == 1]                             # copy 1: no crease
        return f.reshape(xs.shape)

    ends = {}
    for radius in (1e-2, None):
        opt = CopyLBFGS(2, (1, 3), max_step=0.1, kink_radius=radius)
        for c in range(2):
            opt.start(c, np.array([[0.0, 0.3, 0.2]]), 1e-3, 1000)
        _run(opt, forces)
        np.testing.assert_allclose(opt.result(1)[0], [[3.0, y0, 0.0]], atol=2e-3)
        assert not opt.kinked[1]
        ends[radius] = opt.result(0)[0][0]
        if opt.kinked[0]:                  # stopped by the test: only at the minimum
            assert np.sqrt(np.mean(opt.result(0)[1] ** 2)) <= 1e-3
    for x in ends.values():                # from x₀ = 0, 3 down the valley
        assert abs(x[0] - 3.0) < 2e-3 and abs(x[1] - y0) < 1e-2


def test_bad_kink_radius_is_refused():
    with pytest.raises(ValueError, match="kink_radius"):
        CopyLBFGS(1, (1, 3), kink_radius=0.0)
