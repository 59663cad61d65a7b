"""After a verified and restore-proven archive: the status files the seeds' monitoring reads,
then retention.

This asset runs only when every blocking check on the archive passed and (unless
BACKUP_RESTORE_PROOF=off) the archive was restored and compared, so `.last_backup_success` only
ever names a good backup, and retention only ever runs after a good new archive exists.
"""


import time
from pathlib import Path

import dagster as dg

from backup_pipeline.assets.archive import ARCHIVE_KEY, archive_materialization
from backup_pipeline.assets.restore_proof import PROOF_KEY
from backup_pipeline.assets.whole_backup import refuse_a_partial_backup
from backup_pipeline.resources.storage import BackupStorage, ProofRecord
from backup_pipeline.settings import Settings

STATUS_KEY = dg.AssetKey("backup_status")


def build_backup_status(settings: Settings, whole: frozenset[dg.AssetKey]
                        ) -> dg.AssetsDefinition:
    deps = [ARCHIVE_KEY, PROOF_KEY] if settings.restore_proof else [ARCHIVE_KEY]

    @dg.asset(
        key=STATUS_KEY,
        deps=deps,
        group_name="archive",
        description="BACKUP_DIR/.last_backup_success and .last_backup_size_mb, then retention "
                    "(BACKUP_RETENTION_DAYS, never below BACKUP_RETENTION_MIN_COUNT archives).",
    )
    def backup_status(context: dg.AssetExecutionContext, storage: BackupStorage
                      ) -> dg.MaterializeResult:
        refuse_a_partial_backup(context, whole)
        materialization = archive_materialization(context.instance, context.run.run_id)
        if materialization is None:
            raise RuntimeError("backup_status follows a backup_archive of the same run: run "
                               "backup_job")
        proof = None
        if settings.restore_proof:
            proven = archive_materialization(context.instance, context.run.run_id, PROOF_KEY)
            if proven is None:
                raise RuntimeError("backup_status follows the restore_proof of the same run: "
                                   "run backup_job")
            proof = ProofRecord(seconds=proven.metadata["proof_seconds"].value,
                                target=proven.metadata["target"].value,
                                phases=proven.metadata["phase_seconds"].value)
        metadata = materialization.metadata
        archive = Path(metadata["path"].value)
        with storage.locked():
            storage.write_status(archive, metadata["bytes"].value, metadata["sha256"].value,
                                 time.time(), proof)
            retention = storage.apply_retention(newest=archive)
        for name in retention.deleted:
            context.log.info(f"retention deleted {name}")
        return dg.MaterializeResult(
            metadata={
                "archive": archive.name,
                "restore_proof": (f"restored and compared in {proof.seconds:.1f} s" if proof
                                  else "off (BACKUP_RESTORE_PROOF=off): not proven"),
                "archives_kept": len(retention.kept),
                "deleted": dg.MetadataValue.json(retention.deleted),
                "status_file": dg.MetadataValue.path(str(storage.root / ".last_backup_success")),
            }
        )

    return backup_status
