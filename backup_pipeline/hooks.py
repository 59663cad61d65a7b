"""The success email and the failure alert, as Dagster hooks on the backup's assets.

Attached to the assets themselves (not to a job), so they fire however the assets run: the
schedule, `dagster job execute`, or the UI's Materialize button. The success email hangs on
`backup_status`, the last step of a good backup, so it fires once per run. The failure alert hangs
on every backup asset; a run tag makes sure a run alerts once, and the run-failure sensor covers
failures no hook sees (a failed blocking check, a run that dies before its steps).

A hook that raises does not fail the run, so an email that could not be sent after every retry is
made visible otherwise: an error in the run's log, a run tag, .last_email.json (which
`health-check` reports) and the mail log.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from backup_pipeline.alerts import (
    ALERT_ATTEMPTS_TAG,
    ALERT_SENDING_SINCE_TAG,
    ALERT_TAG,
    EMAIL_TAG,
    failure_kind,
    troubleshooting,
)
from backup_pipeline.assets.archive import archive_materialization
from backup_pipeline.assets.restore_proof import PROOF_KEY
from backup_pipeline.emails.render import (
    FailureInfo,
    failure_email,
    success_email,
    summary_from_manifest,
)
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.settings import Settings
from backup_pipeline.verify import read_manifest


def run_url(settings: Settings, run_id: str) -> str:
    return f"{settings.dagster_ui_url}/runs/{run_id}"


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
            if (record.end_time or 0) < since:
                continue
            started = float(record.dagster_run.tags.get(ALERT_SENDING_SINCE_TAG) or 0)
            if state == "sending" and time.time() - started < SENDING_STALE_SECONDS:
                continue
            pending.append(record.dagster_run.run_id)
    return pending


def send_failure_alert(instance: dg.DagsterInstance, mailer: Mailer, settings: Settings,
                       run_id: str, step: str, error: str, resend: bool = False) -> bool:
    """Send the run's one alert, unless it went out already; returns whether it was sent now.

    A dead run alerts even when it will be retried: a killed process is worth knowing about
    whatever the retry does. `resend` is the undelivered-alert sensor trying again. The tag
    never stays at "sending": whatever happens, it ends "sent" or "failed".
    """
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    kind = failure_kind(error)
    retried = will_be_retried(instance, run)
    if not resend and (run.tags.get(ALERT_TAG) or (retried and kind != "dead_run")):
        return False
    instance.add_run_tags(run_id, {ALERT_TAG: "sending",
                                   ALERT_SENDING_SINCE_TAG: str(int(time.time()))})
    job = run.job_name if not run.job_name.startswith("__") else "asset materialization"
    failure = FailureInfo(
        title=f"Smart AI Hub {job} FAILED at {step}",
        step=step, error=error.strip() or "no message", run_id=run_id,
        run_url=run_url(settings, run_id), kind=kind,
        steps=troubleshooting(kind, settings, retried),
    )
    ok = False
    try:
        ok = mailer.send(failure_email(mailer, failure), kind="failure", retry=not resend).ok
    finally:
        attempts = int(run.tags.get(ALERT_ATTEMPTS_TAG, "0")) + 1
        instance.add_run_tags(run_id, {ALERT_TAG: "sent" if ok else "failed",
                                       ALERT_ATTEMPTS_TAG: str(attempts)})
    return ok


def build_hooks(settings: Settings) -> tuple[dg.HookDefinition, dg.HookDefinition]:
    @dg.success_hook(name="backup_success_email", required_resource_keys={"mailer", "links"})
    def backup_success_email(context: dg.HookContext) -> None:
        mailer: Mailer = context.resources.mailer
        materialization = archive_materialization(context.instance, context.run_id)
        if materialization is None:
            context.log.error("no archive in this run: no success email")
            return
        metadata = materialization.metadata
        archive = Path(metadata["path"].value)
        record = context.instance.get_run_record_by_id(context.run_id)
        started = record.start_time if record and record.start_time else None
        manifest = read_manifest(archive)
        if manifest is None:
            raise RuntimeError(f"{archive} has no readable manifest.json: no success email "
                               f"(backup-pipeline verify {archive} says why)")
        summary = summary_from_manifest(
            manifest, archive, metadata["bytes"].value,
            metadata["sha256"].value, time.time() - started if started else None,
            run_url(settings, context.run_id))
        proven = archive_materialization(context.instance, context.run_id, PROOF_KEY)
        if proven is not None:
            summary.proof = proven.metadata["result"].value
        message = success_email(mailer, summary, settings.email_max_mb,
                                context.resources.links.link_for(archive.name))
        result = mailer.send(message, kind="success")
        for warning in result.warnings:
            context.log.warning(warning)
        context.instance.add_run_tags(context.run_id,
                                      {EMAIL_TAG: "sent" if result.ok else "failed"})
        if not result.ok:
            context.log.error(
                f"the success email could not be sent after {result.attempts} tries via "
                f"{result.transport}: {result.error}. The backup itself is good; see "
                f"{settings.mail_log}")
            raise RuntimeError(f"success email not sent: {result.error}")
        context.log.info(f"success email sent to {', '.join(mailer.recipients)} via "
                         f"{result.transport}" + (" (archive attached)" if summary.attached
                                                 else ""))

    @dg.failure_hook(name="backup_failure_alert", required_resource_keys={"mailer"})
    def backup_failure_alert(context: dg.HookContext) -> None:
        error = context.op_exception
        text = f"{type(error).__name__}: {error}" if error else "the step failed"
        sent = send_failure_alert(context.instance, context.resources.mailer, settings,
                                  context.run_id, context.step_key or context.op.name, text)
        if sent:
            context.log.info("failure alert sent")

    return backup_success_email, backup_failure_alert
