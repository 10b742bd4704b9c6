"""Every Python example in the README runs, as written, against a small index of the fixture photos."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    examples = python_examples()
    assert len(examples) >= 2 and all("simengine" in code for code in examples)


@pytest.fixture
def workdir(tmp_path, monkeypatch, built_index, fixture_data, model) -> Path:
    """The files the examples name: indexes/default, a.jpg b.jpg c.jpg, new/, photos/ and indexes/photos."""
    from simengine.index.build import build_index

    shutil.copytree(built_index, tmp_path / "indexes" / "default")
    val = sorted((fixture_data / "val").glob("*/*.jpg"))
    for name, source in zip(["a.jpg", "b.jpg", "c.jpg"], val[:3]):
        shutil.copy(source, tmp_path / name)
    (tmp_path / "new").mkdir()
    for name, source in zip(["a.jpg", "b.jpg"], val[3:5]):
        shutil.copy(source, tmp_path / "new" / name)
    (tmp_path / "photos").mkdir()
    for source in val[5:9] + [fixture_data / "train" / "rocket" / "rocket_00.jpg"]:
        shutil.copy(source, tmp_path / "photos" / source.name)
    build_index(tmp_path / "photos", model, tmp_path / "indexes" / "photos")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("n", range(len(python_examples())))
def test_readme_example_runs(workdir, n):
    code = python_examples()[n]
    namespace: dict = {}
    exec(compile(code, f"README.md python example {n + 1}", "exec"), namespace)
    assert any(not k.startswith("__") for k in namespace)  # it imported what it uses
