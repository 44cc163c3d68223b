"""Another local user for the tests of the local interfaces and files: ``nobody``."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


@contextlib.contextmanager
def reachable_tmp(prefix: str) -> Iterator[Path]:
    """A directory of root's in /tmp that ``nobody`` may pass through (0711) but not list:
    pytest's tmp_path is 0700, below /tmp/pytest-of-root. Removed afterwards (rmtree never
    follows the links in it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o711)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
