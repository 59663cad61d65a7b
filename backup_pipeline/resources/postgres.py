"""The application database: connections with retries, one exported snapshot, COPY and pg_dump.

Every file in an archive must come from the same instant of the database, also while the
application keeps writing. `PostgresResource.snapshot()` opens one REPEATABLE READ transaction,
exports its snapshot and keeps it open; the COPY statements run inside it and every pg_dump is
started with `--snapshot`, so they all see exactly the same data.

The password never reaches argv or a log line: child processes get it through `PGPASSWORD` in
their environment, and error messages name host, port, database and user only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
import psycopg
from psycopg import sql
from pydantic import Field

from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.files import BLOCK_SIZE
from backup_pipeline.pg import (
    PG_DUMP_COMPLETE,
    BlockSink,
    CopyResult,
    HashingWriter,
    PgDumpError,
    find_pg_binary,
    program_major_version,
    psql_copy_out,
    reader_env,
    reader_settings,
)
from backup_pipeline.retry import with_retries
from backup_pipeline.settings import DEFAULTS

__all__ = ["CopyResult", "HashingWriter", "PgDumpError", "PostgresResource", "Snapshot"]


class DatabaseConnectionError(KindOfFailure, RuntimeError):
    """The database could not be reached after every retry."""

    kind = "database"


@dataclass
class Snapshot:
    """An open REPEATABLE READ transaction whose snapshot every reader of this run shares."""

    connection: psycopg.Connection
    snapshot_id: str
    taken_at: datetime
    server_version: str
    server_version_num: int
    resource: PostgresResource

    def lock(self, tables: list[sql.Composable]) -> None:
        """ACCESS SHARE locks until the end: no table can be dropped or altered mid-backup."""
        for table in tables:
            self.connection.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(table))

    def render(self, select: sql.Composable) -> str:
        """`select` as text for psql, quoted by this session's connection."""
        return select.as_string(self.connection)

    def copy_to(self, select: sql.Composable | str, writer: BlockSink, *, csv: bool = False,
                header: bool = False) -> int:
        """Stream `select` out of this snapshot into `writer`; returns the server's row count.

        The COPY runs in a psql process of its own that joins this snapshot, so several tables
        are read at once, each by a session that sees exactly the same data. psql receives the
        rows in C and hands them over in megabyte blocks (receiving them row by row in Python
        cost as much CPU as the server spent producing them). The count the server reports goes
        into the manifest, and the archive is only published when its files hold exactly that
        many rows (verify.py counts them). Readers in other threads pass `select` already
        rendered (`render`): this session's connection may be busy in the main thread.
        """
        query = select if isinstance(select, str) else self.render(select)
        return psql_copy_out(
            self.resource.client_program("psql"), self.resource.libpq_env(session=True), query,
            writer, csv=csv, header=header, where=self.resource.describe(),
            before=("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    f"SET TRANSACTION SNAPSHOT '{self.snapshot_id}'"),
            after=("COMMIT",))

    def pg_dump(self, target: Path, *args: str) -> CopyResult:
        """Run pg_dump inside this snapshot into `target` and check that it finished."""
        program = self.resource.pg_dump_program()
        command = [
            str(program),
            f"--snapshot={self.snapshot_id}",
            # Owners and privileges are kept (the restore creates the roles they name, or
            # leaves them out with --no-owner); tablespaces are the old server's own folders.
            "--no-tablespaces",
            "--no-subscriptions",
            "--no-publications",
            # Large objects are not backed up (export_plan refuses a backed-up table that
            # references one): without this, pre-data would recreate every one of them empty.
            "--no-blobs",
            f"--lock-wait-timeout={int(self.resource.lock_timeout_seconds)}s",
            f"--file={target}",
            *args,
        ]
        result = subprocess.run(
            command, env=self.resource.libpq_env(), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise PgDumpError(
                f"pg_dump {' '.join(args)} failed with exit status {result.returncode} on "
                f"{self.resource.describe()}: {result.stderr.strip() or 'no error output'}"
            )
        digest = hashlib.sha256()
        size = 0
        tail = b""
        with target.open("rb") as dump:
            for block in iter(lambda: dump.read(BLOCK_SIZE), b""):
                digest.update(block)
                size += len(block)
                tail = (tail + block)[-256:]
        if PG_DUMP_COMPLETE.encode() not in tail:
            raise PgDumpError(
                f"pg_dump {' '.join(args)} exited 0 but {target.name} does not end with "
                f"{PG_DUMP_COMPLETE!r}: the dump is incomplete ({size} bytes written)."
            )
        return CopyResult(rows=0, size=size, sha256=digest.hexdigest())


class PostgresResource(dg.ConfigurableResource):
    """Connection settings of the application database (the seeds' POSTGRES_* variables)."""

    host: str = Field(description="POSTGRES_HOST")
    port: int = Field(default=DEFAULTS.postgres_port, description="POSTGRES_PORT")
    database: str = Field(description="POSTGRES_DB")
    user: str = Field(description="POSTGRES_USER")
    password: str | None = Field(default=None, description="POSTGRES_PASSWORD, read at run time")
    connect_retries: int = Field(default=DEFAULTS.db_connect_retries,
                                 description="BACKUP_DB_CONNECT_RETRIES")
    retry_base_seconds: float = Field(default=DEFAULTS.db_retry_base_seconds,
                                       description="BACKUP_DB_RETRY_BASE_SECONDS")
    connect_timeout_seconds: int = Field(default=10)
    lock_timeout_seconds: int = Field(default=DEFAULTS.lock_timeout_seconds,
                                      description="BACKUP_LOCK_TIMEOUT_SECONDS")
    pg_bindir: str | None = Field(default=None, description="BACKUP_PG_BINDIR")

    def describe(self) -> str:
        """Where the database is, for error messages: never the password."""
        return f"host {self.host} port {self.port} database {self.database} user {self.user}"

    def session_settings(self) -> dict[str, str]:
        """Settings of every session that reads for the backup (`pg.reader_settings`)."""
        return reader_settings(self.lock_timeout_seconds)

    def libpq_env(self, *, session: bool = False) -> dict[str, str]:
        """The environment for psql/pg_dump: connection details, password out of argv.

        With `session`, the sessions' settings and encoding too (for psql reading data).
        """
        env = dict(os.environ)
        if session:
            env.update(reader_env(self.session_settings()))
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGDATABASE=self.database,
            PGUSER=self.user,
            PGCONNECT_TIMEOUT=str(self.connect_timeout_seconds),
            PGAPPNAME="backup_pipeline",
        )
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, *, log: dg.DagsterLogManager | None = None, **kwargs) -> psycopg.Connection:
        """Connect, retrying `connect_retries` times with doubling delays, then fail clearly."""
        attempts = self.connect_retries + 1

        def warn(attempt: int, error: BaseException, delay: float | None) -> None:
            if log and delay is not None:
                log.warning(f"connection {attempt}/{attempts} to {self.describe()} failed "
                            f"({_first_line(error)}); retrying in {delay:g} s")

        try:
            return with_retries(
                lambda: psycopg.connect(
                    host=self.host, port=self.port, dbname=self.database, user=self.user,
                    password=self.password, connect_timeout=self.connect_timeout_seconds,
                    application_name="backup_pipeline", **kwargs),
                attempts=attempts, base_seconds=self.retry_base_seconds,
                retry_on=(psycopg.OperationalError,), on_failure=warn)
        except psycopg.OperationalError as error:
            raise DatabaseConnectionError(
                f"could not connect to PostgreSQL at {self.describe()} after {attempts} "
                f"attempts: {_first_line(error)}. Check that the server is running and "
                f"reachable (pg_isready -h {self.host} -p {self.port}), and POSTGRES_HOST, "
                f"POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER and POSTGRES_PASSWORD."
            ) from None

    def client_program(self, name: str) -> Path:
        """pg_dump or psql, from BACKUP_PG_BINDIR, `pg_config --bindir` or PATH."""
        return find_pg_binary(name, self.pg_bindir)

    def pg_dump_program(self) -> Path:
        return self.client_program("pg_dump")

    def check_pg_dump_version(self, server_version_num: int, server_version: str) -> str:
        """Fail before any work when pg_dump is older than the server; returns its version text."""
        program = self.pg_dump_program()
        major, text = program_major_version(program)
        server_major = server_version_num // 10000
        if major < server_major:
            raise PgDumpError(
                f"pg_dump {major} ({program}: {text}) is older than the PostgreSQL server "
                f"{server_version} at {self.describe()}; pg_dump must be at least version "
                f"{server_major}. Install postgresql-client-{server_major} (or newer) and make it "
                f"first on PATH."
            )
        return text

    def _session(self, log: dg.DagsterLogManager | None) -> psycopg.Connection:
        """A connection in a REPEATABLE READ READ ONLY transaction, with dump-safe settings."""
        conn = self.connect(log=log, autocommit=True)
        try:
            conn.execute("SET client_encoding = 'UTF8'")
            for name, value in self.session_settings().items():
                conn.execute(sql.SQL("SELECT set_config({}, {}, false)").format(
                    sql.Literal(name), sql.Literal(value)))
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def snapshot(self, *, log: dg.DagsterLogManager | None = None) -> Iterator[Snapshot]:
        """One exported snapshot, held open until the block ends."""
        conn = self._session(log)
        try:
            row = conn.execute(
                "SELECT pg_export_snapshot(), now(), current_setting('server_version'), "
                "current_setting('server_version_num')::int"
            ).fetchone()
            assert row is not None
            yield Snapshot(
                connection=conn,
                snapshot_id=row[0],
                taken_at=row[1],
                server_version=row[2],
                server_version_num=row[3],
                resource=self,
            )
            conn.execute("COMMIT")
        finally:
            conn.close()


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error else "unknown error"
    return text.splitlines()[0] if text else type(error).__name__
