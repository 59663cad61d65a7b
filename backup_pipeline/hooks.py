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
from pathlib import Path

import dagster as dg

from backup_pipeline.alerting import run_url, send_failure_alert
from backup_pipeline.alerts import EMAIL_TAG
from backup_pipeline.assets.archive import archive_materialization
from backup_pipeline.assets.restore_proof import PROOF_KEY
from backup_pipeline.emails.render import success_email, summary_from_manifest
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.settings import Settings
from backup_pipeline.verify import read_manifest


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
