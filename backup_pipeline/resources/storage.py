"""BACKUP_DIR: staging, atomic publication, the status files and retention.

The rules here are the ones an administrator counts on when the database is gone: an archive
under its final name is complete and verified (it is written under a temporary name, fsynced, then
linked into place without replacing anything); a failed run changes no archive and no status file;
retention never deletes the newest good archive, never goes below the minimum count, and never
touches a file whose name this pipeline would not have made.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from backup_pipeline import layout
from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.files import PRIVATE_DIR, fsync_dir, make_private_dirs, write_atomically
from backup_pipeline.run_monitoring import Heartbeat
from backup_pipeline.sealing import SealedFile

if TYPE_CHECKING:  # boto3 loads with the off-site step only
    from backup_pipeline.offsite import RemoteCopy
from backup_pipeline.settings import DEFAULTS


class DiskSpaceError(KindOfFailure, RuntimeError):
    """Not enough free space in BACKUP_DIR for the expected backup."""

    kind = "disk"


class BackupDirAccessError(PermissionError):
    """BACKUP_DIR cannot be created, read or written by the user the pipeline runs as."""

    def __init__(self, root: Path, cause: OSError | None = None) -> None:
        try:
            info = root.stat()
            found = f"owner uid {info.st_uid}, mode {info.st_mode & 0o777:04o}"
        except OSError:
            found = "it cannot even be examined"
        super().__init__(
            f"BACKUP_DIR {root} is not readable and writable by uid {os.getuid()} ({found}"
            + (f"; {cause.strerror}: {cause.filename}" if cause else "") + "). Run the "
            f"backup as the user that owns it, or give it to this one: chown {os.getuid()} "
            f"{root} && chmod 700 {root}")


STAGING_LOCK = ".lock"


def _hold_lock(path: Path) -> int:
    """An open descriptor holding an exclusive lock on `path`, for the life of the process. The
    file is locked under a name of its own, then renamed into place: nobody can find `path`
    unlocked and take its run for dead."""
    own = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(own, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(own, path)
    return fd


def _owner_alive(staging: Path) -> bool:
    """Whether the run that made `staging` still holds its lock. A folder without a lock is
    being made right now (or by an older version): kept for a day. Whatever cannot be examined
    (another user's folder, a stray file, a folder that vanished meanwhile) is kept too."""
    try:
        fd = os.open(staging / STAGING_LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - staging.stat().st_mtime < 24 * 3600
        except OSError:
            return True
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def tree_bytes(folder: Path) -> int:
    """The size of the regular files under `folder` (not following links), 0 when missing."""
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            info = path.lstat()
        except OSError:
            continue
        total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


@dataclass(frozen=True)
class ProofRecord:
    """How the archive was restore-proven: the measured recovery time, and where."""

    seconds: float
    target: str
    phases: dict[str, float]


@dataclass(frozen=True)
class RetentionResult:
    kept: list[str]
    deleted: list[str]


def read_last_success(backup_dir: Path) -> int | None:
    """The unix time in BACKUP_DIR/.last_backup_success, or None when missing or unreadable."""
    try:
        return int((backup_dir / layout.LAST_SUCCESS_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


class BackupStorage(dg.ConfigurableResource):
    """Where archives live (BACKUP_DIR) and how long they stay."""

    backup_dir: str = Field(description="BACKUP_DIR")
    timezone: str = Field(default=DEFAULTS.timezone,
                          description="BACKUP_TIMEZONE, for archive names")
    retention_days: int = Field(default=DEFAULTS.retention_days,
                                description="BACKUP_RETENTION_DAYS")
    retention_min_count: int = Field(default=DEFAULTS.retention_min_count,
                                     description="BACKUP_RETENTION_MIN_COUNT")
    min_size_mb: float = Field(default=DEFAULTS.min_size_mb, description="BACKUP_MIN_SIZE_MB")
    max_size_mb: float = Field(default=DEFAULTS.max_size_mb, description="BACKUP_MAX_SIZE_MB")
    disk_reserve_mb: int = Field(default=DEFAULTS.disk_reserve_mb,
                                 description="BACKUP_DISK_RESERVE_MB")
    outbox_dir: str | None = Field(default=None, description="BACKUP_OUTBOX_DIR")

    _run_id: str | None = PrivateAttr(default=None)
    _staging_lock: int | None = PrivateAttr(default=None)

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[BackupStorage]:
        """Run-scoped: whatever the run staged is removed when it ends, failed or not, and while
        it lasts the run's process beats, so that run monitoring can tell when it died (every
        backup step uses this resource; see run_monitoring.py)."""
        self._run_id = context.run.run_id if context.run else None
        if self._run_id is None:
            yield self
            return
        beating = (Heartbeat(context.instance, self._run_id) if context.instance is not None
                   else nullcontext())
        try:
            with beating:
                yield self
        finally:
            shutil.rmtree(self.staging_root / self._run_id, ignore_errors=True)
            # An archive kept hidden to be sealed, or a sealed copy not yet named: a plaintext
            # archive must not outlive a run that failed before sealing it.
            for partial in self.root.glob(f".*.{self._run_id[:8]}{layout.PARTIAL_SUFFIX}"):
                partial.unlink(missing_ok=True)
            if self._staging_lock is not None:
                os.close(self._staging_lock)
                self._staging_lock = None

    @property
    def root(self) -> Path:
        return Path(self.backup_dir)

    @property
    def staging_root(self) -> Path:
        return self.root / layout.STAGING_DIR

    def ensure_root(self) -> Path:
        """BACKUP_DIR exists, is private (0700: archives hold every user's data) and is ours to
        write: "Permission denied: '/backups'" alone says neither who nor what to do."""
        try:
            make_private_dirs(self.root)
            if self.root.stat().st_mode & 0o077:
                os.chmod(self.root, PRIVATE_DIR)
        except PermissionError as error:
            raise BackupDirAccessError(self.root, error) from None
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise BackupDirAccessError(self.root)
        return self.root

    def staging(self, run_id: str | None = None) -> Path:
        """This run's private staging folder, inside BACKUP_DIR so the final rename is atomic."""
        run = run_id or self._run_id
        if not run:
            raise RuntimeError("staging() needs a run id: use the resource inside a Dagster run")
        self.ensure_root()
        self.staging_root.mkdir(mode=0o700, exist_ok=True)
        path = self.staging_root / run
        path.mkdir(mode=0o700, exist_ok=True)
        if self._staging_lock is None and run == self._run_id:
            self._staging_lock = _hold_lock(path / STAGING_LOCK)
        return path

    def check_free_space(self, expected_bytes: int, config_bytes: int = 0, *,
                         sealed: bool = False) -> int:
        """Fail early, saying how much is needed, when the backup cannot fit; returns free bytes."""
        self.ensure_root()
        free = shutil.disk_usage(self.root).free
        # Staged files plus the archive itself, at most the same size again (and its sealed
        # copy, beside it until the plaintext is deleted), plus the reserve.
        data = expected_bytes + config_bytes
        needed = (3 if sealed else 2) * data + self.disk_reserve_mb * layout.MB
        if free < needed:
            raise DiskSpaceError(
                f"not enough free disk in BACKUP_DIR {self.root}: the backup needs about "
                f"{math.ceil(needed / layout.MB)} MB "
                f"({math.ceil(expected_bytes / layout.MB)} MB of data and "
                f"{math.ceil(config_bytes / layout.MB)} MB of configuration, staged "
                f"and archived{', and sealed' if sealed else ''}, plus "
                f"BACKUP_DISK_RESERVE_MB={self.disk_reserve_mb}) but only "
                f"{free // layout.MB} MB are free. Free space by hand (df -h {self.root}; move old "
                f"archives elsewhere), then run the backup again."
            )
        return free

    def remove_leftovers(self) -> int:
        """Staging folders and temporary archives of runs that ended without cleaning up (a
        killed run leaves them), removed before the disk estimate so that a few killed runs do
        not fill BACKUP_DIR. A run holds a lock on its staging folder while it lives, and the
        kernel drops it when the process dies, whichever Dagster instance ran it: a folder whose
        lock can be taken is a dead run's. Returns the bytes freed."""
        freed, alive = 0, set()
        for path in self.staging_root.iterdir() if self.staging_root.is_dir() else ():
            if path.name == self._run_id or _owner_alive(path):
                alive.add(path.name[:8])
                continue
            freed += tree_bytes(path)
            shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob(f".{layout.ARCHIVE_PREFIX}*{layout.PARTIAL_SUFFIX}"):
            owner = path.name.removesuffix(layout.PARTIAL_SUFFIX).rsplit(".", 1)[-1]
            if owner in alive or (self._run_id or "")[:8] == owner:
                continue
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:  # removed meanwhile by another run, or not ours to remove
                continue
            freed += size
        return freed

    def partial_path(self, name: str, run_id: str) -> Path:
        return self.root / f".{name}.{run_id[:8]}{layout.PARTIAL_SUFFIX}"

    def publish(self, partial: Path, moment: datetime, suffix: str = "") -> Path:
        """Give a verified, fsynced archive its final name without ever replacing a file
        (`suffix`: `.age` for a sealed one).

        Two runs finishing in the same second would want the same name; the later one takes the
        next free second, so the name keeps the pattern every tool relies on.
        """
        for offset in range(3600):
            name = layout.archive_name(moment + timedelta(seconds=offset), self.timezone) + suffix
            final = self.root / name
            try:
                os.link(partial, final)
            except FileExistsError:
                continue
            partial.unlink()
            fsync_dir(self.root)
            return final
        raise RuntimeError(f"no free archive name in {self.root} within an hour of {moment}")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise status updates and retention between concurrent runs."""
        self.ensure_root()
        fd = os.open(self.root / layout.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def archives(self) -> list[tuple[datetime, Path]]:
        """This pipeline's archives in BACKUP_DIR, newest first (by the time in their name)."""
        found = []
        if not self.root.is_dir():
            return found
        for path in self.root.iterdir():
            moment = layout.archive_time(path.name, self.timezone)
            if moment is not None and path.is_file() and not path.is_symlink():
                found.append((moment, path))
        return sorted(found, reverse=True)

    def write_status(self, archive: Path, size_bytes: int, sha256: str, finished: float,
                     proof: ProofRecord | None = None, sealed: SealedFile | None = None
                     ) -> None:
        """The seeds' status files, only ever moved forward, written atomically."""
        if int(finished) < (read_last_success(self.root) or 0):
            return
        write_atomically(self.root / layout.LAST_SUCCESS_FILE, f"{int(finished)}\n", 0o644)
        write_atomically(
            self.root / layout.LAST_SIZE_FILE, f"{math.ceil(size_bytes / layout.MB)}\n", 0o644
        )
        write_atomically(
            self.root / layout.LAST_BACKUP_FILE,
            json.dumps(
                {
                    "archive": archive.name,
                    "size_bytes": size_bytes,
                    "sha256": sha256,
                    "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
                    "verified": True,
                    # null: BACKUP_RESTORE_PROOF=off, the archive was not restored.
                    "restore_proof": ({"seconds": proof.seconds, "target": proof.target,
                                       "phases": proof.phases} if proof else None),
                    # null: in clear (BACKUP_AGE_RECIPIENTS unset).
                    "encrypted": ({"format": "age", "recipients": sealed.recipients,
                                   "plaintext_sha256": sealed.plain_sha256}
                                  if sealed else None),
                },
                indent=2,
            )
            + "\n",
            0o644,
        )

    def write_offsite_status(self, copy: RemoteCopy) -> None:
        """BACKUP_DIR/.last_offsite_copy.json: the newest verified copy off this server."""
        write_atomically(self.root / layout.LAST_OFFSITE_FILE, json.dumps({
            "url": copy.url, "bucket": copy.bucket, "key": copy.key, "size_bytes": copy.size,
            "sha256": copy.sha256, "seconds": round(copy.seconds, 2),
            "uploaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }, indent=2) + "\n", 0o644)

    def apply_retention(self, newest: Path, now: datetime | None = None) -> RetentionResult:
        """Delete archives older than the retention period, keeping the newest ones regardless."""
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(days=self.retention_days)
        kept, deleted = [], []
        for index, (moment, path) in enumerate(self.archives()):
            protected = index < self.retention_min_count or path == newest
            if protected or moment >= cutoff:
                kept.append(path.name)
                continue
            path.unlink(missing_ok=True)
            deleted.append(path.name)
        self.remove_leftovers()
        self._prune_outbox(cutoff)
        if deleted:
            fsync_dir(self.root)
        return RetentionResult(kept=kept, deleted=deleted)

    def _prune_outbox(self, cutoff: datetime) -> None:
        """Emails written without SMTP carry the archive: they age out with the archives."""
        outbox = Path(self.outbox_dir) if self.outbox_dir else None
        if outbox is None or not outbox.is_dir():
            return
        for path in outbox.glob("*.eml"):
            if path.is_file() and path.stat().st_mtime < cutoff.timestamp():
                path.unlink(missing_ok=True)
        # An email being written has a hidden temporary name; a day old, its writer died.
        for path in outbox.glob(".*.eml.*.tmp"):
            if path.is_file() and path.stat().st_mtime < time.time() - 24 * 3600:
                path.unlink(missing_ok=True)

