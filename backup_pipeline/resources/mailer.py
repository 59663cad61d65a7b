"""Email to the administrators: SMTP with verified TLS, retries, a mail log, or a local outbox.

The seeds' SMTP_* variables. STARTTLS (port 587) or implicit TLS (465) with the server's
certificate verified (SMTP_CA_FILE for a private CA); plain SMTP only when SMTP_SECURITY=none says
so on purpose. Every send is tried up to four times (three retries, with doubling delays), and each
try is written to the mail log: recipients, subject, size and outcome, never credentials. The last
outcome is kept in BACKUP_DIR/.last_email.json, where `status` and `health-check` read it.

Without SMTP_HOST (the quickstart's default) messages are written as .eml files to the outbox.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import dagster as dg
from pydantic import Field

from backup_pipeline import layout
from backup_pipeline.resources.storage import write_atomically


@dataclass(frozen=True)
class SendResult:
    ok: bool
    attempts: int
    transport: str
    error: str | None = None
    path: str | None = None


class Mailer(dg.ConfigurableResource):
    """Sends the backup's emails to ADMIN_EMAILS."""

    recipients: list[str] = Field(default_factory=list, description="ADMIN_EMAILS")
    sender: str = Field(default="backup@localhost", description="SMTP_FROM")
    smtp_host: str | None = Field(default=None, description="SMTP_HOST; unset: write to outbox")
    smtp_port: int = Field(default=587, description="SMTP_PORT")
    smtp_user: str | None = Field(default=None, description="SMTP_USER")
    smtp_password: str | None = Field(default=None, description="SMTP_PASS, read at run time")
    security: str = Field(default="starttls", description="SMTP_SECURITY: starttls, ssl, none")
    ca_file: str | None = Field(default=None, description="SMTP_CA_FILE")
    outbox_dir: str = Field(description="BACKUP_OUTBOX_DIR")
    mail_log: str = Field(description="BACKUP_MAIL_LOG")
    status_dir: str = Field(description="BACKUP_DIR, for .last_email.json")
    retries: int = Field(default=3)
    retry_base_seconds: float = Field(default=5.0, description="BACKUP_EMAIL_RETRY_BASE_SECONDS")
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
        message["To"] = ", ".join(self.recipients)
        message["Date"] = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        message["Message-ID"] = make_msgid(domain="backup-pipeline")
        return message

    def send(self, message: EmailMessage, kind: str) -> SendResult:
        """Deliver `message`, retrying; the outcome is logged and recorded, never raised."""
        if not self.recipients:
            result = SendResult(False, 0, self.transport,
                                "ADMIN_EMAILS is empty: nobody to send to")
            self._record(message, kind, 0, result)
            return result
        data = message.as_bytes()
        if not self.smtp_host:
            path = self._write_outbox(message, kind, data)
            result = SendResult(True, 1, self.transport, path=str(path))
            self._log(message, kind, len(data), 1, 1, "written to " + str(path))
            self._record(message, kind, len(data), result)
            return result
        attempts = self.retries + 1
        error = None
        for attempt in range(1, attempts + 1):
            try:
                self._deliver(message)
            except (smtplib.SMTPException, OSError, ssl.SSLError) as failure:
                error = f"{type(failure).__name__}: {_safe(failure)}"
                self._log(message, kind, len(data), attempt, attempts, f"FAILED {error}")
                if attempt < attempts:
                    time.sleep(self.retry_base_seconds * 2 ** (attempt - 1))
                continue
            self._log(message, kind, len(data), attempt, attempts, "sent")
            result = SendResult(True, attempt, self.transport)
            self._record(message, kind, len(data), result)
            return result
        result = SendResult(False, attempts, self.transport, error)
        self._record(message, kind, len(data), result)
        return result

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

    def _write_outbox(self, message: EmailMessage, kind: str, data: bytes) -> Path:
        outbox = Path(self.outbox_dir)
        outbox.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        path = outbox / f"{stamp}_{kind}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return path

    def _log(self, message: EmailMessage, kind: str, size: int, attempt: int, attempts: int,
             outcome: str) -> None:
        log = Path(self.mail_log)
        log.parent.mkdir(parents=True, exist_ok=True)
        line = (f"{datetime.now(UTC).isoformat(timespec='seconds')} kind={kind} "
                f"to={','.join(self.recipients) or '-'} subject={json.dumps(message['Subject'])} "
                f"bytes={size} attempt={attempt}/{attempts} via={self.transport} "
                f"outcome={outcome}\n")
        with log.open("a") as handle:
            handle.write(line)

    def _record(self, message: EmailMessage, kind: str, size: int, result: SendResult) -> None:
        folder = Path(self.status_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / layout.LAST_EMAIL_FILE, json.dumps({
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
        }, indent=2) + "\n", 0o644)


def _safe(error: BaseException) -> str:
    """An SMTP error without anything that could be a credential (AUTH lines are dropped)."""
    text = str(error).replace("\n", " ").strip()
    return text if "AUTH" not in text.upper() else "authentication failed"
