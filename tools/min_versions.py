"""The lowest versions jdiff supports, read from pyproject.toml (used by `make test-min`).

python tools/min_versions.py constraints   # pip constraints: every `name>=X` of [project.dependencies] as `name==X`
python tools/min_versions.py check         # the installed versions are those pins (prints the table)
"""

import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(?:#.*)?$")


def lower_bounds(pyproject=ROOT / "pyproject.toml"):
    """{distribution name: lowest version} for every dependency with a `>=` bound."""
    deps = tomllib.loads(pathlib.Path(pyproject).read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = _REQ.match(dep)
        if m is None:
            raise ValueError(f"dependency {dep!r} has no plain `>=` lower bound; write it as `name>=X.Y`")
        out[m.group(1)] = m.group(2)
    if "jax" in out:
        out["jaxlib"] = out["jax"]  # jax pins its jaxlib; the lowest jax runs on the same-version jaxlib
    return out


def _release(version):
    """(2, 1) for "2.1", "2.1.0" and "2.1.0+local": the release numbers without trailing zeros."""
    parts = [int(p) for p in re.match(r"[0-9.]+", version).group(0).strip(".").split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main(argv):
    if len(argv) != 2 or argv[1] not in ("constraints", "check"):
        raise SystemExit("usage: min_versions.py constraints|check")
    bounds = lower_bounds()
    if argv[1] == "constraints":
        print("\n".join(f"{name}=={version}" for name, version in bounds.items()))
        return
    wrong = []
    for name, version in bounds.items():
        installed = importlib.metadata.version(name)
        print(f"{name:20s} lowest {version:10s} installed {installed}")
        if _release(installed) != _release(version):
            wrong.append(f"{name} {installed} (expected {version})")
    if wrong:
        raise SystemExit("not the lowest versions: " + ", ".join(wrong))


if __name__ == "__main__":
    main(sys.argv)
