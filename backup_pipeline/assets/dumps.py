"""Critical tables: every row, as plain SQL that `psql` loads (`COPY ... FROM stdin`).

The format is the data section pg_dump itself writes, produced by COPY inside the run's snapshot:
one step for all tables instead of one pg_dump process per table, streamed from the server to the
file without holding a table in memory.
"""


from pathlib import Path

import dagster as dg
from psycopg import sql

from backup_pipeline import layout
from backup_pipeline.export_plan import TableInfo
from backup_pipeline.resources.postgres import HashingWriter, Snapshot
from backup_pipeline.settings import Settings

DUMPS_PREFIX = "dumps"


def dump_key(table: str) -> dg.AssetKey:
    return dg.AssetKey([DUMPS_PREFIX, layout.table_file_stem(table)])


def dump_specs(settings: Settings) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            dump_key(table),
            description=f"Every row of {table}, as {layout.dump_path(table)} in the archive.",
            group_name="database",
            kinds={"postgres", "sql"},
            metadata={"table": table, "archive_path": layout.dump_path(table)},
        )
        for table in settings.critical_tables
    ]


def write_table_dump(snapshot: Snapshot, table: TableInfo, select: sql.Composable | str,
                     target: Path) -> tuple[int, HashingWriter]:
    """Write `target`, gzip-compressed, as a self-contained SQL data file of `select` (the
    plan's critical_query); the trailer records the row count. Returns the rows and the writer
    (its size and SHA-256 are the plain file's)."""
    columns = ", ".join(quote_identifier(c) for c in table.columns)
    header = (
        f"--\n-- backup_pipeline: data of table {table.qualified}\n--\n\n"
        "SET client_encoding = 'UTF8';\n"
        "SET standard_conforming_strings = on;\n\n"
        f"COPY {quote_identifier(table.schema)}.{quote_identifier(table.name)} ({columns}) "
        "FROM stdin;\n"
    )
    with target.open("wb") as handle:
        writer = HashingWriter(handle, gzip_level=layout.GZIP_LEVEL)
        writer.write(header.encode())
        rows = snapshot.copy_to(select, writer)
        writer.write(f"\\.\n\n{layout.END_OF_DATA}{rows} rows\n".encode())
        writer.finish()
    return rows, writer


def quote_identifier(identifier: str) -> str:
    """An SQL identifier, always double-quoted (psql meta-commands need it spelled out)."""
    return '"' + identifier.replace('"', '""') + '"'
