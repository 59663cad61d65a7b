"""The weekly restore drill: the newest archive restored for real, and timed.

A backup nobody has restored is a hope, not a backup. The drill restores the newest verified
archive into a scratch database (BACKUP_DRILL_DSN, dropped and recreated each time), compares it
with the manifest, and records how long it took: that is the recovery time `backup-pipeline
status` shows. A failed drill fails its run, which alerts like a failed backup.
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.assets.archive import ARCHIVE_KEY
from backup_pipeline.files import write_atomically
from backup_pipeline.resources.drill import RestoreDrillTarget
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.safeguards import ManifestSigning
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.restore import describe_target, restore_archive, scratch_database_lock
from backup_pipeline.sources import LocalArchive


def newest_good_archive(storage: BackupStorage) -> Path:
    """The archive the status files name (verified), else the newest one by name."""
    try:
        last = json.loads((storage.root / layout.LAST_BACKUP_FILE).read_text())
        candidate = storage.root / last["archive"]
        if candidate.is_file():
            return candidate
    except (OSError, ValueError, KeyError):
        pass
    found = storage.archives()
    if not found:
        raise RuntimeError(f"no archive in BACKUP_DIR {storage.root} to drill: run backup_job")
    return found[0][1]


@dg.asset(
    deps=[ARCHIVE_KEY],
    group_name="drill",
    kinds={"postgres"},
    description="Restores the newest archive into BACKUP_DRILL_DSN and compares it with the "
                "manifest; its duration is the measured recovery time.",
)
def restore_drill(context: dg.AssetExecutionContext, storage: BackupStorage,
                  postgres: PostgresResource, drill: RestoreDrillTarget,
                  signing: ManifestSigning) -> dg.MaterializeResult:
    dsn = drill.checked_dsn(postgres)
    archive = newest_good_archive(storage)
    key = signing.key()
    context.log.info(f"drill: restoring {archive.name} into {describe_target(dsn)}")
    started = time.monotonic()
    record = {"archive": archive.name, "ok": False, "rows": 0}
    try:
        source = LocalArchive(str(archive), drill.identities(archive.name)
                              if layout.is_sealed(archive.name) else ())
        with scratch_database_lock(dsn):  # a backup's restore proof may use it too
            drill.drop(dsn)
            report = restore_archive(source, dsn, progress=context.log.info,
                                     signer=key.public_key if key else None)
        record.update(ok=report.ok, rows=sum(t.restored for t in report.tables))
    except Exception as error:
        record["error"] = str(error)
        raise
    finally:
        # Written whatever happened: `status` must never show an old success after a failure.
        record.update(finished_at=datetime.now(UTC).isoformat(),
                      restore_seconds=round(time.monotonic() - started, 2))
        write_atomically(storage.ensure_root() / layout.LAST_DRILL_FILE,
                         json.dumps(record, indent=2) + "\n", 0o644)
    seconds = record["restore_seconds"]
    context.log.info("drill comparison:\n" + report.table_text())
    if not report.ok:
        raise dg.Failure(
            description=f"restore drill of {archive.name} does not match its manifest",
            metadata={"comparison": dg.MetadataValue.md(f"```\n{report.table_text()}\n```")},
        )
    return dg.MaterializeResult(metadata={
        "archive": archive.name,
        "restore_seconds": seconds,
        "rows": record["rows"],
        "comparison": dg.MetadataValue.md(f"```\n{report.table_text()}\n```"),
        "result": "restored, counts and foreign keys match",
    })
