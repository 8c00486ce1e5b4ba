"""Stable-Diffusion-format VAE weights: a diffusers `AutoencoderKL` folder -> `jdiff.models.AutoencoderKL`.

    ae = latent.load_diffusers_autoencoder("/data/sd-vae-ft-ema")        # config.json + safetensors
    ae = latent.load_diffusers_autoencoder("/data/stable-diffusion-3-medium")   # a pipeline: uses vae/

A diffusers AutoencoderKL folder holds `config.json` (the constructor's arguments) and
`diffusion_pytorch_model.safetensors` (the PyTorch state dict). This is the layout of the VAEs of
SD 1.x/2.x (latent_channels 4, scaling_factor 0.18215), SDXL (0.13025), SD3 (16 latent channels,
scaling_factor 1.5305, shift_factor 0.0609, no quant convs) and Flux (16 channels, 0.3611 /
0.1159, no quant convs). Nothing is downloaded: the user passes a local directory, and the
tensors are read with safetensors' numpy API (no PyTorch at run time).

`jdiff.models.AutoencoderKL` uses diffusers' module names, so a diffusers key is the nnx
parameter path joined by dots, with PyTorch's `weight` for an nnx `kernel` (conv, linear) or
`scale` (GroupNorm). Conv kernels are transposed from PyTorch's (out, in, kh, kw) to flax's
(kh, kw, in, out) and linear weights from (out, in) to (in, out); both frameworks compute a
cross-correlation, so nothing is flipped. The mid-block attention is also read under its
pre-0.14 diffusers names (query, key, value, proj_attn: the SD 1.x files on the Hub) and as 1x1
conv weights (out, in, 1, 1). Every tensor of the file must map to a parameter and every
parameter must be in the file: unknown or missing keys are one error listing them, and a shape
mismatch names the key.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, so BF16 safetensors load
import numpy as np
from flax import nnx

from jdiff.models.autoencoder import AutoencoderKL

__all__ = [
    "DIFFUSERS_WEIGHTS",
    "autoencoder_kwargs_from_diffusers",
    "load_diffusers_autoencoder",
    "load_diffusers_weights",
    "to_diffusers_state_dict",
]

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_DOWN, _UP = "DownEncoderBlock2D", "UpDecoderBlock2D"
# Pre-0.14 diffusers names of the mid-block attention (AttentionBlock) -> the Attention names.
_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_RE = re.compile(r"^((?:en|de)coder\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$")
_IGNORED_CONFIG = ("_class_name", "_diffusers_version", "_name_or_path", "sample_size", "force_upcast")
_LISTED = 20


def autoencoder_kwargs_from_diffusers(config: dict) -> dict:
    """`jdiff.models.AutoencoderKL` keyword arguments of a diffusers AutoencoderKL config.json dict.

    Reads in_channels, out_channels, block_out_channels, layers_per_block, latent_channels,
    norm_num_groups, use_quant_conv, use_post_quant_conv, mid_block_add_attention,
    scaling_factor and shift_factor (null -> 0); sample_size and force_upcast are ignored. Other
    block types, activations or per-channel latents_mean / latents_std are refused by name.
    """
    if not isinstance(config, dict):
        raise TypeError(f"`config` must be the dict of a diffusers config.json; got {type(config).__name__}")
    cls = config.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise ValueError(f"config.json `_class_name` is {cls!r}; accepted: AutoencoderKL")
    widths = config.get("block_out_channels", (64,))
    for key, want in (("down_block_types", _DOWN), ("up_block_types", _UP)):
        types = config.get(key, (want,) * len(widths))
        if len(types) != len(widths) or any(t != want for t in types):
            raise ValueError(
                f"config.json `{key}` = {types!r}: accepted: {len(widths)} x {want!r} (one per width "
                f"of block_out_channels)"
            )
    act = config.get("act_fn", "silu")
    if act != "silu":
        raise ValueError(f"config.json `act_fn` = {act!r}; accepted: silu")
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is not None:
            raise ValueError(
                f"config.json `{key}`: per-channel latent statistics are not supported; accepted: null "
                "(one scaling_factor / shift_factor)"
            )
    known = {
        "in_channels",
        "out_channels",
        "down_block_types",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "act_fn",
        "latent_channels",
        "norm_num_groups",
        "scaling_factor",
        "shift_factor",
        "latents_mean",
        "latents_std",
        "use_quant_conv",
        "use_post_quant_conv",
        "mid_block_add_attention",
        *_IGNORED_CONFIG,
    }
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"config.json has fields this loader does not know: {', '.join(unknown)}")
    shift = config.get("shift_factor")
    return {
        "in_channels": int(config.get("in_channels", 3)),
        "out_channels": int(config.get("out_channels", 3)),
        "block_out_channels": tuple(int(w) for w in widths),
        "layers_per_block": int(config.get("layers_per_block", 1)),
        "latent_channels": int(config.get("latent_channels", 4)),
        "norm_num_groups": int(config.get("norm_num_groups", 32)),
        "mid_block_add_attention": bool(config.get("mid_block_add_attention", True)),
        "use_quant_conv": bool(config.get("use_quant_conv", True)),
        "use_post_quant_conv": bool(config.get("use_post_quant_conv", True)),
        "scaling_factor": float(config.get("scaling_factor", 0.18215)),
        "shift_factor": 0.0 if shift is None else float(shift),
    }


def _diffusers_key(path) -> str:
    *head, leaf = (str(p) for p in path)
    return ".".join([*head, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])


def _torch_shape(value) -> tuple:
    """The PyTorch shape of an nnx parameter: conv (O, I, kh, kw), linear (O, I), vectors as is."""
    s = tuple(value.shape)
    if len(s) == 4:
        return (s[3], s[2], s[0], s[1])
    if len(s) == 2:
        return (s[1], s[0])
    return s


def _from_torch(key: str, array: np.ndarray, target_shape: tuple) -> np.ndarray:
    """A PyTorch tensor in the layout of the nnx parameter of `target_shape`; the error names `key`."""
    want = _torch_shape(jax.ShapeDtypeStruct(target_shape, jnp.float32))
    a = np.asarray(array)
    if len(target_shape) == 2 and a.ndim == 4 and a.shape[2:] == (1, 1):
        a = a[:, :, 0, 0]  # attention projections saved as 1x1 convs
    if a.shape != want:
        raise ValueError(
            f"diffusers weight {key!r} has shape {tuple(np.shape(array))}; this autoencoder needs "
            f"{want} (PyTorch layout) for it: the config does not match the weights"
        )
    if a.ndim == 4:
        a = a.transpose(2, 3, 1, 0)
    elif a.ndim == 2:
        a = a.T
    return np.asarray(a, np.float32)


def _canonical(key: str) -> str:
    m = _LEGACY_RE.match(key)
    return f"{m.group(1)}.{_LEGACY[m.group(2)]}.{m.group(3)}" if m else key


def _listed(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def load_diffusers_weights(autoencoder: AutoencoderKL, tensors: dict) -> AutoencoderKL:
    """Copy a diffusers AutoencoderKL state dict `tensors` (name -> array) into `autoencoder` in place.

    Every parameter of the autoencoder must be in `tensors` and every tensor must be a parameter
    (after renaming the pre-0.14 attention names); otherwise a ValueError lists the unknown and
    the missing keys. A tensor of the wrong shape is a ValueError naming its key. Returns the
    autoencoder. The latent normalization (scale, shift) is not in the state dict: it comes from
    config.json (`load_diffusers_autoencoder`) or from data (`estimate_latent_norm`).
    """
    if not isinstance(autoencoder, AutoencoderKL):
        raise TypeError(f"`autoencoder` must be a jdiff.models.AutoencoderKL; got {type(autoencoder).__name__}")
    by_key = {}
    for key in tensors:
        canon = _canonical(key)
        if canon in by_key:
            raise ValueError(f"diffusers weights hold both {by_key[canon]!r} and {key!r} for one parameter")
        by_key[canon] = key
    params = nnx.state(autoencoder, nnx.Param)
    flat = nnx.to_flat_state(params)
    wanted = {_diffusers_key(path): (path, var) for path, var in flat}
    unknown = set(by_key) - set(wanted)
    missing = set(wanted) - set(by_key)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s) in the weights: {_listed(by_key[k] for k in unknown)}")
        if missing:
            parts.append(f"{len(missing)} parameter(s) missing from the weights: {_listed(missing)}")
        raise ValueError(
            "the diffusers weights do not match this AutoencoderKL (check config.json): " + "; ".join(parts)
        )
    new = []
    for key, (path, var) in wanted.items():
        value = _from_torch(by_key[key], tensors[by_key[key]], tuple(var.shape))
        new.append((path, var.replace(jnp.asarray(value, var.dtype))))
    nnx.update(autoencoder, nnx.from_flat_state(new))
    return autoencoder


def to_diffusers_state_dict(autoencoder: AutoencoderKL) -> dict[str, np.ndarray]:
    """The autoencoder's parameters as a diffusers state dict (PyTorch layouts, float32 numpy):
    `safetensors.numpy.save_file(to_diffusers_state_dict(ae), path)` writes a file diffusers and
    `load_diffusers_weights` read."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(autoencoder, nnx.Param)):
        a = np.asarray(var[...], np.float32)
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a
        out[_diffusers_key(path)] = np.ascontiguousarray(a)  # safetensors writes the buffer as laid out
    return out


def _resolve(directory: str) -> str:
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"`directory` {directory!r} is not a directory: pass the local folder holding the "
            f"VAE's config.json and {DIFFUSERS_WEIGHTS} (nothing is downloaded)"
        )
    if not os.path.exists(os.path.join(directory, "config.json")) and os.path.isdir(os.path.join(directory, "vae")):
        return os.path.join(directory, "vae")  # a whole pipeline folder
    return directory


def load_diffusers_autoencoder(directory: str, *, weights: str = DIFFUSERS_WEIGHTS, dtype=None) -> AutoencoderKL:
    """A `jdiff.models.AutoencoderKL` with the weights of a local diffusers AutoencoderKL folder.

    Args:
        directory: a folder with `config.json` and the safetensors weights, or a pipeline folder
            with them in `vae/` (e.g. a local copy of stabilityai/sd-vae-ft-ema, of
            stable-diffusion-xl-base-1.0, of stable-diffusion-3-medium-diffusers or FLUX.1-dev).
        weights: the weights' file name in that folder (e.g. "diffusion_pytorch_model.fp16.safetensors").
        dtype: the autoencoder's compute dtype (parameters are loaded as float32).

    The module is built abstractly (no random initialization) and every parameter is filled from
    the file; scaling_factor and shift_factor of config.json become its latent normalization.
    """
    from safetensors.numpy import load_file

    directory = _resolve(directory)
    cfg_path, w_path = os.path.join(directory, "config.json"), os.path.join(directory, weights)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: `directory` must hold a diffusers AutoencoderKL config.json")
    if not os.path.exists(w_path):
        found = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        raise FileNotFoundError(
            f"{w_path} not found (`weights`); safetensors files in {directory}: {', '.join(found) or 'none'}"
        )
    with open(cfg_path) as f:
        kwargs = autoencoder_kwargs_from_diffusers(json.load(f))
    abstract = nnx.eval_shape(lambda: AutoencoderKL(**kwargs, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    ae = nnx.merge(
        graphdef,
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), rest),
    )
    ae.scale[...] = jnp.asarray(kwargs["scaling_factor"], jnp.float32)
    ae.shift[...] = jnp.asarray(kwargs["shift_factor"], jnp.float32)
    return load_diffusers_weights(ae, load_file(w_path))
