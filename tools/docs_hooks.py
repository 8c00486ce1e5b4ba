"""mkdocs hooks for the jdiff site (mkdocs.yml `hooks:`), run by `make docs`.

- README.md is the home page, CHANGELOG.md and CONTRIBUTING.md are pages; their links into
  docs/ and colab/ are rewritten to the site's pages.
- One API page per public module: `jdiff` and every name of `jdiff._SUBMODULES`, rendered by
  mkdocstrings from the docstrings of the module's flat re-exports.
- The notebooks in colab/ are pages, rendered from their stored outputs (no execution), with
  a download link to the .ipynb itself.
- The nav is built here, so a new docs/*.md page, notebook or public module appears without
  editing mkdocs.yml.
- Docstring checks that fail a `--strict` build (they log warnings): a public module or a
  public name of one without a docstring, and a docstring naming a `jdiff.` name that does
  not exist.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import logging
import pathlib
import re

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parent.parent
log = logging.getLogger("mkdocs.hooks.jdiff")

# Root files shown as site pages, and where links to them point on the site.
ROOT_PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md", "CONTRIBUTING.md": "contributing.md"}
# Topic pages first in this order; any other docs/*.md page follows, sorted.
GUIDE_ORDER = ["samplers", "losses", "models_data", "training", "likelihood", "guidance", "flowmaps"]
_LINK = re.compile(r"(\]\()([^)#\s]+)((?:#[^)\s]*)?\))")
_JDIFF_NAME = re.compile(r"`(jdiff(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\([^`]*\))?`")


def public_modules():
    """ "jdiff" and its public submodules: those `import jdiff` declares (`jdiff._SUBMODULES`),
    then any other top-level module or package of jdiff/ whose name has no leading underscore."""
    jdiff = importlib.import_module("jdiff")
    names = list(jdiff._SUBMODULES)
    found = sorted(
        p.stem
        for p in (ROOT / "jdiff").iterdir()
        if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())
    )
    return ["jdiff"] + [f"jdiff.{name}" for name in names + [n for n in found if n not in names]]


def notebooks():
    return sorted((ROOT / "colab").glob("*.ipynb"))


def guides():
    pages = {p.stem: p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md"}
    return [pages[s] for s in GUIDE_ORDER if s in pages] + sorted(v for k, v in pages.items() if k not in GUIDE_ORDER)


def site_link(target: str, from_root: bool) -> str:
    """Where a relative link of a page points on the site (`from_root`: the page is a root file)."""
    prefix = "" if from_root else "../"
    for src, dest in ROOT_PAGES.items():
        if target == prefix + src:
            return dest
    if target.startswith(prefix + "colab/") and target.endswith(".ipynb"):
        return "notebooks/" + pathlib.PurePosixPath(target).stem + ".md"
    if from_root and target.startswith("docs/"):
        return target[len("docs/") :]
    return target


def rewrite_links(markdown: str, from_root: bool) -> str:
    return _LINK.sub(lambda m: m.group(1) + site_link(m.group(2), from_root) + m.group(3), markdown)


def api_page(modname: str) -> str:
    """The mkdocstrings page of a public module: its docstring, then every public name.

    The names are listed explicitly (`__all__`, else the module's non-underscore attributes):
    a package's flat re-exports (`from jdiff.samplers._fixed import Euler as Euler`) are aliases,
    which mkdocstrings leaves out unless it is told to render them.
    """
    names = _public_names(importlib.import_module(modname))
    members = "".join(f"        - {n}\n" for n in names)
    return f"# `{modname}`\n\n::: {modname}\n    options:\n      show_root_heading: false\n      members:\n{members}"


# --- notebooks -----------------------------------------------------------------------------


def notebook_page(path: pathlib.Path):
    """(markdown, {file name: bytes}) of a notebook with its stored outputs."""
    nb = json.loads(path.read_text())
    stem, images = path.stem, {}
    download = f"[Download the notebook]({path.name}) (it runs top to bottom on a CPU runtime; its first cell installs jdiff).\n"
    out = []
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            out.append(rewrite_links(source, from_root=False) + "\n")
            if i == 0:  # after the title and introduction
                out.append(download)
            continue
        if i == 0:
            out.append(download)
        if cell["cell_type"] != "code" or not source.strip():
            continue
        out.append(f"```python\n{source}\n```\n")
        for j, output in enumerate(cell.get("outputs", [])):
            if output["output_type"] == "stream":
                out.append("```text\n" + "".join(output["text"]).rstrip() + "\n```\n")
            elif output["output_type"] in ("display_data", "execute_result"):
                data = output["data"]
                if "image/png" in data:
                    name = f"{stem}_{i}_{j}.png"
                    images[name] = base64.b64decode("".join(data["image/png"]))
                    out.append(f"![output of cell {i}]({name})\n")
                elif "text/plain" in data:
                    out.append("```text\n" + "".join(data["text/plain"]).rstrip() + "\n```\n")
            elif output["output_type"] == "error":
                log.warning("colab/%s: cell %d is stored with an error output (%s)", path.name, i, output.get("ename"))
    return "\n".join(out), images


# --- docstring checks ----------------------------------------------------------------------


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_") and not inspect.ismodule(v)]
    return names


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def docstring_problems(modules=None):
    """Public modules and names without a docstring; `jdiff.` names in docstrings that do not exist."""
    problems = []

    def check_refs(where, doc):
        problems.extend(
            f"{where}: its docstring names `{name}`, which does not exist"
            for name in _JDIFF_NAME.findall(doc or "")
            if not _resolves(name)
        )

    for modname in modules if modules is not None else public_modules():
        module = importlib.import_module(modname)
        if not inspect.getdoc(module):
            problems.append(f"{modname}: the module has no docstring")
        check_refs(modname, module.__doc__)
        for name in _public_names(module):
            obj = getattr(module, name, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("jdiff"):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                problems.append(f"{modname}.{name}: public, but has no docstring")
            check_refs(f"{modname}.{name}", doc)
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if not attr.startswith("_") or attr == "__init__":
                        check_refs(f"{modname}.{name}.{attr}", getattr(value, "__doc__", None))
    return problems


# --- mkdocs events -------------------------------------------------------------------------


def on_config(config):
    api = [{m: f"api/{m}.md"} for m in public_modules()]
    nbs = [f"notebooks/{p.stem}.md" for p in notebooks()]
    config["nav"] = [
        {"Home": "index.md"},
        {"Guides": guides()},
        {"Notebooks": nbs},
        {"API reference": api},
    ]
    config["nav"] += [
        {src.removesuffix(".md").title(): dest}
        for src, dest in ROOT_PAGES.items()
        if src != "README.md" and (ROOT / src).exists()
    ]
    return config


def on_files(files, config):
    for src, dest in ROOT_PAGES.items():
        if (ROOT / src).exists():
            files.append(File.generated(config, dest, content=rewrite_links((ROOT / src).read_text(), from_root=True)))
    for module in public_modules():
        files.append(File.generated(config, f"api/{module}.md", content=api_page(module)))
    for path in notebooks():
        markdown, images = notebook_page(path)
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=markdown))
        files.append(File.generated(config, f"notebooks/{path.name}", content=path.read_bytes()))
        for name, data in images.items():
            files.append(File.generated(config, f"notebooks/{name}", content=data))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.generated_by is None:  # a docs/ page: its links to ../README.md, ../colab/... go to site pages
        return rewrite_links(markdown, from_root=False)
    return markdown


def on_pre_build(config):
    for problem in docstring_problems():
        log.warning("%s", problem)
