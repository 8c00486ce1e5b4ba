"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot drift.

The blocks of one file run in order in one namespace (a later block may use an earlier
one's names), in a fresh working directory, with the test suite's settings (float64 on).
"""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: pathlib.Path):
    """(line number, code) of every ```python block of a markdown file."""
    text = path.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in _BLOCK.finditer(text)]


@pytest.mark.parametrize("path", [f for f in FILES if python_blocks(f)], ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    namespace = {"__name__": "__docs__"}
    for line, code in python_blocks(path):
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{path.relative_to(ROOT)}, the block at line {line} failed: {e!r}") from e


def test_every_docs_page_is_found():
    assert ROOT.joinpath("README.md") in FILES and len(FILES) > 1
    assert os.path.isdir(ROOT / "docs")
