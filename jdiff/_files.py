"""Files on local disks and cloud storage, through etils.epath (gs://, s3:// pass through untouched).

Object stores have no append and no rename; `write_atomic` writes a local file atomically (a
temporary file renamed over it) and an object in one upload, which object stores make atomic.
"""

from __future__ import annotations

import os

from etils import epath

__all__ = ["as_path", "is_url", "write_atomic"]


def is_url(path) -> bool:
    """Whether `path` names cloud storage (gs://bucket/..., s3://...) rather than a local file."""
    return "://" in os.fspath(path)


def as_path(path) -> epath.Path:
    """`path` as an etils.epath.Path: a local path made absolute, a URL untouched."""
    text = os.fspath(path)
    return epath.Path(text if is_url(text) else os.path.abspath(text))


def write_atomic(path, content: str | bytes) -> epath.Path:
    """Write `content` to `path` (local or URL) so a reader sees the old file or the new one, never
    half of one; creates the parent folders. Returns the path."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    if is_url(path):
        with path.open(mode) as f:
            f.write(content)
        return path
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
