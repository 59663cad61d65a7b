"""The off-site copy (BACKUP_S3_BUCKET): the kept archive (sealed, when encryption is on)
uploaded to an S3-compatible bucket, read back and hashed as stored, then the bucket's retention.

It runs after `backup_status`, so a failed upload fails the run (one alert, naming the bucket,
the key and the cause) while the archive in BACKUP_DIR stays good and recorded: the server still
has its backup, and the alert says the copy off it is missing. Retention in the bucket runs only
after a verified upload, by BACKUP_DIR's rule. BACKUP_DIR/.last_offsite_copy.json records the
copy, for `status` and `health-check` (which holds it to BACKUP_MAX_AGE_HOURS too, without
credentials or a request to the store).
"""

from dataclasses import replace

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.assets.restore_proof import ProvenArchive
from backup_pipeline.assets.status import STATUS_KEY
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.offsite import apply_remote_retention, upload_archive
from backup_pipeline.resources.offsite import OffsiteStorage
from backup_pipeline.resources.storage import BackupStorage

OFFSITE_KEY = dg.AssetKey("offsite_copy")
OFFSITE_OUTPUT = output_name(OFFSITE_KEY)
OFFSITE_SPEC = dg.AssetSpec(
    OFFSITE_KEY,
    deps=[STATUS_KEY],
    group_name="archive",
    kinds={"s3"},
    description="The kept archive in BACKUP_S3_BUCKET under BACKUP_S3_PREFIX, read back and "
                "hashed as stored, then the bucket's retention (BACKUP_RETENTION_DAYS, never "
                "below BACKUP_RETENTION_MIN_COUNT copies, only this pipeline's names).",
)


@dg.op(
    name="offsite_copy",
    ins={"recorded": dg.In(ProvenArchive)},
    out={OFFSITE_OUTPUT: dg.Out(ProvenArchive, io_manager_key=VALUES_IO_MANAGER)},
    description=OFFSITE_SPEC.description,
)
def offsite_copy(context: dg.OpExecutionContext, offsite: OffsiteStorage,
                 storage: BackupStorage, recorded: ProvenArchive):
    target = offsite.target()
    copy = upload_archive(target, recorded.kept_path, recorded.kept_sha256)
    context.log.info(f"copied {recorded.kept_name} to {copy.url} ({layout.size_text(copy.size)}) "
                     f"and read it back in {copy.seconds:.1f} s: sha256 {copy.sha256}")
    # Recorded before retention: a retention that fails leaves the verified copy on record.
    storage.write_offsite_status(copy)
    retention = apply_remote_retention(
        target, newest_key=copy.key, retention_days=storage.retention_days,
        min_count=storage.retention_min_count, timezone=storage.timezone)
    for key in retention.deleted:
        context.log.info(f"off-site retention deleted {target.url(key)}")
    yield dg.Output(replace(recorded, offsite=copy), OFFSITE_OUTPUT, metadata={
        "url": copy.url,
        "bucket": copy.bucket,
        "key": copy.key,
        "bytes": copy.size,
        "size": layout.size_text(copy.size),
        "sha256": copy.sha256,
        "seconds": dg.MetadataValue.float(round(copy.seconds, 2)),
        "copies_kept": len(retention.kept),
        "deleted": dg.MetadataValue.json(retention.deleted),
        "where": target.describe(),
    })
