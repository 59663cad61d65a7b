"""Transaction tables: the last BACKUP_TRANSACTION_MONTHS months, as CSV with a header.

The window is cut at the snapshot's own clock (`now()` inside the snapshot), so the cut-off in the
manifest is exactly the one applied. Rows older than the window that a backed-up row references
are kept too (see export_plan), or the restored foreign keys could not be valid.
"""


from pathlib import Path

import dagster as dg
from psycopg import sql

from backup_pipeline import layout
from backup_pipeline.resources.postgres import HashingWriter, Snapshot
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
                      header: bool, gzip_level: int | None = None) -> tuple[int, HashingWriter]:
    """One part of a window as CSV (the first with the header, compressed with `gzip_level`);
    returns rows and the writer, whose hash the export goes on with over the later parts."""
    with target.open("wb") as handle:
        writer = HashingWriter(handle, gzip_level=gzip_level)
        rows = snapshot.copy_to(select, writer, csv=True, header=header)
        writer.finish()
    return rows, writer
