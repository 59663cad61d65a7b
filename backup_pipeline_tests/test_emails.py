"""Emails against a real SMTP server (STARTTLS, test CA, AUTH) and downloads over real HTTP."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import layout
from backup_pipeline.alerts import ALERT_RUN_TAG, ALERT_TAG
from backup_pipeline.assets import whole_backup_keys
from backup_pipeline.definitions import build_defs
from backup_pipeline.downloads import make_server, signed_link
from backup_pipeline.jobs import PROJECT_JOB_TAG
from backup_pipeline.resources.postgres import DatabaseConnectionError
from backup_pipeline.resources.storage import DiskSpaceError
from backup_pipeline.sample_data.cluster import free_port
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    archives,
    manifest,
    outbox_messages,
    plain_text,
    read_member,
    run_backup,
)
from backup_pipeline_tests.smtp_server import PASSWORD, start_smtp

ADMINS = {"admin1@example.com", "admin2@example.com"}
SECRET = "download-secret-for-tests"


@pytest.fixture
def smtp(tmp_path):
    server = start_smtp(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def mail_env(backup_env, smtp, monkeypatch) -> dict[str, str]:
    env = {**backup_env, **smtp.env(), "DAGSTER_UI_URL": "https://dagster.example.com"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _bodies(message) -> tuple[str, str]:
    return (message.get_body(("plain",)).get_content(),
            message.get_body(("html",)).get_content())


def _attachments(message) -> list:
    return list(message.iter_attachments())


def test_one_success_email_with_the_archive_attached(mail_env, smtp, instance):
    result = run_backup(mail_env, instance)
    assert result.success
    assert len(smtp.recorder.messages) == 1
    recipients, message = smtp.recorder.messages[0]
    assert set(recipients) == ADMINS
    [archive] = archives(mail_env["BACKUP_DIR"])
    assert archive.name in message["Subject"]
    text, html = _bodies(message)
    for body in (text, html):
        assert "public.users" in body and "credit_transactions" in body
        assert "Quick restore" in body and "backup-pipeline restore" in body
        assert "https://dagster.example.com/runs/" + result.run_id in body
    assert "transactions since" in text
    [attachment] = _attachments(message)
    assert attachment.get_filename() == archive.name
    assert attachment.get_content() == archive.read_bytes()
    assert PASSWORD not in message.as_string()
    status = json.loads((Path(mail_env["BACKUP_DIR"]) / layout.LAST_EMAIL_FILE).read_text())
    assert status["ok"] and status["kind"] == "success" and status["attempts"] == 1
    log = Path(mail_env["BACKUP_DIR"], "mail.log").read_text()
    assert "outcome=sent" in log and PASSWORD not in log
    assert instance.get_run_by_id(result.run_id).tags["backup_pipeline/email"] == "sent"


def test_a_large_archive_gets_a_link_that_downloads_it(mail_env, smtp, instance, monkeypatch):
    port = free_port()
    env = {**mail_env, "BACKUP_EMAIL_MAX_MB": "0.05",
           "BACKUP_DOWNLOAD_BASE_URL": f"http://127.0.0.1:{port}"}
    monkeypatch.setenv("BACKUP_DOWNLOAD_SECRET", SECRET)
    assert run_backup(env, instance).success
    [archive] = archives(env["BACKUP_DIR"])
    [(_, message)] = smtp.recorder.messages
    assert _attachments(message) == []
    assert len(message.as_bytes()) < 0.05 * 1024 * 1024
    text, html = _bodies(message)
    link = next(w for w in text.split() if w.startswith("http://127.0.0.1"))
    assert link.replace("&", "&amp;") in html  # autoescaped in HTML

    server = make_server(Path(env["BACKUP_DIR"]), SECRET, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(link, timeout=10) as response:
            assert response.status == 200
            assert response.read() == archive.read_bytes()
        # A broken download resumes with a Range request.
        first = _get(link, {"Range": "bytes=0-999"})
        rest = _get(link, {"Range": "bytes=1000-"})
        assert first.status == rest.status == 206
        assert first.body + rest.body == archive.read_bytes()
        assert rest.headers["Content-Range"] == f"bytes 1000-{archive.stat().st_size - 1}/" \
                                               f"{archive.stat().st_size}"
        base = f"http://127.0.0.1:{port}"
        tampered = link.replace("sig=", "sig=0")
        expired, _ = signed_link(base, SECRET, archive.name, 1, now=time.time() - 7200)
        other_name = archive.name.replace(archive.name[16:24], "19990101")
        unknown, _ = signed_link(base, SECRET, other_name, 1)
        forged, _ = signed_link(base, "not-the-secret", archive.name, 1)
        for url, status in [(tampered, 403), (expired, 403), (forged, 403), (unknown, 404),
                            (f"{base}/download/..%2F..%2Fetc%2Fpasswd?expires=9999999999&sig=x",
                             404),
                            (f"{base}/download/.last_backup.json?expires=9999999999&sig=x", 404)]:
            got = _get(url)
            assert got.status == status, url
            assert archive.read_bytes()[:100] not in got.body
    finally:
        server.shutdown()
        server.server_close()


class _Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body


def _get(url: str, headers: dict | None = None) -> _Response:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return _Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return _Response(error.code, error.headers, error.read())


def test_a_failed_run_sends_exactly_one_urgent_alert(mail_env, smtp, instance):
    env = {**mail_env, "POSTGRES_PORT": "1", "BACKUP_DB_RETRY_BASE_SECONDS": "0.01"}
    result = run_backup(env, instance)
    assert not result.success
    assert len(smtp.recorder.messages) == 1
    recipients, message = smtp.recorder.messages[0]
    assert set(recipients) == ADMINS
    assert message["Subject"].startswith("URGENT:")
    assert "database_export" in message["Subject"]
    text, html = _bodies(message)
    assert "could not connect to PostgreSQL at host 127.0.0.1 port 1" in text
    assert result.run_id in text and f"https://dagster.example.com/runs/{result.run_id}" in html
    assert "pg_isready" in text  # the database troubleshooting steps
    assert PASSWORD not in message.as_string() and env["POSTGRES_PASSWORD"] not in text

    # The run-failure sensor sees the same run and sends nothing more.
    _evaluate_failure_sensor(env, instance, result)
    assert len(smtp.recorder.messages) == 1


def _evaluate_failure_sensor(env, instance, result) -> None:
    """The run-failure sensor on the failed run of `result` (a run result, or a run)."""
    defs = build_defs(load_settings(env))
    sensor = defs.resolve_sensor_def("backup_failure_alert_sensor")
    failure = _failure_event(instance, result.run_id)
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        dagster_event=failure.dagster_event, resources={"mailer": defs.resources["mailer"]},
    ).for_run_failure()
    sensor(context)


def _failure_event(instance, run_id: str):
    return next(e for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE")


def test_only_this_projects_failed_runs_alert(mail_env, smtp, instance):
    """The sensor watches every code location of the instance: another project's failed runs,
    even of a job named backup_job, send nothing; a failed run of ours that no hook alerted for
    (as launched: with its job's tags) and a UI run of some of our assets send one each."""
    @dg.op
    def fails() -> None:
        raise RuntimeError("another project's failure")

    @dg.asset(name="someone_elses_table")
    def someone_elses_table() -> None:
        raise RuntimeError("another project's asset")

    other = dg.Definitions(assets=[someone_elses_table], jobs=[
        dg.JobDefinition(graph_def=dg.GraphDefinition(name=name, node_defs=[fails]), name=name)
        for name in ("backup_job", "nightly_etl")])
    theirs = [other.resolve_job_def(name).execute_in_process(instance=instance,
                                                             raise_on_error=False).run_id
              for name in ("backup_job", "nightly_etl")]
    theirs.append(other.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, raise_on_error=False).run_id)
    defs = build_defs(load_settings(mail_env))
    sensor = defs.resolve_sensor_def("backup_failure_alert_sensor")

    def evaluate(run_id: str) -> None:
        sensor(dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run_id),
            dagster_event=_failure_event(instance, run_id).dagster_event,
            resources={"mailer": defs.resources["mailer"]}).for_run_failure())

    for run_id in theirs:
        evaluate(run_id)
    assert smtp.recorder.messages == []

    job = defs.resolve_job_def("backup_job")
    ours = instance.create_run_for_job(job_def=job, tags=job.tags)
    instance.report_run_failed(ours)
    evaluate(ours.run_id)
    [(_, message)] = smtp.recorder.messages
    assert message["Subject"].startswith("URGENT: Smart AI Hub backup_job FAILED")
    ui_run = instance.create_run_for_job(
        job_def=defs.resolve_implicit_global_asset_job_def(),
        asset_selection=whole_backup_keys(load_settings(mail_env)))
    instance.report_run_failed(ui_run)
    evaluate(ui_run.run_id)
    assert len(smtp.recorder.messages) == 2


def test_a_failed_blocking_check_alerts_once_without_the_daemon_too(mail_env, smtp, instance):
    """A failed check fails its step: the failure hook sends the alert (no daemon needed), with
    the verification advice, and the run-failure sensor, evaluated afterwards, does not send a
    second one."""
    env = {**mail_env, "BACKUP_MAX_SIZE_MB": "0.001"}
    result = run_backup(env, instance)
    assert not result.success
    assert len(smtp.recorder.messages) == 1
    _evaluate_failure_sensor(env, instance, result)
    _evaluate_failure_sensor(env, instance, result)
    assert len(smtp.recorder.messages) == 1
    _, message = smtp.recorder.messages[0]
    assert message["Subject"] == "URGENT: Smart AI Hub backup_job FAILED at archive_checks"
    text = message.get_body(("plain",)).get_content()
    assert "blocking check failed: size_within_bounds (archive is" in text
    assert "outside BACKUP_MIN_SIZE_MB=0 .. BACKUP_MAX_SIZE_MB=0.001" in text
    assert "Verify the newest archive: backup-pipeline verify" in text  # kind: verification


def test_retries_until_the_server_accepts(mail_env, smtp, instance):
    smtp.recorder.refuse = 2
    assert run_backup(mail_env, instance).success
    assert len(smtp.recorder.messages) == 1 and smtp.recorder.refused == 2
    log = Path(mail_env["BACKUP_DIR"], "mail.log").read_text().splitlines()
    assert [line.split("outcome=")[1].split()[0] for line in log] == ["FAILED", "FAILED", "sent"]
    assert "attempt=3/4" in log[-1]


def test_a_refused_email_is_recorded_and_reported(mail_env, smtp, instance):
    smtp.recorder.refuse = 100
    result = run_backup(mail_env, instance)
    assert result.success  # the backup itself is good ...
    assert smtp.recorder.messages == [] and smtp.recorder.refused == 4
    # ... and the failure shows in the run, the status file and the health check.
    assert instance.get_run_by_id(result.run_id).tags["backup_pipeline/email"] == "failed"
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("success email could not be sent after 4 tries" in m for m in logs)
    status = json.loads((Path(mail_env["BACKUP_DIR"]) / layout.LAST_EMAIL_FILE).read_text())
    assert status["ok"] is False and "451" in status["error"]
    done = subprocess.run([BACKUP_PIPELINE, "health-check"], capture_output=True, text=True,
                          env={**os.environ, **mail_env})
    assert done.returncode == 1
    assert "last email (success" in done.stdout and "NOT delivered after 4 tries" in done.stdout


def test_an_untrusted_certificate_is_refused(mail_env, smtp, instance, tmp_path):
    other = start_smtp(tmp_path / "other") if (tmp_path / "other").mkdir() is None else None
    try:
        env = {**mail_env, "SMTP_CA_FILE": str(other.ca_file)}  # the wrong CA for `smtp`
        assert run_backup(env, instance).success
        assert smtp.recorder.messages == []
        status = json.loads((Path(env["BACKUP_DIR"]) / layout.LAST_EMAIL_FILE).read_text())
        assert status["ok"] is False and "CERTIFICATE_VERIFY_FAILED" in status["error"]
    finally:
        other.stop()


def test_implicit_tls_on_its_own_port(backup_env, instance, tmp_path, monkeypatch):
    server = start_smtp(tmp_path, implicit_tls=True)
    try:
        env = {**backup_env, **server.env(security="ssl")}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert run_backup(env, instance).success
        assert len(server.recorder.messages) == 1
    finally:
        server.stop()


def test_without_smtp_host_emails_go_to_the_outbox(backup_env, instance):
    assert run_backup(backup_env, instance).success
    [eml] = list((Path(backup_env["BACKUP_DIR"]) / "outbox").glob("*_success.eml"))
    assert eml.stat().st_mode & 0o777 == 0o600
    assert b"Smart AI Hub backup OK" in eml.read_bytes()


def test_without_admin_emails_or_smtp_the_outbox_still_gets_the_email(backup_env, instance,
                                                                     monkeypatch):
    """ADMIN_EMAILS empty is allowed without SMTP_HOST (load_settings refuses it with one): the
    message is written to the outbox and no hook errors."""
    env = {**backup_env, "ADMIN_EMAILS": ""}
    monkeypatch.setenv("ADMIN_EMAILS", "")
    result = run_backup(env, instance)
    assert result.success
    assert not [e for e in result.all_events if e.event_type_value == "HOOK_ERRORED"]
    [eml] = list((Path(env["BACKUP_DIR"]) / "outbox").glob("*_success.eml"))
    assert b"To: undisclosed-recipients:;" in eml.read_bytes()


def test_the_application_is_named_as_configured(backup_env, instance, monkeypatch):
    """BACKUP_APP_NAME names the application in the email, BACKUP_INFO.txt and the manifest
    (the default is the seeds' "Smart AI Hub"), and in the alert of a failed run."""
    env = {**backup_env, "BACKUP_APP_NAME": "Acme CRM"}
    monkeypatch.setenv("BACKUP_APP_NAME", "Acme CRM")
    assert run_backup(env, instance).success
    [made] = archives(env["BACKUP_DIR"])
    assert manifest(made)["application"] == "Acme CRM"
    info = read_member(made, layout.BACKUP_INFO).decode().splitlines()
    assert info[:2] == ["ACME CRM - CRITICAL DATA BACKUP", "=" * len(info[0])]
    [success] = outbox_messages(env)
    assert success["Subject"].startswith("Acme CRM backup OK: ")
    assert "Acme CRM backup succeeded" in plain_text(success)
    assert "Smart AI Hub" not in success.as_string()
    failed = run_backup({**env, "POSTGRES_PORT": "1", "BACKUP_DB_RETRY_BASE_SECONDS": "0.01"},
                        instance)
    assert not failed.success
    alert = outbox_messages(env)[-1]
    assert alert["Subject"] == "URGENT: Acme CRM backup_job FAILED at database_export"


def test_materializing_the_assets_like_the_ui_also_sends_exactly_one_email(mail_env, smtp,
                                                                          instance):
    """The UI's Materialize button runs the implicit asset job, not backup_job: the hooks sit
    on the assets, so the email still goes out, once."""
    defs = build_defs(load_settings(mail_env))
    backup_assets = [a for a in defs.assets
                     if dg.AssetKey("restore_drill") not in a.keys]
    result = dg.materialize(backup_assets, resources=defs.resources, instance=instance)
    assert result.success
    assert result.dagster_run.job_name == "__ephemeral_asset_job__"
    # Retried by the daemon, a UI run would redo every step, not only the failed one.
    assert instance.get_run_by_id(result.run_id).tags["dagster/retry_strategy"] == "ALL_STEPS"
    assert len(smtp.recorder.messages) == 1
    assert str(smtp.recorder.messages[0][1]["Subject"]).strip().startswith("Smart AI Hub backup OK")


def _our_failing_run(instance, error: Exception, tags: dict | None = None) -> str:
    """A failed run of a job carrying this project's tag, whose one step raised `error` with
    no hook to alert for it: the sensor's case."""
    @dg.op
    def export() -> None:
        raise error

    job = dg.JobDefinition(graph_def=dg.GraphDefinition(name="ours", node_defs=[export]),
                           name="ours", tags={PROJECT_JOB_TAG: "ours", **(tags or {})})
    return job.execute_in_process(instance=instance, raise_on_error=False).run_id


@pytest.mark.parametrize(("error", "advice"), [
    (DiskSpaceError("not enough free disk in BACKUP_DIR"), "Check free space: df -h"),
    (OSError(errno.ENOSPC, "No space left on device"), "Check free space: df -h"),
    (DatabaseConnectionError("could not connect"), "Check that PostgreSQL is up"),
    (RuntimeError("something else"), "read the failed step's log"),
])
def test_the_sensor_gives_the_advice_of_the_error_the_step_raised(mail_env, smtp, instance,
                                                                  error, advice):
    """Dagster wraps what a step raised: the kind comes from the exception inside."""
    run_id = _our_failing_run(instance, error)
    _evaluate_failure_sensor(mail_env, instance, instance.get_run_by_id(run_id))
    [(_, message)] = smtp.recorder.messages
    assert advice in message.get_body(("plain",)).get_content()


def test_a_retry_that_inherited_its_parents_alert_tags_still_alerts(mail_env, smtp, instance):
    """Dagster copies a run's tags to its retry: the parent's "sent" is not the retry's."""
    parent = str(uuid.uuid4())
    run_id = _our_failing_run(instance, RuntimeError("the retry failed too"), tags={
        ALERT_TAG: "sent", ALERT_RUN_TAG: parent, "dagster/parent_run_id": parent})
    _evaluate_failure_sensor(mail_env, instance, instance.get_run_by_id(run_id))
    _evaluate_failure_sensor(mail_env, instance, instance.get_run_by_id(run_id))
    [(_, message)] = smtp.recorder.messages
    assert run_id in message.get_body(("plain",)).get_content()
    assert instance.get_run_by_id(run_id).tags[ALERT_RUN_TAG] == run_id
