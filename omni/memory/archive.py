"""Where event payloads (pooled frame features) live: append-only shard files, or a table of the database.

Shards (the SQLite default; with PostgreSQL, shared by several machines, payloads go into the database row's
transaction instead): `<dir>/shards/<user hash>/shard_NNNNNN.bin`, appended under an exclusive file lock,
fsynced before the database row that points at the bytes commits. A crash between the two leaves unreferenced
bytes at the end of a shard, never a row pointing at missing bytes; the next append starts after them.
A shard rolls over at 64 MiB (about 25 min of 16 tokens x 256 dims x 2 fps in float16), so forgetting and
copying stay file-sized operations.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Protocol

SHARD_BYTES = 64 * 1024 * 1024


class ArchiveError(RuntimeError):
    """A payload reference that cannot be read (missing shard, short read, unknown scheme)."""


class PayloadArchive(Protocol):
    def append(self, user_id: str, data: bytes) -> str:
        """Store `data` durably; return the reference to put in the event's row."""

    def read(self, user_id: str, ref: str) -> bytes: ...

    def forget(self, user_id: str) -> None: ...


def user_dir_name(user_id: str) -> str:
    """A file-system-safe, stable folder name for a user id of any characters."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]


class ShardArchive:
    """Append-only shard files under `root`."""

    def __init__(self, root: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.root = Path(root)
        self.shard_bytes = shard_bytes

    def _user_root(self, user_id: str) -> Path:
        return self.root / "shards" / user_dir_name(user_id)

    def append(self, user_id: str, data: bytes) -> str:
        folder = self._user_root(user_id)
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(folder.glob("shard_*.bin"))
        index = int(existing[-1].stem.split("_")[1]) if existing else 0
        path = folder / f"shard_{index:06d}.bin"
        if path.exists() and path.stat().st_size + len(data) > self.shard_bytes and path.stat().st_size > 0:
            index += 1
            path = folder / f"shard_{index:06d}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            offset = os.lseek(fd, 0, os.SEEK_END)
            written = os.write(fd, data)
            if written != len(data):
                raise ArchiveError(f"short write to {path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        if not existing:
            _fsync_dir(folder)
        return f"shard:{path.name}:{offset}:{len(data)}"

    def read(self, user_id: str, ref: str) -> bytes:
        scheme, name, offset, size = _parse_ref(ref, "shard", 4)
        path = self._user_root(user_id) / name
        try:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), int(size), int(offset))
        except FileNotFoundError as e:
            raise ArchiveError(f"payload {ref!r} of user {user_id!r}: shard {path} is missing") from e
        if len(data) != int(size):
            raise ArchiveError(f"payload {ref!r}: shard {path} holds only {len(data)} of {size} bytes")
        return data

    def forget(self, user_id: str) -> None:
        folder = self._user_root(user_id)
        if folder.exists():
            shutil.rmtree(folder)


def _parse_ref(ref: str, scheme: str, parts: int) -> list[str]:
    fields = ref.split(":")
    if len(fields) != parts or fields[0] != scheme:
        raise ArchiveError(f"payload reference {ref!r} is not of the form {scheme}:...")
    return fields


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
