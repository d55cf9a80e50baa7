"""Write files so that readers see either the old file or the complete new one, never half of one.

Every writer in the project goes through here: a temp file in the destination's
directory (same filesystem, so the rename is atomic), then ``os.replace``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _new_temp_file(directory: Path, name: str, suffix: str) -> Path:
    """A new empty file in ``directory`` (hidden, named after ``name``), with a plain ``open``'s mode.

    Created with ``O_EXCL`` and mode 0o666, so the kernel applies the umask: ``mkstemp`` would
    make it 0o600, and the umask can only be read by setting it, process-wide, which races with
    other threads writing files (a Dask worker's threads write parts side by side): one could
    restore the other's temporary 0 and leave every later file world-writable.
    """
    while True:
        tmp = directory / f".{name}.{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # 48 random bits taken already: draw again
            continue
        return tmp


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path to write to; it replaces ``path`` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temp file is removed and an
    existing ``path`` is left as it was. ``suffix`` is for writers that insist on an
    extension (papermill wants ``.ipynb``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path.parent, path.name, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))
