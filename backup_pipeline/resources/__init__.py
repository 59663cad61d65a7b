"""Resources built from the settings; the database password is read at run time (dg.EnvVar)."""

from __future__ import annotations

import os

import dagster as dg

from backup_pipeline.resources.drill import RestoreDrillTarget
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import Settings


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    password = dg.EnvVar("POSTGRES_PASSWORD") if os.environ.get("POSTGRES_PASSWORD") else None
    drill_dsn = dg.EnvVar("BACKUP_DRILL_DSN") if os.environ.get("BACKUP_DRILL_DSN") else None
    return {
        "drill": RestoreDrillTarget(dsn=drill_dsn),
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
        ),
    }
