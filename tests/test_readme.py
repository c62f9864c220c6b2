"""The README's Python example runs as written (so the documentation cannot rot)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_readme_embedding_example_runs(tmp_path, monkeypatch):
    block = re.search(r"## Use it from your own OpenMM script\n+```python\n(.*?)```",
                      README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "systems").symlink_to(README.parent / "systems")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    path, sens = namespace["path"], namespace["sens"]
    assert path.chi.min() < 0.2 and path.chi.max() > 0.8  # the path crosses the transition
    assert sens.per_atom.shape == (22,)
    assert (tmp_path / "chi.pt").is_file()
