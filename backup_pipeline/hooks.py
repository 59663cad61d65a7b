"""The success email and the failure alert, as Dagster hooks on the backup's assets.

Attached to the backup's steps (not to a job), so they fire however the assets run: the
schedule, `dg launch`, `dagster job execute`, or the UI's Materialize button. The success email
hangs on `backup_status`, the last step of a good backup, so it fires once per run, and is told
the archive by that step's output. The failure alert hangs on every step (a failed check fails
its step too); a run tag makes sure a run alerts once, and the run-failure sensor covers
failures no hook sees (a run that dies, or fails before its steps).

A hook that raises does not fail the run, so an email that could not be sent after every retry is
made visible otherwise: an error in the run's log, a run tag, .last_email.json (which
`health-check` reports) and the mail log.
"""

from __future__ import annotations

import time

import dagster as dg

from backup_pipeline.alerting import run_url, send_failure_alert
from backup_pipeline.alerts import EMAIL_TAG, kind_of
from backup_pipeline.assets.restore_proof import ProvenArchive
from backup_pipeline.assets.status import STATUS_OUTPUT
from backup_pipeline.emails.render import success_email, summary_from_manifest
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.settings import Settings


def build_hooks(settings: Settings) -> tuple[dg.HookDefinition, dg.HookDefinition]:
    @dg.success_hook(name="backup_success_email", required_resource_keys={"mailer", "links"})
    def backup_success_email(context: dg.HookContext) -> None:
        mailer: Mailer = context.resources.mailer
        recorded: ProvenArchive = context.op_output_values[STATUS_OUTPUT]
        archive = recorded.archive
        record = context.instance.get_run_record_by_id(context.run_id)
        started = record.start_time if record and record.start_time else None
        summary = summary_from_manifest(
            archive.manifest, archive.path, archive.size, archive.sha256,
            time.time() - started if started else None, run_url(settings, context.run_id))
        if recorded.summary is not None:
            summary.proof = recorded.summary
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
                                  context.run_id, context.op.name, text,
                                  kind_of(error))
        if sent:
            context.log.info("failure alert sent")

    return backup_success_email, backup_failure_alert
