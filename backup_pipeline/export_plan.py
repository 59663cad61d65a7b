"""What to read from the database: the tables, their columns, the window, and the rows it must keep.

The window alone is not enough for a restorable archive: a credit transaction from last week may
point at a purchase from last year. Restoring it without that purchase would leave a foreign key
that cannot be validated, so the plan widens each windowed table by the rows that backed-up rows
reference (following chains across the windowed tables), and refuses up front a foreign key from a
backed-up table into a table that is not backed up at all, naming the fix.

Foreign keys come from the whole catalogue, whatever relation they are declared on: a key
declared on a partition (as Pagila declares its payments' keys) or on a partitioned parent, or
one referencing a partition, counts as a key of the backed-up table that holds the partition's
rows. Inheritance children are tables of their own (read with ONLY), so a parent backed up
without its children is refused, as is a partition backed up beside its own parent (its rows
would be in the archive twice).

The plan also refuses what would make an archive silently short: a table whose row-level
security policies apply to POSTGRES_USER (the export reads with `row_security = off`, as pg_dump
does, and names the fix), and a column that references large objects (their contents live in
pg_largeobject, not in the rows: the archive would restore the oids and none of the contents).

Every query here renders the same text for the export and for the restore proof, which reads
the restored database with the same queries and must find the same bytes: the older rows a
window keeps, and every row of a partitioned table, are written in a total order
(`TableShape.order`), so that they can be read back in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from backup_pipeline.data_files import quote_identifier
from backup_pipeline.settings import Settings


class ExportPlanError(ValueError):
    """The database does not match the settings (a missing table or column, a dangling key)."""


@dataclass(frozen=True)
class OrderColumn:
    """One column of a table's total order. Text is compared byte by byte (COLLATE "C"): a
    restored database may have another default collation."""

    name: str
    collatable: bool


@dataclass(frozen=True)
class TableShape:
    """What a table's queries need, the same on the source and on a restored database: the
    export writes each table's file with them, the restore proof reads it back with them.

    `order` is a total order of the rows: a unique key whose columns are never NULL, or () for
    the backed-up columns as one text (rows equal in that text are equal in the file too). Rows
    loaded by COPY into a plain table come back in the file's order, but not in a partitioned
    one (each partition reuses free space on its earlier pages), so a partitioned table's rows,
    and a window's older rows (fetched by key, in no useful order), are written in it.
    """

    schema: str
    name: str
    partitioned: bool
    columns: tuple[str, ...]
    order: tuple[OrderColumn, ...]

    @property
    def source(self) -> sql.Composable:
        return table_source(self.schema, self.name, self.partitioned)

    def order_by(self, alias: str) -> sql.Composable:
        if not self.order:
            return sql.SQL("ORDER BY ROW({})::text COLLATE \"C\"").format(
                column_list(self.columns, alias))
        return sql.SQL("ORDER BY ") + sql.SQL(", ").join(
            sql.SQL("{} COLLATE \"C\"" if c.collatable else "{}").format(
                sql.Identifier(alias, c.name)) for c in self.order)

    def _ordered(self) -> sql.Composable:
        return self.order_by("o") if self.partitioned else sql.SQL("")

    def all_rows(self) -> sql.Composable:
        """Every row of a table backed up whole (COPY text format makes pg_dump's data
        section)."""
        return sql.SQL("SELECT {cols} FROM {src} o {order}").format(
            cols=column_list(self.columns, "o"), src=self.source, order=self._ordered())

    def window_rows(self, timestamp_column: str, cutoff: datetime) -> sql.Composable:
        return sql.SQL("SELECT {cols} FROM {src} o WHERE {window} {order}").format(
            cols=column_list(self.columns, "o"), src=self.source,
            window=in_window(timestamp_column, cutoff, "o"), order=self._ordered())

    def rows_before_window(self, timestamp_column: str, cutoff: datetime) -> sql.Composable:
        """Every row outside the window, in the archive's order: in a restored database these
        are exactly the older rows the archive kept."""
        return sql.SQL("SELECT {cols} FROM {src} o WHERE ({window}) IS NOT TRUE {order}").format(
            cols=column_list(self.columns, "o"), src=self.source,
            window=in_window(timestamp_column, cutoff, "o"), order=self.order_by("o"))


@dataclass(frozen=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    relkind: str
    columns: tuple[str, ...]
    size_bytes: int
    estimated_rows: float
    order: tuple[OrderColumn, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def partitioned(self) -> bool:
        return self.relkind == "p"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def shape(self) -> TableShape:
        return TableShape(self.schema, self.name, self.partitioned, self.columns, self.order)

    @property
    def source(self) -> sql.Composable:
        return self.shape.source


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key between two backed-up tables (the tables holding the rows of the
    relations it is declared on and references). `into_partition`: it references one
    partition of the target, whose key need not be unique across the whole table."""

    name: str
    source: int
    source_columns: tuple[str, ...]
    target: int
    target_columns: tuple[str, ...]
    into_partition: bool = False


@dataclass(frozen=True)
class WindowedTable:
    table: TableInfo
    timestamp_column: str


def table_source(schema: str, name: str, partitioned: bool) -> sql.Composable:
    """FROM target: ONLY for plain tables (inheritance children are their own tables), all
    partitions for a partitioned one."""
    only = sql.SQL("") if partitioned else sql.SQL("ONLY ")
    return only + sql.Identifier(schema, name)


def column_list(columns: tuple[str, ...] | list[str], alias: str | None = None
                ) -> sql.Composable:
    names = (sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in columns)
    return sql.SQL(", ").join(names)


def in_window(timestamp_column: str, cutoff: datetime, alias: str | None = None
              ) -> sql.Composable:
    """The window's condition. The cut-off is a timestamptz: a `timestamp without time zone`
    column is read in the sessions' time zone (UTC) and a `date` as that day's 00:00 UTC."""
    column = sql.Identifier(alias, timestamp_column) if alias else sql.Identifier(
        timestamp_column)
    return sql.SQL("{ts} >= {cutoff}").format(ts=column, cutoff=sql.Literal(cutoff))


@dataclass
class ExportPlan:
    critical: list[TableInfo]
    windowed: list[WindowedTable]
    cutoff: datetime
    months: int
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    # Constraints the source holds NOT VALID: they stay so after a restore, and are no defect.
    not_valid_constraints: list[str] = field(default_factory=list)
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
        return table.shape.all_rows()

    def window_query(self, windowed: WindowedTable) -> sql.Composable:
        """The window plus every row a backed-up row references (written out as CSV)."""
        return sql.SQL(" UNION ALL ").join(
            sql.SQL("({})").format(part) for part in self.window_parts(windowed))

    def window_parts(self, windowed: WindowedTable) -> list[sql.Composable]:
        """The window's rows, then (when backed-up rows reference older ones) the older rows.

        Two index-friendly halves, so the cost follows the backed-up rows and not the table:
        the window by its timestamp index, then the older rows that are referenced, looked up
        by their key (see `_older_rows`) and sorted in the table's total order. The export
        reads them in separate sessions at once and writes the second after the first, in the
        same file.
        """
        table = windowed.table
        parts = [table.shape.window_rows(windowed.timestamp_column, self.cutoff)]
        older = self._older_rows(windowed, len(self.windowed), list(table.columns))
        if older is not None:
            parts.append(sql.SQL("SELECT * FROM ({older}) o {order}").format(
                older=older, order=table.shape.order_by("o")))
        return parts

    def window_estimate(self, windowed: WindowedTable) -> sql.Composable:
        """The planner's plan for the window's rows: its top "Plan Rows" is the estimate."""
        return sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {src} WHERE {window}").format(
            src=windowed.table.source, window=self._in_window(windowed))

    def window_count(self, windowed: WindowedTable) -> sql.Composable:
        return sql.SQL("SELECT count(*) FROM {src} WHERE {window}").format(
            src=windowed.table.source, window=self._in_window(windowed))

    def _in_window(self, windowed: WindowedTable) -> sql.Composable:
        return in_window(windowed.timestamp_column, self.cutoff)

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
        # A key into one partition need not be unique across the table: no LIMIT 1 then.
        into_partition = any(fk.into_partition for fk in self.foreign_keys
                             if fk.target == windowed.table.oid)
        if len(by_key) > 1 or len(next(iter(by_key))) == 1 or into_partition:
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

# Every foreign key, with the backed-up tables that hold the rows of both sides: the relation
# itself, or the nearest backed-up partitioned parent of a partition (pg_partition_ancestors
# lists a partition first, then its parents; it lists nothing for a table outside any partition
# tree). The copies PostgreSQL makes of a parent's key on each partition (and, for a key into a
# partitioned table, one per referenced partition) are listed too: when only a partition is
# backed up, its copy is the key that matters; otherwise they map to the same tables as the
# parent's key, and `_foreign_keys` keeps one.
_HOLDER = """(SELECT r.oid::int FROM (SELECT {rel}::oid AS oid, 0 AS depth UNION ALL
              SELECT a.relid::oid, a.depth FROM pg_partition_ancestors({rel})
                                                WITH ORDINALITY a(relid, depth)) r
        WHERE r.oid = ANY(%(backed_up)s::oid[]) ORDER BY r.depth LIMIT 1)"""
_FOREIGN_KEY_QUERY = f"""
SELECT con.conname, con.conrelid::regclass::text, con.confrelid::regclass::text,
       con.confrelid::int, (SELECT relispartition FROM pg_class WHERE oid = con.confrelid),
       {_HOLDER.format(rel="con.conrelid")}, {_HOLDER.format(rel="con.confrelid")},
       array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, i)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.i),
       array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, i)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.i)
FROM pg_constraint con
WHERE con.contype = 'f'
ORDER BY con.conparentid <> 0, con.conname, con.oid
"""

_NESTED_QUERY = """
SELECT t.oid::regclass::text, a.relid::regclass::text
FROM pg_class t, pg_partition_ancestors(t.oid) a
WHERE t.oid = ANY(%(backed_up)s::oid[]) AND a.relid::oid <> t.oid
  AND a.relid::oid = ANY(%(backed_up)s::oid[])
ORDER BY 1
"""

_INHERITANCE_QUERY = """
SELECT i.inhparent::regclass::text, string_agg(i.inhrelid::regclass::text, ', ' ORDER BY 1)
FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relkind = 'r' AND i.inhparent = ANY(%(backed_up)s::oid[])
  AND NOT i.inhrelid = ANY(%(backed_up)s::oid[])
GROUP BY 1 ORDER BY 1
"""

_ROW_SECURITY_QUERY = """
SELECT c.oid::regclass::text, c.relforcerowsecurity, pg_get_userbyid(c.relowner) = current_user
FROM pg_class c
WHERE c.oid = ANY(%(backed_up)s::oid[]) AND row_security_active(c.oid)
ORDER BY 1
"""

# The columns of the backed-up tables that may reference large objects: of type oid or of a
# domain over it (the lo extension's `lo`, a domain over that). None when the database holds no
# large object at all, so that the common case reads no row. pg_largeobject_metadata is readable
# by every role; pg_largeobject (the contents) only by superusers and pg_read_all_data.
_OID_COLUMN_QUERY = """
WITH RECURSIVE oid_types(oid) AS (
    SELECT 'pg_catalog.oid'::regtype::oid
    UNION SELECT t.oid FROM pg_type t JOIN oid_types o ON t.typbasetype = o.oid
          WHERE t.typtype = 'd')
SELECT a.attrelid::int, a.attname
FROM pg_attribute a
WHERE a.attrelid = ANY(%(backed_up)s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
  AND a.atttypid IN (SELECT oid FROM oid_types)
  AND EXISTS (SELECT FROM pg_largeobject_metadata)
ORDER BY array_position(%(backed_up)s::oid[], a.attrelid), a.attnum
"""

# Constraints PostgreSQL holds NOT VALID: a source's are restored so; any other after a restore
# is a defect (restore_checks).
_NOT_VALID_QUERY = """
SELECT format('%I.%I.%I', n.nspname, c.relname, con.conname)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT con.convalidated AND con.contype IN ('c', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""

# The primary key, else the narrowest unique index of plain NOT NULL columns.
_ORDER_KEY_QUERY = """
SELECT array(SELECT a.attname FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY
             k(attnum, n) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.n),
       array(SELECT a.attcollation <> 0 FROM unnest(i.indkey[0:i.indnkeyatts - 1])
             WITH ORDINALITY k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.n)
FROM pg_index i
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
  AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey[0:i.indnkeyatts - 1]) k(attnum)
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE NOT a.attnotnull)
ORDER BY i.indisprimary DESC, i.indnkeyatts, i.indexrelid
"""

_TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


def not_valid_constraints(conn: psycopg.Connection) -> list[str]:
    """Check and foreign-key constraints not validated, as schema.table.constraint."""
    return [row[0] for row in conn.execute(_NOT_VALID_QUERY)]


def _resolve(conn: psycopg.Connection, name: str, variable: str) -> TableInfo:
    row = conn.execute(_TABLE_QUERY, (_regclass_text(name),)).fetchone()
    if row is None:
        raise ExportPlanError(
            f"{variable} lists {name!r}, but there is no such table in the database: check the "
            f"name (schema.table for a schema other than public) or remove it from {variable}."
        )
    oid, schema, relname, relkind, size, estimated_rows, columns = row
    return TableInfo(oid, schema, relname, relkind, tuple(columns), size, estimated_rows,
                     _total_order(conn, oid, tuple(columns)))


def _regclass_text(name: str) -> str:
    return quote_identifier(*name.split("."))


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
            f"name its timestamp, timestamptz or date column as 'table:column', e.g. "
            f"'{table.name}:created_at'."
        )


def _total_order(conn: psycopg.Connection, oid: int, columns: tuple[str, ...]
                 ) -> tuple[OrderColumn, ...]:
    for names, collatable in conn.execute(_ORDER_KEY_QUERY, (oid,)):
        if set(names) <= set(columns):
            return tuple(OrderColumn(n, c) for n, c in zip(names, collatable, strict=True))
    return ()


def _check_whole_tables(conn: psycopg.Connection, backed_up: list[int]) -> None:
    """A partition beside its parent would be in the archive twice; an inheritance parent
    without its children would come back without their rows (read with ONLY)."""
    params = {"backed_up": backed_up}
    for partition, parent in conn.execute(_NESTED_QUERY, params):
        raise ExportPlanError(
            f"{partition} is a partition of {parent}, and both are backed up: its rows would be "
            f"in the archive twice. Back up only {parent} (it holds every partition's rows)."
        )
    for parent, children in conn.execute(_INHERITANCE_QUERY, params):
        raise ExportPlanError(
            f"{parent} is backed up but its inheritance children {children} are not: a restored "
            f"{parent} would lack their rows (SELECT ... FROM {parent} includes them). Add "
            f"{children} to BACKUP_TABLES (or BACKUP_TRANSACTION_TABLES), or stop backing up "
            f"{parent}."
        )


def _check_row_security(conn: psycopg.Connection, backed_up: list[int], user: str) -> None:
    """pg_dump's rule: reading through row-level security policies would make a short archive
    whose row counts still "match", so such a table fails the run up front."""
    for table, forced, owner in conn.execute(_ROW_SECURITY_QUERY, {"backed_up": backed_up}):
        why = ("it FORCEs row-level security on its owner" if forced and owner
               else "its row-level security policies apply")
        raise ExportPlanError(
            f"{table} cannot be backed up completely: {why}, so POSTGRES_USER {user} would only "
            f"read the rows the policies let it see. Run the backup as a role that bypasses "
            f"row-level security (ALTER ROLE {user} BYPASSRLS, as a superuser, or a read-only "
            f"backup role with BYPASSRLS and pg_read_all_data: docs/BACKUP_OPERATIONS.md), or "
            f"as a superuser."
        )


def _large_objects_in(table: TableInfo, column: str) -> sql.Composable:
    """The first large object `column` references, and how many. Values that are no large
    object's (NULL, catalogue oids kept for bookkeeping) match nothing.

    One scan of the table, joined to pg_largeobject_metadata (hashed, or merged along its oid
    index), never a look-up per row: 0.15 s for 2 M rows (245 MB) against 500,000 large objects
    none of which they reference, 0.26 s when 500,000 of the rows do (warm cache).
    """
    return sql.SQL(
        "SELECT min(t.{col})::bigint, count(DISTINCT t.{col}) FROM {src} t WHERE EXISTS "
        "(SELECT FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid = t.{col})"
    ).format(col=sql.Identifier(column), src=table.source)


def _check_large_objects(conn: psycopg.Connection, critical: list[TableInfo],
                         windowed: list[WindowedTable]) -> None:
    """The export copies rows, and a large object is not in its row: restored, the row would
    keep an oid whose contents are gone, and the restore proof, comparing the rows, would pass.
    An oid column that references no large object is no reason to refuse. A windowed table is
    checked whole: only the rows the archive keeps (the window and the older rows it references)
    would cost the export's own read once more, so one whose large objects are all older than
    its window is refused too."""
    tables = {t.oid: (t, "BACKUP_TABLES") for t in critical}
    tables.update({w.table.oid: (w.table, "BACKUP_TRANSACTION_TABLES") for w in windowed})
    columns = conn.execute(_OID_COLUMN_QUERY, {"backed_up": list(tables)}).fetchall()
    for oid, column in columns:
        table, variable = tables[oid]
        first, count = conn.execute(_large_objects_in(table, column)).fetchone()
        if count:
            more = f" and {count - 1} more" if count > 1 else ""
            raise ExportPlanError(
                f"{table.qualified}.{column} holds large objects (oid {first}{more}), which this "
                f"backup does not carry: a restore would have the rows but not their contents. "
                f"Store the contents in a bytea column, or stop backing up {table.qualified} "
                f"({variable})."
            )


def _foreign_keys(conn: psycopg.Connection, backed_up: list[int]) -> list[ForeignKey]:
    """The keys between backed-up tables; a key from a backed-up table into one that is not
    fails the run, naming the fix."""
    foreign_keys = []
    for (name, declared_on, references, references_oid, into_partition, source, target,
         src_cols, dst_cols) in conn.execute(_FOREIGN_KEY_QUERY, {"backed_up": backed_up}):
        if source is None:
            continue
        if target is None:
            holder = conn.execute("SELECT %s::oid::regclass::text", (source,)).fetchone()[0]
            whose = "its" if holder == declared_on else f"its partition {declared_on}'s"
            parent = " (or its partitioned parent)" if into_partition else ""
            raise ExportPlanError(
                f"{holder} is backed up but {whose} foreign key {name} references "
                f"{references}, which is not: the restored {holder} could not keep that "
                f"constraint. Add {references}{parent} to BACKUP_TABLES (or "
                f"BACKUP_TRANSACTION_TABLES), or stop backing up {holder}."
            )
        key = ForeignKey(name, source, tuple(src_cols), target, tuple(dst_cols),
                         into_partition=bool(into_partition) and target != references_oid)
        # The same key declared on each partition is one key of the table that holds them;
        # keys declared by hand come first, PostgreSQL's copies of them after.
        if not any((k.source, k.source_columns, k.target, k.target_columns)
                   == (key.source, key.source_columns, key.target, key.target_columns)
                   for k in foreign_keys):
            foreign_keys.append(key)
    return foreign_keys


def build_plan(conn: psycopg.Connection, settings: Settings, cutoff: datetime) -> ExportPlan:
    """Resolve the configured tables inside the snapshot and check the plan can restore."""
    critical = [_resolve(conn, t, "BACKUP_TABLES") for t in settings.critical_tables]
    windowed = []
    for entry in settings.transaction_tables:
        table = _resolve(conn, entry.name, "BACKUP_TRANSACTION_TABLES")
        _check_timestamp_column(conn, table, entry.timestamp_column)
        windowed.append(WindowedTable(table, entry.timestamp_column))
    backed_up = [t.oid for t in critical] + [w.table.oid for w in windowed]
    _check_whole_tables(conn, backed_up)
    user = conn.execute("SELECT current_user").fetchone()[0]
    _check_row_security(conn, backed_up, user)
    plan = ExportPlan(critical, windowed, cutoff, settings.transaction_months,
                      _foreign_keys(conn, backed_up), not_valid_constraints(conn))
    _check_large_objects(conn, critical, windowed)
    for entry in windowed:
        explained = conn.execute(plan.window_estimate(entry)).fetchone()
        plan.estimated_in_window[entry.table.oid] = float(explained[0][0]["Plan"]["Plan Rows"])
    return plan
