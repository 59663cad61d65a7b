"""The backup job: export, config snapshot, archive, its checks, then status and retention."""

from __future__ import annotations

import dagster as dg

BACKUP_GROUPS = ("database", "config", "archive")
# On every run of this project's jobs, however it was launched (schedule, UI, `dagster job
# execute`): the failure sensor watches every code location (`dagster job execute` runs belong
# to none) and alerts only for runs that carry it. Another project's job of the same name does not.
PROJECT_JOB_TAG = "backup_pipeline/job"
# Dagster's run-retry daemon reads it: ALL_STEPS redoes the whole run, not only the failed step.
RETRY_STRATEGY_TAG = "dagster/retry_strategy"


def retry_the_whole_run(context: dg.OpExecutionContext) -> None:
    """Tag a backup run started from the UI (the implicit asset job, which carries no job tags)
    so that the run-retry daemon redoes all of it: retried from the failed step, the new run
    would have none of the values and files the earlier steps made. Called by its first steps."""
    if context.run.tags.get(RETRY_STRATEGY_TAG) != "ALL_STEPS":
        context.instance.add_run_tags(context.run.run_id, {RETRY_STRATEGY_TAG: "ALL_STEPS"})


# One process for the whole run: the staging folder is a run-scoped resource that is removed when
# the run ends, and the steps hand each other values in memory (assets/values.py).
backup_job = dg.define_asset_job(
    name="backup_job",
    selection=dg.AssetSelection.groups(*BACKUP_GROUPS),
    executor_def=dg.in_process_executor,
    # A retried run (dagster.yaml run_retries) must redo every step: each run stages its files
    # in its own folder, so re-running only the failed step would find nothing to pack.
    tags={RETRY_STRATEGY_TAG: "ALL_STEPS", PROJECT_JOB_TAG: "backup_job"},
    description="Dump the critical tables and the transaction window from one snapshot, copy "
                "the configuration, pack and verify the archive, update the status files and "
                "apply retention.",
)

# The drill has its own job so that it never delays or fails the nightly backup.
restore_drill_job = dg.define_asset_job(
    name="restore_drill_job",
    selection=dg.AssetSelection.assets("restore_drill"),
    executor_def=dg.in_process_executor,
    tags={RETRY_STRATEGY_TAG: "ALL_STEPS", PROJECT_JOB_TAG: "restore_drill_job"},
    description="Restore the newest archive into the scratch database BACKUP_DRILL_DSN, "
                "compare with its manifest and record the recovery time.",
)
