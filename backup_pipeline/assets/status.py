"""After a verified and restore-proven archive: the status files the seeds' monitoring reads,
then retention.

This step runs only when every blocking check on the archive passed and (unless
BACKUP_RESTORE_PROOF=off) the archive was restored and compared, so `.last_backup_success` only
ever names a good backup, and retention only ever runs after a good new archive exists.
"""


import time

import dagster as dg

from backup_pipeline.assets.archive import ARCHIVE_KEY, BuiltArchive
from backup_pipeline.assets.restore_proof import PROOF_KEY, ProvenArchive, as_proven
from backup_pipeline.assets.sealing import SEALED_KEY
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.resources.storage import BackupStorage

STATUS_KEY = dg.AssetKey("backup_status")
STATUS_OUTPUT = output_name(STATUS_KEY)


def status_spec(restore_proof: bool, sealed: bool = False) -> dg.AssetSpec:
    return dg.AssetSpec(
        STATUS_KEY,
        deps=[ARCHIVE_KEY] + ([PROOF_KEY] if restore_proof else [])
        + ([SEALED_KEY] if sealed else []),
        group_name="archive",
        description="BACKUP_DIR/.last_backup_success and .last_backup_size_mb, then retention "
                    "(BACKUP_RETENTION_DAYS, never below BACKUP_RETENTION_MIN_COUNT archives).",
    )


def build_backup_status(restore_proof: bool, sealed: bool = False) -> dg.OpDefinition:
    """The step after the proof (or, BACKUP_RESTORE_PROOF=off, the checks) and the sealing. Its
    output's value is the archive it recorded, for the off-site copy, or for the success email
    hook on this step when there is none (an output no step reads is not run at all, so it is
    the asset's own)."""

    @dg.op(
        name="backup_status",
        ins={"proven": dg.In(ProvenArchive if restore_proof or sealed else BuiltArchive)},
        out={STATUS_OUTPUT: dg.Out(ProvenArchive, io_manager_key=VALUES_IO_MANAGER)},
        description="Moves the status files forward, then applies retention.",
    )
    def backup_status(context: dg.OpExecutionContext, storage: BackupStorage,
                      proven: ProvenArchive | BuiltArchive):
        proven = as_proven(proven)
        with storage.locked():
            storage.write_status(proven.kept_path, proven.kept_size, proven.kept_sha256,
                                 time.time(), proven.proof, proven.sealed)
            retention = storage.apply_retention(newest=proven.kept_path)
        for name in retention.deleted:
            context.log.info(f"retention deleted {name}")
        proof = proven.proof
        yield dg.Output(proven, STATUS_OUTPUT, metadata={
            "archive": proven.kept_name,
            "restore_proof": (f"restored and compared in {proof.seconds:.1f} s" if proof
                              else "off (BACKUP_RESTORE_PROOF=off): not proven"),
            "archives_kept": len(retention.kept),
            "deleted": dg.MetadataValue.json(retention.deleted),
            "status_file": dg.MetadataValue.path(str(storage.root / ".last_backup_success")),
        })

    return backup_status
