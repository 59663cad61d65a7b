"""What an administrator should do about a failure, by the kind of failure.

Shared by the failure hook, the run-failure sensor and the monitoring sensors, so that every
alert for the same kind of problem gives the same advice.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import ClassVar

from backup_pipeline.settings import Settings

# How an administrator runs the backup by hand (`dagster job execute -m
# backup_pipeline.definitions -j backup_job` works too).
RERUN = ("dg launch --job backup_job (in the project folder; in the stack: docker compose -f "
         "docker-compose.prod.yml exec backup-code dg launch --job backup_job)")

# What run_monitoring writes into a dead run's failure, and how its alert is recognised.
DEAD_RUN_PHRASE = "stopped sending heartbeats"

ALERT_TAG = "backup_pipeline/alert"
# The run the alert tags were set for: a retried run inherits its parent's tags, and must not
# take the parent's alert for its own.
ALERT_RUN_TAG = "backup_pipeline/alert_run"
# How often the run's alert was tried: the undelivered-alert sensor sends it again.
ALERT_ATTEMPTS_TAG = "backup_pipeline/alert_attempts"
ALERT_SENDING_SINCE_TAG = "backup_pipeline/alert_sending_since"
EMAIL_TAG = "backup_pipeline/email"


class KindOfFailure:
    """Mixed into the exceptions that decide an alert's advice: `kind` is a key of
    `troubleshooting`. The failure hook reads it from the exception; a sensor, which has only the
    failed run's events, finds it by the exception's class name (`failure_kind`)."""

    kind: ClassVar[str] = "backup"


# A full disk raised as a plain OSError (writing the staging files or the archive): its errno
# as Python writes it into the message of an error read back from the run's events.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = tuple(f"[Errno {number}]" for number in _DISK_FULL)


def _kinds_by_class_name() -> dict[str, str]:
    found, pending = {}, list(KindOfFailure.__subclasses__())
    while pending:
        kind = pending.pop()
        found[kind.__name__] = kind.kind
        pending.extend(kind.__subclasses__())
    return found


def kind_of(error: BaseException | None) -> str:
    """The kind of the exception a step raised, or of the first one in its chain that has
    one (a KindOfFailure, or a full disk)."""
    while error is not None:
        if isinstance(error, KindOfFailure):
            return error.kind
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return "disk"
        error = error.__cause__ or error.__context__
    return "backup"


def failure_kind(errors: Sequence[tuple[str, str]], message: str = "") -> str:
    """The kind of a failure read back from a run's events: `errors` are (class name,
    message) of the error and its causes, outermost first (Dagster wraps what a step raised);
    a dead run has no error, only the run monitoring's DEAD_RUN_PHRASE in `message`."""
    if DEAD_RUN_PHRASE in message:
        return "dead_run"
    kinds = _kinds_by_class_name()
    for error_class, text in errors:
        if error_class in kinds:
            return kinds[error_class]
        if error_class == "OSError" and any(full in text for full in _DISK_FULL_TEXT):
            return "disk"
    return "backup"


def troubleshooting(kind: str, settings: Settings, retried: bool = False) -> list[str]:
    """The steps for `kind`; `retried` says whether the daemon runs the failed run again (a run
    started with `dagster job execute` is not), which changes what to do next."""
    pg = (f"-h {settings.postgres_host} -p {settings.postgres_port} "
          f"-U {settings.postgres_user}")
    steps = {
        "database": [
            f"Check that PostgreSQL is up: pg_isready {pg}",
            f"Check it accepts the backup user: psql {pg} -d {settings.postgres_db} -c 'SELECT 1'",
            "Check POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER and "
            "POSTGRES_PASSWORD of the backup service.",
            f"Run the backup again: {RERUN}",
        ],
        "disk": [
            f"Check free space: df -h {settings.backup_dir}",
            f"List the archives: ls -lh {settings.backup_dir}; move old ones elsewhere by hand "
            "(retention only runs after a successful backup, and never deletes the newest).",
            "Run the backup again once there is room.",
        ],
        "verification": [
            f"Verify the newest archive: backup-pipeline verify {settings.backup_dir}/"
            "critical_backup_<newest>.tar.gz",
            "Check the disk for errors (dmesg, smartctl) and the archive size against "
            "BACKUP_MIN_SIZE_MB and BACKUP_MAX_SIZE_MB.",
            "Run the backup again; if it fails the same way, keep the previous archive safe.",
        ],
        "proof": [
            "The new archive was made and verified but did NOT restore to what it holds (the "
            "error above names the table or the statement): it stays in BACKUP_DIR under its "
            "name, but it is not recorded as a good backup and retention did not run.",
            "Your last good backup is still the one `backup-pipeline status` names on its "
            "`last success` line (not the newest file): keep it safe.",
            "Reproduce it: backup-pipeline restore <that archive> --target "
            "\"host=... dbname=scratch user=...\" on a scratch database.",
            "A table the error names but the backup does not hold: add it to BACKUP_TABLES. A "
            "missing program or no room for the throwaway server: see the error; "
            "BACKUP_DRILL_DSN can name a scratch database instead.",
        ],
        "encryption": [
            "The archive could not be sealed with age, so none was kept from this run (never one "
            "in clear while BACKUP_AGE_RECIPIENTS is set); earlier archives are untouched.",
            "Check the public keys: BACKUP_AGE_RECIPIENTS / BACKUP_AGE_RECIPIENTS_FILE hold "
            "age1... or ssh-ed25519 lines only, and the file is readable by the backup user.",
            f"Check free space for the sealed copy: df -h {settings.backup_dir}",
            f"Run the backup again: {RERUN}",
        ],
        "offsite": [
            "The archive is good and recorded in BACKUP_DIR (backup-pipeline status), but its "
            "off-site copy failed: the error above names the bucket, the key and the cause.",
            "Check the bucket and the credentials from the backup host: aws s3 ls "
            f"s3://{settings.s3_bucket or '<bucket>'}/{settings.s3_prefix}"
            + (f" --endpoint-url {settings.s3_endpoint_url}" if settings.s3_endpoint_url
               else ""),
            "A provider that rejects boto3's checksum headers: set BACKUP_S3_CHECKSUMS="
            "when_required.",
            f"Run the backup again once it is fixed: {RERUN} (until then the newest copy off "
            "this server is older: backup-pipeline list --remote)",
        ],
        "dead_run": [
            "The run's process died before it finished: look for the cause at that time: "
            "dmesg -T | grep -i -e oom -e killed; docker compose ps; docker inspect --format "
            "'{{.State.OOMKilled}} {{.State.ExitCode}}' <the backup-code container>.",
            "Nothing it made was recorded as a backup: the last good archive is the one "
            "`backup-pipeline status` names on its `last success` line. Its leftover staging "
            f"files in {settings.backup_dir}/.staging are removed by the next run.",
            "The daemon runs it once more by itself (dagster.yaml run_retries); if that one dies "
            "too, give the service more memory (docker stats) or find what kills it."
            if retried else
            "This run is NOT tried again (it was started outside the daemon, e.g. with `dagster "
            f"job execute` or `dg launch`): once the cause is found, run the backup again: "
            f"{RERUN}",
        ],
        "backup": [
            "Open the run in the Dagster UI (link above) and read the failed step's log.",
            "Check the service: backup-pipeline health-check",
            f"Run the backup again: {RERUN}",
        ],
    }
    return steps.get(kind, steps["backup"])
