"""Batched χ-MEPs repeat to the bit: a path does not depend on which other paths share its
packed Context (mep.batched, evaluator="serial"), because the numpy χ pass gives each
structure the same bits in any batch (BatchedChiRestraint.batch_invariant)."""
import numpy as np
import pytest
import torch

from amore_openmm.chi import ChiModel, Coordinates, PairwiseDistances
from amore_openmm.forces.pythonforce import BatchedChiRestraint
from amore_openmm.mep import trace_chi_meps_batched
from amore_openmm.pipeline.stages import chi_batch_invariant, choose_path_tracer
from amore_openmm.systems import load_system

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ala():
    return load_system("alanine_dipeptide")


def _network_chi(ms, pair=(5, 17), slope=-20.0, seed=0):
    """χ of all 231 pair distances through a hidden layer: unit 0 is sigmoid(slope·(d − d0))
    of one distance (d0 its value in the first structure), which sets χ; 11 random units
    add a small term of every distance, so each GEMM reduces over many features (where a
    batched GEMM rounds a column by its place in the batch)."""
    feat = PairwiseDistances(ms.n_atoms)
    pairs = [tuple(p) for p in np.asarray(feat.pairs)]
    k = pairs.index(pair)
    d0 = float(np.linalg.norm(ms.positions[0][pair[0]] - ms.positions[0][pair[1]]))
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(len(pairs), 12), torch.nn.Sigmoid(),
                              torch.nn.Linear(12, 1), torch.nn.Sigmoid()).double()
    with torch.no_grad():
        net[0].weight.copy_(0.3 * torch.randn(12, len(pairs), generator=gen,
                                              dtype=torch.float64))
        net[0].bias.zero_()
        net[0].weight[0].zero_()
        net[0].weight[0, k] = slope
        net[0].bias[0] = -slope * d0
        net[2].weight.copy_(0.05 * torch.randn(1, 12, generator=gen, dtype=torch.float64))
        net[2].weight[0, 0] = 8.0
        net[2].bias.fill_(-4.0)
    return ChiModel(feat, network=net)


def _starts(ms, count, sigma=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return ms.positions[0][None] + sigma * rng.standard_normal((count, ms.n_atoms, 3))


def _same(a, b):
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.chi, b.chi)
    np.testing.assert_array_equal(a.iterations, b.iterations)


def test_numpy_chi_pass_gives_each_structure_the_same_bits_in_any_batch(ala):
    model = _network_chi(ala)
    x = _starts(ala, 9, sigma=0.03)
    restraint = BatchedChiRestraint(model, 9, ala.n_atoms)
    assert restraint.numpy_path
    chi, grad = restraint.chi_and_grad(x)
    rng = np.random.default_rng(1)
    for _ in range(20):
        idx = np.sort(rng.choice(9, int(rng.integers(1, 9)), replace=False))
        c, g = restraint.chi_and_grad(x[idx])
        np.testing.assert_array_equal(c, chi[idx])
        np.testing.assert_array_equal(g, grad[idx])
    assert restraint.batch_invariant(x)
    # and it is χ: the torch model's value and gradient to round-off
    xt = torch.from_numpy(x).requires_grad_(True)
    c_torch = model.network(model.featurizer(xt)).reshape(-1)
    (g_torch,) = torch.autograd.grad(c_torch.sum(), xt)
    np.testing.assert_allclose(chi, c_torch.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, g_torch.numpy(), rtol=0, atol=1e-10)
    assert np.ptp(chi) > 0.05                        # the structures have different χ


def test_batched_paths_repeat_whatever_shares_their_context(ala):
    """Each path traced in a Context of 4 copies equals itself traced in reversed order,
    with 2 copies taking turns, on 2 worker processes, alone, and with the packed Context on
    the CPU platform (2 threads: its force sums depend on thread timing, and single
    precision), to the bit."""
    model = _network_chi(ala)
    starts = _starts(ala, 4)
    kw = dict(step=0.03, max_nodes=7, tolerance=5.0)
    paths = trace_chi_meps_batched(ala, model, starts, **kw)
    assert all(p.n_certified >= 5 for p in paths), [p.n_certified for p in paths]
    for other in (trace_chi_meps_batched(ala, model, starts[::-1], **kw)[::-1],
                  trace_chi_meps_batched(ala, model, starts, copies=2, **kw),
                  trace_chi_meps_batched(ala, model, starts, workers=2, **kw),
                  [trace_chi_meps_batched(ala, model, starts[i], **kw)[0] for i in (0, 3)],
                  trace_chi_meps_batched(ala, model, starts, platform="CPU",
                                         properties={"Threads": "2"}, **kw)):
        for a, b in zip(paths if len(other) == 4 else [paths[0], paths[3]], other):
            _same(a, b)


def test_auto_path_tracer_batches_vacuum_molecules_with_a_batch_invariant_chi(ala):
    """path_tracer = "auto": batched for a vacuum molecule without constraints whose χ is
    batch-invariant (the distance featurizers' numpy pass), whatever the number of paths;
    the pool for a TorchScript χ, implicit solvent (VGVAPG's GB) and constraints."""
    import copy

    import openmm
    model = _network_chi(ala)
    assert chi_batch_invariant(ala, model)
    assert choose_path_tracer(ala, model) == "batched"
    assert choose_path_tracer(ala) == "batched"
    coords = ChiModel(Coordinates(ala.n_atoms), network=torch.nn.Sequential(
        torch.nn.Linear(3 * ala.n_atoms, 1), torch.nn.Sigmoid()).double())
    assert not chi_batch_invariant(ala, coords)
    assert choose_path_tracer(ala, coords) == "pool"
    assert choose_path_tracer(load_system("vgvapg"), model) == "pool"
    constrained = copy.copy(ala)
    constrained.system = openmm.XmlSerializer.clone(ala.system)
    constrained.system.addConstraint(0, 1, 0.109)
    assert choose_path_tracer(constrained, model) == "pool"


def test_batched_paths_show_their_progress_and_it_changes_nothing(ala, capsys):
    model = _network_chi(ala)
    starts = _starts(ala, 4)
    kw = dict(step=0.03, max_nodes=7, tolerance=5.0)
    quiet = trace_chi_meps_batched(ala, model, starts, **kw)
    capsys.readouterr()
    shown = trace_chi_meps_batched(ala, model, starts, progress=True, **kw)
    err = capsys.readouterr().err          # not a terminal: whole lines, no bar frames
    assert "χ-MEPs: 0/4 paths (0%)" in err and "4/4 paths (100%)" in err and "done" in err
    assert "\r" not in err
    shared = trace_chi_meps_batched(ala, model, starts, progress=True, workers=2, **kw)
    err = capsys.readouterr().err          # this process's share: starts 0 and 2
    assert "χ-MEPs (worker 1 of 2): 2/2 paths (100%)" in err
    for a, b, c in zip(quiet, shown, shared):
        _same(a, b)
        _same(a, c)
