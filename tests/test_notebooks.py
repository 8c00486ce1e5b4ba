"""The Colab notebooks: ready for Colab as committed, and they run top to bottom here.

As committed, each notebook starts with one install cell (tagged "install", the source of
jdiff in one variable at its top), imports the library only (no `experiments`, which a pip
install does not bring), and carries its outputs, pictures included, so GitHub shows them.
The run test executes a copy with that cell stripped (this checkout is installed already),
with small settings, then checks the notebook's numbers in its own kernel.
"""

import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB = ROOT / "colab"
# Small settings: the environment each notebook reads for a quick run.
FAST_ENV = {"quickstart.ipynb": {"JDIFF_QUICKSTART_STEPS": "60"}, "tour.ipynb": {"JDIFF_TOUR_FAST": "1"}}
# Checks run in the notebook's kernel after its last cell, against ground truth the settings do not change.
CHECKS = {
    "quickstart.ipynb": """
assert len(history) == STEPS and np.all(np.isfinite(history))
assert np.mean(history[-10:]) < 0.8 * np.mean(history[:10]), (history[:10], history[-10:])  # it learns
for x in results.values():
    assert x.shape == (4096, 2) and bool(jnp.isfinite(x).all())
assert float(metrics.sliced_wasserstein(jax.random.key(3), results["fresh data (floor)"], x_data)) < 0.1
""",
    "tour.ipynb": """
assert scaled_gap < 1e-10, scaled_gap            # equal log-SNR, equal distribution up to scale
assert kind_gap < 1e-10, kind_gap                # eps, score and velocity models take the same steps
assert class0_fraction[1.0] == 1.0 and class0_fraction[3.0] == 1.0
assert abs(class0_fraction[0.0] - 0.3) < 4 * (0.3 * 0.7 / 2000) ** 0.5, class0_fraction   # unconditional: weight 0.3
assert classifier_gap < 1e-8, classifier_gap     # exact classifier guidance = the conditional model
assert all(e[-1] < e[0] for e in errors.values()), errors   # more steps, smaller error (vs the Dopri reference)
for name in ["DPM-Solver++(3M)", "UniPC-3"]:
    assert errors[name][-1] < errors[name][0] / 8, (name, errors[name])   # 4x the steps: over 8x more accurate
for name in ["DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-3"]:   # log-SNR solvers beat DDIM at equal NFE
    assert errors[name][-1] < errors["DDIM"][-1], errors
assert bool(jnp.isfinite(results["flow map, 1 step"]).all())
mixture_mean = gm.weights @ gm.means   # one Euler step of the exact velocity from t = 1 lands on E[x0]
assert float(jnp.abs(results["Euler, 1 step"] - mixture_mean).max()) < 1e-2
""",
}


def _load(name):
    return nbformat.read(COLAB / name, as_version=4)


def test_every_notebook_is_tested():
    assert sorted(p.name for p in COLAB.glob("*.ipynb")) == sorted(FAST_ENV) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(FAST_ENV))
def test_committed_notebook_is_ready_for_colab(name):
    nb = _load(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    install = code[0]
    assert install.metadata.get("tags") == ["install"], "the first code cell installs jdiff and is tagged 'install'"
    source_line = next(line for line in install.source.splitlines() if not line.startswith("#"))
    assert re.fullmatch(r'JDIFF_SOURCE = "[^"]+"(\s+#.*)?', source_line), source_line  # one variable, at the top
    assert "pip" in install.source and 'find_spec("jdiff")' in install.source
    assert sum("install" in c.metadata.get("tags", []) for c in code) == 1
    for cell in code:
        assert not re.search(r"^\s*(from|import)\s+experiments\b", cell.source, re.MULTILINE), "library imports only"
    # Committed with its outputs: every code cell ran, in order, without an error, and the
    # pictures are stored.
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    pictures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3, f"{name} stores {len(pictures)} pictures"


# The tour (2-3 minutes of CPU) is slow: each of its pieces (the views on the oracle, the
# solvers' orders, guidance, flow maps) has its own fast test; the quickstart runs in `make test`.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("tour") else n for n in sorted(FAST_ENV)]
)
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = _load(name)
    nb.cells = [c for c in nb.cells if "install" not in c.metadata.get("tags", [])]
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[name]))
    for key, value in FAST_ENV[name].items():
        monkeypatch.setenv(key, value)
    # The kernel imports jdiff from this checkout, whatever its working directory.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
