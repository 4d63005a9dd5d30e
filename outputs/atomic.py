"""Atomic file writes: write under a temporary name in the same folder, then ``os.replace``.

A reader (a phone sync, a GIS watching the folder, the next pipeline stage) never sees a
half-written target list: the final name appears only once the file is complete. If writing
fails, the temporary file is removed and any earlier file of that name is left untouched.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import InputError, OutputBusy

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


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while a set of finished files is swapped into a folder,
    and delivered right after: an interrupt between two moves left a folder mixing two runs
    (the new targets.geojson beside the old targets.csv and report.json; a new model.skops
    beside the old model.json). Python-level handlers, as only the main thread runs them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


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


def first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (None: it exists):
    what a failed run that created ``folder`` removes (``nest/`` of ``--out nest/a/b``)."""
    top = None
    for p in [Path(folder).absolute(), *Path(folder).absolute().parents]:
        if p.exists():
            break
        top = p
    return top


def check_can_create(folder: Path, flag: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written: a file on its
    path, a parent without write permission, a file system that refuses (it was a traceback
    at the first write, after the work), a file where it should be. A folder made to find
    out is removed again."""
    if Path(folder).is_symlink() and not Path(folder).exists():
        raise InputError(f"{folder}: a link to nothing (or a loop of links); choose another "
                         f"{flag}")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose another {flag}")
    folder = Path(folder).absolute()
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{folder}: {parent} is a file, not a folder; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: cannot write in {parent}; choose another {flag}")
    if parent == folder:
        return
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create it ({exc.strerror}); choose another "
                         f"{flag}") from None
    made = folder
    while made != parent:              # leave no trace: the run makes it when it writes
        made.rmdir()
        made = made.parent


#: run-state folders this process holds locked (each held until its run ends)
_LOCKS: dict[str, object] = {}


def lock_folder(state: Path, out: Path, command: str) -> None:
    """Take the run-state folder ``state`` of ``out`` for this run of ``command``: a second
    detect (or fetch) into the same folder at the same time wiped the first one's tiles (or
    staging folder) and the first carried on, mixing the two runs. A lock a failed run of this
    process left is given back first (a process runs one command at a time); another
    process's is refused (:class:`OutputBusy`: that run's files are not this one's to clean
    up)."""
    import fcntl
    state.mkdir(parents=True, exist_ok=True)
    unlock_folder(state)
    f = open(state / "lock", "a")  # noqa: SIM115 - held until the run ends
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise OutputBusy(f"{out}: another {command} is writing into it now; wait for it to "
                         "end, or give another --out") from None
    _LOCKS[str(state.resolve())] = f


def unlock_folder(state: Path) -> None:
    f = _LOCKS.pop(str(state.resolve()), None)
    if f is not None:
        f.close()  # type: ignore[attr-defined]
