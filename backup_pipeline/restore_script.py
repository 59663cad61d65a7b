"""The psql script that restores an archive, built from the manifest's table list.

The archive carries it as `database/_restore.psql` for the plain-shell procedure of
BACKUP_INFO.txt. `backup-pipeline restore` (and so the restore proof of every run) never runs
it: it performs the same steps itself from the manifest (restore_load.py). Every path here is
the one the layout gives for that table, and every name is quoted here.
"""

from __future__ import annotations

from pathlib import Path

from backup_pipeline import layout
from backup_pipeline.data_files import quote_identifier
from backup_pipeline.manifest import ManifestError, TableEntry

__all__ = ["ManifestError", "checked_path", "count_query", "restore_script"]


def checked_path(table: TableEntry, psql_copy: bool = False) -> str:
    """The table's file (`psql_copy`: a window's copy for psql), which must be where the
    layout keeps it: nothing else is read."""
    given = table.psql_data_path if psql_copy else table.path
    expected = (layout.csv_path(table.table) if table.windowed and not psql_copy
                else layout.dump_path(table.table))
    if given != expected or "'" in expected or "\n" in table.table:
        raise ManifestError(f"the manifest puts table {table.table!r} at {given!r}, "
                            f"not where this layout keeps it: refusing the archive")
    return expected


def restore_script(tables: tuple[TableEntry, ...], *, roles: bool = True) -> str:
    """Everything, in an order that works: the roles named in the schema (created only where
    missing), the schema, the data, then sequence positions, indexes and constraints."""
    steps = 5 if roles else 4
    step = iter(range(1, steps + 1))
    lines = [
        "-- backup_pipeline restore script. From the folder the archive was extracted into:",
        '--   psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$RESTORE_DB" '
        "-f database/_restore.psql",
        "\\set ON_ERROR_STOP on",
    ]
    if roles:
        lines += [f"\\echo '{next(step)}/{steps} roles named in the schema (created only where "
                  "missing)'", f"\\ir {Path(layout.ROLES).name}"]
    lines += [f"\\echo '{next(step)}/{steps} schema: tables, types, functions, sequences'",
              f"\\ir {Path(layout.SCHEMA_PRE_DATA).name}",
              f"\\echo '{next(step)}/{steps} critical tables'"]
    for table in tables:
        if not table.windowed:
            lines += [f"\\echo '    {table.table}'", f"\\ir {Path(checked_path(table)).name}"]
    lines.append(f"\\echo '{next(step)}/{steps} transactions'")
    for table in tables:
        if table.windowed and table.psql_data_path:
            lines += [f"\\echo '    {table.table}'",
                      f"\\ir {Path(checked_path(table, psql_copy=True)).name}"]
        elif table.windowed:
            path = checked_path(table)
            columns = ", ".join(quote_identifier(c) for c in table.columns)
            lines += [
                f"\\echo '    {table.table}'",
                f"\\copy {quote_identifier(table.schema, table.name)} ({columns}) "
                f"FROM '{path}' WITH (FORMAT csv, HEADER)",
            ]
    lines += [
        f"\\echo '{next(step)}/{steps} sequence positions, indexes, constraints and foreign keys'",
        f"\\ir {Path(layout.SEQUENCES).name}",
        f"\\ir {Path(layout.SCHEMA_POST_DATA).name}",
        "\\echo 'restore complete'",
    ]
    return "\n".join(lines) + "\n"


def _sql_name(qualified: str) -> str:
    """A table name for the shell-quoted count query: plain when it can be, quoted otherwise."""
    parts = qualified.split(".")
    return ".".join(p if p.islower() and p.isidentifier() else f'\\"{p}\\"' for p in parts)


def count_query(tables: tuple[TableEntry, ...]) -> str:
    """Step 5 of BACKUP_INFO.txt: every table's row count, to compare with the list."""
    return " UNION ALL ".join(
        f"SELECT '{t.table}' AS table_name, count(*) AS rows FROM {_sql_name(t.table)}"
        for t in tables)
