"""Verification of the new archive as blocking asset checks, shown in the Dagster UI.

The archive step verifies every archive completely before it gets its name. These checks, a
step of the same backup, make sure the file now under that name is byte for byte the one
verified (its SHA-256; otherwise it is verified completely again), and report that
verification check by check, with what each one proved and the size bounds the seeds'
monitoring uses. Their results belong to the archive this run built (its name is in their
metadata). A failed check fails the step, so the proof and the status do not run, retention
does not run, and the failure hook sends the one alert of the run, naming the checks.
"""


from collections.abc import Iterator

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.assets.archive import ARCHIVE_KEY, BuiltArchive
from backup_pipeline.assets.values import VALUES_IO_MANAGER
from backup_pipeline.files import file_sha256
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.verify import (
    CHECKSUMS,
    INTEGRITY,
    READABILITY,
    VerificationReport,
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


class ArchiveCheckFailed(KindOfFailure, RuntimeError):
    """A blocking check of the new archive failed: it is not a good backup."""

    kind = "verification"


def check_results(report: VerificationReport, min_mb: float, max_mb: float
                  ) -> Iterator[dg.AssetCheckResult]:
    """The four checks of `report`, each with what it proved: the archive's name, and the
    bytes, files and rows it read (a passed readability check means each count matched)."""
    integrity = report.problems_of(INTEGRITY)
    checksums = report.problems_of(CHECKSUMS)
    readable = report.problems_of(READABILITY)
    listed = report.manifest.files if report.manifest else ()
    matched = [f for f in listed if f.path in report.files
               and report.files[f.path].sha256 == f.sha256]
    tables = [t for t in (report.manifest.tables if report.manifest else ())
              if t.path in report.files and report.files[t.path].problem is None]
    archive = report.archive.name
    yield dg.AssetCheckResult(
        check_name="gzip_and_tar_integrity", passed=not integrity,
        metadata={"archive": archive, "bytes": report.size_bytes,
                  "size": layout.size_text(report.size_bytes),
                  # manifest.json and the files it lists, each read to its end
                  "members_read": len(report.files) + (report.manifest is not None),
                  "problems": dg.MetadataValue.json(integrity)},
    )
    yield dg.AssetCheckResult(
        check_name="manifest_checksums", passed=not checksums,
        metadata={"archive": archive, "files_listed": len(listed),
                  "files_matched": len(matched),
                  "bytes_hashed": sum(f.size for f in matched),
                  "problems": dg.MetadataValue.json(checksums)},
    )
    yield dg.AssetCheckResult(
        check_name="dumps_readable", passed=not readable,
        metadata={"archive": archive, "tables_read": len(tables),
                  "rows_counted": sum(t.rows for t in tables),
                  "problems": dg.MetadataValue.json(readable)},
    )
    within = min_mb <= report.size_mb <= max_mb
    yield dg.AssetCheckResult(
        check_name="size_within_bounds", passed=within,
        description=None if within else (
            f"archive is {layout.size_text(report.size_bytes)} ({report.size_bytes:,} bytes), "
            f"outside BACKUP_MIN_SIZE_MB={min_mb:g} .. "
            f"BACKUP_MAX_SIZE_MB={max_mb:g}: check what changed in the data or the settings"
        ),
        metadata={"archive": archive, "size": layout.size_text(report.size_bytes),
                  "bytes": report.size_bytes, "min_mb": min_mb, "max_mb": max_mb},
    )


def _failure_text(results: list[dg.AssetCheckResult]) -> str:
    """The failed checks, each with its reason, as the alert's error."""
    parts = []
    for result in results:
        problems = result.metadata.get("problems")
        reason = result.description or "; ".join(problems.value if problems else [])
        parts.append(f"{result.check_name} ({reason or 'failed'})")
    return "blocking check failed: " + ", ".join(parts)


def report_of_published(built: BuiltArchive) -> VerificationReport:
    """The archive step's verification, if the file now under the archive's name is the one it
    verified; else the file verified again, completely."""
    if file_sha256(built.path) == built.sha256:
        return built.report
    return verify_archive(built.path)


@dg.op(
    name="archive_checks",
    ins={"built": dg.In(BuiltArchive)},
    out={**{spec.get_python_identifier(): dg.Out(dg.Nothing) for spec in CHECK_SPECS},
         "checked": dg.Out(BuiltArchive, io_manager_key=VALUES_IO_MANAGER)},
    description="One streaming pass verifies the archive.",
)
def archive_checks(context: dg.OpExecutionContext, storage: BackupStorage,
                   built: BuiltArchive):
    report = report_of_published(built)
    for problem in report.problems:
        context.log.error(f"{built.name}: {problem}")
    results = list(check_results(report, storage.min_size_mb, storage.max_size_mb))
    yield from results
    failed = [result for result in results if not result.passed]
    if failed:
        raise ArchiveCheckFailed(f"{built.name}: {_failure_text(failed)}")
    yield dg.Output(built, "checked")
