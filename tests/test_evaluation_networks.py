"""Feature networks for FID / IS / FD-DINOv2: layouts against the reference checkpoints' key
names, the loader's discipline, and forward passes on small random-weight networks.

The full-size layouts are checked abstractly (no arrays are allocated); forward passes use
reduced widths/depths through the constructors, with random weights the test writes in the
PyTorch key names (tests/helpers.py random_torch_weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import random_torch_weights
from PIL import Image

from jdiff import metrics
from jdiff.metrics import DinoV2, InceptionV3, WeightsError

# -- full layouts: key names and shapes of the published checkpoints -----------------------


def _torch_shapes(net):
    """{key: torch shape} of `net`'s whole layout (from the abstract network)."""
    return {k: v.shape for k, v in random_torch_weights_abstract(net).items()}


def random_torch_weights_abstract(net):
    flat = dict(nnx.to_flat_state(nnx.state(net)))
    out = {}
    for key, (path, transform) in net.torch_layout().items():
        s = tuple(flat[path].shape)
        if transform is not None:
            s = (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]
        out[key] = jax.ShapeDtypeStruct(s, np.float32)
    return out


@pytest.fixture(scope="module")
def full_inception():
    return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def test_inception_full_layout_matches_pytorch_fid(full_inception):
    shapes = _torch_shapes(full_inception)
    # Facts from torchvision's Inception3 + pytorch-fid's fid_inception_v3 (BasicConv2d = conv
    # without bias + BatchNorm; FIDInceptionA/C/E blocks; fc 2048 -> 1008; no AuxLogits).
    facts = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.bn.running_var": (192,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in facts.items():
        assert shapes[key] == shape, key
    assert not any("AuxLogits" in k for k in shapes)
    assert len(shapes) == 94 * 5 + 2  # 94 BasicConv2d (conv weight + 4 BatchNorm arrays), fc weight + bias
    # torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, AuxLogits included);
    # the aux head is 128*768 + 2*128 + 768*128*25 + 2*768 + 768*1000 + 1000 = 3,326,696 parameters,
    # and 1008 classes add 8 * 2049.
    trainable = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert trainable == 27_161_264 - 3_326_696 + 8 * 2049
    assert full_inception.num_features == 2048


def test_inception_loader_lists_missing_unknown_and_misshaped_keys(full_inception):
    shapes = _torch_shapes(full_inception)
    full_inception.check(shapes)  # the full layout is accepted as is
    full_inception.check({**shapes, "Mixed_5b.branch1x1.bn.num_batches_tracked": ()})  # torch's counter: ignored
    bad = dict(shapes)
    del bad["Mixed_6c.branch7x7_3.conv.weight"]
    bad["AuxLogits.fc.weight"] = (1008, 768)
    bad["fc.weight"] = (1000, 2048)
    with pytest.raises(WeightsError) as err:
        full_inception.check(bad, source="pt_inception.npz")
    msg = str(err.value)
    assert "pt_inception.npz" in msg
    assert "missing keys (1): Mixed_6c.branch7x7_3.conv.weight" in msg
    assert "unknown keys (1): AuxLogits.fc.weight" in msg
    assert "'fc.weight' has shape (1000, 2048)" in msg


@pytest.mark.parametrize("arch, dim, depth", [("vits14", 384, 12), ("vitl14", 1024, 24)])
def test_dinov2_full_layout_matches_the_hub_checkpoints(arch, dim, depth):
    net = nnx.eval_shape(lambda: DinoV2(arch, rngs=nnx.Rngs(0)))
    shapes = _torch_shapes(net)
    last = depth - 1
    # Facts from facebookresearch/dinov2 (vision_transformer.py, layers/*, hub/backbones.py:
    # img_size 518 -> 37 x 37 patches + CLS, patch 14, qkv one Linear, LayerScale, MLP ratio 4).
    facts = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1370, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "blocks.0.norm1.weight": (dim,),
        "blocks.0.attn.qkv.weight": (3 * dim, dim),
        "blocks.0.attn.qkv.bias": (3 * dim,),
        "blocks.0.attn.proj.weight": (dim, dim),
        "blocks.0.ls1.gamma": (dim,),
        f"blocks.{last}.mlp.fc1.weight": (4 * dim, dim),
        f"blocks.{last}.mlp.fc2.weight": (dim, 4 * dim),
        f"blocks.{last}.ls2.gamma": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for key, shape in facts.items():
        assert shapes[key] == shape, key
    assert f"blocks.{depth}.norm1.weight" not in shapes
    assert len(shapes) == 6 + 14 * depth
    net.check({**shapes, "mask_token": (1, dim)})  # the hub file's training-only mask token is ignored
    with pytest.raises(WeightsError, match=r"unknown keys \(1\): register_tokens"):
        net.check({**shapes, "register_tokens": (1, 4, dim)})
    with pytest.raises(WeightsError, match=r"missing keys \(1\): blocks\.0\.ls1\.gamma"):
        net.check({k: v for k, v in shapes.items() if k != "blocks.0.ls1.gamma"})


# -- weight files -------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
def test_weight_files_round_trip(tmp_path, ext):
    rng = np.random.default_rng(0)
    arrays = {
        "a.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "b": np.arange(5, dtype=np.int64),
        "c": rng.standard_normal((2, 2)).astype(np.float16),
        "d": np.float64(3.5) * np.ones((1,)),
    }
    path = tmp_path / f"w.{ext}"
    metrics.write_weights(path, arrays)
    back = metrics.read_weights(path)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_safetensors_header_is_the_published_format(tmp_path):
    import json
    import struct

    path = tmp_path / "x.safetensors"
    metrics.write_weights(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    np.testing.assert_array_equal(np.frombuffer(raw[8 + n :], "<f4"), np.arange(6))


def test_weight_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="jdiff downloads nothing"):
        metrics.read_weights(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match=r"accepted: \.npz, \.safetensors"):
        metrics.read_weights(tmp_path / "w.pth")


# -- the Inception network on random weights -------------------------------------------------

WIDTH = 1 / 8  # every channel count / 8: the full layout's names, a fast forward pass


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory):
    abstract = nnx.eval_shape(lambda: InceptionV3(width=WIDTH, rngs=nnx.Rngs(0)))
    weights = random_torch_weights(abstract, seed=1)
    path = tmp_path_factory.mktemp("w") / "inception.safetensors"
    metrics.write_weights(path, weights)
    net = InceptionV3.from_file(path, width=WIDTH)
    graphdef, state = nnx.split(net)
    apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return net, weights, path, apply, state


def _images(n, size=80, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 3), jnp.float32, -1.0, 1.0)


def test_inception_loads_npz_and_safetensors_alike(tmp_path, tiny_inception):
    net, weights = tiny_inception[:2]
    npz = tmp_path / "w.npz"
    metrics.write_weights(npz, {**weights, "Conv2d_1a_3x3.bn.num_batches_tracked": np.int64(7)})
    other = InceptionV3.from_file(npz, width=WIDTH)
    for a, b in zip(jax.tree.leaves(nnx.state(net)), jax.tree.leaves(nnx.state(other)), strict=True):
        np.testing.assert_array_equal(a, b)
    # the file's arrays arrive in flax layout: torch OIHW -> HWIO, (out, in) -> (in, out)
    np.testing.assert_array_equal(
        net.Mixed_6b.branch7x7_2.conv.kernel[...], weights["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(net.fc.kernel[...], weights["fc.weight"].T)
    np.testing.assert_array_equal(net.Mixed_7c.branch_pool.bn.var[...], weights["Mixed_7c.branch_pool.bn.running_var"])


def test_inception_shapes_determinism_and_batch_independence(tiny_inception):
    net, _, _, apply, state = tiny_inception
    x = _images(2)
    pool, logits = apply(state, x)
    assert pool.shape == (2, net.num_features) and logits.shape == (2, 1008)
    assert np.all(np.isfinite(pool)) and np.all(np.isfinite(logits))
    pool2, logits2 = apply(state, x)
    np.testing.assert_array_equal(pool, pool2)
    np.testing.assert_array_equal(logits, logits2)
    ones = [apply(state, x[i : i + 1]) for i in (0, 1)]
    np.testing.assert_allclose(np.concatenate([h[0] for h in ones]), pool, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([h[1] for h in ones]), logits, rtol=2e-5, atol=1e-5)
    # IS logits without the classifier bias (openai/improved-gan's softmax/logits/MatMul weight only)
    np.testing.assert_allclose(net.logits_unbiased(pool), logits - net.fc.bias[...][None, :], rtol=1e-5, atol=1e-5)


def test_every_loaded_inception_parameter_changes_the_output(tiny_inception):
    net, weights, _, apply, state = tiny_inception
    flat = dict(nnx.to_flat_state(state))
    x = _images(2)
    base = np.concatenate([np.asarray(o) for o in apply(state, x)], axis=1)
    unchanged = []
    for key, (path, transform) in net.torch_layout().items():
        a = weights[key] * 1.25 + 0.05  # perturb this one file array, everything else as loaded
        a = transform(a) if transform is not None else a
        new = nnx.from_flat_state({p: (v.replace(jnp.asarray(a)) if p == path else v) for p, v in flat.items()})
        out = np.concatenate([np.asarray(o) for o in apply(new, x)], axis=1)
        if np.max(np.abs(out - base)) <= 1e-6 * np.max(np.abs(base)):
            unchanged.append(key)
    assert len(weights) == 472 and unchanged == []


def test_basic_conv_and_pools_follow_torch_semantics():
    # One asymmetric BasicConv2d (torch kernel (1, 7), padding (0, 3), stride 2) against a direct
    # numpy evaluation of torch's conv2d(OIHW) -> BatchNorm(eps 1e-3) -> ReLU.
    from jdiff.metrics._inception import BasicConv2d, _avg_pool_same, _max_pool
    from jdiff.metrics._weights import load_state_dict, oihw_to_hwio

    rng = np.random.default_rng(0)
    cin, cout = 3, 4
    w = rng.standard_normal((cout, cin, 1, 7)).astype(np.float32)
    bn = {
        "weight": rng.uniform(0.5, 1.5, cout),
        "bias": rng.standard_normal(cout),
        "running_mean": rng.standard_normal(cout),
        "running_var": rng.uniform(0.5, 1.5, cout),
    }
    layer = BasicConv2d(cin, cout, (1, 7), stride=2, padding=(0, 3), rngs=nnx.Rngs(0))
    mapping = {
        "conv.weight": (("conv", "kernel"), oihw_to_hwio),
        "bn.weight": (("bn", "scale"), None),
        "bn.bias": (("bn", "bias"), None),
        "bn.running_mean": (("bn", "mean"), None),
        "bn.running_var": (("bn", "var"), None),
    }
    load_state_dict(layer, {"conv.weight": w, **{f"bn.{k}": v.astype(np.float32) for k, v in bn.items()}}, mapping)
    x = rng.standard_normal((1, 9, 11, cin)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (3, 3), (0, 0)))
    ref = np.zeros((1, 5, 6, cout))
    for i in range(5):
        for j in range(6):
            patch = xp[0, 2 * i, 2 * j : 2 * j + 7, :]  # (7, cin)
            ref[0, i, j] = np.einsum("kc,ock->o", patch, w[:, :, 0, :])
    ref = (ref - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    np.testing.assert_allclose(layer(jnp.asarray(x)), np.maximum(ref, 0.0), rtol=1e-5, atol=1e-5)
    # TF's average pool leaves the zero padding out of the mean (count_include_pad=False) ...
    img = jnp.asarray(rng.standard_normal((1, 4, 5, 2)), jnp.float32)
    avg = _avg_pool_same(img)
    np.testing.assert_allclose(avg[0, 0, 0], img[0, :2, :2].mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(avg[0, 1, 1], img[0, :3, :3].mean(axis=(0, 1)), rtol=1e-6)
    # ... and Mixed_7c's pooling branch is a 3x3 max pool, stride 1, padding 1
    mx = _max_pool(img, 1, ((1, 1), (1, 1)))
    np.testing.assert_allclose(mx[0, 0, 4], img[0, :2, 3:].max(axis=(0, 1)))


# -- preprocessing: the references' resizes ---------------------------------------------------


def _pil(x, size, flt):
    return np.stack(
        [
            np.asarray(Image.fromarray(x[..., c].astype(np.float32), mode="F").resize((size, size), flt))
            for c in range(x.shape[-1])
        ],
        axis=-1,
    )


def test_inception_preprocessing_matches_the_references():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    # pytorch-fid: torch bilinear (align_corners=False) up to 299, then x / 255 * 2 - 1. When
    # upsampling, torch's bilinear and PIL's BILINEAR coincide (no antialiasing either way).
    got = metrics.inception_preprocess(pixels, mode="pytorch_fid")
    assert got.shape == (2, 299, 299, 3)
    ref = _pil(pixels[0], 299, Image.BILINEAR) / 127.5 - 1.0
    np.testing.assert_allclose(got[0], ref, atol=2e-6 * 255)
    # clean-fid: PIL bicubic on the float image, (x - 128) / 128
    ref = (_pil(pixels[1], 299, Image.BICUBIC) - 128.0) / 128.0
    np.testing.assert_allclose(metrics.inception_preprocess(pixels, mode="clean")[1], ref, atol=2e-6 * 255)
    # a grey image is repeated to three channels
    grey = metrics.inception_preprocess(pixels[..., :1], mode="pytorch_fid")
    np.testing.assert_allclose(grey[..., 1], grey[..., 0])
    with pytest.raises(ValueError, match="accepted: pytorch_fid, clean, tf1"):
        metrics.inception_preprocess(pixels, mode="torch")


def test_resize_kernels_closed_forms():
    # Downsizing by PIL's antialiased filters (torch antialias=True) on float images
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (97, 97))
    for method, flt in (("bicubic_aa", Image.BICUBIC), ("bilinear_aa", Image.BILINEAR)):
        a = metrics.resize_matrix(97, 40, method)
        ref = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((40, 40), flt), np.float64)
        np.testing.assert_allclose(a @ img @ a.T, ref, atol=1e-3)
    # Every kernel is the identity at equal size and keeps constants (rows sum to 1)
    for method in metrics.RESIZE_METHODS:
        np.testing.assert_allclose(metrics.resize_matrix(13, 13, method), np.eye(13), atol=1e-12)
        np.testing.assert_allclose(metrics.resize_matrix(13, 29, method).sum(1), 1.0, atol=1e-12)
    # TF1 bilinear samples a linear ramp at x = i * in / out (no half-pixel offset)
    ramp = np.arange(10.0)
    out = metrics.resize_matrix(10, 25, "bilinear_tf1") @ ramp
    np.testing.assert_allclose(out, np.minimum(np.arange(25) * 10 / 25, 9.0), atol=1e-12)
    # torch bilinear: x = (i + 1/2) s - 1/2, clamped to the image
    out = metrics.resize_matrix(10, 25, "bilinear") @ ramp
    np.testing.assert_allclose(out, np.clip((np.arange(25) + 0.5) * 10 / 25 - 0.5, 0.0, 9.0), atol=1e-12)


# -- DINOv2 on random weights ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 4, "pos_grid": 5}
    abstract = nnx.eval_shape(lambda: DinoV2(None, rngs=nnx.Rngs(0), **kwargs))
    weights = random_torch_weights(abstract, seed=2)
    path = tmp_path_factory.mktemp("w") / "dinov2.npz"
    metrics.write_weights(path, {**weights, "mask_token": np.zeros((1, 32), np.float32)})
    net = DinoV2.from_file(path, None, **{k: v for k, v in kwargs.items() if k != "pos_grid"})
    assert net.pos_grid == 5  # read from the file's pos_embed
    graphdef, state = nnx.split(net)
    return net, weights, jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)), state


def test_dinov2_shapes_determinism_batch_independence_and_every_parameter(tiny_dinov2):
    net, weights, apply, state = tiny_dinov2
    x = jax.random.normal(jax.random.key(0), (4, 56, 56, 3))  # a 4 x 4 patch grid: interpolated embeddings
    out = apply(state, x)
    assert out.shape == (4, 32) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, apply(state, x))
    np.testing.assert_allclose(np.concatenate([apply(state, x[:1]), apply(state, x[1:])]), out, rtol=1e-5, atol=1e-5)
    flat = dict(nnx.to_flat_state(state))
    unchanged = []
    for key, (path, transform) in net.torch_layout().items():
        a = weights[key] * 1.25 + 0.05
        a = transform(a) if transform is not None else a
        new = {p: (v.replace(jnp.asarray(a)) if p == path else v) for p, v in flat.items()}
        if np.max(np.abs(apply(nnx.from_flat_state(new), x) - out)) <= 1e-6:
            unchanged.append(key)
    assert unchanged == []


def test_dinov2_position_embedding_interpolation_closed_form():
    # torch's bicubic (Keys' cubic convolution, a = -0.75) applied to a ramp f(k) = k at source x
    # gives x + (2a + 1) t (1 - t) (2t - 1) with t = x - floor(x) away from the border (sum_j j w_j
    # for the four Keys weights; the error term vanishes only for a = -1/2). DINOv2 samples at
    # x = (i + 1/2) * 37 / (h0 + 0.1) - 1/2: the 0.1 offset of interpolate_pos_encoding.
    m, h0, a = 37, 16, -0.75
    net = nnx.eval_shape(lambda: DinoV2(None, embed_dim=8, depth=1, num_heads=2, pos_grid=m, rngs=nnx.Rngs(0)))
    rows, cols = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    grid = np.stack([rows, cols] + [rows + 2 * cols] * 6, axis=-1).reshape(1, m * m, 8).astype(np.float32)
    net.pos_embed = nnx.Param(jnp.concatenate([jnp.full((1, 1, 8), 7.0), jnp.asarray(grid)], axis=1))
    pos = np.asarray(net._pos_embed(h0, h0))
    assert pos.shape == (1, 1 + h0 * h0, 8) and np.all(pos[0, 0] == 7.0)
    src = (np.arange(h0) + 0.5) * m / (h0 + 0.1) - 0.5
    t = src - np.floor(src)
    expect = src + (2 * a + 1) * t * (1 - t) * (2 * t - 1)
    inner = (src >= 1) & (src <= m - 3)
    got = pos[0, 1:, 0].reshape(h0, h0)[np.ix_(inner, inner)]
    np.testing.assert_allclose(got, np.broadcast_to(expect[inner][:, None], got.shape), atol=1e-4)
    got = pos[0, 1:, 1].reshape(h0, h0)[np.ix_(inner, inner)]
    np.testing.assert_allclose(got, np.broadcast_to(expect[inner][None, :], got.shape), atol=1e-4)
    np.testing.assert_array_equal(net._pos_embed(m, m), net.pos_embed[...])  # the trained grid: as stored


def test_dinov2_preprocessing_matches_edm2():
    # EDM2's DINOv2Detector: bicubic antialiased resize to 224 (= PIL BICUBIC on float), / 255,
    # ImageNet mean / std.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 64, 64, 3)).astype(np.float32)
    got = metrics.dinov2_preprocess(pixels)
    assert got.shape == (1, 224, 224, 3)
    ref = (_pil(pixels[0], 224, Image.BICUBIC) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    np.testing.assert_allclose(got[0], ref, atol=1e-4)
