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
from backup_pipeline.settings import Settings, dagster_home, read_secret

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
    # Finished runs: how long they took; a run in progress: how long it has been going.
    duration_seconds: float | None
    # A run in progress: seconds since its process last beat (None: it never beat), and
    # whether that is past the heartbeat timeout (its process died). Finished runs: their
    # failure message, first line.
    heartbeat_age_seconds: float | None = None
    dead: bool = False
    failure: str | None = None


# A run waiting in the queue longer than this is stuck behind something.
QUEUED_TOO_LONG_SECONDS = 3600


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
    # The run that has waited longest in the queue: {"run_id", "job", "waiting_seconds"}.
    oldest_queued: dict | None = None
    # Why BACKUP_DIR could not be read (permissions), None when it could.
    backup_dir_error: str | None = None
    # The newest verified off-site copy (.last_offsite_copy.json) and its age in hours.
    last_offsite_copy: dict | None = None
    last_offsite_age_hours: float | None = None
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


def _run_info(instance, record) -> RunInfo:
    from backup_pipeline.run_monitoring import describe_failure, silence

    run = record.dagster_run
    now = time.time()
    end = record.end_time or (None if run.is_finished else now)
    info = RunInfo(
        run_id=run.run_id,
        status=run.status.value,
        started_at=datetime.fromtimestamp(record.start_time, UTC).isoformat()
        if record.start_time else None,
        duration_seconds=round(end - record.start_time, 1)
        if end and record.start_time else None,
    )
    if not run.is_finished:
        quiet = silence(instance, run.run_id, now)
        if quiet is not None:
            info.heartbeat_age_seconds = round(quiet.seconds, 1)
            info.dead = quiet.dead
    elif run.status.value == "FAILURE":
        failure = describe_failure(instance, run.run_id)
        step, error = failure.step, failure.error
        lines = [line for line in error.strip().splitlines() if line.strip()]
        info.failure = f"at {step}: {lines[0] if lines else 'no message'}"
    return info


def _run_history(status: BackupStatus) -> None:
    """Last run, success rate and stuck queue from the Dagster instance, when DAGSTER_HOME names
    one."""
    if not dagster_home():
        status.notes.append("DAGSTER_HOME is not set: run history comes from the status files")
        return
    try:
        import dagster as dg

        instance = dg.DagsterInstance.get()
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=JOB_NAME), limit=RUNS_FOR_RATE)
        queued = instance.get_run_records(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]), limit=1,
            ascending=True)
        if records:
            status.last_run = _run_info(instance, records[0])
    except Exception as error:  # any storage problem: fall back, and say so
        status.notes.append(f"Dagster instance not readable ({error}); using the status files")
        return
    status.history_source = "dagster instance"
    if queued:
        waited = time.time() - queued[0].create_timestamp.timestamp()
        status.oldest_queued = {"run_id": queued[0].dagster_run.run_id,
                                "job": queued[0].dagster_run.job_name,
                                "waiting_seconds": round(waited, 1)}
    finished = [r for r in records if r.dagster_run.status.value in ("SUCCESS", "FAILURE")]
    succeeded = sum(1 for r in finished if r.dagster_run.status.value == "SUCCESS")
    status.success_rate = {
        "succeeded": succeeded,
        "finished": len(finished),
        "percent": round(100.0 * succeeded / len(finished), 1) if finished else None,
    }


def _free_mb(root) -> int | None:
    try:
        return shutil.disk_usage(root).free // layout.MB if root.is_dir() else None
    except OSError:
        return None


def collect_status(settings: Settings) -> BackupStatus:
    root = settings.backup_dir
    now = time.time()
    unreadable = None
    try:
        found = BackupStorage(backup_dir=str(root), timezone=settings.timezone).archives()
    except OSError as error:
        found = []
        unreadable = (f"BACKUP_DIR {root} cannot be read by uid {os.getuid()} "
                      f"({error.strerror or error}): run as the user that owns it, or fix its "
                      f"owner and mode (ls -ld {root}; it should be 0700, owned by the backup "
                      "user)")
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
    free = _free_mb(root)
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
        backup_dir_error=unreadable,
    )
    offsite = _read_json(root / layout.LAST_OFFSITE_FILE)
    if offsite is not None:
        status.last_offsite_copy = offsite
        uploaded = _moment(offsite.get("uploaded_at"))
        if uploaded is not None:
            status.last_offsite_age_hours = round((now - uploaded.timestamp()) / 3600, 2)
    _run_history(status)
    return status


def _moment(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def offsite_problem(settings: Settings, status: BackupStatus) -> str | None:
    """With BACKUP_S3_BUCKET, the newest copy off this server is held to BACKUP_MAX_AGE_HOURS
    as the local one is: a bucket that stopped taking copies is a backup that is missing."""
    if not settings.offsite:
        return None
    age = status.last_offsite_age_hours
    if status.last_offsite_copy is None or age is None:
        return (f"no off-site copy has ever been recorded ({layout.LAST_OFFSITE_FILE} is "
                f"missing) although BACKUP_S3_BUCKET={settings.s3_bucket} is set")
    if age > settings.max_age_hours:
        return (f"no off-site copy within BACKUP_MAX_AGE_HOURS={settings.max_age_hours:g}: the "
                f"newest, {status.last_offsite_copy.get('url')}, was uploaded {age:.1f} h ago")
    return None


def database_problem(settings: Settings, timeout_seconds: int = 3) -> str | None:
    try:
        psycopg.connect(
            host=settings.postgres_host, port=settings.postgres_port,
            dbname=settings.postgres_db, user=settings.postgres_user,
            password=read_secret("POSTGRES_PASSWORD"),
            connect_timeout=timeout_seconds,
        ).close()
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (f"database unreachable: host {settings.postgres_host} port "
                f"{settings.postgres_port} database {settings.postgres_db} user "
                f"{settings.postgres_user}: {first}")
    return None


def run_problems(status: BackupStatus) -> list[str]:
    """What the Dagster instance says is wrong: a dead or failed last run, a stuck queue."""
    problems = []
    run = status.last_run
    if run and run.dead:
        problems.append(
            f"{JOB_NAME} run {run.run_id} is {run.status} but its process has sent no heartbeat "
            f"for {run.heartbeat_age_seconds:.0f} s: it died. Run monitoring should have marked "
            "it failed: check that the Dagster daemon runs and that dagster.yaml has "
            "run_monitoring enabled and run_launcher HeartbeatRunLauncher")
    elif run and run.status == "FAILURE":
        problems.append(f"the last {JOB_NAME} run {run.run_id} (started {run.started_at}) "
                        f"FAILED {run.failure}")
    queued = status.oldest_queued
    if queued and queued["waiting_seconds"] > QUEUED_TOO_LONG_SECONDS:
        problems.append(
            f"{queued['job']} run {queued['run_id']} has waited in the queue for "
            f"{queued['waiting_seconds'] / 60:.0f} min: another run holds the one slot "
            "(dagster.yaml max_concurrent_runs) or the daemon is not running")
    return problems


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
    if status.backup_dir_error:
        problems.append(status.backup_dir_error)
    elif status.free_disk_mb is None:
        problems.append(f"BACKUP_DIR {settings.backup_dir} does not exist")
    email = status.last_email
    if email and not email.get("ok"):
        problems.append(f"last email ({email.get('kind')}, {email.get('at')}) was NOT delivered "
                        f"after {email.get('attempts')} tries: {email.get('error')}")
    offsite = offsite_problem(settings, status)
    if offsite:
        problems.append(offsite)
    problems.extend(run_problems(status))
    if check_database:
        problem = database_problem(settings)
        if problem:
            problems.append(problem)
    return problems
