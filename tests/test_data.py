"""KoopmanData: shapes, merge/subset, atomic save/load, wrong-system errors."""
import os

import numpy as np
import pytest

from amore_openmm.data import KoopmanData, atomic_save_npz


def _data(n=5, k=2, atoms=4, gen=0, origin="trajectory", seed=0):
    rng = np.random.default_rng(seed)
    return KoopmanData(rng.normal(size=(n, atoms, 3)), rng.normal(size=(n, k, atoms, 3)),
                       generation=np.full(n, gen), origin=np.full(n, origin),
                       seed=np.arange(n), lag_steps=100, timestep=0.002, system_name="toy")


def test_shapes_and_defaults():
    d = KoopmanData(np.zeros((3, 2, 3)), np.zeros((3, 2, 3)))  # K=1 given as (N, n, 3)
    assert d.y.shape == (3, 1, 2, 3)
    assert d.x.dtype == np.float32
    assert list(d.origin) == ["trajectory"] * 3 and d.generation.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="must be"):
        KoopmanData(np.zeros((3, 2, 3)), np.zeros((4, 1, 2, 3)))


def test_merge_subset_keep_metadata():
    a, b = _data(5), _data(3, gen=1, origin="mep", seed=1)
    m = a.merge(b)
    assert m.n_starts == 8 and m.n_koopman == 2
    assert m.generation.tolist() == [0] * 5 + [1] * 3
    assert list(m.origin[-3:]) == ["mep"] * 3
    np.testing.assert_array_equal(m.subset(m.origin == "mep").x, b.x)
    assert m.lag_time == pytest.approx(0.2)


def test_merge_rejects_other_system():
    with pytest.raises(ValueError, match="different systems"):
        _data(atoms=4).merge(_data(atoms=5))
    with pytest.raises(ValueError, match="K="):
        _data(k=2).merge(_data(k=3))


def test_save_load_round_trip(tmp_path):
    d = _data(6, gen=2, origin="user")
    path = d.save(tmp_path / "sub" / "koopman.npz")
    e = KoopmanData.load(path, n_atoms=4)
    np.testing.assert_array_equal(d.x, e.x)
    np.testing.assert_array_equal(d.y, e.y)
    assert e.generation.tolist() == [2] * 6 and list(e.origin) == ["user"] * 6
    assert (e.lag_steps, e.timestep, e.system_name) == (100, 0.002, "toy")
    with pytest.raises(ValueError, match="different system"):
        KoopmanData.load(path, n_atoms=22)
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.npz"
    atomic_save_npz(target, v=np.arange(3))

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_save_npz(target, v=Boom())
    with np.load(target) as f:  # the earlier complete file is still there and intact
        assert f["v"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["a.npz"]


def test_per_start_extras_follow_subset_and_merge():
    a, b = _data(5), _data(3, seed=1)
    a.extra.update(start_index=np.arange(5), note="run-1")
    b.extra["start_index"] = np.arange(100, 103)
    assert a.subset([4, 1]).extra["start_index"].tolist() == [4, 1]
    m = a.merge(b)
    assert m.extra["start_index"].tolist() == [0, 1, 2, 3, 4, 100, 101, 102]
    assert m.extra["note"] == "run-1"
    assert "start_index" not in a.merge(_data(2)).extra  # would be stale: dropped


def test_written_files_are_readable_by_others(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = atomic_save_npz(tmp_path / "k.npz", v=np.arange(2))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # the umask's mode, not mkstemp's 0600


def test_merge_refuses_other_system_name_lag_or_timestep():
    a = _data(3)
    for field, value in (("system_name", "other"), ("lag_steps", 50), ("timestep", 0.004)):
        b = _data(2, seed=1)
        setattr(b, field, value)
        with pytest.raises(ValueError, match=rf"{field}={value!r}.*{field}={getattr(a, field)!r}"):
            a.merge(b)
    unnamed = _data(2, seed=1)
    unnamed.system_name = ""  # unknown system: accepted, the name of the other side is kept
    assert a.merge(unnamed).system_name == "toy" and unnamed.merge(a).system_name == "toy"


def test_weights_default_follow_subset_merge_save_load(tmp_path):
    a, b = _data(4), _data(3, seed=1)
    assert a.weights.dtype == np.float64 and a.weights.tolist() == [1.0] * 4
    b.weights = np.array([0.0, 0.5, 2.0])
    m = a.merge(b)
    assert m.weights.tolist() == [1.0] * 4 + [0.0, 0.5, 2.0]
    assert m.subset(slice(0, 4)).weights.tolist() == [1.0] * 4
    assert m.subset([5, 6]).weights.tolist() == [0.5, 2.0]
    back = KoopmanData.load(m.save(tmp_path / "w.npz"))
    np.testing.assert_array_equal(back.weights, m.weights)
    with pytest.raises(ValueError, match="weights"):
        KoopmanData(np.zeros((2, 1, 3)), np.zeros((2, 1, 3)), weights=[1.0, -1.0])


def test_extra_is_saved_and_loaded(tmp_path):
    d = _data(3)
    d.extra.update(start_index=np.array([7, 8, 9]), reseed="burst", retried=2,
                   dropped=[{"start_index": 4, "k": -1, "reason": "start_energy"}],
                   drop_counts={"start_energy": 1}, score=np.float64("nan"))
    with pytest.warns(UserWarning, match="not_json"):
        d.extra["not_json"] = object()
        back = KoopmanData.load(d.save(tmp_path / "e.npz"))
    assert back.extra["start_index"].tolist() == [7, 8, 9]
    assert back.extra["dropped"] == d.extra["dropped"]
    assert back.extra["drop_counts"] == {"start_energy": 1} and back.extra["retried"] == 2
    assert back.extra["reseed"] == "burst" and back.extra["score"] is None  # NaN -> null
    assert "not_json" not in back.extra
    assert back.subset([2]).extra["start_index"].tolist() == [9]


def test_damaged_file_is_a_value_error_naming_it(tmp_path):
    bad = tmp_path / "koopman.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="koopman.npz is damaged"):
        KoopmanData.load(bad)


def test_to_jsonable_and_write_json(tmp_path):
    import json
    from pathlib import Path

    from amore_openmm.data import to_jsonable, write_json

    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": (np.int64(2), float("inf")),
           "d": Path("/x/y"), 5: {np.str_("s"): np.bool_(True)}, "e": np.array([1.0, np.nan])}
    plain = to_jsonable(obj)
    assert plain == {"a": 1.5, "b": [0, 1, 2], "c": [2, None], "d": "/x/y",
                     "5": {"s": True}, "e": [1.0, None]}
    path = write_json(tmp_path / "sub" / "o.json", obj)
    assert json.loads(path.read_text()) == plain and path.read_text().endswith("\n")
    with pytest.raises(TypeError, match="object"):
        to_jsonable({"x": object()})


# -- y of a selection (solvated systems: the solute's end points only) -------------------------
def _selected(n=4, k=2, n_atoms=10, atoms=(1, 2, 5), seed=0):
    rng = np.random.default_rng(seed)
    return KoopmanData(rng.normal(size=(n, n_atoms, 3)),
                       rng.normal(size=(n, k, len(atoms), 3)), lag_steps=100, timestep=0.002,
                       system_name="box", atoms=np.array(atoms))


def test_atoms_default_to_every_atom_and_shape_is_checked():
    d = _data(3, atoms=4)
    assert d.atoms.tolist() == [0, 1, 2, 3] and d.all_atoms and d.x_selected is d.x
    s = _selected()
    assert s.atoms.dtype == np.int64 and s.n_selected == 3 and s.n_atoms == 10
    np.testing.assert_array_equal(s.x_selected, s.x[:, [1, 2, 5]])
    assert s.nbytes == s.x.nbytes + s.y.nbytes
    with pytest.raises(ValueError, match="n_sel"):  # y must hold exactly the atoms
        KoopmanData(np.zeros((2, 10, 3)), np.zeros((2, 1, 4, 3)), atoms=[1, 2, 5])
    for bad in ([5, 1], [1, 1, 2], [0, 10], []):
        with pytest.raises(ValueError, match="atoms"):
            KoopmanData(np.zeros((2, 10, 3)), np.zeros((2, 1, len(bad), 3)), atoms=bad)


def test_atoms_survive_subset_merge_save_load(tmp_path):
    a, b = _selected(seed=0), _selected(n=2, seed=1)
    m = a.merge(b)
    assert m.atoms.tolist() == [1, 2, 5] and m.y.shape == (6, 2, 3, 3)
    assert m.subset([0, 5]).atoms.tolist() == [1, 2, 5]
    back = KoopmanData.load(m.save(tmp_path / "sel.npz"), n_atoms=10)
    assert back.atoms.tolist() == [1, 2, 5]
    np.testing.assert_array_equal(back.y, m.y)
    empty = KoopmanData.empty(10, 2, atoms=[1, 2, 5])
    assert empty.y.shape == (0, 2, 3, 3) and empty.merge(a).n_starts == 4


def test_merge_refuses_other_atoms_naming_both():
    with pytest.raises(ValueError, match=r"\[1, 2, 5\].*\[0, 3\]|\[0, 3\].*\[1, 2, 5\]"):
        _selected().merge(_selected(atoms=(0, 3)))


def test_files_without_atoms_load_as_every_atom(tmp_path):
    d = _data(3, atoms=4)
    path = tmp_path / "old.npz"  # a format-2 file: no "atoms" entry
    atomic_save_npz(path, x=d.x, y=d.y, generation=d.generation, origin=d.origin, seed=d.seed,
                    weights=d.weights, lag_steps=np.int64(100), timestep=np.float64(0.002),
                    system_name=np.str_("toy"), format_version=np.int64(2))
    e = KoopmanData.load(path)
    assert e.atoms.tolist() == [0, 1, 2, 3] and e.all_atoms


def test_memory_budget_from_argument_environment_and_default(monkeypatch):
    from amore_openmm.data import memory_budget_bytes

    monkeypatch.delenv("AMORE_MEMORY_BUDGET_GB", raising=False)
    assert memory_budget_bytes() == 4_000_000_000
    assert memory_budget_bytes(0.5) == 500_000_000
    monkeypatch.setenv("AMORE_MEMORY_BUDGET_GB", "2.5")
    assert memory_budget_bytes() == 2_500_000_000
    monkeypatch.setenv("AMORE_MEMORY_BUDGET_GB", "lots")
    with pytest.raises(ValueError, match="AMORE_MEMORY_BUDGET_GB"):
        memory_budget_bytes()
    with pytest.raises(ValueError, match="positive"):
        memory_budget_bytes(-1)
