"""The one hash of a whole file's bytes, for every floor: audio inventory (``sha256_bytes``), extractor
model files, the Kaggle bundle's manifest.

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
