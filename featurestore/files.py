"""The one hash of a whole file's bytes, for every floor: audio inventory (``sha256_bytes``), extractor
model files, the Kaggle bundle's manifest; and the one listing of a folder tree that never follows a
link (head folders' records, the bundle's check).

Imports nothing outside the standard library (the inference path uses it without a store).
"""

from __future__ import annotations

import functools
import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, computed once per process for an unchanged file (same size and mtime)."""
    stat = os.stat(path)
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)   # a stack and its base heads: hundreds of files, each hashed once
def _sha256_of(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def walk_tree(folder: str | os.PathLike) -> tuple[dict[str, int], list[str], list[str]]:
    """``({regular file: size}, folders, anything else - symlinks, special files)`` below ``folder``, as
    sorted relative POSIX paths, never following a symlink (``os.scandir``: one stat per entry)."""
    files: dict[str, int] = {}
    dirs: list[str] = []
    other: list[str] = []
    pending = [("", os.fspath(folder))]
    while pending:
        prefix, path = pending.pop()
        with os.scandir(path) as it:
            for entry in it:
                rel = prefix + entry.name
                if entry.is_symlink():
                    other.append(rel)
                elif entry.is_dir(follow_symlinks=False):
                    dirs.append(rel)
                    pending.append((rel + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    other.append(rel)
    return dict(sorted(files.items())), sorted(dirs), sorted(other)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder, so a file renamed into it survives a power cut; raises the OSError of a folder that cannot
    be opened or synced (some network filesystems) - each caller decides whether that matters."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
