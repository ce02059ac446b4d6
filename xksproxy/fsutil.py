"""Files replaced whole: the one atomic-write helper every layer uses.

Config files, secrets, certificates and the control directory's state files are all rewritten
by writing a temp file in the same directory and renaming it over the old one, so a reader sees
the old or the new file, never half of one. This module imports nothing of xksproxy.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk, not only the file data."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix.

    The temp file gets its final mode before any byte is written, so a secret is never readable
    by others, not even for an instant. ``durable=False`` skips the fsyncs, for state files that
    are rewritten every second and worthless after a crash (the control directory's).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)
