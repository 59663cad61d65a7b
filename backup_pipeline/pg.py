r"""PostgreSQL programs and COPY streams, without Dagster: the export, verify, restore and the
restore proof all use these.

psql and pg_dump come from BACKUP_PG_BINDIR, `pg_config --bindir` or PATH. Data is read with
psql's `\copy ... TO pstdout`: psql receives the rows in C and hands them over in megabyte
blocks, which are hashed (and compressed) on the way without ever holding a table in memory.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from isal import isal_zlib

from backup_pipeline.files import BLOCK_SIZE

PG_DUMP_COMPLETE = "-- PostgreSQL database dump complete"


class PgDumpError(RuntimeError):
    """pg_dump is missing, too old for the server, or failed."""


@functools.cache
def _pg_config_bindir(pg_config: str) -> str:
    """`pg_config --bindir`, asked once per process: every table's read looks up psql."""
    try:
        return subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return ""


def find_pg_binary(name: str, bindir: str | None = None) -> Path:
    """The PostgreSQL client program `name`: BACKUP_PG_BINDIR, `pg_config --bindir`, PATH."""
    if bindir:
        return Path(bindir, name)
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = _pg_config_bindir(pg_config)
        candidate = Path(bindir, name)
        if bindir and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise PgDumpError(
        f"{name} was not found in `pg_config --bindir` nor on PATH: install the PostgreSQL client "
        f"programs of the server's major version or newer (Debian: apt-get install "
        f"postgresql-client-15)."
    )


def program_major_version(program: Path) -> tuple[int, str]:
    """(major, full version text) of a PostgreSQL client program such as pg_dump."""
    out = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise PgDumpError(f"could not read the version of {program} from {out!r}")
    return int(match.group(1)), out


@dataclass(frozen=True)
class CopyResult:
    rows: int
    size: int
    sha256: str


class HashingWriter:
    """Writes to a file while counting bytes and computing SHA-256, so no file is read twice.

    With `gzip_level` the file gets the bytes compressed, as one gzip member (`finish` ends
    it), while size and SHA-256 stay those of the plain bytes: the export compresses each table
    as it arrives, in its reader's thread, and the archive takes the member as it is (a .tar.gz
    may be a series of gzip members; gzip, tar and zlib read them as one stream). Without a
    `stream` the writer only counts and hashes.
    """

    def __init__(self, stream: IO[bytes] | None, *, gzip_level: int | None = None) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0
        self._deflate = (None if gzip_level is None
                         else isal_zlib.compressobj(gzip_level, isal_zlib.DEFLATED, 31))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._stream is not None:
            self._stream.write(self._deflate.compress(data) if self._deflate else data)
        self._hash.update(data)
        self.size += len(data)

    def finish(self) -> None:
        """End the gzip member: the file is complete only after this."""
        if self._deflate is not None and self._stream is not None:
            self._stream.write(self._deflate.flush())
        self._deflate = None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def resume(self) -> HashingWriter:
        """A writer that only hashes and counts, going on where this one stopped, so the size
        and SHA-256 cover the bytes of both (a window's later parts after its first)."""
        writer = HashingWriter(None)
        writer._hash = self._hash.copy()
        writer.size = self.size
        return writer


def reader_settings(lock_timeout_seconds: int) -> dict[str, str]:
    """Settings of every session that reads data, for the export and for the restore proof
    alike, so that both write the same text for the same rows.

    The export's key look-ups are large one-off queries: JIT compiling them cost more than
    it saved (0.8 s of 2.5 s on the largest window), hashing the referenced keys in memory
    instead of spilling to disk halves that step, and the export already reads several
    tables at once, so parallel query workers only competed with it for the same cores.
    `row_security = off`, as pg_dump sets it: a table whose policies would hide rows from
    POSTGRES_USER fails the read instead of giving a short table (the plan refuses it first).
    """
    return {
        "row_security": "off",
        "TimeZone": "UTC",
        "DateStyle": "ISO",
        "IntervalStyle": "postgres",
        "extra_float_digits": "3",
        "bytea_output": "hex",
        "lock_timeout": f"{int(lock_timeout_seconds)}s",
        "jit": "off",
        "work_mem": "128MB",
        "max_parallel_workers_per_gather": "0",
    }


def reader_env(settings: dict[str, str]) -> dict[str, str]:
    """PGOPTIONS and the encoding that give a psql session `settings`."""
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    return {"PGOPTIONS": f"{os.environ.get('PGOPTIONS', '')} {options}".strip(),
            "PGCLIENTENCODING": "UTF8"}


class BlockSink(Protocol):
    """Where COPY's blocks go: a HashingWriter, or something passing them on to one."""

    def write(self, data: bytes) -> None: ...


def psql_copy_out(psql: Path, env: dict[str, str], query: str, writer: BlockSink, *,
                  before: tuple[str, ...] = (), after: tuple[str, ...] = (), csv: bool = False,
                  header: bool = False, where: str = "the database") -> int:
    """Stream `query` out through `psql` into `writer`; returns the server's row count.

    `before` and `after` are SQL commands run in the same session around the COPY (a snapshot
    to join, a COMMIT). Command tags ("COPY 123") and errors go to stderr, the data alone to
    stdout. The count the server reports is what the manifest records.
    """
    if "\n" in query:
        raise ValueError(f"a table or column name contains a newline: {query[:200]!r}")
    options = (" WITH (FORMAT csv, HEADER)" if header else " WITH (FORMAT csv)") if csv else ""
    command = [str(psql), "-X", "-v", "ON_ERROR_STOP=1", "-o", "/dev/stderr"]
    for statement in (*before, f"\\copy ({query}) TO pstdout{options}", *after):
        command += ["-c", statement]
    with tempfile.TemporaryFile() as messages:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=messages)
        try:
            assert process.stdout is not None
            for block in iter(lambda: process.stdout.read(BLOCK_SIZE), b""):
                writer.write(block)
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        messages.seek(0)
        output = messages.read().decode("utf-8", "replace")
    reported = [int(n) for n in re.findall(r"^COPY (\d+)$", output, re.MULTILINE)]
    if process.returncode != 0 or len(reported) != 1:
        raise RuntimeError(
            f"reading {query[:120]}... from {where} failed (psql exit status "
            f"{process.returncode}): {output.strip() or 'no error output'}"
        )
    return reported[0]
