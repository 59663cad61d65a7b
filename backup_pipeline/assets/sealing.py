"""The sealed archive (BACKUP_AGE_RECIPIENTS): the checked, restore-proven archive encrypted
with age, and only then given a name, `critical_backup_YYYYMMDD_HHMMSS.tar.gz.age`.

It runs after the checks and the proof because both need the plaintext, which the backup host can
read and nobody else should: until this step the archive keeps its hidden temporary name, and
whatever happens, the plaintext is deleted here (and, should the run die first, when the run's
resources are torn down, or by the next run's sweep). The sealed copy is what the status files
name and what is mailed, linked and uploaded. An encryption failure fails the run: there is then
no archive from it, never one in clear.
"""

from dataclasses import replace
from datetime import datetime

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.assets.archive import ARCHIVE_KEY, BuiltArchive
from backup_pipeline.assets.restore_proof import PROOF_KEY, ProvenArchive, as_proven
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.resources.safeguards import ArchiveEncryption
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.sealing import Recipient, seal

SEALED_KEY = dg.AssetKey("sealed_archive")
SEALED_OUTPUT = output_name(SEALED_KEY)


def sealed_spec(restore_proof: bool) -> dg.AssetSpec:
    return dg.AssetSpec(
        SEALED_KEY,
        deps=[ARCHIVE_KEY, PROOF_KEY] if restore_proof else [ARCHIVE_KEY],
        group_name="archive",
        kinds={"file"},
        description="critical_backup_YYYYMMDD_HHMMSS.tar.gz.age in BACKUP_DIR: the checked and "
                    "restore-proven archive, encrypted with age to BACKUP_AGE_RECIPIENTS; the "
                    "only copy kept (age -d -i key.txt X.tar.gz.age | tar -xz).",
    )


def seal_archive(storage: BackupStorage, proven: ProvenArchive,
                 recipients: tuple[Recipient, ...], run_id: str) -> ProvenArchive:
    """Seal the archive under a hidden name, give the sealed copy its final name, delete the
    plaintext (whatever happened)."""
    built: BuiltArchive = proven.archive
    partial = storage.partial_path(built.name + layout.AGE_SUFFIX, run_id)
    try:
        sealed = seal(built.path, partial, recipients, built.sha256, built.name)
        created = datetime.fromisoformat(built.manifest.created_at)
        final = storage.publish(partial, created, suffix=layout.AGE_SUFFIX)
    finally:
        partial.unlink(missing_ok=True)
        built.path.unlink(missing_ok=True)
    return replace(proven, sealed=replace(sealed, path=final))


def build_sealed_archive(restore_proof: bool) -> dg.OpDefinition:
    @dg.op(
        name="sealed_archive",
        ins={"proven": dg.In(ProvenArchive if restore_proof else BuiltArchive)},
        out={SEALED_OUTPUT: dg.Out(dg.Nothing),
             "sealed": dg.Out(ProvenArchive, io_manager_key=VALUES_IO_MANAGER)},
        description=sealed_spec(restore_proof).description,
    )
    def sealed_archive(context: dg.OpExecutionContext, storage: BackupStorage,
                       encryption: ArchiveEncryption, proven: ProvenArchive | BuiltArchive):
        proven = as_proven(proven)
        result = seal_archive(storage, proven, encryption.recipients(), context.run.run_id)
        sealed = result.sealed
        assert sealed is not None
        context.log.info(f"sealed {proven.archive.name} with age to {sealed.recipients} "
                         f"recipient(s): {sealed.path} ({layout.size_text(sealed.size)}); the "
                         f"plaintext was deleted")
        yield dg.Output(None, SEALED_OUTPUT, metadata={
            "path": dg.MetadataValue.path(str(sealed.path)),
            "archive_name": sealed.path.name,
            "bytes": sealed.size,
            "size": layout.size_text(sealed.size),
            "sha256": sealed.sha256,
            "plaintext_sha256": sealed.plain_sha256,
            "recipients": sealed.recipients,
            "decrypt": f"age -d -i key.txt {sealed.path.name} | tar -xz",
        })
        yield dg.Output(result, "sealed")

    return sealed_archive
