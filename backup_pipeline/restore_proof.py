"""The restore proof: an archive is good only after it has been restored and compared.

Every checksum in an archive can be right while the archive still cannot be restored (a key
the export missed, a role the schema names, a type the new server lacks). So every run restores
its new archive, with `restore_archive` itself (the code of `backup-pipeline restore`), into a
PostgreSQL nobody else uses: by default a throwaway server started for it from the server
programs of the source's major version (`initdb` in a private temporary folder, fsync off, a
free port on 127.0.0.1, stopped and removed afterwards, and dying with the run even when the run
is killed; the next proof removes what a killed one left), or the scratch database
BACKUP_DRILL_DSN names. The restored database is then compared table by table with the archive's
bytes (`restore_checks`). The time it takes is the measured recovery time of that archive.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from backup_pipeline import layout
from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.manifest import Manifest
from backup_pipeline.restore import (
    RestoreError,
    RestoreReport,
    describe_target,
    drop_database,
    restore_archive,
    scratch_database_lock,
)
from backup_pipeline.throwaway_pg import ClusterError, start_cluster, sweep_leftovers

PROOF_PREFIX = "backup_pipeline_proof_"
PROOF_DATABASE = "restore_proof"
# A private server for one restore: nothing to make durable, one big transaction, quick index
# builds. wal_level minimal lets the COPY into tables created in the same transaction skip WAL.
PROOF_SERVER_SETTINGS = {
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "shared_buffers": "128MB",
    "maintenance_work_mem": "256MB",
    "max_connections": "20",
}

Progress = Callable[[str], None]


class RestoreProofError(KindOfFailure, RuntimeError):
    """The archive did not restore, or did not restore to what it holds."""

    kind = "proof"


@dataclass(frozen=True)
class ProofResult:
    archive: str
    target: str
    seconds: float
    report: RestoreReport

    @property
    def rows(self) -> int:
        return sum(t.restored for t in self.report.tables)

    def summary(self) -> str:
        note = f"; {self.report.locale_note}" if self.report.locale_note else ""
        return (f"restored and compared in {self.seconds:.1f} s ({len(self.report.tables)} "
                f"tables, {self.rows} rows, into {self.target}{note})")


def server_major(manifest: Manifest) -> int:
    match = re.match(r"(\d+)", manifest.server_version)
    if not match:
        raise RestoreProofError(f"the manifest names no server version "
                                f"({manifest.server_version!r}): cannot pick a server")
    return int(match.group(1))


def _check_room(manifest: Manifest, *, with_server: bool) -> None:
    """The extracted files (and, for the throwaway server, the restored database: about twice
    the data, with its indexes) and a margin must fit in the temporary folder: say so before
    starting, naming the folder."""
    folder = Path(tempfile.gettempdir())
    data = manifest.data_bytes
    needed = (3 if with_server else 1) * data + 64 * layout.MB
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RestoreProofError(
            f"not enough free disk in the temporary folder {folder} for the restore proof: it "
            f"needs about {needed // layout.MB} MB (the archive's {data // layout.MB} MB of files "
            f"extracted" + (", and restored with their indexes" if with_server else "")
            + f") but {free // layout.MB} MB are free. Free space there, point TMPDIR at a "
            f"larger disk" + ("" if not with_server else ", or set BACKUP_DRILL_DSN to a "
                                                         "scratch database on a server with room")
            + ".")


def prove_archive(archive: Path, manifest: Manifest, *, scratch_dsn: str | None = None,
                  progress: Progress = print) -> ProofResult:
    """Restore `archive` into a throwaway server (or `scratch_dsn`, dropped first) with
    `restore_archive`, compare it, and raise RestoreProofError naming what did not hold."""
    started = time.monotonic()
    _check_room(manifest, with_server=not scratch_dsn)
    try:
        if scratch_dsn:
            with scratch_database_lock(scratch_dsn):
                drop_database(scratch_dsn)
                target = f"the scratch database BACKUP_DRILL_DSN ({describe_target(scratch_dsn)})"
                report = _restore(archive, scratch_dsn, target, progress)
        else:
            for leftover in sweep_leftovers(PROOF_PREFIX):
                progress(f"removed the throwaway server a killed run left in {leftover}")
            major = server_major(manifest)
            starting = time.monotonic()
            cluster = start_cluster(settings=PROOF_SERVER_SETTINGS, major=major,
                                    die_with_parent=True, prefix=PROOF_PREFIX)
            try:
                server_seconds = round(time.monotonic() - starting, 2)
                target = f"a throwaway PostgreSQL {cluster.major or major} server"
                report = _restore(archive, cluster.dsn(PROOF_DATABASE), target, progress)
                report.phases["server_start"] = server_seconds
            finally:
                cluster.stop()
    except psycopg.Error as error:
        where = (f"the scratch database BACKUP_DRILL_DSN ({describe_target(scratch_dsn)}): check "
                 f"that its server is up and its user may drop and create databases"
                 if scratch_dsn else "its throwaway server")
        raise RestoreProofError(
            f"the restore proof of {archive.name} failed talking to {where}. "
            f"{str(error).strip()}") from None
    except ClusterError as error:
        raise RestoreProofError(
            f"the restore proof could not start its throwaway PostgreSQL: {error}. Install the "
            f"server programs, set BACKUP_DRILL_DSN to a scratch database, or (knowing that the "
            f"archives are then not proven) BACKUP_RESTORE_PROOF=off.") from None
    if not report.ok:
        raise RestoreProofError(
            f"{archive.name} restored, but not to what it holds: " + "; ".join(report.problems))
    return ProofResult(archive.name, target, round(time.monotonic() - started, 2), report)


def _restore(archive: Path, dsn: str, target: str, progress: Progress) -> RestoreReport:
    progress(f"restore proof: restoring {archive.name} into {target}")
    try:
        return restore_archive(archive, dsn, progress=progress)
    except RestoreError as error:
        raise RestoreProofError(f"{archive.name} did not restore: {error}") from None
