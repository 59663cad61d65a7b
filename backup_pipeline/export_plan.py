"""What to read from the database: the tables, their columns, the window, and the rows it must keep.

The window alone is not enough for a restorable archive: a credit transaction from last week may
point at a purchase from last year. Restoring it without that purchase would leave a foreign key
that cannot be validated, so the plan widens each windowed table by the rows that backed-up rows
reference (following chains across the windowed tables), and refuses up front a foreign key from a
backed-up table into a table that is not backed up at all, naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from backup_pipeline.settings import Settings


class ExportPlanError(ValueError):
    """The database does not match the settings (a missing table or column, a dangling key)."""


@dataclass(frozen=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    relkind: str
    columns: tuple[str, ...]
    size_bytes: int
    estimated_rows: float

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def column_list(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)

    @property
    def source(self) -> sql.Composable:
        """FROM target: ONLY for plain tables (inheritance children are their own tables)."""
        only = sql.SQL("") if self.relkind == "p" else sql.SQL("ONLY ")
        return only + self.identifier


@dataclass(frozen=True)
class ForeignKey:
    name: str
    source: int
    source_columns: tuple[str, ...]
    target: int
    target_columns: tuple[str, ...]


@dataclass(frozen=True)
class WindowedTable:
    table: TableInfo
    timestamp_column: str


@dataclass
class ExportPlan:
    critical: list[TableInfo]
    windowed: list[WindowedTable]
    cutoff: datetime
    months: int
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    # The planner's estimate of each window's rows, by table oid: enough to order the reads and
    # check the disk. The export counts them exactly while the reads run (`window_count`).
    estimated_in_window: dict[int, float] = field(default_factory=dict)

    def window_share(self, windowed: WindowedTable) -> float:
        """The estimated share of the table's rows (and bytes) that are in the window."""
        table = windowed.table
        return min(1.0, self.estimated_in_window[table.oid] / table.estimated_rows)

    def estimated_bytes(self) -> int:
        """Critical tables whole, windowed tables by the share of their rows in the window."""
        total = sum(t.size_bytes for t in self.critical)
        for windowed in self.windowed:
            total += int(windowed.table.size_bytes * self.window_share(windowed))
        return total

    def critical_query(self, table: TableInfo) -> sql.Composable:
        """Every row of a critical table (COPY text format makes pg_dump's data section)."""
        return sql.SQL("SELECT {cols} FROM {src}").format(cols=table.column_list, src=table.source)

    def window_query(self, windowed: WindowedTable) -> sql.Composable:
        """The window plus every row a backed-up row references (written out as CSV)."""
        return sql.SQL(" UNION ALL ").join(self.window_parts(windowed))

    def window_parts(self, windowed: WindowedTable) -> list[sql.Composable]:
        """The window's rows, then (when backed-up rows reference older ones) the older rows.

        Two index-friendly halves, so the cost follows the backed-up rows and not the table:
        the window by its timestamp index, then the older rows that are referenced, looked up
        by their key (see `_older_rows`). The export reads them in separate sessions at once and
        writes the second after the first, in the same file.
        """
        table = windowed.table
        parts: list[sql.Composable] = [
            sql.SQL("SELECT {cols} FROM {src} WHERE {window}").format(
                cols=table.column_list, src=table.source, window=self._in_window(windowed))]
        older = self._older_rows(windowed, len(self.windowed), list(table.columns))
        if older is not None:
            parts.append(older)
        return parts

    def window_estimate(self, windowed: WindowedTable) -> sql.Composable:
        """The planner's plan for the window's rows: its top "Plan Rows" is the estimate."""
        return sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {src} WHERE {window}").format(
            src=windowed.table.source, window=self._in_window(windowed))

    def window_count(self, windowed: WindowedTable) -> sql.Composable:
        return sql.SQL("SELECT count(*) FROM {src} WHERE {window}").format(
            src=windowed.table.source, window=self._in_window(windowed))

    def _in_window(self, windowed: WindowedTable) -> sql.Composable:
        return sql.SQL("{ts} >= {cutoff}").format(
            ts=sql.Identifier(windowed.timestamp_column), cutoff=sql.Literal(self.cutoff))

    def _older_rows(self, windowed: WindowedTable, depth: int, columns: list[str],
                    not_null: bool = False) -> sql.Composable | None:
        """SELECT `columns` of the rows before the window that backed-up rows reference, or None.

        For a one-column key the keys are gathered into one array and the rows fetched with
        `key = ANY(ARRAY(...))`: the server sorts and deduplicates the array once and walks the
        key index in order, so the cost follows the rows backed up, not the older data that is
        not. (Hashing the table read all of it; a LATERAL look-up per distinct key, the earlier
        form, took 6.2 s where this takes 5.3 s warm, 12.8 where this takes 8.9 s with a cold
        cache, for the purchases of a 5 GB database.) The array costs the server 8 bytes
        per referenced key of a bigint. Keys of several columns are looked up one by one in
        ascending order (a LATERAL subquery with LIMIT 1). With `not_null`, rows with a NULL in
        `columns` are left out (they reference nothing).
        """
        by_key = self._referenced_keys(windowed, depth)
        if not by_key:
            return None
        table = windowed.table
        outer = sql.SQL(", ").join(sql.Identifier("t", c) for c in columns)
        filled = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", c)) for c in columns)
        if len(by_key) > 1 or len(next(iter(by_key))) == 1:
            # Foreign keys into different unique columns: one row may be referenced by several;
            # one query with OR keeps each row once.
            query = sql.SQL("SELECT {outer} FROM {src} t WHERE ({window}) IS NOT TRUE AND ({any})"
                            ).format(outer=outer, src=table.source,
                                     window=self._in_window(windowed), any=sql.SQL(" OR ").join(
                                         self._in_keys(key, values)
                                         for key, values in by_key.items()))
            return query + (sql.SQL(" AND ") + filled if not_null else sql.SQL(""))
        [(key, values)] = by_key.items()
        names = [sql.Identifier(f"backup_key_{i}") for i in range(len(key))]
        query = sql.SQL(
            "SELECT {outer} FROM (SELECT DISTINCT {names} FROM ({values}) v({names}) "
            "ORDER BY {names}) keys CROSS JOIN LATERAL (SELECT * FROM {src} r "
            "WHERE ({row_key}) = ({wanted}) AND ({window}) IS NOT TRUE LIMIT 1) t"
        ).format(
            outer=outer, names=sql.SQL(", ").join(names),
            values=sql.SQL(" UNION ALL ").join(values), src=table.source,
            row_key=sql.SQL(", ").join(sql.Identifier("r", c) for c in key),
            wanted=sql.SQL(", ").join(sql.SQL("keys.{}").format(n) for n in names),
            window=self._in_window(windowed),
        )
        return query + (sql.SQL(" WHERE ") + filled if not_null else sql.SQL(""))

    @staticmethod
    def _in_keys(key: tuple[str, ...], values: list[sql.Composable]) -> sql.Composable:
        """`t.key = ANY(ARRAY(...))` for one column (an index scan over the sorted keys, or a
        BitmapOr of several), `(a, b) IN (...)` for a key of several columns."""
        union = sql.SQL(" UNION ALL ").join(values)
        if len(key) == 1:
            return sql.SQL("{key} = ANY(ARRAY({values}))").format(
                key=sql.Identifier("t", key[0]), values=union)
        return sql.SQL("({key}) IN ({values})").format(
            key=sql.SQL(", ").join(sql.Identifier("t", c) for c in key), values=union)

    def _referenced_keys(self, windowed: WindowedTable, depth: int
                         ) -> dict[tuple[str, ...], list[sql.Composable]]:
        """The keys backed-up rows point at in this table, by referenced columns: queries whose
        union lists them (with repeats).

        Keys other tables point at come from their backed-up rows (following chains across
        tables to `depth`). Keys the table points at itself (a refund of an older purchase, a
        parent row) are followed to the end of the chain with a recursive query.
        """
        if depth <= 0:
            return {}
        table = windowed.table
        sources = {t.oid: (t, None) for t in self.critical}
        sources.update({w.table.oid: (w.table, w) for w in self.windowed})
        into = [fk for fk in self.foreign_keys
                if fk.target == table.oid and fk.source in sources]
        own = [fk for fk in into if fk.source == table.oid]
        by_key: dict[tuple[str, ...], list[sql.Composable]] = {}
        for fk in into:
            if fk not in own:
                by_key.setdefault(fk.target_columns, []).append(
                    self._fk_values(fk, *sources[fk.source], depth))
        keys = {fk.target_columns for fk in own}
        if own and len(keys) == 1 and len(next(iter(keys))) == 1 \
                and set(by_key) <= keys and all(len(fk.source_columns) == 1 for fk in own):
            key = next(iter(keys))
            by_key[key] = [self._self_closure(windowed, own, by_key.get(key, []))]
        else:
            for fk in own:
                by_key.setdefault(fk.target_columns, []).append(
                    self._fk_values(fk, table, windowed, depth))
        return by_key

    def _self_closure(self, windowed: WindowedTable, own: list[ForeignKey],
                      seeds: list[sql.Composable]) -> sql.Composable:
        """Every key reachable through the table's own foreign keys from the window's rows and
        from the keys other tables need: a chain of any length, each row looked up by its key."""
        table = windowed.table
        key = sql.Identifier(own[0].target_columns[0])
        starts = [*seeds, *(
            sql.SQL("SELECT {fk} FROM {src} WHERE {fk} IS NOT NULL AND {window}").format(
                fk=sql.Identifier(fk.source_columns[0]), src=table.source,
                window=self._in_window(windowed))
            for fk in own)]
        return sql.SQL(
            "WITH RECURSIVE needed(k) AS ({starts} UNION SELECT link.k FROM {src} t "
            "JOIN needed ON t.{key} = needed.k CROSS JOIN LATERAL (VALUES {links}) link(k) "
            "WHERE link.k IS NOT NULL) SELECT k FROM needed"
        ).format(starts=sql.SQL(" UNION ").join(starts), src=table.source, key=key,
                 links=sql.SQL(", ").join(
                     sql.SQL("(t.{})").format(sql.Identifier(fk.source_columns[0]))
                     for fk in own))

    def _fk_values(self, fk: ForeignKey, source: TableInfo, windowed: WindowedTable | None,
                   depth: int) -> sql.Composable:
        """The values of `fk` in the rows of `source` that the backup holds."""
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in fk.source_columns)
        not_null = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in fk.source_columns)
        if windowed is None:
            return sql.SQL("SELECT {cols} FROM {src} WHERE {nn}").format(
                cols=cols, src=source.source, nn=not_null)
        query = sql.SQL("SELECT {cols} FROM {src} WHERE {nn} AND {window}").format(
            cols=cols, src=source.source, nn=not_null, window=self._in_window(windowed))
        older = self._older_rows(windowed, depth - 1, list(fk.source_columns), not_null=True)
        if older is not None:
            query = query + sql.SQL(" UNION ALL ") + older
        return query


_TABLE_QUERY = """
SELECT c.oid::int, n.nspname, c.relname, c.relkind,
       (CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_table_size(relid)), 0)
                                        FROM pg_partition_tree(c.oid))
             ELSE pg_table_size(c.oid) END)::bigint,
       greatest(c.reltuples, 1)::float8,
       array(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' ORDER BY a.attnum)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')
"""

_FOREIGN_KEY_QUERY = """
SELECT con.conname, con.conrelid::int,
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, i)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.i),
       con.confrelid::int,
       array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, i)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.i),
       con.conrelid::regclass::text, con.confrelid::regclass::text
FROM pg_constraint con
WHERE con.contype = 'f'
ORDER BY con.conname
"""

_TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


def _resolve(conn: psycopg.Connection, name: str, variable: str) -> TableInfo:
    row = conn.execute(_TABLE_QUERY, (_regclass_text(name),)).fetchone()
    if row is None:
        raise ExportPlanError(
            f"{variable} lists {name!r}, but there is no such table in the database: check the "
            f"name (schema.table for a schema other than public) or remove it from {variable}."
        )
    oid, schema, relname, relkind, size, estimated_rows, columns = row
    return TableInfo(oid, schema, relname, relkind, tuple(columns), size, estimated_rows)


def _regclass_text(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


def _check_timestamp_column(conn: psycopg.Connection, table: TableInfo, column: str) -> None:
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (table.oid, column),
    ).fetchone()
    if row is None or row[0] not in _TIMESTAMP_TYPES:
        found = f"it is {row[0]}" if row else "it has no such column"
        raise ExportPlanError(
            f"BACKUP_TRANSACTION_TABLES selects {table.qualified} by {column!r}, but {found}: "
            f"name its timestamp column as 'table:column', e.g. '{table.name}:created_at'."
        )


def build_plan(conn: psycopg.Connection, settings: Settings, cutoff: datetime) -> ExportPlan:
    """Resolve the configured tables inside the snapshot and check the plan can restore."""
    critical = [_resolve(conn, t, "BACKUP_TABLES") for t in settings.critical_tables]
    windowed = []
    for entry in settings.transaction_tables:
        table = _resolve(conn, entry.name, "BACKUP_TRANSACTION_TABLES")
        _check_timestamp_column(conn, table, entry.timestamp_column)
        windowed.append(WindowedTable(table, entry.timestamp_column))
    backed_up = {t.oid for t in critical} | {w.table.oid for w in windowed}
    foreign_keys = []
    for name, src, src_cols, dst, dst_cols, src_name, dst_name in conn.execute(_FOREIGN_KEY_QUERY):
        if src in backed_up and dst not in backed_up:
            raise ExportPlanError(
                f"{src_name} is backed up but its foreign key {name} references {dst_name}, which "
                f"is not: the restored {src_name} could not keep that constraint. Add {dst_name} "
                f"to BACKUP_TABLES (or BACKUP_TRANSACTION_TABLES), or stop backing up {src_name}."
            )
        foreign_keys.append(ForeignKey(name, src, tuple(src_cols), dst, tuple(dst_cols)))
    plan = ExportPlan(critical, windowed, cutoff, settings.transaction_months, foreign_keys)
    for entry in windowed:
        explained = conn.execute(plan.window_estimate(entry)).fetchone()
        plan.estimated_in_window[entry.table.oid] = float(explained[0][0]["Plan"]["Plan Rows"])
    return plan
