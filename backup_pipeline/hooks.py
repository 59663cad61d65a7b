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
from backup_pipeline.assets.offsite import OFFSITE_OUTPUT
from backup_pipeline.assets.restore_proof import ProvenArchive
from backup_pipeline.assets.status import STATUS_OUTPUT
from backup_pipeline.emails.render import success_email, summary_from_manifest
from backup_pipeline.offsite import PRESIGN_MAX_SECONDS, presigned_url
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.resources.offsite import OffsiteStorage
from backup_pipeline.settings import Settings


def build_hooks(settings: Settings) -> tuple[dg.HookDefinition, dg.HookDefinition]:
    @dg.success_hook(name="backup_success_email",
                     required_resource_keys={"mailer", "links", "offsite"})
    def backup_success_email(context: dg.HookContext) -> None:
        mailer: Mailer = context.resources.mailer
        values = context.op_output_values
        recorded: ProvenArchive = values.get(OFFSITE_OUTPUT) or values[STATUS_OUTPUT]
        record = context.instance.get_run_record_by_id(context.run_id)
        started = record.start_time if record and record.start_time else None
        summary = summary_from_manifest(
            recorded.archive.manifest, recorded.kept_path, recorded.kept_size,
            recorded.kept_sha256, time.time() - started if started else None,
            run_url(settings, context.run_id))
        if recorded.summary is not None:
            summary.proof = recorded.summary
        summary.signed_by = recorded.archive.signed_by
        if recorded.sealed is not None:
            summary.sealed_to = recorded.sealed.recipients
        message = success_email(mailer, summary, settings.email_max_mb,
                                _link(context, recorded))
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

    def _link(context: dg.HookContext, recorded: ProvenArchive) -> tuple[str, int] | None:
        """A presigned link to the off-site copy, which works when this server is gone; else
        the download server's signed link, if there is one."""
        if recorded.offsite is not None:
            offsite: OffsiteStorage = context.resources.offsite
            ttl = min(offsite.link_ttl_hours * 3600, PRESIGN_MAX_SECONDS)
            url = presigned_url(offsite.target(), recorded.offsite.key, ttl / 3600)
            return url, int(time.time() + ttl)
        return context.resources.links.link_for(recorded.kept_name)

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
