"""The documentation site's generated parts (tools/docs_hooks.py) and the release files.

`make docs` (run by .ci/run) builds the site itself with --strict; these tests check what the
hooks generate and that their docstring check catches what it should, without a build.
"""

import importlib
import pathlib
import re
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
docs_hooks = pytest.importorskip("docs_hooks")  # needs mkdocs (the docs extra of .[dev])

import jdiff  # noqa: E402


def test_every_public_module_gets_an_api_page_listing_its_public_names():
    modules = docs_hooks.public_modules()
    assert modules[0] == "jdiff" and modules[1 : len(jdiff._SUBMODULES) + 1] == [
        f"jdiff.{m}" for m in jdiff._SUBMODULES
    ]
    # A public module file that `jdiff._SUBMODULES` does not list still gets its page.
    files = {f"jdiff.{p.stem}" for p in (ROOT / "jdiff").glob("*.py") if not p.name.startswith("_")}
    assert files <= set(modules) and len(set(modules)) == len(modules)
    for name in ("jdiff.samplers", "jdiff.losses"):
        page = docs_hooks.api_page(name)
        assert f"::: {name}\n" in page
        module = importlib.import_module(name)
        listed = re.findall(r"^ {8}- (\w+)$", page, re.MULTILINE)
        # The flat re-exports are the entry points: every one is listed, and nothing private.
        assert "sample" in listed or "cfm_loss" in listed
        assert all(hasattr(module, n) and not n.startswith("_") for n in listed)


def test_the_public_api_has_docstrings_and_its_jdiff_references_exist():
    assert docs_hooks.docstring_problems() == []


def test_the_docstring_check_finds_a_missing_docstring_and_a_missing_name(tmp_path, monkeypatch):
    (tmp_path / "jdiff_doccheck_example.py").write_text(
        '"""An example module; see `jdiff.samplers.sample` and `jdiff.samplers.NoSuchSolver`."""\n'
        "def documented():\n"
        '    """Like `jdiff.Model.x0`, unlike `jdiff.Model.no_such_view`."""\n'
        "def undocumented():\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = docs_hooks.docstring_problems(["jdiff_doccheck_example"])
    assert sorted(problems) == sorted(
        [
            "jdiff_doccheck_example: its docstring names `jdiff.samplers.NoSuchSolver`, which does not exist",
            "jdiff_doccheck_example.documented: its docstring names `jdiff.Model.no_such_view`, which does not exist",
            "jdiff_doccheck_example.undocumented: public, but has no docstring",
        ]
    )


def test_links_of_root_pages_and_docs_pages_point_at_site_pages():
    readme = (
        "[samplers](docs/samplers.md#usage), ![x](docs/demo_digits.png), [tour](colab/tour.ipynb), [c](CHANGELOG.md)"
    )
    assert docs_hooks.rewrite_links(readme, from_root=True) == (
        "[samplers](samplers.md#usage), ![x](demo_digits.png), [tour](notebooks/tour.md), [c](changelog.md)"
    )
    page = "[home](../README.md), [nb](../colab/quickstart.ipynb), [g](guidance.md)"
    assert (
        docs_hooks.rewrite_links(page, from_root=False)
        == "[home](index.md), [nb](notebooks/quickstart.md), [g](guidance.md)"
    )


def test_a_notebook_page_shows_its_code_and_stored_pictures():
    path = ROOT / "colab" / "quickstart.ipynb"
    markdown, images = docs_hooks.notebook_page(path)
    nb = __import__("json").loads(path.read_text())
    stored = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert len(images) == stored > 0
    assert all(data.startswith(b"\x89PNG") for data in images.values())
    assert all(f"]({name})" in markdown for name in images)
    assert "```python\nimport os" in markdown


def test_the_version_is_defined_once_and_the_changelog_has_its_release():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jdiff.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, re.MULTILINE)
    assert releases[0] == ("Unreleased", "")
    assert releases[1][0] == jdiff.__version__ and releases[1][1], "the newest release is the package's version"
    assert (ROOT / "jdiff" / "py.typed").exists() and "py.typed" in pyproject["tool"]["setuptools"]["package-data"][
        "jdiff"
    ]


def test_contributing_examples_run():
    # The solver, path and loss examples of CONTRIBUTING.md, in one namespace (their tests assert).
    text = (ROOT / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 4
    namespace = {"__name__": "__contributing__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"CONTRIBUTING.md block {i}", "exec"), namespace)
    assert {"Midpoint", "QuadraticDecay", "x0_mse_loss"} <= set(namespace)
