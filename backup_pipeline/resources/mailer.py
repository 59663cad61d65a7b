"""Email to the administrators: SMTP with verified TLS, retries, a mail log, or a local outbox.

The seeds' SMTP_* variables. STARTTLS (port 587) or implicit TLS (465) with the server's
certificate verified (SMTP_CA_FILE for a private CA); plain SMTP only when SMTP_SECURITY=none says
so on purpose. Every send is tried up to four times (three retries, with doubling delays), and each
try is written to the mail log: recipients, subject, size and outcome, never credentials. The last
outcome is kept in BACKUP_DIR/.last_email.json, where `status` and `health-check` read it.

Without SMTP_HOST (the quickstart's default) messages are written as .eml files to the outbox.

A full disk is the day the email matters most and the day its files are most likely to fail, so
`send` never raises for it: an outbox that cannot be written is a failed send, a mail log or
record that cannot be written is a warning on the result. Every file is created with its mode
(0600, folders 0700), whatever the umask: the log and the .eml files name the recipients, and an
.eml may carry the archive.
"""

from __future__ import annotations

import errno
import json
import os
import smtplib
import ssl
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import dagster as dg
from pydantic import Field

from backup_pipeline import layout
from backup_pipeline.files import fsync_dir, make_private_dirs, write_atomically, write_synced
from backup_pipeline.retry import with_retries
from backup_pipeline.settings import DEFAULTS

# What to do about a file that cannot be written, by errno; {folder} is where it goes.
_WRITE_FIXES = {
    errno.ENOSPC: "free some space (df -h {folder})",
    errno.EDQUOT: "free some space or raise the quota of the user running Dagster (quota -v)",
    errno.EACCES: "make {folder} writable by the user running Dagster (ls -ld {folder})",
    errno.EPERM: "make {folder} writable by the user running Dagster (ls -ld {folder})",
    errno.EROFS: "remount {folder}'s file system read-write",
    errno.EFBIG: "raise the file size limit of the user running Dagster (ulimit -f)",
}


@dataclass(frozen=True)
class SendResult:
    """What became of one email. `warnings` name the bookkeeping (the mail log, the record in
    .last_email.json) that could not be written: they never turn a delivered email into a
    failed one, but the caller should show them, as nothing else on disk will."""

    ok: bool
    attempts: int
    transport: str
    error: str | None = None
    path: str | None = None
    warnings: tuple[str, ...] = ()


class Mailer(dg.ConfigurableResource):
    """Sends the backup's emails to ADMIN_EMAILS."""

    recipients: list[str] = Field(default_factory=list, description="ADMIN_EMAILS")
    sender: str = Field(default=DEFAULTS.smtp_from, description="SMTP_FROM")
    smtp_host: str | None = Field(default=None, description="SMTP_HOST; unset: write to outbox")
    smtp_port: int = Field(default=DEFAULTS.smtp_port, description="SMTP_PORT")
    smtp_user: str | None = Field(default=None, description="SMTP_USER")
    smtp_password: str | None = Field(default=None, description="SMTP_PASS, read at run time")
    security: str = Field(default=DEFAULTS.smtp_security,
                          description="SMTP_SECURITY: starttls, ssl, none")
    ca_file: str | None = Field(default=None, description="SMTP_CA_FILE")
    outbox_dir: str = Field(description="BACKUP_OUTBOX_DIR")
    mail_log: str = Field(description="BACKUP_MAIL_LOG")
    status_dir: str = Field(description="BACKUP_DIR, for .last_email.json")
    retries: int = Field(default=3)
    retry_base_seconds: float = Field(default=DEFAULTS.email_retry_base_seconds,
                                       description="BACKUP_EMAIL_RETRY_BASE_SECONDS")
    timeout_seconds: int = Field(default=60)

    @property
    def transport(self) -> str:
        if self.smtp_host:
            return f"smtp {self.smtp_host}:{self.smtp_port} ({self.security})"
        return f"outbox {self.outbox_dir}"

    def new_message(self, subject: str) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.sender
        # Without ADMIN_EMAILS (allowed only without SMTP_HOST) the outbox still gets the
        # message: the quickstart's and a test host's record of what would have been sent.
        message["To"] = ", ".join(self.recipients) or "undisclosed-recipients:;"
        message["Date"] = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        message["Message-ID"] = make_msgid(domain="backup-pipeline")
        return message

    def send(self, message: EmailMessage, kind: str, retry: bool = True) -> SendResult:
        """Deliver `message`, retrying (unless `retry` is False: a sensor that is itself the
        retry must fit in its tick); the outcome is returned, logged and recorded, never raised
        for a delivery or disk error: a raising hook only logs HOOK_ERRORED, and the caller needs
        the result to tag the run and to say what went wrong."""
        data = message.as_bytes()
        warnings: list[str] = []
        if self.smtp_host and not self.recipients:  # load_settings refuses this already
            result = SendResult(False, 0, self.transport,
                                "ADMIN_EMAILS is empty: nobody to send to")
        elif not self.smtp_host:
            result = self._send_to_outbox(message, kind, data, warnings)
        else:
            result = self._send_by_smtp(message, kind, len(data), warnings,
                                        self.retries + 1 if retry else 1)
        self._record(warnings, message, kind, len(data), result)
        return replace(result, warnings=tuple(warnings))

    def _send_to_outbox(self, message: EmailMessage, kind: str, data: bytes,
                        warnings: list[str]) -> SendResult:
        try:
            path = self._write_outbox(kind, data)
        except OSError as error:
            outbox = Path(self.outbox_dir)
            text = _write_failure(f"the outbox {outbox}", outbox, error,
                                  "set BACKUP_OUTBOX_DIR to a folder elsewhere (or SMTP_HOST to "
                                  "send by SMTP)")
            self._log(warnings, message, kind, len(data), "1/1", f"FAILED {text}")
            return SendResult(False, 1, self.transport, text)
        self._log(warnings, message, kind, len(data), "1/1", f"written to {path}")
        return SendResult(True, 1, self.transport, path=str(path))

    def _send_by_smtp(self, message: EmailMessage, kind: str, size: int,
                      warnings: list[str], attempts: int) -> SendResult:
        """Only the delivery is inside the retried `try`: a mail log that cannot be written
        must not make a delivered email count as failed, nor send it again."""
        tried = 0

        def deliver() -> None:
            nonlocal tried
            tried += 1
            self._deliver(message)

        def log_failure(attempt: int, failure: BaseException, _delay: float | None) -> None:
            self._log(warnings, message, kind, size, f"{attempt}/{attempts}",
                      f"FAILED {_error_text(failure)}")

        try:
            with_retries(deliver, attempts=attempts, base_seconds=self.retry_base_seconds,
                         retry_on=(smtplib.SMTPException, OSError), on_failure=log_failure)
        except (smtplib.SMTPException, OSError) as failure:
            return SendResult(False, attempts, self.transport, _error_text(failure))
        self._log(warnings, message, kind, size, f"{tried}/{attempts}", "sent")
        return SendResult(True, tried, self.transport)

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file or None)

    def _deliver(self, message: EmailMessage) -> None:
        if self.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.smtp_host, self.smtp_port, timeout=self.timeout_seconds,
                context=self._tls_context())
        else:
            client = smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds)
        with client:
            client.ehlo()
            if self.security == "starttls":
                client.starttls(context=self._tls_context())
                client.ehlo()
            if self.smtp_user:
                client.login(self.smtp_user, self.smtp_password or "")
            client.send_message(message)

    def _write_outbox(self, kind: str, data: bytes) -> Path:
        """Written under a temporary name, fsynced, then linked into place (never replacing a
        file), so an .eml in the outbox is always whole: a full disk once left a 0-byte one."""
        outbox = Path(self.outbox_dir)
        make_private_dirs(outbox)
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        path = outbox / f"{stamp}_{kind}.eml"
        tmp = outbox / f".{path.name}.{os.getpid()}.tmp"
        write_synced(tmp, data)
        try:
            os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(outbox)
        return path

    def _log(self, warnings: list[str], message: EmailMessage, kind: str, size: int,
             attempt: str, outcome: str) -> None:
        """One line per try, appended best-effort: a failure becomes a warning (once)."""
        line = (f"{datetime.now(UTC).isoformat(timespec='seconds')} kind={kind} "
                f"to={','.join(self.recipients) or '-'} subject={json.dumps(message['Subject'])} "
                f"bytes={size} attempt={attempt} via={self.transport} outcome={outcome}\n")
        log = Path(self.mail_log)
        try:
            make_private_dirs(log.parent)
            _append(log, line.encode())
        except OSError as error:
            warning = _write_failure(f"the mail log {log}", log.parent, error,
                                     "set BACKUP_MAIL_LOG to a file elsewhere")
            if warning not in warnings:
                warnings.append(warning)

    def _record(self, warnings: list[str], message: EmailMessage, kind: str, size: int,
                result: SendResult) -> None:
        """.last_email.json, written best-effort: a failure becomes a warning."""
        folder = Path(self.status_dir)
        path = folder / layout.LAST_EMAIL_FILE
        text = json.dumps({
            "kind": kind,
            "subject": message["Subject"],
            "recipients": self.recipients,
            "ok": result.ok,
            "error": result.error,
            "attempts": result.attempts,
            "bytes": size,
            "transport": result.transport,
            "outbox_file": result.path,
            "at": datetime.now(UTC).isoformat(),
        }, indent=2) + "\n"
        try:
            make_private_dirs(folder)
            _replace_record(path, text)
        except OSError as error:
            warnings.append(_write_failure(f"the email record {path}", folder, error))


def _replace_record(path: Path, text: str) -> None:
    """On a full disk the new record has no room; the old one is then removed, since it would
    keep saying the previous email's outcome, and the block it frees is tried once more."""
    try:
        write_atomically(path, text, 0o644)
    except OSError:
        path.unlink(missing_ok=True)
        write_atomically(path, text, 0o644)


def _append(log: Path, line: bytes) -> None:
    """One write() with O_APPEND, so concurrent senders' lines do not interleave."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written < len(line):
        raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes written")


def _write_failure(target: str, folder: Path, error: OSError, instead: str = "") -> str:
    """The cause in words, on what, and what to do: "[Errno 28]" alone names neither the folder
    nor the fix."""
    cause = os.strerror(error.errno).lower() if error.errno else str(error)
    fix = _WRITE_FIXES.get(error.errno or 0, "check it (ls -ld {folder}; df -h {folder})")
    return f"{cause} writing {target}: {fix.format(folder=folder)}" + (
        f", or {instead}" if instead else "")


def _safe(error: BaseException) -> str:
    """An SMTP error without anything that could be a credential (AUTH lines are dropped)."""
    text = str(error).replace("\n", " ").strip()
    return text if "AUTH" not in text.upper() else "authentication failed"


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {_safe(error)}"
