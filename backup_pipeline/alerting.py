"""The failure alert of a run: sent once, never stuck, sent again while undelivered.

Shared by the failure hook, the blocking checks (a failed check reaches no hook), the run-failure
sensor and the undelivered-alert sensor; a run tag makes sure a run alerts once, whichever of
them gets there first.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import UTC, datetime

import dagster as dg

from backup_pipeline.alerts import (
    ALERT_ATTEMPTS_TAG,
    ALERT_RUN_TAG,
    ALERT_SENDING_SINCE_TAG,
    ALERT_TAG,
    troubleshooting,
)
from backup_pipeline.emails.render import FailureInfo, failure_email
from backup_pipeline.jobs import PROJECT_JOB_TAG
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.settings import Settings


def run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.dagster_ui_url}/runs/{run_id}"


def is_ours(run: dg.DagsterRun, asset_keys: Collection[dg.AssetKey]) -> bool:
    """Whether `run` is one this project alerts for: a run of its jobs (their tag), or a run the
    UI made of its assets (by asset key: Dagster warns when two code locations define the same
    one, and then both would count)."""
    if run.tags.get(PROJECT_JOB_TAG) == run.job_name:
        return True
    if not run.job_name.startswith("__ASSET_JOB"):
        return False
    return not set(run.asset_selection or ()).isdisjoint(asset_keys)


def will_be_retried(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """True when the daemon will retry this run (dagster.yaml run_retries): the alert waits for
    the last attempt, so a failure that the retry fixes wakes nobody up. A run started outside
    the daemon (`dagster job execute`) has no code location to be retried from: it alerts now."""
    if not instance.run_retries_enabled or run.remote_job_origin is None:
        return False
    allowed = int(run.tags.get("dagster/max_retries", instance.run_retries_max_retries))
    attempt = int(run.tags.get("dagster/retry_number", 0))
    return attempt < allowed


ALERT_RETRY_HOURS = 24
# A tag still "sending" this long after it was set belongs to a process that died while sending.
SENDING_STALE_SECONDS = 600


def undelivered_alerts(instance: dg.DagsterInstance, since: float) -> list[str]:
    """Failed runs that ended after `since` whose alert is "failed", or stuck at "sending"."""
    pending = []
    for state in ("failed", "sending"):
        records = instance.get_run_records(filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE], tags={ALERT_TAG: state},
            updated_after=datetime.fromtimestamp(since, UTC)))
        for record in records:
            # Not the update time: every attempt updates the run's tags, which would keep an
            # undeliverable alert in the window forever.
            if (record.end_time or 0) < since or not _own_alert(record.dagster_run):
                continue
            started = float(record.dagster_run.tags.get(ALERT_SENDING_SINCE_TAG) or 0)
            if state == "sending" and time.time() - started < SENDING_STALE_SECONDS:
                continue
            pending.append(record.dagster_run.run_id)
    return pending


def _own_alert(run: dg.DagsterRun) -> bool:
    """Whether the run's alert tags are its own, not inherited from the run it retries."""
    return run.tags.get(ALERT_RUN_TAG) == run.run_id


def send_failure_alert(instance: dg.DagsterInstance, mailer: Mailer, settings: Settings,
                       run_id: str, step: str, error: str, kind: str,
                       resend: bool = False) -> bool:
    """Send the run's one alert, unless it went out already; returns whether it was sent now.

    A dead run alerts even when it will be retried: a killed process is worth knowing about
    whatever the retry does. `resend` is the undelivered-alert sensor trying again. The tag
    never stays at "sending": whatever happens, it ends "sent" or "failed".
    """
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    retried = will_be_retried(instance, run)
    own = _own_alert(run)
    if not resend and ((own and run.tags.get(ALERT_TAG)) or (retried and kind != "dead_run")):
        return False
    attempts_before = int(run.tags.get(ALERT_ATTEMPTS_TAG, "0")) if own else 0
    instance.add_run_tags(run_id, {ALERT_TAG: "sending", ALERT_RUN_TAG: run_id,
                                   ALERT_SENDING_SINCE_TAG: str(int(time.time()))})
    job = run.job_name if not run.job_name.startswith("__") else "asset materialization"
    failure = FailureInfo(
        title=f"{settings.app_name} {job} FAILED at {step}",
        step=step, error=error.strip() or "no message", run_id=run_id,
        run_url=run_url(settings, run_id), kind=kind,
        steps=troubleshooting(kind, settings, retried),
    )
    ok = False
    try:
        ok = mailer.send(failure_email(mailer, failure), kind="failure", retry=not resend).ok
    finally:
        instance.add_run_tags(run_id, {ALERT_TAG: "sent" if ok else "failed",
                                       ALERT_ATTEMPTS_TAG: str(attempts_before + 1)})
    return ok
