"""Small file helpers: atomic writes and JSONL, so an interrupted stage never leaves half a file; the folder lock, so
two runs never write one folder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_FILE = "clinkd.lock"  # in a folder a command writes; names the process that holds it


class FolderInUse(RuntimeError):
    """Another process holds a folder's lock (:func:`folder_lock`)."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[str | None]:
    """Hold ``folder/clinkd.lock`` while the block runs; yields the holder a killed run left in the file (or ``None``).

    A second process stops at once with :class:`FolderInUse` naming the folder and the process that holds it. The
    kernel drops the lock when its process ends, however it ends (``flock``); a lock file that still names a process
    is then the note of a run that was killed before it could clear it, and is taken over.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8").strip() or "another process"
            raise FolderInUse(
                f"{folder} is in use by {holder}; wait for it to end, or give this run another name (lock: {path})"
            ) from None
        handle.seek(0)
        left = handle.read().strip() or None
        handle.seek(0)
        handle.truncate()
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        handle.write(
            f"process {os.getpid()} ({command}) on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        handle.flush()
        try:
            yield left
        finally:
            handle.truncate(0)  # released: the next holder finds no note of a killed run


def unreachable_reason(path: str | Path) -> str | None:
    """Why ``path`` leads nowhere (``does not exist``, ``is a broken link to …``, ``is a symlink loop``), or ``None``
    when it exists, whatever it is."""
    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        return f"is a broken link to {os.readlink(path)}" if path.is_symlink() else "does not exist"
    except OSError as error:
        return "is a symlink loop" if error.errno == errno.ELOOP else f"cannot be reached ({error.strerror})"
    return None


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process umask (0644 under umask 022)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def match_umask(root: Path) -> None:
    """Give every file under ``root`` (or ``root`` itself, a file) the umask's mode: safetensors writes 0600 files."""
    mode = new_file_mode()
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_file():
            path.chmod(mode)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, new_file_mode())  # mkstemp's 0600 would survive the rename
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def jsonl_line(row: Any) -> str:
    """One JSONL line: the row as JSON (non-ASCII kept), then a newline."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Replace ``path`` with ``rows``, one JSON per line, in one atomic write."""
    atomic_write_text(path, "".join(jsonl_line(row) for row in rows))


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a crash mid-write, so the next append starts a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync, so each finished batch survives a crash (a torn last line is dropped first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(jsonl_line(row))
        handle.flush()
        os.fsync(handle.fileno())


class JsonlError(ValueError):
    """A JSONL file that does not read; the message starts with ``file:line`` (or the file)."""


def numbered_jsonl(path: str | Path, allow_torn_tail: bool = True) -> Iterator[tuple[int, Any]]:
    """``(line number, row)`` of a JSONL file, blank lines skipped. A bad last line is taken for one torn by a crash
    mid-write and ignored when ``allow_torn_tail`` (resuming); any other bad line raises :class:`JsonlError`."""
    path = Path(path)
    if path.is_dir():
        raise JsonlError(f"{path}: is a directory, expected a JSONL file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise JsonlError(f"{path}: not UTF-8 text ({error})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and allow_torn_tail:
                return
            raise JsonlError(f"{path}:{number}: malformed JSONL line: {error}") from None


def read_jsonl(path: str | Path, allow_torn_tail: bool = True) -> Iterator[dict]:
    """Rows of a JSONL file (see :func:`numbered_jsonl`)."""
    return (row for _, row in numbered_jsonl(path, allow_torn_tail))
