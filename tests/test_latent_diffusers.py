"""Loading diffusers AutoencoderKL weights (config.json + safetensors) into jdiff.models.AutoencoderKL.

The test writes its own small files: random tensors under the diffusers key names of a tiny config
(the names and PyTorch shapes are listed here from diffusers' layout, not taken from jdiff), then
checks that every parameter arrives transposed into flax's layout, and that the loaded autoencoder
computes what a NumPy re-implementation of diffusers' NCHW forward pass computes from the same
state dict (PyTorch conventions: (out, in, kh, kw) kernels, cross-correlation, y = x W^T + b).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jdiff import latent
from jdiff.models import AutoencoderKL

TINY = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.30.0",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [4, 8],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 2,
    "norm_num_groups": 2,
    "sample_size": 8,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
SD3_LIKE = {
    **TINY,
    "latent_channels": 4,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


def diffusers_keys(cfg):
    """{key: PyTorch shape} of a diffusers AutoencoderKL state dict (vae.py / unet_2d_blocks.py layout)."""
    ch, lc, layers = cfg["block_out_channels"], cfg["latent_channels"], cfg["layers_per_block"]
    out = {}

    def conv(p, cin, cout, k=3):
        out[p + ".weight"], out[p + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(p, c):
        out[p + ".weight"], out[p + ".bias"] = (c,), (c,)

    def resnet(p, cin, cout):
        norm(p + ".norm1", cin), conv(p + ".conv1", cin, cout), norm(p + ".norm2", cout), conv(p + ".conv2", cout, cout)
        if cin != cout:
            conv(p + ".conv_shortcut", cin, cout, 1)

    def mid(p, c):
        resnet(p + ".resnets.0", c, c), resnet(p + ".resnets.1", c, c)
        norm(p + ".attentions.0.group_norm", c)
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            out[f"{p}.attentions.0.{name}.weight"], out[f"{p}.attentions.0.{name}.bias"] = (c, c), (c,)

    conv("encoder.conv_in", cfg["in_channels"], ch[0])
    prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(layers):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else c, c)
        if i < len(ch) - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c)
        prev = c
    mid("encoder.mid_block", ch[-1])
    norm("encoder.conv_norm_out", ch[-1]), conv("encoder.conv_out", ch[-1], 2 * lc)
    conv("decoder.conv_in", lc, ch[-1])
    mid("decoder.mid_block", ch[-1])
    prev = ch[-1]
    for i, c in enumerate(reversed(ch)):
        for j in range(layers + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else c, c)
        if i < len(ch) - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c)
        prev = c
    norm("decoder.conv_norm_out", ch[0]), conv("decoder.conv_out", ch[0], cfg["out_channels"])
    if cfg.get("use_quant_conv", True):
        conv("quant_conv", 2 * lc, 2 * lc, 1)
    if cfg.get("use_post_quant_conv", True):
        conv("post_quant_conv", lc, lc, 1)
    return out


def random_state_dict(cfg, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, shape in diffusers_keys(cfg).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.3
        base = 1.0 if k.endswith(".weight") and len(shape) == 1 else 0.0  # GroupNorm scales near 1
        sd[k] = (base + scale * rng.standard_normal(shape)).astype(dtype)
    return sd


def write_vae(directory, cfg, sd):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file(sd, os.path.join(directory, "diffusion_pytorch_model.safetensors"))
    return directory


# -- a NumPy reference of diffusers' forward pass (NCHW, PyTorch layouts) -----------------------


def _conv(x, w, b, stride=1, pad=(1, 1, 1, 1)):
    x = np.pad(x, ((0, 0), (0, 0), pad[:2], pad[2:]))
    kh, kw = w.shape[2:]
    h, wd = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum(
                "nihw,oi->nohw", x[:, :, i : i + stride * h : stride, j : j + stride * wd : stride], w[:, :, i, j]
            )
    return out + b[None, :, None, None]


def _gn(x, sd, p, groups):
    n, c, h, w = x.shape
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)
    return g.reshape(n, c, h, w) * sd[p + ".weight"][None, :, None, None] + sd[p + ".bias"][None, :, None, None]


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _ref_forward(sd, cfg, x_nhwc):
    g = cfg["norm_num_groups"]
    layers = cfg["layers_per_block"]
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    c = lambda p, x, **kw: _conv(x, sd[p + ".weight"], sd[p + ".bias"], **kw)

    def resnet(p, x):
        h = c(p + ".conv1", _silu(_gn(x, sd, p + ".norm1", g)))
        h = c(p + ".conv2", _silu(_gn(h, sd, p + ".norm2", g)))
        skip = c(p + ".conv_shortcut", x, pad=(0, 0, 0, 0)) if p + ".conv_shortcut.weight" in sd else x
        return skip + h

    def attention(p, x):
        n, ch, h, w = x.shape
        t = _gn(x, sd, p + ".group_norm", g).reshape(n, ch, h * w).transpose(0, 2, 1)
        lin = lambda q, v: v @ sd[f"{p}.{q}.weight"].T + sd[f"{p}.{q}.bias"]
        logits = lin("to_q", t) @ lin("to_k", t).transpose(0, 2, 1) / np.sqrt(ch)
        a = np.exp(logits - logits.max(-1, keepdims=True))
        o = lin("to_out.0", (a / a.sum(-1, keepdims=True)) @ lin("to_v", t))
        return x + o.transpose(0, 2, 1).reshape(n, ch, h, w)

    def mid(p, x):
        return resnet(p + ".resnets.1", attention(p + ".attentions.0", resnet(p + ".resnets.0", x)))

    nb = len(cfg["block_out_channels"])
    h = c("encoder.conv_in", np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2))
    for i in range(nb):
        for j in range(layers):
            h = resnet(f"encoder.down_blocks.{i}.resnets.{j}", h)
        if i < nb - 1:  # Downsample2D(padding=0): pad (0, 1, 0, 1), stride-2 conv
            h = c(f"encoder.down_blocks.{i}.downsamplers.0.conv", h, stride=2, pad=(0, 1, 0, 1))
    h = c("encoder.conv_out", _silu(_gn(mid("encoder.mid_block", h), sd, "encoder.conv_norm_out", g)))
    if "quant_conv.weight" in sd:
        h = c("quant_conv", h, pad=(0, 0, 0, 0))
    mean = h[:, : cfg["latent_channels"]]
    z = c("post_quant_conv", mean, pad=(0, 0, 0, 0)) if "post_quant_conv.weight" in sd else mean
    h = mid("decoder.mid_block", c("decoder.conv_in", z))
    for i in range(nb):
        for j in range(layers + 1):
            h = resnet(f"decoder.up_blocks.{i}.resnets.{j}", h)
        if i < nb - 1:  # Upsample2D: nearest 2x, 3x3 conv
            h = c(f"decoder.up_blocks.{i}.upsamplers.0.conv", h.repeat(2, axis=2).repeat(2, axis=3))
    rec = c("decoder.conv_out", _silu(_gn(h, sd, "decoder.conv_norm_out", g)))
    return mean.transpose(0, 2, 3, 1), rec.transpose(0, 2, 3, 1)


@jax.jit
def _forward(graphdef, state, x):
    ae = nnx.merge(graphdef, state)
    mean = ae.encode(x).mean
    return mean, ae.decode(mean)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, SD3_LIKE], ids=["sd1_layout", "sd3_layout"])
def test_every_parameter_arrives_and_the_forward_pass_matches_diffusers(tmp_path, cfg):
    sd = random_state_dict(cfg)
    ae = latent.load_diffusers_autoencoder(write_vae(str(tmp_path), cfg, sd))
    flat = nnx.to_flat_state(nnx.state(ae, nnx.Param))
    assert len(flat) == len(sd)  # one parameter per tensor, none left over
    for path, var in flat:
        *head, leaf = (str(p) for p in path)
        src = sd[".".join([*head, "weight" if leaf in ("kernel", "scale") else leaf])]
        want = src.transpose(2, 3, 1, 0) if src.ndim == 4 else src.T if src.ndim == 2 else src
        np.testing.assert_array_equal(np.asarray(var[...]), want, err_msg=str(path))
    assert float(ae.scale[...]) == pytest.approx(cfg["scaling_factor"])
    assert float(ae.shift[...]) == pytest.approx(cfg.get("shift_factor") or 0.0)
    assert (ae.quant_conv is None) == (not cfg.get("use_quant_conv", True))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    mean, rec = _forward(*nnx.split(ae), jnp.asarray(x))
    ref_mean, ref_rec = _ref_forward(sd, cfg, x)
    np.testing.assert_allclose(mean, ref_mean, atol=2e-5)
    np.testing.assert_allclose(rec, ref_rec, atol=2e-5)


def test_legacy_names_half_precision_and_pipeline_folders(tmp_path):
    sd = random_state_dict(TINY, seed=3)
    legacy = {}
    for k, v in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions.0." + new + "." in k:
                k = k.replace(new, old)
                v = v[:, :, None, None] if v.ndim == 2 else v  # some conversions keep 1x1 conv shapes
        legacy[k] = v.astype(ml_dtypes.bfloat16)
    write_vae(str(tmp_path / "pipe" / "vae"), TINY, legacy)
    ae = latent.load_diffusers_autoencoder(str(tmp_path / "pipe"))  # finds pipe/vae
    q = np.asarray(ae.decoder.mid_block.attentions[0].to_q.kernel[...])
    np.testing.assert_array_equal(
        q, sd["decoder.mid_block.attentions.0.to_q.weight"].astype(ml_dtypes.bfloat16).astype(np.float32).T
    )
    assert q.dtype == np.float32  # parameters are float32 whatever the file's precision


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path):
    sd = random_state_dict(TINY)
    ae = AutoencoderKL(**latent.autoencoder_kwargs_from_diffusers(TINY), rngs=nnx.Rngs(0))
    bad = dict(sd)
    bad["encoder.down_blocks.0.extra.weight"] = np.zeros(3, np.float32)
    del bad["decoder.conv_out.bias"]
    with pytest.raises(
        ValueError,
        match=r"1 unknown key.*encoder\.down_blocks\.0\.extra\.weight.*1 parameter\(s\) "
        r"missing.*decoder\.conv_out\.bias",
    ):
        latent.load_diffusers_weights(ae, bad)
    bad = dict(sd)
    bad["encoder.conv_out.weight"] = np.zeros((6, 8, 3, 3), np.float32)  # 3 latent channels instead of 2
    with pytest.raises(ValueError, match=r"'encoder\.conv_out\.weight' has shape \(6, 8, 3, 3\).*\(4, 8, 3, 3\)"):
        latent.load_diffusers_weights(ae, bad)
    # A config whose architecture differs from the weights: every surplus tensor is listed.
    cfg = {**TINY, "use_quant_conv": False}
    with pytest.raises(ValueError, match=r"unknown key.*quant_conv\.bias, quant_conv\.weight"):
        latent.load_diffusers_autoencoder(write_vae(str(tmp_path), cfg, sd))
    with pytest.raises(ValueError, match="act_fn"):
        latent.autoencoder_kwargs_from_diffusers({**TINY, "act_fn": "relu"})
    with pytest.raises(ValueError, match="down_block_types"):
        latent.autoencoder_kwargs_from_diffusers({**TINY, "down_block_types": ["AttnDownEncoderBlock2D"] * 2})
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        latent.load_diffusers_autoencoder(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        latent.load_diffusers_autoencoder(str(tmp_path), weights="model.fp16.safetensors")


def test_round_trip_through_the_diffusers_state_dict(tmp_path):
    ae = AutoencoderKL(
        1, block_out_channels=(4, 4), layers_per_block=1, latent_channels=2, norm_num_groups=2, rngs=nnx.Rngs(7)
    )
    sd = latent.to_diffusers_state_dict(ae)
    assert set(sd) == set(diffusers_keys({**TINY, "in_channels": 1, "out_channels": 1, "block_out_channels": [4, 4]}))
    other = AutoencoderKL(
        1, block_out_channels=(4, 4), layers_per_block=1, latent_channels=2, norm_num_groups=2, rngs=nnx.Rngs(8)
    )
    save_file(sd, str(tmp_path / "w.safetensors"))  # through a file: the transposed arrays are written as laid out
    latent.load_diffusers_weights(other, load_file(str(tmp_path / "w.safetensors")))
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(ae, nnx.Param)), nnx.to_flat_state(nnx.state(other, nnx.Param))
    ):
        np.testing.assert_array_equal(a[...], b[...], err_msg=str(p))
