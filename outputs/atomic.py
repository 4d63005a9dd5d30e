"""Atomic file writes: write under a temporary name in the same folder, then ``os.replace``.

A reader (a phone sync, a GIS watching the folder, the next pipeline stage) never sees a
half-written target list: the final name appears only once the file is complete. If writing
fails, the temporary file is removed and any earlier file of that name is left untouched.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Side files some writers (SQLite/GDAL) may leave next to the temporary file on failure.
_SIDECAR_SUFFIXES = ("-journal", "-wal", "-shm")


def temp_path_for(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that keeps its extension (GDAL picks drivers by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write to; on success move it onto ``path`` atomically."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        for p in (tmp, *(tmp.with_name(tmp.name + s) for s in _SIDECAR_SUFFIXES)):
            if p.exists():
                p.unlink()


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; return the final path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the final path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
