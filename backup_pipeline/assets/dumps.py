"""Critical tables: every row, as plain SQL that `psql` loads (`COPY ... FROM stdin`).

The format is the data section pg_dump itself writes, produced by COPY inside the run's snapshot:
one step for all tables instead of one pg_dump process per table, streamed from the server to the
file without holding a table in memory.
"""


from pathlib import Path

import dagster as dg
from psycopg import sql

from backup_pipeline import layout
from backup_pipeline.data_files import sql_data_header, sql_data_trailer
from backup_pipeline.export_plan import TableInfo
from backup_pipeline.files import open_private
from backup_pipeline.pg import HashingWriter
from backup_pipeline.resources.postgres import Snapshot
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
    with open_private(target) as handle:
        writer = HashingWriter(handle, gzip_level=layout.GZIP_LEVEL)
        writer.write(sql_data_header(table.schema, table.name, table.columns).encode())
        rows = snapshot.copy_to(select, writer)
        writer.write(sql_data_trailer(rows).encode())
        writer.finish()
    return rows, writer
