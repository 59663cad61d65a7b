"""The restore proof of every run: the new archive restored and compared before anything calls
it good (see backup_pipeline/restore_proof.py for what it does and why).

It runs after the archive's blocking checks and before `backup_status`, so a failed proof fails
the run: the archive stays on disk under its name but the status files do not move, retention
does not run, no success email goes out, and the failure alert names what did not restore.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from backup_pipeline.assets.archive import ARCHIVE_KEY, BuiltArchive
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.resources.drill import RestoreDrillTarget
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.storage import ProofRecord
from backup_pipeline.restore_proof import prove_archive
from backup_pipeline.sealing import SealedFile

if TYPE_CHECKING:  # boto3 loads with the off-site step only
    from backup_pipeline.offsite import RemoteCopy

PROOF_KEY = dg.AssetKey("restore_proof")
PROOF_OUTPUT = output_name(PROOF_KEY)
PROOF_SPEC = dg.AssetSpec(
    PROOF_KEY,
    deps=[ARCHIVE_KEY],
    group_name="archive",
    kinds={"postgres"},
    description="The new archive restored with `backup-pipeline restore`'s own code into a "
                "throwaway PostgreSQL (or BACKUP_DRILL_DSN) and compared with it, table by "
                "table, byte for byte: the measured recovery time of every archive.",
)


@dataclass(frozen=True)
class ProvenArchive:
    """A checked archive and, unless BACKUP_RESTORE_PROOF=off, how its restore was proven; then,
    as the last steps fill them in, its sealed copy and its off-site copy. The `kept_*` values
    are those of the file kept in BACKUP_DIR: the sealed one when there is one."""

    archive: BuiltArchive
    proof: ProofRecord | None = None
    summary: str | None = None
    sealed: SealedFile | None = None
    offsite: "RemoteCopy | None" = None

    @property
    def kept_path(self) -> Path:
        return self.sealed.path if self.sealed else self.archive.path

    @property
    def kept_name(self) -> str:
        return self.kept_path.name

    @property
    def kept_size(self) -> int:
        return self.sealed.size if self.sealed else self.archive.size

    @property
    def kept_sha256(self) -> str:
        return self.sealed.sha256 if self.sealed else self.archive.sha256


def as_proven(value: ProvenArchive | BuiltArchive) -> ProvenArchive:
    """What the step before handed on: with BACKUP_RESTORE_PROOF=off, the checked archive."""
    return value if isinstance(value, ProvenArchive) else ProvenArchive(value)


@dg.op(
    name="restore_proof",
    ins={"checked": dg.In(BuiltArchive)},
    out={PROOF_OUTPUT: dg.Out(dg.Nothing),
         "proven": dg.Out(ProvenArchive, io_manager_key=VALUES_IO_MANAGER)},
    description=PROOF_SPEC.description,
)
def restore_proof(context: dg.OpExecutionContext, postgres: PostgresResource,
                  drill: RestoreDrillTarget, checked: BuiltArchive):
    scratch = drill.checked_dsn(postgres) if drill.dsn else None
    result = prove_archive(checked.path, checked.manifest, scratch_dsn=scratch,
                           progress=context.log.info)
    context.log.info(f"restore proof of {checked.name}: {result.summary()}\n"
                     f"{result.report.table_text()}")
    yield dg.Output(None, PROOF_OUTPUT, metadata={
        "archive": checked.name,
        "proof_seconds": dg.MetadataValue.float(result.seconds),
        "phase_seconds": dg.MetadataValue.json(result.report.phases),
        "target": result.target,
        "tables": len(result.report.tables),
        "rows": result.rows,
        "roles_created": dg.MetadataValue.json(result.report.roles_created),
        "comparison": dg.MetadataValue.md(f"```\n{result.report.table_text()}\n```"),
        "result": result.summary(),
    })
    proof = ProofRecord(seconds=result.seconds, target=result.target,
                        phases=result.report.phases)
    yield dg.Output(ProvenArchive(checked, proof, result.summary()), "proven")
