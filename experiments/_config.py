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

Every value is checked (`check_values`: types and ranges), every name resolved and the data
loaded (experiments._validate) before anything is written to a workdir, so a bad config fails
with one line, `error: config.<key>: <what is wrong>; <accepted values or range>`, and exit
code 2 (`exit_on_error`). Entries of the free-form `*kwargs` sections may be set from the
command line even when the config does not name them (`--config.data.kwargs.path=x.npz`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import json
import math
import os
import re
import sys
from typing import NamedTuple

import ml_collections
from absl import flags

from experiments import _names
from jdiff import checkpoint, paths, training

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "VALUES",
    "ConfigError",
    "Spec",
    "build_path",
    "check_flag",
    "check_values",
    "exit_on_error",
    "guidance_weight",
    "keyed",
    "kwargs_of",
    "load_config",
    "load_config_file",
    "num_classes",
    "parse_flags",
]

EXIT_BAD_INPUT = 2  # a bad config, flag, data file or workdir: nothing was written
EXIT_DIVERGED = 3  # training stopped after too many consecutive non-finite steps


class ConfigError(ValueError):
    """A bad input the user can fix: a config value (the message starts with `config.<key>:`), a
    flag (`--<flag>:`) or a workdir; one line, ending with the accepted values."""


def refuse_sections(config, sections, what: str) -> None:
    """A one-line ConfigError for the first of `sections` the config sets, which `what` (a kind of
    config, e.g. "a GAN config (config.gan)") cannot have."""
    for section in sections:
        if config.get(section, None) is not None:
            raise ConfigError(f"config.{section}: {what} has no {section} section")


def keyed(key: str, fn, /, *args, **kwargs):
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
    """The config a workdir was trained with (workdir/config.json).

    Raises FileNotFoundError when there is none and ValueError when it is not a JSON object.
    """
    p = checkpoint.as_path(workdir) / "config.json"  # a local path or gs://...
    if not p.exists() or p.is_dir():
        raise FileNotFoundError(f"{p} does not exist, so experiments.train did not write this directory")
    try:
        with p.open() as f:
            d = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is not valid JSON ({str(e).splitlines()[0]})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{p} holds a JSON {type(d).__name__}, not an object of config keys")
    return ml_collections.ConfigDict(d)


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
# Values: types and ranges of every plain key
# ----------------------------------------------------------------------------------


class Spec(NamedTuple):
    """What one config key accepts: kind ("int", "float", "bool", "str", "shape"), bounds
    (open or closed), whether None is accepted (and what it means), whether the key must exist."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    none: str | None = None
    required: bool = True

    def accepted(self) -> str:
        kind = {
            "int": "an int",
            "float": "a float",
            "bool": "True or False",
            "str": "a string",
            "shape": "a tuple of positive ints (one example's shape)",
        }[self.kind]
        if self.lo is not None and self.hi is not None:
            kind += f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            kind += f" {'>' if self.lo_open else '>='} {self.lo:g}"
        return kind + (f", or None ({self.none})" if self.none else "")

    def problem(self, value) -> str | None:
        """What is wrong with `value` (None: nothing)."""
        if value is None:
            return None if self.none else "is None"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"is a {type(value).__name__}"
        if self.kind == "str":
            return None if isinstance(value, str) else f"is a {type(value).__name__}"
        if self.kind == "shape":
            ok = (
                isinstance(value, (tuple, list))
                and value
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)
            )
            return None if ok else "is not a tuple of positive ints"
        types = (int,) if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, types):
            return f"is a {type(value).__name__}"
        if not math.isfinite(value):
            return "is not finite"
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return "is out of range"
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return "is out of range"
        return None


def _int(lo=None, **kw):
    return Spec("int", lo, **kw)


def _float(lo=None, hi=None, **kw):
    return Spec("float", lo, hi, **kw)


def _str(**kw):
    return Spec("str", **kw)


_FRACTION = _float(0.0, 1.0, hi_open=True)

# Every plain key a config may hold; sections `guidance` and `flowmap` are checked when present.
VALUES = {
    "seed": _int(0),
    "batch_size": _int(1),
    "total_steps": _int(1),
    "ema_decay": _float(0.0, 1.0),
    "max_nonfinite_steps": _int(1),
    "distributed": Spec("bool"),
    "num_devices": _int(1, none="every visible device", required=False),
    "data.name": _str(),
    "data.shape": Spec("shape"),
    "data.cond": _str(none="unconditional", required=False),
    "data.holdout": _FRACTION._replace(required=False),
    "model.name": _str(),
    "model.preconditioning": _str(),
    "model.sigma_data": _float(0.0, lo_open=True, required=False),
    "model.compute_dtype": _str(none="float32", required=False),  # "float32" or "bfloat16" (jdiff.Policy)
    "path.name": _str(),
    "loss.name": _str(),
    "loss.time_sampler": _str(none="the loss's default", required=False),
    "loss.weighting": _str(none="the loss's default", required=False),
    "loss.label_dropout": _FRACTION._replace(required=False),
    "optimizer.learning_rate": _float(0.0, lo_open=True),
    "optimizer.warmup_steps": _int(0),
    "optimizer.schedule": _str(),
    "optimizer.b1": _FRACTION,
    "optimizer.b2": _FRACTION,
    "optimizer.weight_decay": _float(0.0),
    "optimizer.grad_clip_norm": _float(0.0, none="no clipping", required=False),
    "sample.solver": _str(),
    "sample.grid": _str(),
    "sample.num_steps": _int(1),
    "sample.num_samples": _int(1),
    "log_every": _int(1),
    "checkpoint_every": _int(1),
    "keep_checkpoints": _int(1),
    "sample_every": _int(0),
    "guidance.weight": _float(),
    "guidance.rescale": _float(0.0, 1.0, required=False),
    "flowmap.num_steps": _int(1),
    "flowmap.gamma": _float(0.0, 1.0, required=False),
    "flowmap.sigma_data": _float(0.0, lo_open=True, required=False),
}
OPTIONAL_SECTIONS = ("guidance", "flowmap")
_MISSING = object()


def _get(config, dotted: str):
    node = config
    for k in dotted.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or k not in node:
            return _MISSING
        node = node[k]
    return node


def check_values(config) -> None:
    """Check the type and range of every key in `VALUES` (names are checked by the recipes and
    experiments._names); raises a one-line ConfigError for the first bad value."""
    for key, spec in VALUES.items():
        section = key.split(".")[0]
        if section in OPTIONAL_SECTIONS and _get(config, section) in (None, _MISSING):
            continue
        value = _get(config, key)
        if value is _MISSING:
            if spec.required:
                raise ConfigError(f"config.{key}: missing; accepted: {spec.accepted()}")
            continue
        problem = spec.problem(value)
        if problem:
            raise ConfigError(f"config.{key}: {value!r} {problem}; accepted: {spec.accepted()}")


def check_flag(flag: str, value, spec: Spec) -> None:
    """A one-line ConfigError naming `flag` (e.g. "--num_steps") when `value` is not what `spec` accepts."""
    problem = spec.problem(value)
    if problem:
        raise ConfigError(f"{flag}: {value!r} {problem}; accepted: {spec.accepted()}")


# ----------------------------------------------------------------------------------
# Flags: a bad flag or override is one line; *kwargs entries may be added
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
                return f"config.{m.group(1)}: {where} has no key {k!r}; accepted: {keys}"
            node = node[k]
            done.append(k)
    return None


def _config_from_argv(argv):
    """The config named by --config=path[:arg] in argv, or a one-line error why it cannot load
    (None, None without --config)."""
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if spec is None:
        return None, None
    try:
        return load_config_file(spec), None
    except FileNotFoundError:
        return None, f"--config: {spec.partition(':')[0]!r} does not exist; accepted: a config file path.py[:arg]"
    except Exception as e:  # noqa: BLE001 - the user's file: any error in it is reported in one line
        msg = str(e).splitlines()[0] if str(e) else ""
        return None, (
            f"--config: {spec} failed to load ({type(e).__name__}: {msg}); accepted: a config file "
            "whose get_config(arg) returns a ConfigDict"
        )


# --config.<section>.<...>kwargs.<name>=<value>: an entry of a free-form keyword-argument section.
_KWARGS_OVERRIDE = re.compile(r"--config\.((?:\w+\.)*\w*kwargs)\.(\w+)=(.*)\Z", re.DOTALL)


def _parse_value(text: str):
    """A Python literal (255, 0.5, True, None, (32, 32), 'x'), else the text itself (a path)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _apply_kwargs_overrides(config, overrides) -> None:
    """Set each (section, name, text) of `overrides` in the locked `config`, adding new names."""
    for section, name, text in overrides:
        node = _get(config, section)
        if not isinstance(node, ml_collections.ConfigDict):
            keys = ", ".join(sorted(config.keys()))
            raise ConfigError(
                f"config.{section}.{name}: config has no section {section!r}; accepted top-level keys: {keys}"
            )
        value = _parse_value(text)
        try:
            with config.unlocked():
                node[name] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"config.{section}.{name}: {str(e).splitlines()[0]}; accepted: a value of the type "
                f"it has ({type(node[name]).__name__})"
            ) from e


def _flag_error(e: Exception, argv, config) -> str:
    """The one-line message of a flag parsing error."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    unknown = _config_override_error(argv, config) if config is not None else None
    if unknown:
        return unknown
    m = re.match(r"flag --([\w.]+)=(.*?): (.*)", msg)
    if m:
        name, value, detail = m.groups()
        if "must have a value other than None" in detail:
            return f"--{name}: missing; accepted: --{name}=<value> (required)"
        if name.startswith("config.") and config is not None:
            try:
                expected = type(functools.reduce(lambda c, k: c[k], name.split(".")[1:], config)).__name__
            except (KeyError, AttributeError):
                expected = "its type's"
            return f"{name}: cannot parse {value!r} ({detail}); accepted: {expected} values"
        kind = flags.FLAGS[name].flag_type() if name in flags.FLAGS else "valid"
        return f"--{name}: cannot parse {value!r} ({detail}); accepted: {kind} values"
    m = re.match(r"Unknown command line flag '([\w.]+)'", msg)
    if m:
        return f"--{m.group(1)}: no such flag; accepted: the flags listed by --helpfull"
    return msg


def parse_flags(argv):
    """absl `flags_parser` for the entry points: a bad flag, config file or override (unknown key,
    wrong-typed value) exits with one line naming it and what it accepts (exit code 2).

    `--config.<section>.<...>kwargs.<name>=<value>` sets an entry of a keyword-argument section
    (data.kwargs, model.kwargs, loss.kwargs, sample.solver_kwargs, ...), adding it when the config
    does not name it; the value is read as a Python literal, else kept as a string. The callee
    checks the names (experiments._validate).
    """
    overrides = [m.groups() for m in map(_KWARGS_OVERRIDE.match, argv[1:]) if m]
    argv = [a for a in argv if not _KWARGS_OVERRIDE.match(a)]
    with exit_on_error():
        saved, sys.argv = sys.argv, argv  # config_flags defines its override flags from sys.argv
        try:
            rest = flags.FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, OSError) as e:
            config, load_error = _config_from_argv(argv)
            if load_error:
                raise ConfigError(load_error) from None
            raise ConfigError(_flag_error(e, argv, config)) from None
        finally:
            sys.argv = saved
        if overrides:
            config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
            if config is None:
                section, name, _ = overrides[0]
                raise ConfigError(
                    f"config.{section}.{name}: an override needs a config; accepted: --config=path.py[:arg] before it"
                )
            _apply_kwargs_overrides(config, overrides)
    return rest


# ----------------------------------------------------------------------------------
# Entry points: errors the user can fix end the run with one line and an exit code
# ----------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split("\n")) or type(e).__name__


@contextlib.contextmanager
def exit_on_error():
    """Turn the errors a user can fix into `error: <one line>` on stderr and an exit code:
    ConfigError (a bad config, flag, data file or workdir; nothing was written) exits with
    EXIT_BAD_INPUT (2), training.NonFiniteError (a diverged run) with EXIT_DIVERGED (3)."""
    try:
        yield
    except ConfigError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_INPUT)
    except training.NonFiniteError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DIVERGED)
