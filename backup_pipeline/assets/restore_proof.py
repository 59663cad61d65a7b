"""The restore proof of every run: the new archive restored and compared before anything calls
it good (see backup_pipeline/restore_proof.py for what it does and why).

It runs after the archive's blocking checks and before `backup_status`, so a failed proof fails
the run: the archive stays on disk under its name but the status files do not move, retention
does not run, no success email goes out, and the failure alert names what did not restore.
"""

from pathlib import Path

import dagster as dg

from backup_pipeline.assets.archive import ARCHIVE_KEY, archive_materialization
from backup_pipeline.assets.whole_backup import refuse_a_partial_backup
from backup_pipeline.resources.drill import RestoreDrillTarget
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.restore_proof import prove_archive
from backup_pipeline.verify import read_manifest

PROOF_KEY = dg.AssetKey("restore_proof")


def build_restore_proof(whole: frozenset[dg.AssetKey]) -> dg.AssetsDefinition:
    """The proof asset; `whole` is the backup's assets, which a run must select together."""

    @dg.asset(
        key=PROOF_KEY,
        deps=[ARCHIVE_KEY],
        group_name="archive",
        kinds={"postgres"},
        description="The new archive restored with `backup-pipeline restore`'s own code into a "
                    "throwaway PostgreSQL (or BACKUP_DRILL_DSN) and compared with it, table by "
                    "table, byte for byte: the measured recovery time of every archive.",
    )
    def restore_proof(context: dg.AssetExecutionContext, postgres: PostgresResource,
                      drill: RestoreDrillTarget) -> dg.MaterializeResult:
        refuse_a_partial_backup(context, whole)
        materialization = archive_materialization(context.instance, context.run.run_id)
        if materialization is None:
            raise RuntimeError("restore_proof follows a backup_archive of the same run: run the "
                               "whole backup_job")
        archive = Path(materialization.metadata["path"].value)
        manifest = read_manifest(archive)
        if manifest is None:
            raise RuntimeError(f"{archive} has no readable manifest.json: nothing to prove "
                               f"(backup-pipeline verify {archive} says why)")
        scratch = drill.checked_dsn(postgres) if drill.dsn else None
        result = prove_archive(archive, manifest, scratch_dsn=scratch, progress=context.log.info)
        context.log.info(f"restore proof of {archive.name}: {result.summary()}\n"
                         f"{result.report.table_text()}")
        return dg.MaterializeResult(metadata={
            "archive": archive.name,
            "proof_seconds": dg.MetadataValue.float(result.seconds),
            "phase_seconds": dg.MetadataValue.json(result.report.phases),
            "target": result.target,
            "tables": len(result.report.tables),
            "rows": result.rows,
            "roles_created": dg.MetadataValue.json(result.report.roles_created),
            "comparison": dg.MetadataValue.md(f"```\n{result.report.table_text()}\n```"),
            "result": result.summary(),
        })

    return restore_proof
