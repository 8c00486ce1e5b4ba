"""Configs: the layout every config follows, one-line errors naming a key, and flag parsing.

Config layout (experiments/configs/common.py sets every key; configs override what they change):

    seed, batch_size (global), total_steps, ema_decay, max_nonfinite_steps, distributed,
    num_devices
    data:   name (experiments._names.get_dataset, or "synthetic"), kwargs, shape (of one
            example), cond ("label" or None: what the model is conditioned on), holdout
            (fraction in [0, 1) held out of training by jdiff.data.holdout_split(holdout,
            seed); experiments.evaluate scores that split)
    model:  name (get_model), kwargs, preconditioning ("none" | "edm": the network is EDM's F
            inside jdiff.edm_denoiser), sigma_data
    path:   name (get_path), kwargs
    loss:   name (get_loss, or get_flowmap_loss for flow-map configs), kwargs (the loss's plain
            options), time_sampler + time_sampler_kwargs (get_time_sampler; None: the loss's
            default), weighting + weighting_kwargs (get_weighting; None: the loss's default),
            label_dropout (p of jdiff.guidance.with_label_dropout, null class
            model.kwargs.num_classes; 0: no dropout)
    optimizer: learning_rate, warmup_steps, schedule ("constant" | "cosine"), b1, b2,
            weight_decay, grad_clip_norm
    sample: solver (get_solver), solver_kwargs, grid (get_grid), num_steps, num_samples
    guidance (optional): weight, interval, rescale: every sampler of a diffusion run applies
            jdiff.guidance.classifier_free with the null class model.kwargs.num_classes
    flowmap (optional): the run trains a flow map (experiments._recipes.FlowMapRecipe)
    log_every, checkpoint_every, keep_checkpoints, sample_every

Every name is checked (and the data loaded) before anything is written to a workdir, so a
bad config fails with one line naming the key and the accepted values (`ConfigError`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import sys

import ml_collections
from absl import flags

from experiments import _names
from jdiff import paths

__all__ = [
    "ConfigError",
    "build_path",
    "guidance_weight",
    "keyed",
    "kwargs_of",
    "load_config",
    "load_config_file",
    "num_classes",
    "parse_flags",
]


class ConfigError(ValueError):
    """A config value that names nothing jdiff knows; the message starts with the key."""


def keyed(key: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), a ValueError/TypeError/ImportError re-raised as a one-line
    ConfigError naming `config.<key>`."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config.{key}: {msg}") from e


def kwargs_of(d) -> dict:
    """A config section (ConfigDict, dict or None) as a plain dict of keyword arguments."""
    return dict(d.to_dict() if isinstance(d, ml_collections.ConfigDict) else d or {})


def build_path(config) -> paths.AbstractPath:
    """The jdiff path of config.path (name and keyword overrides)."""
    return keyed("path.name", _names.get_path, config.path.name, **kwargs_of(config.path.kwargs))


def num_classes(config) -> int | None:
    """The number of classes of a class-conditional model (data.cond set and
    model.kwargs.num_classes given), else None. The null class is this number."""
    n = config.model.kwargs.get("num_classes", None)
    return int(n) if config.data.cond and n else None


def guidance_weight(config, weight=None) -> float | None:
    """The classifier-free guidance weight to sample with: `weight`, else config.guidance.weight
    for configs with a `guidance` section, else None (no guidance)."""
    g = config.get("guidance", None)
    if weight is None and g is None:
        return None
    return float(weight if weight is not None else g.weight)


# ----------------------------------------------------------------------------------
# Reading configs: from a workdir, from a file
# ----------------------------------------------------------------------------------


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (workdir/config.json)."""
    p = os.path.join(workdir, "config.json")
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p} not found: `workdir` must be a directory written by experiments.train")
    with open(p) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """get_config(arg) of a config file named as on the command line: "path/to/config.py[:arg]"."""
    file, _, arg = spec.partition(":")
    if not os.path.exists(file):
        raise FileNotFoundError(f"config file {file!r} not found")
    module_spec = importlib.util.spec_from_file_location("_jdiff_config", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


# ----------------------------------------------------------------------------------
# Flags: a bad override is one line
# ----------------------------------------------------------------------------------


def _config_override_error(argv, config) -> str | None:
    """One line for the first --config.<key>=... override naming no key of `config`."""
    for arg in argv[1:]:
        m = re.match(r"--config\.([\w.]+)=", arg)
        if not m:
            continue
        node, done = config, []
        for k in m.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or k not in node:
                where = "config" + "".join("." + d for d in done)
                keys = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                return f"{arg}: {where} has no key {k!r}; accepted keys: {keys}"
            node = node[k]
            done.append(k)
    return None


def _config_from_argv(argv):
    """The config named by --config=path[:arg] in argv (None if absent or unloadable)."""
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if spec is None:
        return None
    try:
        return load_config_file(spec)
    except Exception:  # noqa: BLE001 - only used to improve an error message
        return None


def parse_flags(argv):
    """absl `flags_parser` for the entry points: a bad flag or config override (unknown key,
    wrong-typed value) exits with one line naming the key and what it accepts."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as e:
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        config = config if config is not None else _config_from_argv(argv)
        unknown = _config_override_error(argv, config) if config is not None else None
        msg = unknown or str(e).splitlines()[0]
        m = re.search(r"--config\.([\w.]+)=", msg)
        if not unknown and m and config is not None:
            try:
                expected = type(functools.reduce(lambda c, k: c[k], m.group(1).split("."), config)).__name__
                msg += f" (config.{m.group(1)} accepts {expected} values)"
            except (KeyError, AttributeError):
                pass
        sys.exit(f"error: {msg}")
