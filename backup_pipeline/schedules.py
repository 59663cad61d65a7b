"""When backups run: every night at 02:00 by default (BACKUP_SCHEDULE, BACKUP_TIMEZONE)."""

from __future__ import annotations

import dagster as dg

from backup_pipeline.settings import Settings


def build_nightly_backup_schedule(settings: Settings, job: dg.UnresolvedAssetJobDefinition
                                  ) -> dg.ScheduleDefinition:
    # Running by default: a backup service whose schedule waits for a click in the UI is a
    # backup service that silently makes no backups after a fresh deployment.
    return dg.ScheduleDefinition(
        name="nightly_backup_schedule",
        job=job,
        cron_schedule=settings.schedule,
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"backup_job at '{settings.schedule}' ({settings.timezone}).",
    )


def build_restore_drill_schedule(settings: Settings, job: dg.UnresolvedAssetJobDefinition
                                 ) -> dg.ScheduleDefinition:
    # Running only once a scratch database is configured: without one the drill cannot run,
    # and a schedule that fails every week would teach people to ignore alerts.
    status = (dg.DefaultScheduleStatus.RUNNING if settings.drill_dsn
              else dg.DefaultScheduleStatus.STOPPED)
    return dg.ScheduleDefinition(
        name="restore_drill_schedule",
        job=job,
        cron_schedule=settings.drill_schedule,
        execution_timezone=settings.timezone,
        default_status=status,
        description=f"restore_drill_job at '{settings.drill_schedule}' ({settings.timezone}).",
    )
