"""No import circle anywhere in jdiff/ or experiments/, and every module imports on its own."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("jdiff", "experiments")


def _modules():
    """{dotted module name: file} of every module of the packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name, file, modules):
    """Internal modules `name` imports anywhere in its file (function bodies included: an import
    moved into a function to dodge a circle is still a circle)."""
    is_pkg = file.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_circle():
    modules = _modules()
    # A package's __init__ re-exporting its submodules is not a circle with them.
    graph = {
        m: {t for t in _imports(m, f, modules) if not (f.name == "__init__.py" and t.startswith(m + "."))}
        for m, f in modules.items()
    }
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_module_imports_alone():
    # One fresh interpreter; before each module, every jdiff/experiments module is forgotten, so
    # each one is imported first, on its own (an order-dependent import fails here).
    names = sorted(_modules())
    # The absl flags an entry point defines are dropped again, so the next entry point can
    # define its own --workdir.
    code = f"""
import sys
from absl import flags
base = set(flags.FLAGS)
for name in {names!r}:
    for loaded in [m for m in sys.modules if m.split(".")[0] in {PACKAGES!r}]:
        del sys.modules[loaded]
    __import__(name)
    for flag in set(flags.FLAGS) - base:
        delattr(flags.FLAGS, flag)
print("ok", len({names!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


def test_the_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
