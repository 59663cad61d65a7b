r"""Loading an extracted archive into a database, in one transaction, through one connection.

`backup-pipeline restore` (and so the restore proof of every run) does not run the archive's
`_restore.psql`: it takes from the archive only what it expects, in the order the manifest
gives. The schema files are pg_dump's SQL, run statement by statement (a psql meta-command
other than pg_dump's own `\restrict`/`\unrestrict` is refused, naming the line); the tables'
data files give their rows only, streamed into a COPY statement built here from the manifest,
after checking that the text around the rows is exactly what the export writes; the sequence
file may only call setval. The roles come from the manifest, not from the archive's file.

Loading the CSV files through the protocol rather than psql's `\copy` also matters for
correctness: psql before version 18 ends a `\copy` at a line holding only `\.`, even inside a
quoted CSV value (a text column whose value has such a line), and the restore would fail.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from backup_pipeline import layout
from backup_pipeline.data_files import sql_data_header, sql_data_trailer
from backup_pipeline.files import BLOCK_SIZE
from backup_pipeline.manifest import Manifest, TableEntry
from backup_pipeline.pg_script import is_ownership_or_privilege, statements
from backup_pipeline.restore_script import ManifestError, checked_path
from backup_pipeline.roles import Role, create_missing_roles_sql

Progress = Callable[[str], None]

_PG_DUMP_META = re.compile(r"^\\(restrict|unrestrict) [A-Za-z0-9]+\s*$")
# pg_dump's schema sections never hold COPY; in a crafted archive, COPY ... PROGRAM would run a
# program on the database server.
_COPY = re.compile(r"^\s*COPY\b", re.IGNORECASE)
_SETVAL = re.compile(r"^SELECT pg_catalog\.setval\(E?'(?:[^'\\]|''|\\.)*', -?\d+, "
                     r"(?:true|false)\);$")


class LoadError(RuntimeError):
    """A statement of the archive failed or was refused; the transaction is rolled back."""


def _run_sql_file(conn: psycopg.Connection, workdir: Path, name: str, *, no_owner: bool,
                  allowed: Callable[[str], bool] | None = None) -> int:
    """Every statement of a schema (or sequence) file; returns how many ran."""
    text = (workdir / name).read_text(encoding="utf-8")
    count = 0
    for statement in statements(text):
        if statement.kind == "meta":
            if _PG_DUMP_META.match(statement.text):
                continue
            raise LoadError(f"{name} line {statement.line} is a psql meta-command, which the "
                            f"restore never runs: {statement.text[:120]!r}. This file was not "
                            f"made by pg_dump; do not use this archive.")
        if allowed is not None and not allowed(statement.text):
            raise LoadError(f"{name} line {statement.line} is not what that file may hold: "
                            f"{statement.text[:120]!r}. Do not use this archive.")
        if no_owner and is_ownership_or_privilege(statement):
            continue
        try:
            conn.execute(statement.text)
        except psycopg.Error as error:
            raise LoadError(f"{name} line {statement.line} failed: "
                            f"{str(error).strip()} (statement: {statement.text[:200]})") from None
        count += 1
    return count


def _schema_sql(text: str) -> bool:
    return not _COPY.match(text)


def _stream(copy: psycopg.Copy, path: Path, start: int, length: int) -> None:
    with path.open("rb") as handle:
        handle.seek(start)
        left = length
        while left > 0:
            block = handle.read(min(BLOCK_SIZE, left))
            if not block:
                break
            copy.write(block)
            left -= len(block)


def _rows_range(path: Path, entry: TableEntry) -> tuple[int, int]:
    """Where a table's rows are in its file: all of a CSV (COPY skips its header); in a critical
    table's file, what lies between the export's header and its trailer, which must be exactly
    those the manifest's names and row count give."""
    size = path.stat().st_size
    if entry.windowed:
        return 0, size
    header = sql_data_header(entry.schema, entry.name, entry.columns).encode()
    trailer = sql_data_trailer(entry.rows).encode()
    with path.open("rb") as handle:
        starts = handle.read(len(header))
        handle.seek(max(0, size - len(trailer)))
        ends = handle.read()
    if starts != header or ends != trailer:
        raise LoadError(f"{path.name} does not hold exactly the export's COPY data of "
                        f"{entry.table} ({entry.rows} rows): do not use this archive.")
    return len(header), size - len(header) - len(trailer)


def copy_rows(cur: psycopg.Cursor, workdir: Path, entry: TableEntry, into: sql.Composable
              ) -> None:
    """Stream the rows of one table's file (only them: see `_rows_range`) into `into`, a table
    of the same columns: the table itself, or a partial restore's staging table."""
    path = workdir / checked_path(entry)
    start, length = _rows_range(path, entry)
    options = " WITH (FORMAT csv, HEADER)" if entry.windowed else ""
    statement = sql.SQL("COPY {} ({}) FROM STDIN" + options).format(
        into, sql.SQL(", ").join(sql.Identifier(c) for c in entry.columns))
    with cur.copy(statement) as copy:
        _stream(copy, path, start, length)


def _load_table(conn: psycopg.Connection, workdir: Path, entry: TableEntry) -> None:
    try:
        with conn.cursor() as cur:
            copy_rows(cur, workdir, entry, sql.Identifier(entry.schema, entry.name))
    except psycopg.Error as error:
        raise LoadError(f"loading {entry.table} from {entry.path} failed: "
                        f"{str(error).strip()}") from None


def load_archive(conn: psycopg.Connection, workdir: Path, manifest: Manifest, *,
                 roles: list[Role] | tuple[Role, ...],
                 no_owner: bool, replace: str, progress: Progress) -> None:
    """Everything, in order, inside the caller's transaction on `conn`: `replace` (dropping
    what --force replaces), the missing roles, the schema, every table, the sequence positions,
    then indexes, constraints and the rest of the schema."""
    started = time.monotonic()

    def step(text: str) -> None:
        progress(f"  {text}  ({time.monotonic() - started:.1f} s)")

    try:
        for entry in manifest.tables:
            checked_path(entry)
    except ManifestError as error:
        raise LoadError(str(error)) from None
    if replace:
        conn.execute(replace)
    if roles:
        step("roles named in the schema (created only where missing)")
        conn.execute(create_missing_roles_sql(roles))
    step("schema: tables, types, functions, sequences"
         + ("" if no_owner else ", owners and privileges"))
    _run_sql_file(conn, workdir, layout.SCHEMA_PRE_DATA, no_owner=no_owner, allowed=_schema_sql)
    for windowed, title in ((False, "critical tables"), (True, "transactions")):
        step(title)
        for entry in manifest.tables:
            if entry.windowed == windowed:
                _load_table(conn, workdir, entry)
                step(f"  {entry.table}: {entry.rows} rows")
    step("sequence positions, indexes, constraints and foreign keys")
    _run_sql_file(conn, workdir, layout.SEQUENCES, no_owner=no_owner,
                  allowed=lambda text: text.startswith("SET ") or bool(_SETVAL.match(text)))
    _run_sql_file(conn, workdir, layout.SCHEMA_POST_DATA, no_owner=no_owner, allowed=_schema_sql)
    step("restore complete")
