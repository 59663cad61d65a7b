"""Transaction tables: the last BACKUP_TRANSACTION_MONTHS months, as CSV with a header.

The window is cut at the snapshot's own clock (`now()` inside the snapshot), so the cut-off in the
manifest is exactly the one applied. Rows older than the window that a backed-up row references
are kept too (see export_plan), or the restored foreign keys could not be valid.
"""


from pathlib import Path

import dagster as dg
from psycopg import sql

from backup_pipeline import layout
from backup_pipeline.data_files import EndMarkerScan, sql_data_header, sql_data_trailer
from backup_pipeline.export_plan import TableInfo
from backup_pipeline.files import open_private
from backup_pipeline.pg import HashingWriter
from backup_pipeline.resources.postgres import Snapshot
from backup_pipeline.settings import Settings

TRANSACTIONS_PREFIX = "transactions"


def transaction_key(table: str) -> dg.AssetKey:
    return dg.AssetKey([TRANSACTIONS_PREFIX, layout.table_file_stem(table)])


def transaction_specs(settings: Settings) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            transaction_key(entry.name),
            description=(
                f"Rows of {entry.name} from the last {settings.transaction_months} months "
                f"(by {entry.timestamp_column}), as {layout.csv_path(entry.name)} in the archive."
            ),
            group_name="database",
            kinds={"postgres", "csv"},
            metadata={
                "table": entry.name,
                "timestamp_column": entry.timestamp_column,
                "archive_path": layout.csv_path(entry.name),
            },
        )
        for entry in settings.transaction_tables
    ]


def window_cutoff(snapshot: Snapshot, months: int):
    """The start of the window, by the snapshot's clock."""
    row = snapshot.connection.execute(
        "SELECT now() - make_interval(months => %s)", (months,)
    ).fetchone()
    assert row is not None
    return row[0]


def write_window_part(snapshot: Snapshot, select: sql.Composable | str, target: Path, *,
                      header: bool, gzip_level: int | None = None
                      ) -> tuple[int, HashingWriter, bool]:
    """One part of a window as CSV (the first with the header, compressed with `gzip_level`);
    returns rows, the writer (whose hash the export goes on with over the later parts), and
    whether a line of it is a lone `\\.` (see data_files.EndMarkerScan)."""
    with open_private(target) as handle:
        writer = HashingWriter(handle, gzip_level=gzip_level)
        scan = EndMarkerScan(writer, at_line_start=not header)
        rows = snapshot.copy_to(select, scan, csv=True, header=header)
        writer.finish()
    return rows, writer, scan.found


def write_window_for_psql(snapshot: Snapshot, table: TableInfo, selects: list[str],
                          target: Path) -> tuple[int, HashingWriter]:
    """The window's rows again, in COPY's text format with the critical tables' header and
    trailer, for psql's `\\ir` in the plain-shell procedure: same snapshot, same queries."""
    with open_private(target) as handle:
        writer = HashingWriter(handle)
        writer.write(sql_data_header(table.schema, table.name, table.columns).encode())
        rows = sum(snapshot.copy_to(select, writer) for select in selects)
        writer.write(sql_data_trailer(rows).encode())
    return rows, writer
