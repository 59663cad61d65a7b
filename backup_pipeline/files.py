"""Files and folders made with their modes, whatever the umask, and replaced atomically.

Why: archives, staged table data, logs that name the administrators and the throwaway server's
password file are private. A container or cron job may run with umask 000, under which
`open()`, `write_text()` and `mkdir(parents=True)` make files 0666 and folders 0777; so every
file this project writes is created here, with an explicit mode, and nothing imports Dagster.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import threading
from pathlib import Path
from typing import BinaryIO

# Every stream of the project (COPY, compression, tar, hashing, verification, downloads) reads
# and writes blocks of this size: large enough that per-block overhead vanishes, small enough
# that memory stays flat however large a table is.
BLOCK_SIZE = 1 << 20
PRIVATE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(folder: Path) -> None:
    """`mkdir -p` with every folder it creates 0700: Path.mkdir(parents=True) gives the parents
    the umask's mode whatever `mode` says. Folders that exist keep theirs."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        os.chmod(path, PRIVATE_DIR)


def open_private(path: Path, exclusive: bool = False, append: bool = False,
                 mode: int = PRIVATE) -> BinaryIO:
    """`path` opened for writing (truncated, or at its end with `append`), created with `mode`;
    never through a symlink. `exclusive`: a new file, given exactly `mode` (os.open's is narrowed
    by the umask). A file that exists keeps its mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (
        os.O_EXCL if exclusive else os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        if exclusive:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab" if append else "wb")


def write_private_text(path: Path, text: str) -> bytes:
    """`text` written to `path` (0600); returns the bytes written, for their size and hash."""
    data = text.encode()
    with open_private(path) as handle:
        handle.write(data)
    return data


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """A new file `path` holding `data`, on disk (fsynced) when this returns, or no file at all:
    the temporary half of every write that must never be seen half done."""
    handle = open_private(path, exclusive=True, mode=mode)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, text: str, mode: int = PRIVATE) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never half."""
    # A name no other writer has: threads and processes may replace the same file at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}."
                         f"{secrets.token_hex(4)}.tmp")
    write_synced(tmp, text.encode(), mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class HashingReader(io.RawIOBase):
    """Reads `stream` while hashing and counting what was read: a tar member that verification
    parses as it hashes, or the plaintext going into the encryption, in one pass."""

    def __init__(self, stream: io.BufferedIOBase | io.RawIOBase | BinaryIO) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._stream.readinto(buffer)
        self.hash.update(memoryview(buffer)[:n])
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(BLOCK_SIZE):
            pass


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in BLOCK_SIZE blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()
