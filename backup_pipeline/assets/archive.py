"""The archive: one verified `critical_backup_YYYYMMDD_HHMMSS.tar.gz` from what the run staged.

The tar stream goes straight into gzip and the file is hashed as it is written. It is written
under a hidden temporary name, fsynced and fully verified before it gets its final name, so a
file named `critical_backup_*.tar.gz` is always complete: a failed verification leaves nothing,
a crash at most a hidden `.partial` file (retention removes it a day later).
"""


import hashlib
import io
import json
import os
import platform
import tarfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import dagster as dg
import jinja2
import psycopg
from isal import igzip_threaded

from backup_pipeline import layout
from backup_pipeline.assets.config_snapshot import CONFIG_KEY, CONFIG_RECORD
from backup_pipeline.assets.database import EXPORT_RECORD, export_specs
from backup_pipeline.assets.dumps import quote_identifier
from backup_pipeline.resources.postgres import HashingWriter
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import Settings
from backup_pipeline.verify import verify_archive

ARCHIVE_KEY = dg.AssetKey("backup_archive")
VERIFICATION_RECORD = "verification.json"
# ISA-L's strongest level, in threads: a standard .tar.gz (gzip -t, tar -xzf) about 7 % larger
# than `tar -czf` (gzip -6) makes of the same files, written in a seventh of gzip's CPU time
# (measured on the sample data: benchmarks/run.py and the README's performance section).
COMPRESSION_LEVEL = 3
COMPRESSION_THREADS = max(1, min(4, os.cpu_count() or 1))
# Large blocks through tar and the compressor: tarfile's default is 10 KiB writes.
STREAM_BLOCK = 1 << 20

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("backup_pipeline", "templates"),
    autoescape=False,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


class _HashingSink:
    """The file object gzip writes into: bytes go to disk and into SHA-256 at once."""

    def __init__(self, handle) -> None:
        self._writer = HashingWriter(handle)
        self._handle = handle

    def write(self, data) -> int:
        self._writer.write(data)
        return len(data)

    def flush(self) -> None:
        self._handle.flush()

    @property
    def sha256(self) -> str:
        return self._writer.sha256


def _versions() -> dict[str, str]:
    try:
        own = metadata.version("backup_pipeline")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {"backup_pipeline": own, "dagster": dg.__version__, "psycopg": psycopg.__version__,
            "python": platform.python_version()}


def _sql_name(qualified: str) -> str:
    """A table name for the shell-quoted count query: plain when it can be, quoted otherwise."""
    parts = qualified.split(".")
    return ".".join(p if p.islower() and p.isidentifier() else f'\\"{p}\\"' for p in parts)


def restore_script(export: dict) -> str:
    """The psql script of step 4 in BACKUP_INFO.txt: everything, in an order that works."""
    lines = [
        "-- backup_pipeline restore script. From the folder the archive was extracted into:",
        '--   psql -X -v ON_ERROR_STOP=1 --single-transaction -d "$RESTORE_DB" '
        "-f database/_restore.psql",
        "\\set ON_ERROR_STOP on",
        "\\echo '1/4 schema: tables, types, functions, sequences'",
        f"\\ir {Path(layout.SCHEMA_PRE_DATA).name}",
        "\\echo '2/4 critical tables'",
    ]
    for table in export["tables"]:
        if table["kind"] == "critical":
            lines += [f"\\echo '    {table['table']}'", f"\\ir {Path(table['path']).name}"]
    lines.append("\\echo '3/4 transactions'")
    for table in export["tables"]:
        if table["kind"] == "transactions":
            schema, name = table["table"].split(".", 1)
            columns = ", ".join(quote_identifier(c) for c in table["columns"])
            lines += [
                f"\\echo '    {table['table']}'",
                f"\\copy {quote_identifier(schema)}.{quote_identifier(name)} ({columns}) "
                f"FROM '{table['path']}' "
                "WITH (FORMAT csv, HEADER)",
            ]
    lines += [
        "\\echo '4/4 sequence positions, indexes, constraints and foreign keys'",
        f"\\ir {Path(layout.SEQUENCES).name}",
        f"\\ir {Path(layout.SCHEMA_POST_DATA).name}",
        "\\echo 'restore complete'",
    ]
    return "\n".join(lines) + "\n"


def _write_text(staging: Path, relative: str, text: str) -> dict:
    target = staging / relative
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = text.encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return {"path": relative, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _tar_info(name: str, size: int, mtime: float, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o700
    else:
        info.size, info.mode = size, 0o600
    return info


def write_archive(target: Path, staging: Path, manifest: dict, mtime: float) -> str:
    """Stream manifest.json, then every listed file, into a gzip'd tar; fsync; return SHA-256."""
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        sink = _HashingSink(handle)
        with (
            igzip_threaded.open(sink, "wb", compresslevel=COMPRESSION_LEVEL,
                                threads=COMPRESSION_THREADS, block_size=STREAM_BLOCK) as gz,
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT,
                         bufsize=STREAM_BLOCK) as tar,
        ):
            tar.copybufsize = STREAM_BLOCK
            tar.addfile(_tar_info(layout.MANIFEST, len(manifest_bytes), mtime),
                        io.BytesIO(manifest_bytes))
            folders: set[str] = set()
            for entry in manifest["files"]:
                parents = Path(entry["path"]).parents
                for folder in reversed([p.as_posix() for p in parents if p.as_posix() != "."]):
                    if folder not in folders:
                        folders.add(folder)
                        tar.addfile(_tar_info(folder, 0, mtime, directory=True))
                with (staging / entry["path"]).open("rb") as source:
                    tar.addfile(_tar_info(entry["path"], entry["size"], mtime), source)
        handle.flush()
        os.fsync(handle.fileno())
    return sink.sha256


def build_manifest(export: dict, config: dict, created_at: datetime, name: str,
                   staging: Path) -> dict:
    """Write BACKUP_INFO.txt and the restore script into staging; return the manifest."""
    restore = _write_text(staging, layout.RESTORE_SCRIPT, restore_script(export))
    count_query = " UNION ALL ".join(
        f"SELECT '{t['table']}' AS table_name, count(*) AS rows FROM {_sql_name(t['table'])}"
        for t in export["tables"]
    )
    versions = _versions()
    info_text = _templates.get_template("BACKUP_INFO.txt.j2").render(
        archive_name=name,
        created_at=created_at.isoformat(timespec="seconds"),
        server_major=export["server_version"].split(".")[0],
        schema_pre=layout.SCHEMA_PRE_DATA,
        schema_post=layout.SCHEMA_POST_DATA,
        sequences=layout.SEQUENCES,
        count_query=count_query,
        config=config,
        versions=versions,
        **export,
    )
    info = _write_text(staging, layout.BACKUP_INFO, info_text)
    return {
        "format": layout.MANIFEST_FORMAT,
        "archive_name": name,
        "created_at": created_at.isoformat(),
        "database": export["database"],
        "server_version": export["server_version"],
        "pg_dump_version": export["pg_dump_version"],
        "snapshot_id": export["snapshot_id"],
        "snapshot_taken_at": export["snapshot_taken_at"],
        "window": export["window"],
        "tables": export["tables"],
        "config": {"config_dir": config["config_dir"],
                   "included": [f["path"] for f in config["files"]],
                   "missing": config["missing"]},
        "versions": versions,
        "files": [info, restore, *export["files"], *config["files"]],
    }


def archive_materialization(instance: dg.DagsterInstance, run_id: str | None
                            ) -> dg.AssetMaterialization | None:
    """The archive this run made (or, for a check run on its own, the latest one)."""
    if run_id:
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            event = entry.dagster_event
            if event and event.asset_key == ARCHIVE_KEY:
                return event.step_materialization_data.materialization
    return None


def _read_record(staging: Path, name: str) -> dict:
    path = staging / name
    if not path.is_file():
        raise RuntimeError(
            f"{name} is not in this run's staging folder {staging}: the archive can only be built "
            f"in the same run as database_export and config_snapshot. Run the whole backup_job "
            f"(dagster job execute -m backup_pipeline.definitions -j backup_job)."
        )
    return json.loads(path.read_text())


def build_backup_archive(settings: Settings) -> dg.AssetsDefinition:
    """The archive depends on every table's asset, so lineage leads back to each dump."""
    deps = [spec.key for spec in export_specs(settings)] + [CONFIG_KEY]

    @dg.asset(
        key=ARCHIVE_KEY,
        deps=deps,
        group_name="archive",
        kinds={"file"},
        description="critical_backup_YYYYMMDD_HHMMSS.tar.gz in BACKUP_DIR: BACKUP_INFO.txt, "
                    "manifest.json, database/ and config/, verified before it gets its name.",
    )
    def backup_archive(context: dg.AssetExecutionContext, storage: BackupStorage
                       ) -> dg.MaterializeResult:
        staging = storage.staging(context.run.run_id)
        export = _read_record(staging, EXPORT_RECORD)
        config = _read_record(staging, CONFIG_RECORD)
        created_at = datetime.now(UTC)
        name = layout.archive_name(created_at, storage.timezone)
        started = time.monotonic()
        manifest = build_manifest(export, config, created_at, name, staging)
        partial = storage.partial_path(name, context.run.run_id)
        try:
            sha256 = write_archive(partial, staging, manifest, created_at.timestamp())
            written = time.monotonic()
            report = verify_archive(partial)
            if not report.ok:
                raise RuntimeError(
                    f"the new archive failed verification and was discarded: {report.summary()}. "
                    f"Earlier archives are untouched."
                )
            final = storage.publish(partial, created_at)
            (staging / VERIFICATION_RECORD).write_text(json.dumps(
                {"sha256": sha256, "found": report.found,
                 "files": [vars(check) for check in report.files.values()]}))
        finally:
            partial.unlink(missing_ok=True)
        size = final.stat().st_size
        context.log.info(
            f"archive {final} ({size / 1024:.1f} KiB, sha256 {sha256}) written in "
            f"{written - started:.2f} s and verified in {time.monotonic() - written:.2f} s"
        )
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(final)),
                "archive_name": final.name,
                "bytes": size,
                "size_mb": round(size / (1024 * 1024), 3),
                "sha256": sha256,
                "files": len(manifest["files"]) + 1,
                "rows": sum(t["rows"] for t in export["tables"]),
                "cutoff": export["window"]["cutoff"],
                "config_missing": dg.MetadataValue.json(config["missing"]),
                "build_seconds": round(written - started, 3),
                "verify_seconds": round(time.monotonic() - written, 3),
            }
        )

    return backup_archive
