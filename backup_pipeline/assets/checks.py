"""Verification of the published archive as blocking asset checks, shown in the Dagster UI.

The archive asset verifies every archive completely before it gets its name. These checks make
sure the file now under that name is byte for byte the one verified (its SHA-256), and report
that verification, check by check, with the size bounds the seeds' monitoring uses; when the
file differs, or the checks run on their own, they verify it completely again. They are
blocking: when one fails, the run fails, so the status files are not moved forward, retention
does not run, and the failure alert goes out (from the check itself: no hook sees a failed check).
"""


import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.alerting import send_failure_alert
from backup_pipeline.assets.archive import (
    ARCHIVE_KEY,
    VERIFICATION_RECORD,
    archive_materialization,
)
from backup_pipeline.resources.mailer import Mailer
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import Settings
from backup_pipeline.verify import (
    CHECKSUMS,
    INTEGRITY,
    READABILITY,
    FileCheck,
    VerificationReport,
    file_sha256,
    verify_archive,
)

CHECK_SPECS = [
    dg.AssetCheckSpec("gzip_and_tar_integrity", asset=ARCHIVE_KEY, blocking=True,
                      description="The gzip stream (CRC included) and the tar structure read "
                                  "to the end; no member could escape its folder."),
    dg.AssetCheckSpec("manifest_checksums", asset=ARCHIVE_KEY, blocking=True,
                      description="Every file matches the manifest's size and SHA-256; "
                                  "nothing is missing or unexpected."),
    dg.AssetCheckSpec("dumps_readable", asset=ARCHIVE_KEY, blocking=True,
                      description="Every SQL dump is complete and every CSV well formed, "
                                  "with the row counts the server reported."),
    dg.AssetCheckSpec("size_within_bounds", asset=ARCHIVE_KEY, blocking=True,
                      description="BACKUP_MIN_SIZE_MB <= size <= BACKUP_MAX_SIZE_MB."),
]


def check_results(report: VerificationReport, min_mb: float, max_mb: float
                  ) -> Iterator[dg.AssetCheckResult]:
    integrity = report.problems_of(INTEGRITY)
    checksums = report.problems_of(CHECKSUMS)
    readable = report.problems_of(READABILITY)
    yield dg.AssetCheckResult(
        check_name="gzip_and_tar_integrity", passed=not integrity,
        metadata={"problems": dg.MetadataValue.json(integrity), "bytes": report.size_bytes},
    )
    yield dg.AssetCheckResult(
        check_name="manifest_checksums", passed=not checksums,
        metadata={"problems": dg.MetadataValue.json(checksums), "files": len(report.files)},
    )
    yield dg.AssetCheckResult(
        check_name="dumps_readable", passed=not readable,
        metadata={"problems": dg.MetadataValue.json(readable)},
    )
    within = min_mb <= report.size_mb <= max_mb
    yield dg.AssetCheckResult(
        check_name="size_within_bounds", passed=within,
        description=None if within else (
            f"archive is {layout.size_text(report.size_bytes)} ({report.size_bytes:,} bytes), "
            f"outside BACKUP_MIN_SIZE_MB={min_mb:g} .. "
            f"BACKUP_MAX_SIZE_MB={max_mb:g}: check what changed in the data or the settings"
        ),
        metadata={"size": layout.size_text(report.size_bytes), "bytes": report.size_bytes,
                  "min_mb": min_mb, "max_mb": max_mb},
    )


def _recorded_report(storage: BackupStorage, run_id: str, path: Path
                     ) -> VerificationReport | None:
    """This run's verification of the archive, if the published file is the one verified."""
    record_path = storage.staging_root / run_id / VERIFICATION_RECORD
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if file_sha256(path) != record["sha256"]:
        return None
    return VerificationReport(
        archive=path, size_bytes=path.stat().st_size,
        files={f["path"]: FileCheck(**f) for f in record["files"]},
        found=[tuple(item) for item in record["found"]],
    )


def _failure_text(results: list[dg.AssetCheckResult]) -> str:
    """The failed checks, each with its reason, as the alert's error."""
    parts = []
    for result in results:
        problems = result.metadata.get("problems")
        reason = result.description or "; ".join(problems.value if problems else [])
        parts.append(f"{result.check_name} ({reason or 'failed'})")
    return "blocking check failed: " + ", ".join(parts)


def build_archive_checks(settings: Settings) -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(specs=CHECK_SPECS,
                          description="One streaming pass verifies the archive.")
    def archive_checks(context: dg.AssetCheckExecutionContext, storage: BackupStorage,
                       mailer: Mailer) -> Iterator[dg.AssetCheckResult]:
        materialization = archive_materialization(context.instance, context.run.run_id)
        if materialization is None:
            latest = context.instance.get_latest_materialization_event(ARCHIVE_KEY)
            materialization = latest.asset_materialization if latest else None
        path_value = materialization.metadata.get("path") if materialization else None
        if path_value is None:
            raise RuntimeError("no backup_archive materialization to verify: run backup_job first")
        path = Path(path_value.value)
        report = _recorded_report(storage, context.run.run_id, path) or verify_archive(path)
        for problem in report.problems:
            context.log.error(f"{path.name}: {problem}")
        results = list(check_results(report, storage.min_size_mb, storage.max_size_mb))
        failed = [result for result in results if not result.passed]
        if failed:
            # A failed check fails the run but reaches no hook: the alert goes from here, so
            # that it arrives without the daemon too (the run tag keeps it to one).
            send_failure_alert(context.instance, mailer, settings, context.run.run_id,
                               "archive_checks", _failure_text(failed))
        yield from results

    return archive_checks
