"""/ha: the cluster as a FUSE filesystem of small text files, and control through writable
files. A client of one node's daemon, like the CLI: see :mod:`vigil.ha.fs` and docs/ha.md."""

from vigil.ha.fs import (
    HaError,
    HaOperations,
    MountError,
    StatusSource,
    build_tree,
    refusal_errno,
    serve,
)

__all__ = [
    "HaError",
    "HaOperations",
    "MountError",
    "StatusSource",
    "build_tree",
    "refusal_errno",
    "serve",
]
