"""The archive: one verified `critical_backup_YYYYMMDD_HHMMSS.tar.gz` from what the run staged.

The tar stream goes straight into gzip and the file is hashed as it is written. The tables'
data arrive already compressed (the export compresses each table as it reads it): their gzip
members are copied in as they are, between members holding the tar headers and the small files.
A series of gzip members is one standard gzip stream (RFC 1952; gzip -t, tar -xzf, zcat).

It is written under a hidden temporary name, fsynced and fully verified before it gets its final
name, so a file named `critical_backup_*.tar.gz` is always complete: a failed verification
leaves nothing, a crash at most a hidden `.partial` file (retention removes it a day later).

With BACKUP_SIGNING_KEY_FILE, manifest.json is followed by manifest.json.sig, its SSH signature
(signing.py). With BACKUP_AGE_RECIPIENTS, the verified archive keeps its hidden name through the
checks and the restore proof, and only its sealed copy gets a final name (assets/sealing.py).
"""


import hashlib
import json
import os
import platform
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath

import dagster as dg
import jinja2
import psycopg
from isal import isal_zlib

from backup_pipeline import layout
from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.assets.config_snapshot import ConfigSnapshot
from backup_pipeline.assets.database import ExportRecord, StagedPiece
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.files import BLOCK_SIZE, open_private, write_private_text
from backup_pipeline.manifest import FileEntry, Manifest
from backup_pipeline.pg import HashingWriter
from backup_pipeline.resources.safeguards import ArchiveEncryption, ManifestSigning
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.restore_script import count_query, restore_script
from backup_pipeline.settings import Settings
from backup_pipeline.signing import SIGNATURE_MEMBER, SigningKey
from backup_pipeline.sources import LocalArchive
from backup_pipeline.verify import VerificationReport, verify_archive

ARCHIVE_KEY = dg.AssetKey("backup_archive")
ARCHIVE_OUTPUT = output_name(ARCHIVE_KEY)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("backup_pipeline", "templates"),
    autoescape=False,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


class _TarStream:
    """A tar stream written as gzip members into `sink`: bytes written here are compressed,
    `copy_member` puts an already compressed member in between. `offset` counts tar bytes."""

    def __init__(self, sink: HashingWriter) -> None:
        self._sink = sink
        self._deflate = None
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._deflate is None:
            self._deflate = isal_zlib.compressobj(layout.GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        self._sink.write(self._deflate.compress(data))
        self.offset += len(data)

    def write_file(self, path: Path) -> int:
        with path.open("rb") as source:
            size = 0
            for block in iter(lambda: source.read(BLOCK_SIZE), b""):
                self.write(block)
                size += len(block)
        return size

    def copy_member(self, path: Path, size: int) -> None:
        """Append the gzip member at `path`, which holds `size` tar bytes."""
        self.end_member()
        with path.open("rb") as source:
            for block in iter(lambda: source.read(BLOCK_SIZE), b""):
                self._sink.write(block)
        self.offset += size

    def end_member(self) -> None:
        if self._deflate is not None:
            self._sink.write(self._deflate.flush())
            self._deflate = None

    def pad(self, multiple: int) -> None:
        self.write(tarfile.NUL * (-self.offset % multiple))


def _versions() -> dict[str, str]:
    try:
        own = metadata.version("backup_pipeline")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {"backup_pipeline": own, "dagster": dg.__version__, "psycopg": psycopg.__version__,
            "python": platform.python_version()}


def _write_text(staging: Path, relative: str, text: str) -> FileEntry:
    data = write_private_text(staging / relative, text)
    return FileEntry(relative, len(data), hashlib.sha256(data).hexdigest())


def _tar_info(name: str, size: int, mtime: float, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o700
    else:
        info.size, info.mode = size, 0o600
    return info


def manifest_bytes_of(manifest: Manifest) -> bytes:
    """manifest.json as it is written into the archive (and signed)."""
    return (json.dumps(manifest.to_json(), indent=2) + "\n").encode()


def write_archive(target: Path, staging: Path, manifest: Manifest, mtime: float,
                  staged: Mapping[str, tuple[StagedPiece, ...]],
                  signing_key: SigningKey | None = None) -> str:
    """Write manifest.json (and its signature), then every listed file, as a gzip'd tar;
    fsync; return SHA-256.

    A file listed in `staged` is put together from its pieces (gzip members copied as they
    are, plain parts compressed here); any other is read from `staging` under its own path.
    The tar format is tarfile's own (PAX headers, end-of-archive blocks, records of 10 KiB).
    """
    manifest_bytes = manifest_bytes_of(manifest)
    signature = signing_key.sign(manifest_bytes) if signing_key else None

    def header(info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    with open_private(target, exclusive=True) as handle:
        sink = HashingWriter(handle)
        tar = _TarStream(sink)
        tar.write(header(_tar_info(layout.MANIFEST, len(manifest_bytes), mtime)))
        tar.write(manifest_bytes)
        tar.pad(tarfile.BLOCKSIZE)
        if signature is not None:
            tar.write(header(_tar_info(SIGNATURE_MEMBER, len(signature), mtime)))
            tar.write(signature)
            tar.pad(tarfile.BLOCKSIZE)
        folders: set[str] = set()
        for entry in manifest.files:
            parents = Path(entry.path).parents
            for folder in reversed([p.as_posix() for p in parents if p.as_posix() != "."]):
                if folder not in folders:
                    folders.add(folder)
                    tar.write(header(_tar_info(folder, 0, mtime, directory=True)))
            tar.write(header(_tar_info(entry.path, entry.size, mtime)))
            written = 0
            for piece in staged.get(entry.path, (StagedPiece(entry.path, False, entry.size),)):
                if piece.gzip:
                    tar.copy_member(staging / piece.file, piece.size)
                    written += piece.size
                else:
                    written += tar.write_file(staging / piece.file)
            if written != entry.size:
                raise RuntimeError(f"{entry.path} changed in the staging folder: "
                                   f"{written} bytes where the export wrote {entry.size}")
            tar.pad(tarfile.BLOCKSIZE)
        tar.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        tar.pad(tarfile.RECORDSIZE)
        tar.end_member()
        handle.flush()
        os.fsync(handle.fileno())
    return sink.sha256


class ArchiveVerificationError(KindOfFailure, RuntimeError):
    """The archive just written does not verify: it was discarded before it got its name."""

    kind = "verification"


def build_manifest(export: ExportRecord, config: ConfigSnapshot, created_at: datetime,
                   name: str, staging: Path, app_name: str, *, signed_by: str | None = None,
                   sealed: bool = False) -> Manifest:
    """Write BACKUP_INFO.txt and the restore script into staging; return the manifest."""
    restore = _write_text(staging, layout.RESTORE_SCRIPT, restore_script(export.tables))
    versions = _versions()
    info_text = _templates.get_template("BACKUP_INFO.txt.j2").render(
        app_name=app_name,
        archive_name=name,
        created_at=created_at.isoformat(timespec="seconds"),
        server_major=export.server_version.split(".")[0],
        server_version=export.server_version,
        pg_dump_version=export.pg_dump_version,
        snapshot_taken_at=export.snapshot_taken_at,
        database=export.database,
        window=export.window,
        tables=export.tables,
        roles=export.roles,
        schema_pre=layout.SCHEMA_PRE_DATA,
        schema_post=layout.SCHEMA_POST_DATA,
        sequences=layout.SEQUENCES,
        count_query=count_query(export.tables),
        config=config,
        versions=versions,
        signed_by=signed_by,
        sealed=sealed,
    )
    info = _write_text(staging, layout.BACKUP_INFO, info_text)
    return Manifest(
        format=layout.MANIFEST_FORMAT,
        application=app_name,
        archive_name=name,
        created_at=created_at.isoformat(),
        database=export.database,
        server_version=export.server_version,
        pg_dump_version=export.pg_dump_version,
        snapshot_id=export.snapshot_id,
        snapshot_taken_at=export.snapshot_taken_at,
        window=export.window,
        tables=export.tables,
        roles=export.roles,
        database_locale=export.database_locale,
        not_valid_constraints=export.not_valid_constraints,
        config=config.manifest_entry(),
        versions=versions,
        files=(info, restore, *_schema_first(export.files), *config.files),
    )


def _schema_first(files: tuple[FileEntry, ...]) -> list[FileEntry]:
    """The schema, roles and sequence files (database/_*) before the table data, in the order
    the archive is written: a cut or damaged archive loses what follows the break, and the
    intact data files are of no use without the schema (backup-pipeline salvage)."""
    return sorted(files, key=lambda f: not PurePosixPath(f.path).name.startswith("_"))


ARCHIVE_SPEC = dg.AssetSpec(
    ARCHIVE_KEY,
    group_name="archive",
    kinds={"file"},
    description="critical_backup_YYYYMMDD_HHMMSS.tar.gz in BACKUP_DIR: BACKUP_INFO.txt, "
                "manifest.json, database/ and config/, verified before it gets its name.",
)


@dataclass(frozen=True)
class BuiltArchive:
    """The archive this run wrote and verified before it got its name: what its checks, the
    restore proof, the status files and the success email are about, handed to each of them.
    To be sealed, it stays under its hidden temporary `path`, and `name` is the one it holds."""

    path: Path
    name: str
    sha256: str
    size: int
    manifest: Manifest
    report: VerificationReport
    build_seconds: float
    verify_seconds: float
    signed_by: str | None = None

    @property
    def rows(self) -> int:
        return self.manifest.rows


def pack_archive(storage: BackupStorage, export: ExportRecord, config: ConfigSnapshot,
                 app_name: str, run_id: str, *, signing_key: SigningKey | None = None,
                 publish: bool = True) -> BuiltArchive:
    """Write, verify and publish the archive of what this run staged. Everything that can fail
    happens before it gets its name: a file under its final name is complete and verified (a
    good backup once the status files name it; a later failure, such as the proof, leaves it
    there, not recorded). Not `publish`ed (it is to be sealed), it keeps its hidden name, and
    the run removes it when it ends (BackupStorage)."""
    staging = storage.staging(run_id)
    created_at = datetime.now(UTC)
    name = layout.archive_name(created_at, storage.timezone)
    started = time.monotonic()
    signer = signing_key.public_key if signing_key else None
    manifest = build_manifest(export, config, created_at, name, staging, app_name,
                              signed_by=signer.fingerprint if signer else None,
                              sealed=not publish)
    partial = storage.partial_path(name, run_id)
    try:
        sha256 = write_archive(partial, staging, manifest, created_at.timestamp(),
                               export.staged, signing_key)
        written = time.monotonic()
        report = verify_archive(partial, signer=signer)
        if not report.ok:
            raise ArchiveVerificationError(
                f"the new archive failed verification and was discarded: {report.summary()}. "
                f"Earlier archives are untouched."
            )
        final = storage.publish(partial, created_at) if publish else partial
    finally:
        if publish:
            partial.unlink(missing_ok=True)
    report.archive = LocalArchive(str(final))
    return BuiltArchive(path=final, name=final.name if publish else name, sha256=sha256,
                        size=final.stat().st_size, manifest=manifest, report=report,
                        build_seconds=round(written - started, 3),
                        verify_seconds=round(time.monotonic() - written, 3),
                        signed_by=signer.fingerprint if signer else None)


def build_backup_archive(settings: Settings) -> dg.OpDefinition:
    """The step that packs the archive; its asset depends on every table's and the
    configuration's (the graph's internal dependencies), so lineage leads back to each dump."""

    @dg.op(
        name="backup_archive",
        ins={"export": dg.In(ExportRecord), "config_record": dg.In(ConfigSnapshot)},
        out={ARCHIVE_OUTPUT: dg.Out(dg.Nothing),
             "built": dg.Out(BuiltArchive, io_manager_key=VALUES_IO_MANAGER)},
        description=ARCHIVE_SPEC.description,
    )
    def backup_archive(context: dg.OpExecutionContext, storage: BackupStorage,
                       encryption: ArchiveEncryption, signing: ManifestSigning,
                       export: ExportRecord, config_record: ConfigSnapshot):
        # A recipient or key that cannot be read fails the run here, before any archive.
        sealed_later = bool(encryption.recipients())
        built = pack_archive(storage, export, config_record, settings.app_name,
                             context.run.run_id, signing_key=signing.key(),
                             publish=not sealed_later)
        context.log.info(
            f"archive {built.path} ({layout.size_text(built.size)}, sha256 {built.sha256}) "
            f"written in {built.build_seconds:.2f} s and verified in "
            f"{built.verify_seconds:.2f} s"
        )
        yield dg.Output(None, ARCHIVE_OUTPUT, metadata={
            "path": dg.MetadataValue.path(str(built.path)),
            "archive_name": built.name,
            "bytes": built.size,
            "size": layout.size_text(built.size),
            "sha256": built.sha256,
            "signed_by": built.signed_by or "unsigned (BACKUP_SIGNING_KEY_FILE not set)",
            "encrypted": "sealed with age next (BACKUP_AGE_RECIPIENTS)" if sealed_later
                         else "no: in clear (BACKUP_AGE_RECIPIENTS not set)",
            # As `verify` counts them: the files the manifest lists (manifest.json aside).
            "files": len(built.manifest.files),
            "rows": built.rows,
            "cutoff": export.window.cutoff,
            "config_missing": dg.MetadataValue.json(list(config_record.missing)),
            "config_not_copied": dg.MetadataValue.json(
                [s.to_json() for s in config_record.skipped]),
            "build_seconds": built.build_seconds,
            "verify_seconds": built.verify_seconds,
        })
        yield dg.Output(built, "built")

    return backup_archive
