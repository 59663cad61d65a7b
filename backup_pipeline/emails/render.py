"""The emails' content: jinja2 templates (HTML autoescaped, with a plain-text alternative).

The success email carries the summary the seeds list and the archive itself when the whole
encoded message stays under BACKUP_EMAIL_MAX_MB (base64 grows a file by a third, so the decision
is made on the encoded size), else a signed download link, else the archive's path on the server.
Failure emails say URGENT, what failed, the error, the run's link, and what to do for that kind of
failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from backup_pipeline import layout
from backup_pipeline.manifest import Manifest, TableEntry
from backup_pipeline.settings import DEFAULT_APP_NAME

if TYPE_CHECKING:  # only its new_message(): rendering stays free of Dagster
    from backup_pipeline.resources.mailer import Mailer

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("backup_pipeline.emails", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass
class BackupSummary:
    archive_name: str
    archive_path: str
    created_at: str
    size_bytes: int
    sha256: str
    duration_seconds: float | None
    database: str
    server_version: str
    cutoff: str
    months: int
    tables: tuple[TableEntry, ...]
    config_included: list[str]
    config_missing: list[str]
    # Files seen but not copied (a link out of BACKUP_CONFIG_DIR, a FIFO), each with its reason.
    config_not_copied: list[str]
    run_url: str
    app_name: str = DEFAULT_APP_NAME
    proof: str = "not proven (BACKUP_RESTORE_PROOF=off)"
    attached: bool = False
    link: str | None = None
    link_expires: str | None = None
    # How many age recipients the archive is sealed to (None: in clear).
    sealed_to: int | None = None
    signed_by: str | None = None

    @property
    def plain_name(self) -> str:
        """The .tar.gz inside a sealed archive (or the archive itself)."""
        return self.archive_name.removesuffix(layout.AGE_SUFFIX)

    @property
    def size_text(self) -> str:
        return f"{layout.size_text(self.size_bytes)} ({self.size_bytes:,} bytes)"

    @property
    def duration_text(self) -> str:
        if self.duration_seconds is None:
            return "unknown"
        minutes, seconds = divmod(round(self.duration_seconds), 60)
        return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"

    @property
    def server_path(self) -> str:
        return self.archive_path


@dataclass
class FailureInfo:
    title: str
    step: str
    error: str
    run_id: str
    run_url: str
    kind: str
    steps: list[str]
    when: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass
class Notice:
    title: str
    text: str
    steps: list[str] = field(default_factory=list)
    resolved: bool = False


def summary_from_manifest(manifest: Manifest, archive: Path, size: int, sha256: str,
                          duration: float | None, run_url: str) -> BackupSummary:
    db = manifest.database
    return BackupSummary(
        archive_name=archive.name,
        archive_path=str(archive),
        created_at=manifest.created_at,
        size_bytes=size,
        sha256=sha256,
        duration_seconds=duration,
        database=f"{db.name} on {db.host}:{db.port}",
        server_version=manifest.server_version,
        cutoff=manifest.window.cutoff,
        months=manifest.window.months,
        tables=manifest.tables,
        config_included=list(manifest.config.included),
        config_missing=list(manifest.config.missing),
        config_not_copied=[f"{k.path} ({k.reason})" for k in manifest.config.skipped],
        run_url=run_url,
        app_name=manifest.application,
    )


def encoded_size(raw_bytes: int) -> int:
    """Bytes a file takes in a MIME message: base64 (4 per 3) plus a CRLF per 76 characters."""
    encoded = 4 * math.ceil(raw_bytes / 3)
    return encoded + 2 * math.ceil(encoded / 76)


def _with_bodies(message: EmailMessage, name: str, context: dict) -> EmailMessage:
    message.set_content(_env.get_template(f"{name}.txt.j2").render(**context))
    message.add_alternative(_env.get_template(f"{name}.html.j2").render(**context),
                            subtype="html")
    return message


def success_email(mailer: Mailer, summary: BackupSummary, max_mb: float,
                  link: tuple[str, int] | None) -> EmailMessage:
    """Attach when the encoded message fits BACKUP_EMAIL_MAX_MB; otherwise link or path."""
    limit = int(max_mb * layout.MB)
    subject = (f"{summary.app_name} backup OK: {summary.archive_name} "
               f"({layout.size_text(summary.size_bytes)})")
    summary.attached = True
    message = _with_bodies(mailer.new_message(subject), "success", {"s": summary})
    if len(message.as_bytes()) + encoded_size(summary.size_bytes) < limit:
        subtype = "octet-stream" if summary.sealed_to else "gzip"
        message.add_attachment(Path(summary.archive_path).read_bytes(), maintype="application",
                               subtype=subtype, filename=summary.archive_name)
        if len(message.as_bytes()) < limit:
            return message
    summary.attached = False
    if link:
        summary.link = link[0]
        summary.link_expires = datetime.fromtimestamp(link[1], UTC).isoformat(timespec="minutes")
    return _with_bodies(mailer.new_message(subject), "success", {"s": summary})


def failure_email(mailer: Mailer, failure: FailureInfo) -> EmailMessage:
    return _with_bodies(mailer.new_message(f"URGENT: {failure.title}"), "failure",
                        {"f": failure})


def notice_email(mailer: Mailer, notice: Notice) -> EmailMessage:
    subject = notice.title if notice.resolved else f"URGENT: {notice.title}"
    return _with_bodies(mailer.new_message(subject), "notice", {"n": notice})
