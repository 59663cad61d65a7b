"""The database export: schema, critical tables and transaction windows from one snapshot.

It is one step of the backup because consistency demands it: every file must come from the same
exported snapshot, which lives as long as the transaction that exported it. Each table still has
its own asset key, so the UI shows lineage, row counts and checksums per table.
"""


import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.assets.config_snapshot import planned_bytes
from backup_pipeline.assets.dumps import dump_key, dump_specs, write_table_dump
from backup_pipeline.assets.transactions import (
    transaction_key,
    transaction_specs,
    window_cutoff,
    write_window_for_psql,
    write_window_part,
)
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.export_plan import ExportPlan, TableInfo, WindowedTable, build_plan
from backup_pipeline.files import BLOCK_SIZE, write_private_text
from backup_pipeline.jobs import retry_the_whole_run
from backup_pipeline.manifest import (
    CRITICAL,
    TRANSACTIONS,
    DatabaseRef,
    FileEntry,
    TableEntry,
    Window,
)
from backup_pipeline.pg import CopyResult, HashingWriter
from backup_pipeline.resources.postgres import PostgresResource, Snapshot
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.roles import Role, create_missing_roles_sql, database_locale, needed_roles
from backup_pipeline.settings import Settings

SCHEMA_KEY = dg.AssetKey("database_schema")

_SEQUENCES_QUERY = """
SELECT format('SELECT pg_catalog.setval(%L, %s, true);',
              format('%I.%I', schemaname, sequencename), last_value)
FROM pg_sequences WHERE last_value IS NOT NULL ORDER BY schemaname, sequencename
"""


_UNREADABLE_SEQUENCES_QUERY = """
SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences
WHERE NOT has_sequence_privilege(format('%I.%I', schemaname, sequencename), 'SELECT')
ORDER BY 1
"""


def _write_sequences(snapshot: Snapshot, target: Path) -> CopyResult:
    """setval() for every sequence, or a clear failure when the backup user cannot read one:
    a restore that starts a sequence at 1 hands out ids that already exist."""
    unreadable = [row[0] for row in snapshot.connection.execute(_UNREADABLE_SEQUENCES_QUERY)]
    if unreadable:
        user = snapshot.resource.user
        raise PermissionError(
            f"POSTGRES_USER {user} cannot read the position of the sequences "
            f"{', '.join(unreadable)}, so a restore could not continue their ids. Grant it, "
            f"e.g. GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {user}."
        )
    lines = [row[0] for row in snapshot.connection.execute(_SEQUENCES_QUERY)]
    written = _write_text(target, "-- backup_pipeline: sequence positions, so new rows get "
                                  "fresh ids\n" + "".join(f"{line}\n" for line in lines))
    return CopyResult(rows=len(lines), size=written.size, sha256=written.sha256)


def _write_text(target: Path, text: str) -> CopyResult:
    data = write_private_text(target, text)
    return CopyResult(rows=0, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _file_entry(path: str, result: CopyResult) -> FileEntry:
    return FileEntry(path, result.size, result.sha256)


@dataclass(frozen=True)
class StagedPiece:
    """A piece of a table's file in the staging folder: a gzip member the archive copies as
    it is (holding `size` bytes of the file), or a plain part it compresses."""

    file: str
    gzip: bool
    size: int


@dataclass(frozen=True)
class ExportRecord:
    """What the export made, for the archive step: the manifest's database part, and how to
    put each table's file together from its staged pieces."""

    snapshot_id: str
    snapshot_taken_at: str
    server_version: str
    pg_dump_version: str
    database: DatabaseRef
    window: Window
    tables: tuple[TableEntry, ...]
    roles: tuple[Role, ...]
    database_locale: dict[str, str | None]
    not_valid_constraints: tuple[str, ...]
    files: tuple[FileEntry, ...]
    staged: dict[str, tuple[StagedPiece, ...]]
    duration_seconds: float


def export_specs(settings: Settings) -> list[dg.AssetSpec]:
    """Every asset the export materializes: the schema, each critical table, each window."""
    return [
        dg.AssetSpec(
            SCHEMA_KEY,
            description="The whole database schema (every table, also those not backed up), "
                        "sequence positions, then indexes and constraints, from pg_dump.",
            group_name="database",
            kinds={"postgres", "sql"},
        ),
        *dump_specs(settings),
        *transaction_specs(settings),
    ]


# Tables are read by this many sessions at once, all inside the same snapshot. The server's CPU
# is what they share, so more sessions than cores only make each one slower.
EXPORT_WORKERS = max(2, min(4, os.cpu_count() or 1))


@dataclass
class _Exported:
    """One table written to staging: its manifest entry, file record and timing."""

    entry: TableEntry
    file: FileEntry
    staged: tuple[StagedPiece, ...]
    seconds: float
    # A window that psql could not \copy: its queries, to write it again for psql.
    psql_queries: list[str] | None = None

    def output(self, cutoff) -> dg.Output:
        """The materialization of the table's asset."""
        entry = self.entry
        key = (transaction_key if entry.windowed else dump_key)(entry.table)
        metadata = {
            "dagster/row_count": entry.rows,
            # The file as it is inside the archive, before the archive's compression.
            "uncompressed_bytes": self.file.size,
            "sha256": self.file.sha256,
            "archive_path": entry.path,
            "duration_seconds": round(self.seconds, 3),
        }
        if entry.windowed:
            metadata.update(rows_in_window=entry.rows_in_window,
                            rows_referenced_before_window=entry.rows_referenced_before_window,
                            cutoff=cutoff.isoformat())
        return dg.Output(None, output_name(key), metadata=metadata)


@dataclass
class _Read:
    """One read of the export: a critical table, or one part of a window (its rows, or the
    older rows they reference), written to `target` by one session of the snapshot.

    A table's file, or a window's first part, is written gzip-compressed (a member the archive
    takes as it is): compressed here, it runs while the other sessions wait on the disk, where
    in the archive step it ran alone after all of them. A window's later parts (usually small)
    stay plain, to be hashed after the first.
    """

    index: int
    item: TableInfo | WindowedTable
    part: int
    query: str
    target: Path
    cost: float
    rows: int = 0
    writer: HashingWriter | None = None
    seconds: float = 0.0
    # A CSV line that is a lone `\.`: psql before 18 could not \copy this file.
    end_marker_line: bool = False

    def run(self, snap: Snapshot) -> None:
        started = time.monotonic()
        if isinstance(self.item, WindowedTable):
            self.rows, self.writer, self.end_marker_line = write_window_part(
                snap, self.query, self.target, header=self.part == 0,
                gzip_level=layout.GZIP_LEVEL if self.part == 0 else None)
        else:
            self.rows, self.writer = write_table_dump(snap, self.item, self.query, self.target)
        self.seconds = time.monotonic() - started


def _reads(snap: Snapshot, plan: ExportPlan, staging: Path) -> list[_Read]:
    """Every read, the longest first: a window's older rows are looked up key by key, so they
    go first and in their own session, beside the window itself; the rest by size. One
    session left working alone at the end is what makes an export slow. The queries are
    rendered here, in the thread that owns the snapshot's connection."""
    reads: list[_Read] = []
    for index, table in enumerate(plan.critical):
        reads.append(_Read(index, table, 0, snap.render(plan.critical_query(table)),
                           _compressed(staging / layout.dump_path(table.qualified)),
                           cost=table.size_bytes))
    for offset, windowed in enumerate(plan.windowed):
        table = windowed.table
        share = plan.window_share(windowed)
        path = staging / layout.csv_path(table.qualified)
        for part, select in enumerate(plan.window_parts(windowed)):
            target = _compressed(path) if part == 0 else path.with_name(f"{path.name}.part{part}")
            reads.append(_Read(len(plan.critical) + offset, windowed, part, snap.render(select),
                               target, cost=table.size_bytes * (share if part == 0 else 1.0)))
    return sorted(reads, key=lambda r: (r.part > 0, r.cost), reverse=True)


def _compressed(path: Path) -> Path:
    """Where the export stages a file's gzip member (the archive holds it as `path`)."""
    return path.with_name(f"{path.name}.gz")


def _assemble(reads: list[_Read], staging: Path, counted: dict[int, int]) -> _Exported:
    """One table's file from its reads: the first part's hash goes on over a window's later
    parts, so size and SHA-256 are those of the file in the archive (one header, the rows of
    all parts); `staged` lists the pieces the archive puts together."""
    first = reads[0]
    assert first.writer is not None
    writer, rows = first.writer.resume(), sum(r.rows for r in reads)
    for later in reads[1:]:
        with later.target.open("rb") as part:
            for block in iter(lambda: part.read(BLOCK_SIZE), b""):
                writer.write(block)
    staged = tuple(StagedPiece(read.target.relative_to(staging).as_posix(), read.part == 0,
                               read.writer.size) for read in reads if read.writer is not None)
    item = first.item
    path = (layout.csv_path(item.table.qualified) if isinstance(item, WindowedTable)
            else layout.dump_path(item.qualified))
    result = CopyResult(rows=rows, size=writer.size, sha256=writer.sha256)
    if isinstance(item, WindowedTable):
        table = item.table
        in_window = counted[table.oid]
        if first.rows != in_window:
            raise RuntimeError(
                f"{table.qualified}: the window was counted {in_window} rows and then read as "
                f"{first.rows} in the same snapshot: the export is not consistent, nothing was "
                f"published. Run the backup again and report this if it repeats."
            )
        entry = TableEntry(table.qualified, TRANSACTIONS, path, rows, tuple(table.columns),
                           table.partitioned, table.order, rows_in_window=in_window,
                           rows_referenced_before_window=rows - in_window,
                           timestamp_column=item.timestamp_column)
    else:
        entry = TableEntry(item.qualified, CRITICAL, path, rows, tuple(item.columns),
                           item.partitioned, item.order)
    exported = _Exported(entry, _file_entry(path, result), staged, sum(r.seconds for r in reads))
    if any(r.end_marker_line for r in reads):
        exported.psql_queries = [r.query for r in reads]
    return exported


def _export_tables(snap: Snapshot, plan: ExportPlan, staging: Path, workers: int
                   ) -> list[_Exported]:
    """Every read, each taken by the next free session of the same snapshot; meanwhile this
    thread counts each window's rows in the snapshot's own session, which the reads must
    match. Then each table's file is assembled. Results come back in the configured order, so
    the manifest does not depend on timing."""
    reads = _reads(snap, plan, staging)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(read.run, snap) for read in reads]
        try:
            counted = {}
            for windowed in plan.windowed:
                row = snap.connection.execute(plan.window_count(windowed)).fetchone()
                counted[windowed.table.oid] = int(row[0]) if row else 0
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # a failed read fails the export: start no other
                future.cancel()
            raise
    by_table: dict[int, list[_Read]] = {}
    for read in sorted(reads, key=lambda r: (r.index, r.part)):
        by_table.setdefault(read.index, []).append(read)
    return [_assemble(by_table[i], staging, counted) for i in sorted(by_table)]


def _write_windows_for_psql(snap: Snapshot, plan: ExportPlan, exported: list[_Exported],
                            staging: Path, log: dg.DagsterLogManager) -> list[FileEntry]:
    """A window whose CSV holds a line `\\.` is also written as `database/<table>.sql`, in
    COPY's text format, for the plain-shell procedure (psql before 18 stops a `\\copy` there);
    the manifest names it, and `backup-pipeline restore` still loads the CSV."""
    files = []
    tables = {w.table.qualified: w.table for w in plan.windowed}
    for item in exported:
        if item.psql_queries is None:
            continue
        table = tables[item.entry.table]
        path = layout.dump_path(table.qualified)
        rows, writer = write_window_for_psql(snap, table, item.psql_queries, staging / path)
        if rows != item.entry.rows:
            raise RuntimeError(f"{table.qualified}: {rows} rows read for psql where the CSV "
                               f"holds {item.entry.rows}, in the same snapshot: nothing was "
                               f"published. Run the backup again.")
        item.entry = replace(item.entry, psql_data_path=path)
        files.append(_file_entry(path, CopyResult(rows, writer.size, writer.sha256)))
        log.warning(f"{table.qualified}: a value holds a line '\\.', which psql before 18 "
                    f"cannot \\copy from CSV: the archive also holds {path} for the plain-shell "
                    f"procedure")
    return files


def build_database_export(settings: Settings) -> dg.OpDefinition:
    """The export step: one output per asset it materializes, and its record for the archive."""
    specs = export_specs(settings)

    @dg.op(
        name="database_export",
        out={**{output_name(spec.key): dg.Out(dg.Nothing) for spec in specs},
             "export": dg.Out(ExportRecord, io_manager_key=VALUES_IO_MANAGER)},
        description="Reads the database once, inside one exported snapshot.",
    )
    def database_export(context: dg.OpExecutionContext, postgres: PostgresResource,
                        storage: BackupStorage):
        retry_the_whole_run(context)
        staging = storage.staging(context.run.run_id)
        database_dir = staging / layout.DATABASE_DIR
        database_dir.mkdir(mode=0o700, exist_ok=True)
        started = time.monotonic()
        # Before the snapshot: removing gigabytes of leftovers holds no lock on the application.
        freed = storage.remove_leftovers()
        if freed:
            context.log.info(f"removed {freed // 1024} KiB left by runs that were killed")
        with postgres.snapshot(log=context.log) as snap:
            pg_dump_version = postgres.check_pg_dump_version(
                snap.server_version_num, snap.server_version
            )
            cutoff = window_cutoff(snap, settings.transaction_months)
            plan = build_plan(snap.connection, settings, cutoff)
            snap.lock([t.identifier for t in plan.critical] + [w.table.identifier
                                                               for w in plan.windowed])
            expected = plan.estimated_bytes()
            free = storage.check_free_space(
                expected, planned_bytes(settings.config_dir, settings.config_files),
                sealed=settings.encrypted)
            context.log.info(
                f"snapshot {snap.snapshot_id} of {postgres.describe()} (server "
                f"{snap.server_version}, {pg_dump_version}); window from {cutoff.isoformat()}; "
                f"about {expected // 1024} KiB to export, {free // (1024 * 1024)} MB free"
            )
            exported = _export_tables(snap, plan, staging, workers=EXPORT_WORKERS)
            psql_files = _write_windows_for_psql(snap, plan, exported, staging, context.log)
            # pg_dump runs after the data, in the same snapshot; its table locks are the step
            # most likely to wait on the application, and the data is already staged by then.
            pre = snap.pg_dump(staging / layout.SCHEMA_PRE_DATA, "--section=pre-data")
            seq = _write_sequences(snap, staging / layout.SEQUENCES)
            roles = needed_roles(snap.connection)
            locale = database_locale(snap.connection)
            roles_file = _write_text(staging / layout.ROLES,
                                     create_missing_roles_sql(roles))
            post = snap.pg_dump(staging / layout.SCHEMA_POST_DATA, "--section=post-data")
            tables = tuple(e.entry for e in exported)
            files = (*(e.file for e in exported), *psql_files,
                     _file_entry(layout.SCHEMA_PRE_DATA, pre),
                     _file_entry(layout.ROLES, roles_file),
                     _file_entry(layout.SEQUENCES, seq),
                     _file_entry(layout.SCHEMA_POST_DATA, post))
            results = [e.output(cutoff) for e in exported]
            results.append(dg.Output(
                None, output_name(SCHEMA_KEY),
                metadata={
                    "pre_data_bytes": pre.size,
                    "post_data_bytes": post.size,
                    "sequences": seq.rows,
                    "server_version": snap.server_version,
                    "pg_dump_version": pg_dump_version,
                    "snapshot_id": snap.snapshot_id,
                },
            ))

            record = ExportRecord(
                snapshot_id=snap.snapshot_id,
                snapshot_taken_at=snap.taken_at.isoformat(),
                server_version=snap.server_version,
                pg_dump_version=pg_dump_version,
                database=DatabaseRef(postgres.host, postgres.port, postgres.database,
                                     postgres.user),
                window=Window(settings.transaction_months, cutoff.isoformat()),
                tables=tables,
                roles=tuple(roles),
                database_locale=locale,
                not_valid_constraints=tuple(plan.not_valid_constraints),
                files=files,
                staged={e.entry.path: e.staged for e in exported},
                duration_seconds=round(time.monotonic() - started, 3),
            )
        context.log.info(
            f"exported {len(plan.critical)} critical tables and {len(plan.windowed)} transaction "
            f"windows ({sum(t.rows for t in tables)} rows) in {record.duration_seconds} s"
        )
        yield from results
        yield dg.Output(record, "export")

    return database_export
