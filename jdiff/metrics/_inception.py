"""Inception-v3 as FID computes it: the TF 2015-12-05 graph as ported by pytorch-fid, in nnx.

    net = InceptionV3.from_file("pt_inception-2015-12-05.npz")     # a local file; see docs/evaluation.md
    pool, logits = net(inception_preprocess(pixels))                 # (N, 2048), (N, 1008)

The network is torchvision's Inception3 with pytorch-fid's FID patches (mseitzer/pytorch-fid,
src/pytorch_fid/inception.py, `fid_inception_v3`): 1008 classes, no auxiliary head, and

    FIDInceptionA / C / E_1   the pooling branch averages with count_include_pad=False (TF's
                              average pool ignores the zero padding),
    FIDInceptionE_2 (Mixed_7c) the pooling branch is a 3x3 *max* pool, stride 1, padding 1.

BasicConv2d is conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; pool3 is the global average
of Mixed_7c (2048 features, FID's statistic) and `fc` the 1008-way classifier. Variable names
follow the PyTorch state dict (`Mixed_6b.branch7x7dbl_3.conv.weight`, `...bn.running_var`,
`fc.weight`), so `torch_layout()` maps a converted pytorch-fid checkpoint key by key.

Preprocessing (`inception_preprocess`): pixel values in [0, 255] (what a PNG holds), resized to
299 x 299 and mapped to [-1, 1]; `mode` picks which reference to reproduce (docs/evaluation.md):

    "pytorch_fid"  torch bilinear resize (align_corners=False, no antialiasing), then x / 255 * 2 - 1
                   (pytorch-fid's InceptionV3.forward with resize_input / normalize_input)
    "clean"        PIL-bicubic (antialiased) resize of the float image, then (x - 128) / 128
                   (clean-fid's "clean" mode into the TF-ported network)
    "tf1"          TF1 bilinear resize (asymmetric, no half-pixel offset), then (x - 128) / 128
                   (the original TTUR TensorFlow graph; clean-fid's "legacy_tensorflow")

`width` scales every channel count (1.0 is the real network; tests use small widths).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.metrics._resize import resize_images
from jdiff.metrics._weights import check_state_dict, load_state_dict, materialize, oihw_to_hwio, read_weights

__all__ = ["INCEPTION_MODES", "InceptionV3", "inception_preprocess"]

INCEPTION_MODES = {
    # mode: (resize method, offset, scale) with network input = (pixels - offset) / scale
    "pytorch_fid": ("bilinear", 127.5, 127.5),
    "clean": ("bicubic_aa", 128.0, 128.0),
    "tf1": ("bilinear_tf1", 128.0, 128.0),
}


def inception_preprocess(pixels, *, mode: str = "pytorch_fid", size: int = 299):
    """Images (N, H, W, C) of pixel values in [0, 255] (C = 3, or 1: grey, repeated) -> the
    network's input (N, size, size, 3) in [-1, 1], as the reference `mode` prepares it."""
    if mode not in INCEPTION_MODES:
        raise ValueError(f"unknown Inception preprocessing `mode` {mode!r}; accepted: {', '.join(INCEPTION_MODES)}")
    x = jnp.asarray(pixels)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"`pixels` must be images (N, H, W, 1 or 3); got shape {x.shape}")
    x = x.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    method, offset, scale = INCEPTION_MODES[mode]
    x = resize_images(x, size, method)
    # pytorch-fid resizes the [0, 1] image and then maps 2x - 1; the maps are affine, so the order
    # does not matter (nothing is clipped in between).
    return (x - offset) / scale


def _c(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _pad(p):
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv2d(nnx.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel, *, stride=1, padding=0, rngs: nnx.Rngs):
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.conv = nnx.Conv(cin, cout, kernel, strides=stride, padding=_pad(padding), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-3, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_same(x):
    # 3x3, stride 1, padding 1, the padding left out of the average (TF; count_include_pad=False)
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, padding="VALID"):
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class FIDInceptionA(nnx.Module):
    def __init__(self, cin, pool_features, w, *, rngs):
        self.branch1x1 = BasicConv2d(cin, _c(64, w), 1, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(cin, _c(48, w), 1, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(_c(48, w), _c(64, w), 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, _c(64, w), 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(_c(64, w), _c(96, w), 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(_c(96, w), _c(96, w), 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(cin, _c(pool_features, w), 1, rngs=rngs)
        self.cout = 2 * _c(64, w) + _c(96, w) + _c(pool_features, w)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    def __init__(self, cin, w, *, rngs):
        self.branch3x3 = BasicConv2d(cin, _c(384, w), 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, _c(64, w), 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(_c(64, w), _c(96, w), 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(_c(96, w), _c(96, w), 3, stride=2, rngs=rngs)
        self.cout = _c(384, w) + _c(96, w) + cin

    def __call__(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class FIDInceptionC(nnx.Module):
    def __init__(self, cin, c7, w, *, rngs):
        c7 = _c(c7, w)
        self.branch1x1 = BasicConv2d(cin, _c(192, w), 1, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, _c(192, w), (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, _c(192, w), (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, _c(192, w), 1, rngs=rngs)
        self.cout = 4 * _c(192, w)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    def __init__(self, cin, w, *, rngs):
        self.branch3x3_1 = BasicConv2d(cin, _c(192, w), 1, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(_c(192, w), _c(320, w), 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(cin, _c(192, w), 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(_c(192, w), _c(192, w), (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(_c(192, w), _c(192, w), (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(_c(192, w), _c(192, w), 3, stride=2, rngs=rngs)
        self.cout = _c(320, w) + _c(192, w) + cin

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class FIDInceptionE(nnx.Module):
    """Mixed_7b (average-pool branch, FIDInceptionE_1) or Mixed_7c (max-pool branch, FIDInceptionE_2)."""

    def __init__(self, cin, w, *, max_pool_branch: bool, rngs):
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv2d(cin, _c(320, w), 1, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, _c(384, w), 1, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(_c(384, w), _c(384, w), (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(_c(384, w), _c(384, w), (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(cin, _c(448, w), 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(_c(448, w), _c(384, w), 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(_c(384, w), _c(384, w), (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(_c(384, w), _c(384, w), (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(cin, _c(192, w), 1, rngs=rngs)
        self.cout = _c(320, w) + 4 * _c(384, w) + _c(192, w)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        # pytorch-fid's patch: Mixed_7c pools with a 3x3 max pool (stride 1, padding 1), Mixed_7b averages.
        pooled = _max_pool(x, 1, ((1, 1), (1, 1))) if self.max_pool_branch else _avg_pool_same(x)
        return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


def _ignored(key: str) -> bool:
    return key.endswith(".num_batches_tracked")  # BatchNorm's training-step counter


class InceptionV3(nnx.Module):
    """pytorch-fid's FID Inception-v3: `net(x) -> (pool3 (N, 2048 w), logits (N, 1008))`.

    x: preprocessed images (N, H, W, 3) in [-1, 1] (`inception_preprocess`; 299 x 299 for the
    reference numbers; any H, W >= 75 runs). Inference only: BatchNorm uses its running statistics.

    Args:
        width: channel multiplier (1.0: the published network; smaller only for tests).
        num_classes: classifier outputs (1008 in the TF graph: 1000 ImageNet classes + 8 unused).
        rngs: initialization (random; load real weights with `from_file` / `load`).
    """

    def __init__(self, *, width: float = 1.0, num_classes: int = 1008, rngs: nnx.Rngs):
        w = width
        self.width = width
        self.Conv2d_1a_3x3 = BasicConv2d(3, _c(32, w), 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(_c(32, w), _c(32, w), 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(_c(32, w), _c(64, w), 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(_c(64, w), _c(80, w), 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(_c(80, w), _c(192, w), 3, rngs=rngs)
        self.Mixed_5b = FIDInceptionA(_c(192, w), 32, w, rngs=rngs)
        self.Mixed_5c = FIDInceptionA(self.Mixed_5b.cout, 64, w, rngs=rngs)
        self.Mixed_5d = FIDInceptionA(self.Mixed_5c.cout, 64, w, rngs=rngs)
        self.Mixed_6a = InceptionB(self.Mixed_5d.cout, w, rngs=rngs)
        self.Mixed_6b = FIDInceptionC(self.Mixed_6a.cout, 128, w, rngs=rngs)
        self.Mixed_6c = FIDInceptionC(self.Mixed_6b.cout, 160, w, rngs=rngs)
        self.Mixed_6d = FIDInceptionC(self.Mixed_6c.cout, 160, w, rngs=rngs)
        self.Mixed_6e = FIDInceptionC(self.Mixed_6d.cout, 192, w, rngs=rngs)
        self.Mixed_7a = InceptionD(self.Mixed_6e.cout, w, rngs=rngs)
        self.Mixed_7b = FIDInceptionE(self.Mixed_7a.cout, w, max_pool_branch=False, rngs=rngs)
        self.Mixed_7c = FIDInceptionE(self.Mixed_7b.cout, w, max_pool_branch=True, rngs=rngs)
        self.num_features = self.Mixed_7c.cout
        self.fc = nnx.Linear(self.num_features, num_classes, rngs=rngs)

    def pool3(self, x):
        """The 2048 pool3 features (global average of Mixed_7c): FID's statistic."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x)
        x = _max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x):
        """(pool3 features (N, 2048), logits (N, 1008) = fc(pool3), bias included)."""
        pool = self.pool3(x)
        return pool, self.fc(pool)

    def logits_unbiased(self, pool):
        """pool3 @ W without the classifier bias: the logits of the original Inception Score code
        (openai/improved-gan multiplies pool3 by `softmax/logits/MatMul`'s weight only; torch-fidelity's
        "logits_unbiased")."""
        return pool @ self.fc.kernel[...]

    # -- weights ------------------------------------------------------------------------

    def torch_layout(self) -> dict:
        """{pytorch-fid state-dict key: (nnx variable path, transform)} for every variable."""
        mapping = {}
        for path, _ in nnx.to_flat_state(nnx.state(self)):
            *mod, leaf = path
            prefix = ".".join(map(str, mod))
            if mod[-1] == "conv" and leaf == "kernel":
                mapping[f"{prefix}.weight"] = (path, oihw_to_hwio)
            elif mod[-1] == "bn":
                name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
                mapping[f"{prefix}.{name}"] = (path, None)
            elif mod == ["fc"]:
                mapping[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                    path,
                    np.transpose if leaf == "kernel" else None,
                )
            else:
                raise AssertionError(f"unexpected Inception variable {path}")
        return mapping

    def load(self, state, *, source: str = "weights") -> InceptionV3:
        """Load a pytorch-fid state dict ({key: array}); BatchNorm's `num_batches_tracked`
        counters (a training statistic) are accepted and ignored; any other unknown key, a
        missing key or a wrong shape is an error that lists them."""
        return load_state_dict(self, state, self.torch_layout(), source=source, ignore=_ignored)

    def check(self, shapes, *, source: str = "weights") -> None:
        """`load`'s key and shape checks on {key: shape} alone (works on an abstract network)."""
        check_state_dict(self, shapes, self.torch_layout(), source=source, ignore=_ignored)

    @classmethod
    def from_file(cls, path, *, width: float = 1.0, num_classes: int = 1008) -> InceptionV3:
        """The network with the weights of a local .npz / .safetensors file (keys as in pytorch-fid's
        pt_inception-2015-12-05-6726825d.pth; experiments/convert_weights.py converts that file)."""
        net = nnx.eval_shape(lambda: cls(width=width, num_classes=num_classes, rngs=nnx.Rngs(0)))
        net = materialize(net)
        return net.load(read_weights(path), source=str(path))
