"""Status and health of the backups, read without writing anything.

`collect_status` is what `backup-pipeline status` prints; `health_problems` is the Docker
healthcheck (`backup-pipeline health-check`): one line per problem, none when healthy. Both read
the status files in BACKUP_DIR, the archives, the disk, and the Dagster instance's run history
when DAGSTER_HOME points at one; the health check also tries the database once, briefly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import psycopg

from backup_pipeline import layout
from backup_pipeline.resources.storage import BackupStorage, read_last_success
from backup_pipeline.settings import Settings

RUNS_FOR_RATE = 30
JOB_NAME = "backup_job"


@dataclass
class ArchiveInfo:
    name: str
    path: str
    size_bytes: int
    created_at: str
    age_hours: float
    verified: bool | None


@dataclass
class RunInfo:
    run_id: str
    status: str
    started_at: str | None
    duration_seconds: float | None


@dataclass
class BackupStatus:
    backup_dir: str
    newest_archive: ArchiveInfo | None
    archive_count: int
    last_success_at: str | None
    last_success_age_hours: float | None
    last_success_archive: str | None
    last_size_mb: int | None
    free_disk_mb: int | None
    last_run: RunInfo | None = None
    success_rate: dict | None = None
    history_source: str = "status files"
    last_restore_drill: dict | None = None
    # The newest good archive's restore proof: {"seconds", "target"}, None when not proven.
    last_restore_proof: dict | None = None
    last_email: dict | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _read_json(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_int(path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _run_history(status: BackupStatus) -> None:
    """Last run and success rate from the Dagster instance, when DAGSTER_HOME names one."""
    if not os.environ.get("DAGSTER_HOME"):
        status.notes.append("DAGSTER_HOME is not set: run history comes from the status files")
        return
    try:
        import dagster as dg

        instance = dg.DagsterInstance.get()
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=JOB_NAME), limit=RUNS_FOR_RATE)
    except Exception as error:  # any storage problem: fall back, and say so
        status.notes.append(f"Dagster instance not readable ({error}); using the status files")
        return
    status.history_source = "dagster instance"
    finished = [r for r in records if r.dagster_run.status.value in ("SUCCESS", "FAILURE")]
    if records:
        latest = records[0]
        duration = (latest.end_time - latest.start_time
                    if latest.end_time and latest.start_time else None)
        status.last_run = RunInfo(
            run_id=latest.dagster_run.run_id,
            status=latest.dagster_run.status.value,
            started_at=datetime.fromtimestamp(latest.start_time, UTC).isoformat()
            if latest.start_time else None,
            duration_seconds=round(duration, 1) if duration is not None else None,
        )
    succeeded = sum(1 for r in finished if r.dagster_run.status.value == "SUCCESS")
    status.success_rate = {
        "succeeded": succeeded,
        "finished": len(finished),
        "percent": round(100.0 * succeeded / len(finished), 1) if finished else None,
    }


def collect_status(settings: Settings, with_history: bool = True) -> BackupStatus:
    root = settings.backup_dir
    now = time.time()
    found = BackupStorage(backup_dir=str(root), timezone=settings.timezone).archives()
    last = _read_json(root / layout.LAST_BACKUP_FILE)
    newest = None
    if found:
        moment, path = found[0]
        size = path.stat().st_size
        verified = None
        if last is not None and last.get("archive") == path.name:
            verified = bool(last.get("verified")) and last.get("size_bytes") == size
        newest = ArchiveInfo(path.name, str(path), size, moment.isoformat(),
                             round((now - moment.timestamp()) / 3600, 2), verified)
    success = read_last_success(root)
    free = shutil.disk_usage(root).free // layout.MB if root.is_dir() else None
    status = BackupStatus(
        backup_dir=str(root),
        newest_archive=newest,
        archive_count=len(found),
        last_success_at=datetime.fromtimestamp(success, UTC).isoformat() if success else None,
        last_success_age_hours=round((now - success) / 3600, 2) if success else None,
        last_success_archive=(last or {}).get("archive"),
        last_size_mb=_read_int(root / layout.LAST_SIZE_FILE),
        free_disk_mb=free,
        last_restore_drill=_read_json(root / layout.LAST_DRILL_FILE),
        last_restore_proof=(last or {}).get("restore_proof"),
        last_email=_read_json(root / layout.LAST_EMAIL_FILE),
    )
    if with_history:
        _run_history(status)
    return status


def database_problem(settings: Settings, timeout_seconds: int = 3) -> str | None:
    try:
        psycopg.connect(
            host=settings.postgres_host, port=settings.postgres_port,
            dbname=settings.postgres_db, user=settings.postgres_user,
            password=os.environ.get("POSTGRES_PASSWORD") or None,
            connect_timeout=timeout_seconds,
        ).close()
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (f"database unreachable: host {settings.postgres_host} port "
                f"{settings.postgres_port} database {settings.postgres_db} user "
                f"{settings.postgres_user}: {first}")
    return None


def health_problems(settings: Settings, status: BackupStatus, check_database: bool = True
                    ) -> list[str]:
    """One line per problem; an empty list means healthy."""
    problems = []
    age = status.last_success_age_hours
    if age is None:
        problems.append(f"no verified backup has ever been recorded in {settings.backup_dir} "
                        f"({layout.LAST_SUCCESS_FILE} is missing)")
    elif age > settings.max_age_hours:
        problems.append(f"no verified backup within BACKUP_MAX_AGE_HOURS="
                        f"{settings.max_age_hours:g}: the last one finished {age:.1f} h ago")
    last = _read_json(settings.backup_dir / layout.LAST_BACKUP_FILE)
    if last and isinstance(last.get("size_bytes"), int):
        size_mb = last["size_bytes"] / layout.MB
        if not settings.min_size_mb <= size_mb <= settings.max_size_mb:
            problems.append(
                f"last backup {last.get('archive')} is {size_mb:.2f} MB, outside "
                f"BACKUP_MIN_SIZE_MB={settings.min_size_mb:g} .. "
                f"BACKUP_MAX_SIZE_MB={settings.max_size_mb:g}")
    if status.free_disk_mb is not None and status.free_disk_mb < settings.min_free_disk_mb:
        problems.append(f"only {status.free_disk_mb} MB free in {settings.backup_dir}, below "
                        f"BACKUP_MIN_FREE_DISK_MB={settings.min_free_disk_mb}")
    if status.free_disk_mb is None:
        problems.append(f"BACKUP_DIR {settings.backup_dir} does not exist")
    email = status.last_email
    if email and not email.get("ok"):
        problems.append(f"last email ({email.get('kind')}, {email.get('at')}) was NOT delivered "
                        f"after {email.get('attempts')} tries: {email.get('error')}")
    if check_database:
        problem = database_problem(settings)
        if problem:
            problems.append(problem)
    return problems
