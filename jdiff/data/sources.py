"""Users' own data: numpy arrays / .npz files, a folder of images, tensorflow-datasets.

Every loader returns a `Dataset(x, label)` with x float32 (N, H, W, C) in [-1, 1] and
label int32 (N,) or None, held in host memory (the iterator then shards it per process).

Data that cannot be used raises `DataFileError`: one line naming the file (for the file
loaders), what is wrong with it (missing, not an npz, a missing array with the arrays present,
a wrong dtype, values out of range, non-finite values) and what is accepted; its `argument`
names the loader argument to change.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib

import numpy as np

from jdiff.data._common import Dataset, as_nhwc, require, to_unit_range

__all__ = ["DataFileError", "from_arrays", "load_npz", "load_image_folder", "load_tfds"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NUMPY_FILES = "accepted: an .npz (numpy.savez) or .npy (numpy.save) file"


class DataFileError(ValueError):
    """Data that cannot be used; a one-line message (the file, what is wrong, what is accepted).

    argument: the loader argument to change ("path", "key", "label_key", "max_value", or
        "x" / "label" for `from_arrays`).
    """

    def __init__(self, message: str, argument: str = "path"):
        super().__init__(message)
        self.argument = argument


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _check_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))
        raise DataFileError(
            f"`{name}` has {int(bad.sum())} non-finite values (NaN or inf), the first in example "
            f"{first}; accepted: finite values",
            name,
        )


def from_arrays(x, label=None, *, max_value: float | None = None) -> Dataset:
    """A Dataset from in-memory arrays.

    x: images (N, H, W) or (N, H, W, C) (a channel axis is added to the first), or vectors
       (N, D). Integer arrays (uint8 images) are mapped from [0, max_value] (default 255) onto
       [-1, 1]; float arrays are kept as they are unless `max_value` is given, in which case
       [0, max_value] -> [-1, 1]. Float images outside [-1, 1] raise (pass `max_value`).
    label: optional (N,) non-negative integer class labels.

    Raises `DataFileError` (argument "x", "label" or "max_value") for a wrong shape or dtype,
    non-finite values, integers outside [0, max_value] and float images outside [-1, 1].
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"`x` has dtype {x.dtype}; accepted: integer, bool or float values", "x")
    if x.ndim not in (2, 3, 4) or not x.shape[0]:
        raise DataFileError(
            f"`x` has shape {x.shape}; accepted: a non-empty array of shape (N, D), (N, H, W) or (N, H, W, C)", "x"
        )
    if x.dtype.kind in "biu":
        top = 255 if max_value is None else max_value
        if x.dtype.kind != "b" and (x.min() < 0 or x.max() > top):
            raise DataFileError(
                f"`x` has integer values in [{x.min()}, {x.max()}], outside [0, max_value={top:g}]; "
                "accepted: pass `max_value` (the largest intensity) to map [0, max_value] onto [-1, 1]",
                "max_value",
            )
        x = to_unit_range(x, top)
    else:
        _check_finite(x, "x")
        if max_value is not None:
            x = to_unit_range(x, max_value)
        else:
            x = x.astype(np.float32)
            if x.ndim > 2 and (x.min() < -1.001 or x.max() > 1.001):
                raise DataFileError(
                    f"`x` has float images in [{x.min():g}, {x.max():g}], outside [-1, 1]; accepted: "
                    "images in [-1, 1], or pass `max_value` to map [0, max_value] onto [-1, 1]",
                    "max_value",
                )
    x = as_nhwc(x) if x.ndim == 3 else x
    if label is not None:
        label = np.asarray(label)
        if label.shape != x.shape[:1] or label.dtype.kind not in "iu":
            raise DataFileError(
                f"`label` has dtype {label.dtype} and shape {label.shape}; accepted: integers of shape "
                f"{x.shape[:1]} (one per example)",
                "label",
            )
        if label.min() < 0:
            raise DataFileError(
                f"`label` has negative values (min {label.min()}); accepted: class indices 0, 1, ...", "label"
            )
        label = label.astype(np.int32)
    return Dataset(x, label)


def _read_array(f, path: str, name: str, argument: str) -> np.ndarray:
    """Array `name` of the open .npz `f`, every read error as a DataFileError naming the file."""
    try:
        return f[name]
    except ValueError as e:  # an object array: numpy refuses to unpickle it (allow_pickle=False)
        raise DataFileError(
            f"{path}: array {name!r} holds Python objects ({_first_line(e)}); accepted: numeric "
            "arrays (numpy.savez of int / float arrays)",
            argument,
        ) from e
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataFileError(
            f"{path}: array {name!r} cannot be read, the file is damaged or truncated "
            f"({_first_line(e)}); {NUMPY_FILES}",
            "path",
        ) from e


def load_npz(path: str, key: str = "x", label_key: str | None = "label", *, max_value: float | None = None) -> Dataset:
    """Images from a .npz (or .npy) file: array `key`, labels `label_key` when present.

    Scaling as `from_arrays`: uint8 [0, 255] -> [-1, 1]; floats kept unless max_value given.
    A file that cannot be used raises `DataFileError` naming it and what is wrong: missing, not
    an .npz/.npy (checked by its first bytes), damaged, no array `key` (the message lists the
    arrays present), or arrays `from_arrays` refuses (dtype, range, non-finite values, labels).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise DataFileError(f"{path} {what}; {NUMPY_FILES}")
    with open(path, "rb") as fh:
        head = fh.read(6)
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):  # zip archive, empty zip, .npy
        raise DataFileError(f"{path} is not an .npz or .npy file (it begins with {head!r}); {NUMPY_FILES}")
    try:
        f = np.load(path)  # allow_pickle=False: a file of pickled objects is refused, never run
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if "allow_pickle" in str(e):  # an .npy of Python objects
            raise DataFileError(
                f"{path} holds Python objects, which are not loaded ({_first_line(e)}); accepted: a "
                "numeric array (numpy.save of an int / float array)"
            ) from e
        raise DataFileError(
            f"{path} cannot be read as .npz/.npy, it is damaged or truncated ({_first_line(e)}); {NUMPY_FILES}"
        ) from e
    if isinstance(f, np.ndarray):  # a plain .npy file: one unlabeled array
        arrays, names = (f, None), {"x": path, "label": path}
    else:
        with f:
            if key not in f.files:
                raise DataFileError(
                    f"{path} has no array {key!r}; accepted: one of the arrays in the file: "
                    f"{', '.join(f.files) or 'none (an empty archive)'}",
                    "key",
                )
            has_label = label_key is not None and label_key in f.files
            arrays = (
                _read_array(f, path, key, "path"),
                _read_array(f, path, label_key, "label_key") if has_label else None,
            )
            names = {"x": f"{path}: array {key!r}", "label": f"{path}: array {label_key!r}"}
    try:
        return from_arrays(*arrays, max_value=max_value)
    except DataFileError as e:  # `x` / `label` in the message become the file and its array
        msg = re.sub(r"^`(x|label)`", lambda m: names[m.group(1)], str(e))
        raise DataFileError(msg, {"x": "path", "label": "label_key"}.get(e.argument, e.argument)) from e


def load_image_folder(path: str, *, size: tuple[int, int] | None = None, mode: str | None = None) -> Dataset:
    """Images under `path`, one class per subfolder (sorted names -> labels 0, 1, ...).

    Image files directly in `path` (no subfolders) give an unlabeled set (label None).
    size: optional (height, width) to resize every image to (bicubic); without it all
          images must share one size.
    mode: optional PIL mode to convert to ("L" grey, "RGB"); default: the first image's.
    Pixels 0..255 are mapped to [-1, 1] by x / 127.5 - 1.
    """
    Image = require("PIL.Image", "pillow", "load_image_folder")
    if not os.path.isdir(path):
        raise DataFileError(f"{path} is not a directory; accepted: a folder of images (one subfolder per class)")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    folders = [(os.path.join(path, c), i) for i, c in enumerate(classes)] or [(path, None)]
    images, labels = [], []
    for folder, label in folders:
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            file = os.path.join(folder, name)
            try:
                with Image.open(file) as im:
                    mode = mode or im.mode
                    im = im.convert(mode)
                    if size is not None:
                        im = im.resize((size[1], size[0]), Image.BICUBIC)
                    images.append(np.asarray(im))
            except OSError as e:  # PIL.UnidentifiedImageError is an OSError
                raise DataFileError(
                    f"{file} cannot be read as an image ({_first_line(e)}); accepted: image files "
                    f"({', '.join(IMAGE_EXTENSIONS)}) that PIL opens"
                ) from e
            labels.append(label)
    if not images:
        raise DataFileError(
            f"{path} holds no image files; accepted: a folder of {', '.join(IMAGE_EXTENSIONS)} files "
            "(one subfolder per class)"
        )
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataFileError(
            f"images under {path} have different shapes {sorted(shapes)}; accepted: one shape, or "
            "pass `size` to resize",
            "size",
        )
    x = to_unit_range(as_nhwc(np.stack(images)), 255)
    label = None if classes == [] else np.asarray(labels, np.int32)
    return Dataset(x, label)


def load_tfds(
    name: str, split: str = "train", *, data_dir: str | None = None, image_key: str = "image", label_key: str = "label"
) -> Dataset:
    """A tensorflow-datasets image set (e.g. "cifar10", "imagenet2012") read fully into memory.

    Needs tensorflow-datasets installed and the data already prepared in `data_dir`
    (or downloadable). uint8 pixels are mapped to [-1, 1] by x / 127.5 - 1.
    """
    tfds = require("tensorflow_datasets", "tensorflow-datasets", f"load_tfds({name!r})")
    ds = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, batch_size=-1))
    label = ds.get(label_key)
    return from_arrays(ds[image_key], None if label is None else np.asarray(label).astype(np.int64))
