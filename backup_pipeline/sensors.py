"""Monitoring, evaluated by the Dagster daemon: overdue backups, abnormal sizes, unseen failures.

Each sensor keeps its open incident in its cursor, so an incident alerts once, not at every tick,
and its end is noted with a RESOLVED email. They launch no runs: they say why they skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.alerting import (
    ALERT_RETRY_HOURS,
    is_ours,
    send_failure_alert,
    undelivered_alerts,
)
from backup_pipeline.alerts import troubleshooting
from backup_pipeline.emails.render import Notice, notice_email
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.resources.storage import BackupStorage, read_last_success
from backup_pipeline.run_monitoring import describe_failure
from backup_pipeline.settings import Settings


def _cursor(context: dg.SensorEvaluationContext) -> dict:
    try:
        return json.loads(context.cursor) if context.cursor else {}
    except ValueError:
        return {}


def _incident(context: dg.SensorEvaluationContext, mailer: Mailer, problem: str | None,
              key: str, title: str, steps: list[str], ok_text: str) -> dg.SkipReason:
    """Alert when `problem` starts (or changes), note when it ends, stay quiet in between."""
    state = _cursor(context)
    if problem and (state.get("incident") != key or not state.get("alerted")):
        result = mailer.send(notice_email(mailer, Notice(title, problem, steps)), kind="monitor")
        context.update_cursor(json.dumps({"incident": key, "since": time.time(),
                                          "alerted": result.ok}))
        return dg.SkipReason(f"ALERT sent ({'ok' if result.ok else 'FAILED'}): {problem}")
    if problem:
        return dg.SkipReason(f"still open, already alerted: {problem}")
    if state.get("incident"):
        mailer.send(notice_email(mailer, Notice(f"RESOLVED: {title}", ok_text, resolved=True)),
                    kind="monitor")
        context.update_cursor(json.dumps({}))
        return dg.SkipReason(f"recovered, noted: {ok_text}")
    return dg.SkipReason(ok_text)


def build_sensors(settings: Settings, asset_keys: Collection[dg.AssetKey]
                  ) -> list[dg.SensorDefinition]:
    """The sensors; `asset_keys` are this project's assets, whose UI-made runs alert too."""
    # Why: a backup that silently stops (daemon down, schedule off, host asleep) sends no
    # failure email; only the absence of a fresh verified archive shows it.
    @dg.sensor(name="backup_age_sensor", minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Alerts when the newest verified backup is older than "
                           f"BACKUP_MAX_AGE_HOURS={settings.max_age_hours:g} h, or there is none.")
    def backup_age_sensor(context: dg.SensorEvaluationContext, storage: BackupStorage,
                          mailer: Mailer) -> dg.SkipReason:
        finished = read_last_success(storage.root)
        age = (time.time() - finished) / 3600 if finished else None
        if finished is None:
            problem, key = f"no verified backup has ever been made in {storage.root}", "never"
        elif age > settings.max_age_hours:
            problem = (f"the newest verified backup finished {age:.1f} h ago, more than "
                       f"BACKUP_MAX_AGE_HOURS={settings.max_age_hours:g}")
            key = f"stale:{finished}"
        else:
            problem, key = None, ""
        steps = ["Check that the Dagster daemon runs and nightly_backup_schedule is on "
                 "(Dagster UI, Automation).", *troubleshooting("backup", settings)]
        ok = f"newest verified backup is {age:.1f} h old" if age is not None else ""
        return _incident(context, mailer, problem, key, f"{settings.app_name} backup is overdue",
                         steps, ok)

    # Why: an archive far smaller or larger than usual means missing data or runaway tables,
    # even when every check on the file itself passed.
    @dg.sensor(name="backup_size_sensor", minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Alerts when the newest archive is below BACKUP_MIN_SIZE_MB="
                           f"{settings.min_size_mb:g} or above BACKUP_MAX_SIZE_MB="
                           f"{settings.max_size_mb:g}.")
    def backup_size_sensor(context: dg.SensorEvaluationContext, storage: BackupStorage,
                           mailer: Mailer) -> dg.SkipReason:
        found = storage.archives()
        if not found:
            return dg.SkipReason("no archive yet (backup_age_sensor reports that)")
        newest = found[0][1]
        size = newest.stat().st_size
        problem = None
        if not settings.min_size_mb <= size / layout.MB <= settings.max_size_mb:
            problem = (f"the newest archive {newest.name} is {layout.size_text(size)} "
                       f"({size:,} bytes), outside "
                       f"BACKUP_MIN_SIZE_MB={settings.min_size_mb:g} .. "
                       f"BACKUP_MAX_SIZE_MB={settings.max_size_mb:g}")
        steps = [f"Look inside: tar -tzvf {newest}",
                 "Compare its row counts (manifest.json) with the previous archive's.",
                 "If the data really grew or shrank, adjust BACKUP_MIN_SIZE_MB / "
                 "BACKUP_MAX_SIZE_MB."]
        return _incident(context, mailer, problem, f"size:{newest.name}",
                         f"{settings.app_name} backup has an abnormal size", steps,
                         f"newest archive {newest.name} is {layout.size_text(size)}")

    # Why: hooks only see failing steps. A failed blocking check, or a run that dies before
    # its first step, reaches no hook; this alerts for those, once, and skips runs whose hook
    # already alerted (the run tag). It watches every code location so that runs started with
    # `dagster job execute` are seen too.
    @dg.run_failure_sensor(name="backup_failure_alert_sensor", monitor_all_code_locations=True,
                           minimum_interval_seconds=30,
                           default_status=dg.DefaultSensorStatus.RUNNING,
                           description="One alert email for a failed run of this project's "
                                       "jobs that no hook alerted for.")
    def backup_failure_alert_sensor(context: dg.RunFailureSensorContext, mailer: Mailer) -> None:
        if not is_ours(context.dagster_run, asset_keys):
            return  # another project's run on the same instance: not ours to alert for
        run_id = context.dagster_run.run_id
        failure = describe_failure(context.instance, run_id)
        send_failure_alert(context.instance, mailer, settings, run_id, failure.step,
                           failure.error, failure.kind)

    # Why: an alert that could not be sent (SMTP down, outbox disk full) must not be lost: the
    # run's tag says "failed", and this sends it again every few minutes for a day.
    @dg.sensor(name="undelivered_alert_sensor", minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Sends again, for {ALERT_RETRY_HOURS} h, every failure alert that "
                           "could not be delivered.")
    def undelivered_alert_sensor(context: dg.SensorEvaluationContext, mailer: Mailer
                                 ) -> dg.SkipReason:
        pending = undelivered_alerts(context.instance, time.time() - ALERT_RETRY_HOURS * 3600)
        if not pending:
            return dg.SkipReason("every failure alert was delivered")
        results = []
        for index, run_id in enumerate(pending):
            failure = describe_failure(context.instance, run_id)
            # One try each (this sensor is the retry), and none after a failure: the mail is
            # down for them all, and the tick must end well within the daemon's timeout.
            if not send_failure_alert(context.instance, mailer, settings, run_id, failure.step,
                                      failure.error, failure.kind,
                                      resend=True):
                waiting = len(pending) - index - 1
                results.append(f"{run_id[:8]} still undelivered"
                               + (f" ({waiting} more waiting)" if waiting else ""))
                break
            results.append(f"{run_id[:8]} sent")
        return dg.SkipReason("alerts sent again: " + ", ".join(results))

    return [backup_age_sensor, backup_size_sensor, backup_failure_alert_sensor,
            undelivered_alert_sensor]
