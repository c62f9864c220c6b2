"""The README's Python example runs (so the documentation cannot rot): in the default suite
at reduced size (fewer frames and a coarser path step, substituted into the
code before it runs), and as written in the slow suite. Both assert the same facts."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

#: (pattern, replacement) applied to the example for the default suite
REDUCE = [(r"n_frames=\d+", "n_frames=500"),
          (r"trace_chi_mep\(([^)]*)\)", r"trace_chi_mep(\1, step=0.05)")]


def _example() -> str:
    return re.search(r"## Use it from your own OpenMM script\n+```python\n(.*?)```",
                     README.read_text(), re.S).group(1)


def _run(block: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "systems").symlink_to(README.parent / "systems")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    path, sens = namespace["path"], namespace["sens"]
    assert path.chi.min() < 0.2 and path.chi.max() > 0.8  # the path crosses the transition
    assert sens.per_atom.shape == (22,)
    assert (tmp_path / "chi.pt").is_file()


def test_readme_example_reduced(tmp_path, monkeypatch):
    block = _example()
    for pattern, repl in REDUCE:
        block, n = re.subn(pattern, repl, block)
        assert n >= 1, f"the README example no longer contains {pattern!r}; update REDUCE"
    _run(block, tmp_path, monkeypatch)


@pytest.mark.slow
def test_readme_example_as_written(tmp_path, monkeypatch):
    _run(_example(), tmp_path, monkeypatch)
