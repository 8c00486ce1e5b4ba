"""Weight files for the feature networks: read / write .npz and .safetensors, and load a
state dict into an nnx network by name with nothing left over.

    state = read_weights("pt_inception-2015-12-05.npz")       # {name: np.ndarray}
    load_state_dict(net, state, mapping)                       # errors list missing / unknown keys

`mapping` is {file key: (nnx state path, transform)}; the networks in this package build it
from their own structure (`InceptionV3.torch_layout()`, `DinoV2.torch_layout()`), in the key
names of the PyTorch checkpoints the reference implementations publish. Nothing is downloaded:
the user supplies the file (docs/evaluation.md says where to get it and how to convert it).

The .safetensors reader and writer are implemented here with numpy (no `safetensors`
dependency): an 8-byte little-endian header length, a UTF-8 JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} and the raw
little-endian C-order buffer (huggingface/safetensors README, "Format").
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

__all__ = [
    "WeightsError",
    "check_state_dict",
    "load_state_dict",
    "materialize",
    "oihw_to_hwio",
    "read_weights",
    "write_weights",
]

_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
FORMATS = (".npz", ".safetensors")


class WeightsError(ValueError):
    """A weight file that does not match the network: missing, unknown or mis-shaped keys."""


def _check_format(path) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"`path` {path!r}: unknown weight file format {ext!r}; accepted: {', '.join(FORMATS)}")
    return ext


def _read_safetensors(path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise WeightsError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n).decode("utf-8"))
        buffer = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise WeightsError(f"{path}: tensor {name!r} has dtype {info['dtype']}; accepted: {', '.join(_ST_DTYPES)}")
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        arr = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(info["shape"])
        out[name] = arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == "<" else arr.copy()
    return out


def _write_safetensors(path, arrays: Mapping[str, np.ndarray]) -> None:
    header, offset, chunks = {}, 0, []
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        base = a.dtype.newbyteorder("<") if a.dtype.byteorder in "=>" and a.dtype.itemsize > 1 else a.dtype
        if base not in _ST_NAMES:
            raise ValueError(
                f"`arrays`[{name!r}] has dtype {a.dtype}, which safetensors cannot store; "
                f"accepted: {', '.join(str(d) for d in _ST_NAMES)}"
            )
        data = a.astype(base).tobytes()
        header[name] = {"dtype": _ST_NAMES[base], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((-len(blob)) % 8)  # the reference writer pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.writelines(chunks)


def read_weights(path) -> dict[str, np.ndarray]:
    """{key: array} of a local .npz or .safetensors weight file."""
    ext = _check_format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"weight file {path!r} not found (jdiff downloads nothing: see docs/evaluation.md "
            "for where to get the file and how to convert it)"
        )
    if ext == ".safetensors":
        return _read_safetensors(path)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_weights(path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write {key: array} as .npz (uncompressed) or .safetensors, by the file's extension."""
    ext = _check_format(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if ext == ".safetensors":
        _write_safetensors(path, arrays)
    else:
        np.savez(path, **arrays)


def _listing(names, limit=12) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _target_shape(transform, shape) -> tuple:
    """The shape `transform` makes of an array of `shape` (applied to a zero-stride view: no memory)."""
    probe = np.broadcast_to(np.zeros((), np.float32), tuple(shape))
    return tuple((transform(probe) if transform is not None else probe).shape)


def check_state_dict(
    net: nnx.Module,
    shapes: Mapping[str, tuple],
    mapping: Mapping[str, tuple[tuple, Callable | None]],
    *,
    ignore: Callable[[str], bool] | None = None,
    source: str = "weights",
) -> None:
    """Check file keys and shapes ({key: shape}, or {key: array}) against `net` through `mapping`.

    mapping: {file key: (path of an nnx Variable in nnx.state(net), transform)}; transform maps
        the file's array to the Variable's layout (e.g. OIHW -> HWIO), None for as-is.
    ignore: predicate for file keys that are read and dropped on purpose (BatchNorm's
        `num_batches_tracked` counter, DINOv2's training-only `mask_token`); documented by caller.
    `net` may be abstract (`nnx.eval_shape`): nothing is allocated, so full-size layouts are cheap
    to check. Raises WeightsError listing the missing keys, the unknown keys and the shape
    mismatches; an AssertionError if the mapping leaves a Variable of `net` without a key.
    """
    ignore = ignore or (lambda k: False)
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in shapes.items()}
    flat = dict(nnx.to_flat_state(nnx.state(net)))
    targets = {path for path, _ in mapping.values()}
    uncovered = [".".join(map(str, p)) for p in flat if p not in targets]
    if uncovered:  # a bug in the mapping, not in the file
        raise AssertionError(f"the key mapping leaves variables of {type(net).__name__} unset: {_listing(uncovered)}")
    missing = [k for k in mapping if k not in shapes]
    unknown = [k for k in shapes if k not in mapping and not ignore(k)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}): {_listing(unknown)}")
    for key, (path, transform) in mapping.items():
        if key in shapes and _target_shape(transform, shapes[key]) != tuple(flat[path].shape):
            problems.append(f"key {key!r} has shape {shapes[key]}, expected one that maps to {tuple(flat[path].shape)}")
    if problems:
        raise WeightsError(f"{source} do not match {type(net).__name__}: " + "; ".join(problems))


def load_state_dict(
    net: nnx.Module,
    state: Mapping[str, np.ndarray],
    mapping: Mapping[str, tuple[tuple, Callable | None]],
    *,
    ignore: Callable[[str], bool] | None = None,
    source: str = "weights",
) -> nnx.Module:
    """Copy `state` ({key: array}) into `net`'s variables through `mapping`, after
    `check_state_dict` (every key used, every variable set, every shape right); returns `net`."""
    check_state_dict(net, state, mapping, ignore=ignore, source=source)
    flat = dict(nnx.to_flat_state(nnx.state(net)))
    for key, (path, transform) in mapping.items():
        arr = np.asarray(state[key])
        arr = transform(arr) if transform is not None else arr
        flat[path].set_value(jnp.asarray(arr.astype(flat[path].dtype)))
    nnx.update(net, nnx.from_flat_state(flat))
    return net


def oihw_to_hwio(w):
    """A PyTorch conv weight (out, in, kh, kw) in flax's layout (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def materialize(abstract: nnx.Module) -> nnx.Module:
    """Zero arrays in place of an abstract (`nnx.eval_shape`) module's variables, without running
    its initializers (a weight file then provides every value; nothing is compiled)."""
    graphdef, state = nnx.split(abstract)
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))
