"""The mailer on a full disk and under a careless umask: real ENOSPC from a real 64 KiB tmpfs.

A full disk is the day the administrators most need the email, and the day its bookkeeping
(the outbox, `.last_email.json`, the mail log) is most likely to fail with it. Mounting a tmpfs
needs root; CI runs as root, elsewhere these tests skip and say so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

from backup_pipeline import layout
from backup_pipeline.alerts import ALERT_TAG
from backup_pipeline.resources.mailer import Mailer, SendResult
from backup_pipeline.run_log import RunLogFileHandler
from backup_pipeline_tests.helpers import run_backup
from backup_pipeline_tests.smtp_server import PASSWORD, USER, start_smtp

ADMIN = "admin@example.com"


def fill(disk: Path, leave: int = 0) -> None:
    """Write to `disk` until the kernel refuses with ENOSPC, then give `leave` bytes back."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)


def mailer(outbox: Path, mail_log: Path, status_dir: Path, **smtp) -> Mailer:
    return Mailer(recipients=[ADMIN], outbox_dir=str(outbox), mail_log=str(mail_log),
                  status_dir=str(status_dir), retry_base_seconds=0, **smtp)


def send(sender: Mailer, body: str = "the backup failed\n", kind: str = "failure"
         ) -> SendResult:
    message = sender.new_message("URGENT: backup FAILED")
    message.set_content(body)
    return sender.send(message, kind=kind)


def record(status_dir: Path) -> dict:
    return json.loads((status_dir / layout.LAST_EMAIL_FILE).read_text())


def names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_a_full_outbox_disk_leaves_no_eml_and_the_failure_is_returned_and_recorded(
        small_disk, tmp_path):
    status_dir, log = tmp_path / "backups", tmp_path / "backups" / "mail.log"
    assert send(mailer(tmp_path / "roomy_outbox", log, status_dir), kind="success").ok
    assert record(status_dir)["ok"] is True  # the previous email was delivered
    outbox = small_disk / "outbox"
    outbox.mkdir()
    fill(small_disk)

    result = send(mailer(outbox, log, status_dir))

    assert result.ok is False and result.attempts == 1 and result.warnings == ()
    assert result.error == (
        f"no space left on device writing the outbox {outbox}: free some space (df -h "
        f"{outbox}), or set BACKUP_OUTBOX_DIR to a folder elsewhere (or SMTP_HOST to send by "
        f"SMTP)")
    assert names(outbox) == set()  # no 0-byte .eml, no temporary file
    status = record(status_dir)
    assert (status["kind"], status["ok"], status["error"], status["outbox_file"]) == (
        "failure", False, result.error, None)
    last_line = log.read_text().splitlines()[-1]
    assert "kind=failure" in last_line and "outcome=FAILED no space left" in last_line


def test_an_email_larger_than_the_free_space_leaves_no_partial_eml(small_disk, tmp_path):
    outbox = small_disk / "outbox"
    outbox.mkdir()
    fill(small_disk, leave=16 * 1024)

    # 42 KB into 16 KiB: the write starts, then the disk fills.
    result = send(mailer(outbox, tmp_path / "mail.log", tmp_path), body=("x" * 70 + "\n") * 600)

    assert result.ok is False and "no space left on device" in result.error
    assert names(outbox) == set()
    assert record(tmp_path)["ok"] is False


def test_send_returns_the_failure_when_the_record_and_the_log_fail_too(small_disk):
    fill(small_disk)

    result = send(mailer(small_disk / "outbox", small_disk / "mail.log", small_disk))

    assert result.ok is False and result.error.startswith("no space left on device")
    assert result.warnings == (
        f"no space left on device writing the mail log {small_disk / 'mail.log'}: free some "
        f"space (df -h {small_disk}), or set BACKUP_MAIL_LOG to a file elsewhere",
        f"no space left on device writing the email record "
        f"{small_disk / layout.LAST_EMAIL_FILE}: free some space (df -h {small_disk})",
    )
    assert not list((small_disk / "outbox").iterdir())
    assert not (small_disk / layout.LAST_EMAIL_FILE).exists()


def test_a_record_of_a_delivered_email_is_not_left_behind_on_a_full_disk(small_disk, tmp_path):
    """Replacing the record needs a new block; the stale one is removed first, which frees it."""
    assert send(mailer(tmp_path / "outbox", tmp_path / "mail.log", small_disk)).ok
    fill(small_disk)

    result = send(mailer(small_disk / "outbox", tmp_path / "mail.log", small_disk))

    assert result.ok is False and result.warnings == ()
    assert record(small_disk)["ok"] is False
    assert record(small_disk)["error"] == result.error


def test_smtp_delivery_counts_as_ok_when_the_mail_log_cannot_be_written(small_disk, tmp_path):
    server = start_smtp(tmp_path)
    try:
        fill(small_disk)
        sender = mailer(tmp_path / "outbox", small_disk / "mail.log", tmp_path,
                        smtp_host="127.0.0.1", smtp_port=server.port, smtp_user=USER,
                        smtp_password=PASSWORD, ca_file=str(server.ca_file))

        result = send(sender)

        assert result.ok is True and result.attempts == 1 and result.error is None
        assert len(server.recorder.messages) == 1  # delivered once, not retried for the log
        assert result.warnings == (
            f"no space left on device writing the mail log {small_disk / 'mail.log'}: free "
            f"some space (df -h {small_disk}), or set BACKUP_MAIL_LOG to a file elsewhere",)
        assert record(tmp_path)["ok"] is True
    finally:
        server.stop()


def test_a_run_failing_on_a_full_outbox_disk_records_its_alert_as_undelivered(
        backup_env, instance, small_disk):
    """The case seen in production: the failure hook's .eml hit ENOSPC."""
    outbox = small_disk / "outbox"
    env = {**backup_env, "POSTGRES_PORT": "1", "BACKUP_DB_RETRY_BASE_SECONDS": "0.01",
           "BACKUP_OUTBOX_DIR": str(outbox)}
    outbox.mkdir()
    fill(small_disk)

    result = run_backup(env, instance)

    assert not result.success
    assert instance.get_run_by_id(result.run_id).tags[ALERT_TAG] == "failed"
    assert names(outbox) == set()
    status = record(Path(backup_env["BACKUP_DIR"]))
    assert status["kind"] == "failure" and status["ok"] is False
    assert status["error"].startswith(f"no space left on device writing the outbox {outbox}")


def test_under_umask_000_the_mailer_creates_private_files(open_umask, tmp_path):
    status_dir, outbox = tmp_path / "backups", tmp_path / "backups" / "outbox"
    log = tmp_path / "var" / "log" / "backup" / "mail.log"  # outside BACKUP_DIR

    result = send(mailer(outbox, log, status_dir))

    assert result.ok
    modes = {path: path.stat().st_mode & 0o777 for path in [
        status_dir, outbox, Path(result.path), log, log.parent, log.parent.parent,
        status_dir / layout.LAST_EMAIL_FILE]}
    assert modes == {status_dir: 0o700, outbox: 0o700, Path(result.path): 0o600, log: 0o600,
                     log.parent: 0o700, log.parent.parent: 0o700,
                     status_dir / layout.LAST_EMAIL_FILE: 0o644}


def test_under_umask_000_the_run_log_is_private(open_umask, tmp_path, monkeypatch):
    path = tmp_path / "var" / "log" / "backup" / "backup.log"
    monkeypatch.setenv("BACKUP_LOG_FILE", str(path))
    handler = RunLogFileHandler()
    try:
        handler.emit(logging.makeLogRecord({"msg": f"success email sent to {ADMIN}"}))
    finally:
        handler.close()
    assert ADMIN in path.read_text()
    assert [p.stat().st_mode & 0o777 for p in (path, path.parent, path.parent.parent)] == [
        0o600, 0o700, 0o700]
