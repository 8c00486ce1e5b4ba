"""Users' own data: numpy arrays / .npz files, a folder of images, tensorflow-datasets.

Every loader returns a `Dataset(x, label)` with x float32 (N, H, W, C) in [-1, 1] and
label int32 (N,) or None, held in host memory (the iterator then shards it per process).
"""

from __future__ import annotations

import os

import numpy as np

from jdiff.data._common import Dataset, as_nhwc, require, to_unit_range

__all__ = ["from_arrays", "load_npz", "load_image_folder", "load_tfds"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def from_arrays(x, label=None, *, max_value: float | None = None) -> Dataset:
    """A Dataset from in-memory arrays.

    x: images (N, H, W) or (N, H, W, C) (a channel axis is added to the first), or vectors
       (N, D). Integer arrays (uint8 images) are mapped from [0, max_value] (default 255) onto
       [-1, 1]; float arrays are kept as they are unless `max_value` is given, in which case
       [0, max_value] -> [-1, 1]. Float images outside [-1, 1] raise (pass `max_value`).
    label: optional (N,) integer class labels.
    """
    x = np.asarray(x)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"`x` must have shape (N, D), (N, H, W) or (N, H, W, C); got {x.shape}")
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
        x = to_unit_range(x, 255 if max_value is None else max_value)
    elif max_value is not None:
        x = to_unit_range(x, max_value)
    else:
        x = x.astype(np.float32)
        if x.ndim > 2 and x.size and (x.min() < -1.001 or x.max() > 1.001):
            raise ValueError(f"float images must lie in [-1, 1] (got [{x.min():g}, {x.max():g}]); pass `max_value` "
                             "to map [0, max_value] onto [-1, 1]")
    x = as_nhwc(x) if x.ndim == 3 else x
    if label is not None:
        label = np.asarray(label)
        if label.shape != x.shape[:1] or not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"`label` must be integers of shape {x.shape[:1]}; got {label.dtype} {label.shape}")
        label = label.astype(np.int32)
    return Dataset(x, label)


def load_npz(path: str, key: str = "x", label_key: str | None = "label", *, max_value: float | None = None) -> Dataset:
    """Images from a .npz (or .npy) file: array `key`, labels `label_key` when present.

    Scaling as `from_arrays`: uint8 [0, 255] -> [-1, 1]; floats kept unless max_value given.
    """
    f = np.load(path)
    if isinstance(f, np.ndarray):  # a plain .npy file: one unlabeled array
        return from_arrays(f, max_value=max_value)
    with f:
        if key not in f:
            raise KeyError(f"`key`={key!r} is not in {path}; arrays there: {', '.join(f.files)}")
        label = f[label_key] if label_key is not None and label_key in f else None
        return from_arrays(f[key], label, max_value=max_value)


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
        raise ValueError(f"`path`={path!r} is not a directory")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    folders = [(os.path.join(path, c), i) for i, c in enumerate(classes)] or [(path, None)]
    images, labels = [], []
    for folder, label in folders:
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            with Image.open(os.path.join(folder, name)) as im:
                mode = mode or im.mode
                im = im.convert(mode)
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.BICUBIC)
                images.append(np.asarray(im))
            labels.append(label)
    if not images:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under `path`={path!r}")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images under {path!r} have different shapes {sorted(shapes)}; pass `size` to resize")
    x = to_unit_range(as_nhwc(np.stack(images)), 255)
    label = None if classes == [] else np.asarray(labels, np.int32)
    return Dataset(x, label)


def load_tfds(name: str, split: str = "train", *, data_dir: str | None = None,
              image_key: str = "image", label_key: str = "label") -> Dataset:
    """A tensorflow-datasets image set (e.g. "cifar10", "imagenet2012") read fully into memory.

    Needs tensorflow-datasets installed and the data already prepared in `data_dir`
    (or downloadable). uint8 pixels are mapped to [-1, 1] by x / 127.5 - 1.
    """
    tfds = require("tensorflow_datasets", "tensorflow-datasets", f"load_tfds({name!r})")
    ds = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, batch_size=-1))
    label = ds.get(label_key)
    return from_arrays(ds[image_key], None if label is None else np.asarray(label).astype(np.int64))
