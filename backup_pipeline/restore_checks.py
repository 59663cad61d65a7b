"""What a restored database is compared with: the archive's content, not its counts.

Each restored table is read back with the export's own queries (`export_plan`) and the bytes are
hashed: they must be exactly the file whose size and SHA-256 the manifest holds. A table loaded
by COPY into a fresh table keeps the file's row order, and a sequential scan returns it, so the
window of a plain table comes back in the file's order; a partitioned table's rows, and a
window's older rows, were written sorted in the table's total order (`TableShape.order`) and
are read back sorted the same way. A row changed, dropped, added or duplicated by the restore
changes the digest.

Then every constraint must be valid (those the source itself held NOT VALID excepted), and
every sequence must hand out a value past the rows its column already has.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg
from psycopg import sql

from backup_pipeline.data_files import sql_data_header, sql_data_trailer
from backup_pipeline.export_plan import TableShape, not_valid_constraints
from backup_pipeline.manifest import Manifest, TableEntry
from backup_pipeline.pg import HashingWriter, find_pg_binary, psql_copy_out, reader_env

# The restored side is read by sequential scans only (the order the rows were loaded in) and
# from the first page (no scan joins another one half way through the table).
_READ_BACK_SETTINGS = {
    "synchronize_seqscans": "off",
    "enable_indexscan": "off",
    "enable_indexonlyscan": "off",
    "enable_bitmapscan": "off",
    "enable_tidscan": "off",
}


@dataclass(frozen=True)
class ContentResult:
    table: str
    rows: int
    problem: str | None


def shape_of(entry: TableEntry) -> TableShape:
    """The manifest's description of a table, as the export's queries take it."""
    return TableShape(entry.schema, entry.name, entry.partitioned, entry.columns,
                      entry.order or ())


def _read_back(entry: TableEntry, cutoff: datetime, run) -> tuple[int, HashingWriter]:
    """The table's file as the export would write it from the restored database."""
    shape = shape_of(entry)
    writer = HashingWriter(None)
    if not entry.windowed:
        writer.write(sql_data_header(shape.schema, shape.name, shape.columns).encode())
        rows = run(shape.all_rows(), writer, csv=False, header=False)
        writer.write(sql_data_trailer(rows).encode())
        return rows, writer
    column = entry.timestamp_column
    rows = run(shape.window_rows(column, cutoff), writer, csv=True, header=True)
    rows += run(shape.rows_before_window(column, cutoff), writer, csv=True, header=False)
    return rows, writer


# Tables are read back by this many psql sessions at once: the restored server's CPU is what
# they share (as the export's readers do).
READ_BACK_WORKERS = max(2, min(4, os.cpu_count() or 1))


def compare_content(env: dict[str, str], manifest: Manifest, settings: dict[str, str]
                    ) -> list[ContentResult]:
    """Each table of the manifest read back (through psql, with `env`: the target and its
    password in PGPASSWORD) against its file's size and SHA-256, several tables at once.

    `settings` are the export's reader settings. Archives made before format 2 lack what the
    read-back needs: their tables get no digest comparison (the row counts are still compared).
    """
    files = {f.path: f for f in manifest.files}
    cutoff = datetime.fromisoformat(manifest.window.cutoff)
    psql = find_pg_binary("psql")
    session_env = {**env, **reader_env({**settings, **_READ_BACK_SETTINGS})}

    def run(query: sql.Composable, writer: HashingWriter, *, csv: bool, header: bool) -> int:
        # Rendered without a connection: names and the cut-off only, safe from any thread.
        return psql_copy_out(psql, session_env, query.as_string(None), writer, csv=csv,
                             header=header, where="the restored database")

    def compare(entry: TableEntry) -> ContentResult:
        if entry.order is None:
            return ContentResult(entry.table, -1, None)
        expected = files.get(entry.path)
        if expected is None:
            return ContentResult(entry.table, -1, f"the manifest lists no file {entry.path}")
        try:
            rows, writer = _read_back(entry, cutoff, run)
        except RuntimeError as error:
            return ContentResult(entry.table, -1,
                                 f"it could not be read back to compare: {error}")
        problem = None
        if (writer.size, writer.sha256) != (expected.size, expected.sha256):
            problem = (f"its content differs from {entry.path} in the archive (read back "
                       f"{writer.size} bytes, SHA-256 {writer.sha256[:16]}...; the archive "
                       f"holds {expected.size} bytes, {expected.sha256[:16]}...)")
        return ContentResult(entry.table, rows, problem)

    with ThreadPoolExecutor(max_workers=READ_BACK_WORKERS) as pool:
        return list(pool.map(compare, manifest.tables))


def invalid_constraints(conn: psycopg.Connection, not_valid_in_source: Collection[str]
                        ) -> list[str]:
    """Check and foreign-key constraints PostgreSQL does not hold valid, but for those the
    source database itself held NOT VALID (they are restored as they were)."""
    allowed = set(not_valid_in_source)
    return [name for name in not_valid_constraints(conn) if name not in allowed]


# Sequences that feed a column: its default calls nextval() on them, or it is an identity
# column. (A sequence a column merely owns, while its default calls another one, feeds nothing.)
# Partitions are left out: their parent's column holds their rows.
_FEEDING_SEQUENCES_QUERY = """
WITH feeds(seq, rel, attnum) AS (
    SELECT d.refobjid, ad.adrelid, ad.adnum FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                    AND d.refclassid = 'pg_class'::regclass
    UNION
    SELECT d.objid, d.refobjid, d.refobjsubid FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype = 'i' AND d.refobjsubid > 0
)
SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname),
       a.attname, seq.seqincrement
FROM feeds f
JOIN pg_class s ON s.oid = f.seq AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence seq ON seq.seqrelid = s.oid
JOIN pg_class t ON t.oid = f.rel AND t.relkind IN ('r', 'p') AND NOT t.relispartition
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = f.attnum
ORDER BY 1, 2, 3
"""


def sequences_behind(conn: psycopg.Connection) -> list[str]:
    """Sequences whose next value is already taken by a row of their column: the application's
    next insert would fail on a duplicate key."""
    behind = []
    for sequence, table, column, increment in conn.execute(_FEEDING_SEQUENCES_QUERY).fetchall():
        last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.SQL(sequence))).fetchone()
        extreme = "max" if increment > 0 else "min"
        value = conn.execute(sql.SQL("SELECT {}({}) FROM {}").format(
            sql.SQL(extreme), sql.Identifier(column), sql.SQL(table))).fetchone()[0]
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            continue  # a sequence feeding a text column (e.g. 'INV-' || nextval(...))
        following = last + increment if called else last
        if value is not None and (following <= value if increment > 0 else following >= value):
            behind.append(f"{sequence} would give {following} next, but {table}.{column} "
                          f"already holds {value}")
    return behind
