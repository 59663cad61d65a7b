"""Resources built from the settings; the database password is read at run time (dg.EnvVar)."""

from __future__ import annotations

import dagster as dg

from backup_pipeline.assets.values import VALUES_IO_MANAGER, step_values
from backup_pipeline.resources.drill import RestoreDrillTarget
from backup_pipeline.resources.links import DownloadLinks
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.resources.offsite import OffsiteStorage
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.safeguards import ArchiveEncryption, ManifestSigning
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import Settings, read_secret


def _secret(name: str) -> dg.EnvVar | None:
    """A secret is wired as dg.EnvVar (read at run time, never shown in the UI) when it is set."""
    return dg.EnvVar(name) if read_secret(name) else None


def build_resources(settings: Settings) -> dict[str, object]:
    password = _secret("POSTGRES_PASSWORD")
    drill_dsn = _secret("BACKUP_DRILL_DSN")
    return {
        VALUES_IO_MANAGER: step_values,
        "mailer": Mailer(
            recipients=list(settings.admin_emails),
            sender=settings.smtp_from,
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_user=settings.smtp_user,
            smtp_password=_secret("SMTP_PASS"),
            security=settings.smtp_security,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
            outbox_dir=str(settings.outbox_dir),
            mail_log=str(settings.mail_log),
            status_dir=str(settings.backup_dir),
            retry_base_seconds=settings.email_retry_base_seconds,
        ),
        "links": DownloadLinks(
            base_url=settings.download_base_url,
            secret=_secret("BACKUP_DOWNLOAD_SECRET"),
            ttl_hours=settings.link_ttl_hours,
        ),
        "drill": RestoreDrillTarget(
            dsn=drill_dsn,
            identity_file=str(settings.age_identity_file) if settings.age_identity_file
            else None),
        "encryption": ArchiveEncryption(
            recipients_text=settings.age_recipients,
            recipients_file=str(settings.age_recipients_file)
            if settings.age_recipients_file else None,
        ),
        "offsite": OffsiteStorage.from_settings(
            settings,
            access_key_id=_secret("AWS_ACCESS_KEY_ID"),
            secret_access_key=_secret("AWS_SECRET_ACCESS_KEY"),
            session_token=_secret("AWS_SESSION_TOKEN"),
        ),
        "signing": ManifestSigning(
            key_file=str(settings.signing_key_file) if settings.signing_key_file else None),
        "postgres": PostgresResource(
            host=settings.postgres_host,
            port=settings.postgres_port,
            database=settings.postgres_db,
            user=settings.postgres_user,
            password=password,
            connect_retries=settings.db_connect_retries,
            retry_base_seconds=settings.db_retry_base_seconds,
            lock_timeout_seconds=settings.lock_timeout_seconds,
            pg_bindir=str(settings.pg_bindir) if settings.pg_bindir else None,
        ),
        "storage": BackupStorage(
            backup_dir=str(settings.backup_dir),
            timezone=settings.timezone,
            retention_days=settings.retention_days,
            retention_min_count=settings.retention_min_count,
            min_size_mb=settings.min_size_mb,
            max_size_mb=settings.max_size_mb,
            disk_reserve_mb=settings.disk_reserve_mb,
            outbox_dir=str(settings.outbox_dir),
        ),
    }
