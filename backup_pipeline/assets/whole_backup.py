"""A backup is made whole or not at all: a run that selects only some of its assets is refused.

The UI lets anyone "Materialize" one table, the archive or the status alone. Each backup asset
needs the others of the same run (the export's files are packed by the archive, which the
checks verify and the proof restores, and only then is the status written), so a partial run
could only redo work and throw it away, fail with an URGENT alert for a click, or fail the checks
of an archive that is fine. Each backup asset calls `refuse_a_partial_backup` before it touches
anything: the first step of such a run fails with the reason, which the UI shows on the run;
nothing is exported, written or checked, no alert is sent and the run is not retried.

A run that selects no backup asset at all (the UI's "Execute checks" on the archive: it
verifies the newest archive again) is not a partial backup and goes ahead.
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline.alerts import ALERT_TAG
from backup_pipeline.jobs import BACKUP_GROUPS, RETRY_STRATEGY_TAG

REFUSED_ALERT_STATE = "none: a partial backup was refused"
_SHOWN = 4


class PartialBackupRefused(dg.Failure):
    """The run selected some of the backup's assets, not all of them."""


def _names(keys: set[dg.AssetKey]) -> str:
    names = sorted(key.to_user_string() for key in keys)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def refuse_a_partial_backup(context: dg.AssetExecutionContext,
                            whole: frozenset[dg.AssetKey]) -> None:
    """Raise PartialBackupRefused when this run selected some of the backup's assets (`whole`:
    given, for a subset run's own job knows only the assets it selected), not all of them."""
    # A job's run (backup_job however launched) records no selection, an in-process run an
    # empty one: then its job's own assets are what it runs.
    selected = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    chosen, missing = whole & selected, whole - selected
    if not chosen:
        return  # no backup asset: the drill alone, or the checks alone
    if not missing:
        if context.run.tags.get(RETRY_STRATEGY_TAG) != "ALL_STEPS":
            # A whole backup started from the UI runs the implicit asset job, which the run-retry
            # daemon would retry from the failed step: a new run without the staged files.
            context.instance.add_run_tags(context.run.run_id, {RETRY_STRATEGY_TAG: "ALL_STEPS"})
        return
    # Before raising: the failure hook and the failure sensor send nothing for a tagged run,
    # and the run-retry daemon leaves a run alone whose retries are used up.
    context.instance.add_run_tags(context.run.run_id, {ALERT_TAG: REFUSED_ALERT_STATE,
                                                       "dagster/max_retries": "0"})
    raise PartialBackupRefused(
        description=(
            f"refused: a backup is made whole or not at all. This run selected {len(chosen)} of "
            f"the backup's {len(whole)} assets ({_names(chosen)}), without {_names(missing)}: "
            f"its files would be thrown away unpacked, or there would be no files to pack, "
            f"check or restore. Nothing was exported, and no archive, check or status file was "
            f"touched. To back up now, launch backup_job (Jobs, backup_job, Launchpad) or "
            f"materialize all of the backup's assets (groups {', '.join(BACKUP_GROUPS)})."),
        allow_retries=False,
    )
