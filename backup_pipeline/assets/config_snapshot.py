"""The deployment's configuration files, copied into the archive under their own names.

A missing file is not an error (a deployment without nginx is legitimate) but it is never silent:
it is listed as missing in the run's log, the asset's metadata, the manifest and BACKUP_INFO.txt.
Symbolic links (certbot's live/ folder is made of them) are followed when they resolve inside
BACKUP_CONFIG_DIR, so the archive holds the certificate itself, not a link that would point nowhere
on the restored server. A link that resolves outside it is refused: copying it could put any file
of the host (/etc/shadow) into the archive and its emails. The database backup goes on (it matters
more than one file), and the refusal is as loud as a missing file. What is not a regular file or
a folder (a FIFO, a socket, a device, a dangling link, a folder link back into itself) is never
opened. Each is listed as not copied, with the reason, in the run's log, the asset's metadata,
the manifest, BACKUP_INFO.txt and the success email.
"""

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.assets.values import VALUES_IO_MANAGER, output_name
from backup_pipeline.files import BLOCK_SIZE, make_private_dirs, open_private
from backup_pipeline.jobs import retry_the_whole_run
from backup_pipeline.manifest import ConfigEntry, FileEntry, SkippedFile
from backup_pipeline.pg import HashingWriter
from backup_pipeline.resources.storage import BackupStorage, DiskSpaceError, tree_bytes
from backup_pipeline.settings import Settings

CONFIG_KEY = dg.AssetKey("config_snapshot")
CONFIG_OUTPUT = output_name(CONFIG_KEY)
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


@dataclass
class _Plan:
    """What the snapshot will copy (archive path, the real file), and what it will not."""

    root: Path
    copies: list[tuple[str, Path]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def skip(self, relative: str, reason: str) -> None:
        self.skipped.append(SkippedFile(relative, reason))


def _special_kind(mode: int) -> str:
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")


@dataclass(frozen=True)
class _Found:
    """A regular file or folder inside BACKUP_CONFIG_DIR, and the link that led to it, if any."""

    real: Path
    folder: bool
    link: str | None


def _resolve(plan: _Plan, path: Path, relative: str) -> _Found | None:
    """What `path` is, through any links: a regular file or folder inside BACKUP_CONFIG_DIR, or
    None when it must not be read, and then the plan says why. Nothing is opened here."""
    link = os.readlink(path) if os.path.islink(path) else None
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(plan.root):
        named = f"a symbolic link to {link!r}" if link is not None else "reached through a link"
        shown = "" if link == str(real) else f" (resolves to {real})"
        plan.skip(relative, f"{named}{shown}, outside BACKUP_CONFIG_DIR: refused, so that no "
                            f"other file of this host ends up in the archive; put a copy of the "
                            f"file in BACKUP_CONFIG_DIR instead")
        return None
    via = f"a symbolic link to {link!r}, " if link is not None else ""
    try:
        status = os.stat(real)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise
        plan.skip(relative, f"{via}which does not exist (or is a loop of links)")
        return None
    if stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode):
        return _Found(real, stat.S_ISDIR(status.st_mode), link)
    plan.skip(relative, f"{via}{_special_kind(status.st_mode)}: never opened")
    return None


def _check_readable(path: Path, folder: bool) -> None:
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise PermissionError(
            f"{path} exists but the backup user (uid {os.getuid()}) cannot read it: make "
            f"it readable, e.g. chgrp {os.getgid()} {path} && chmod "
            f"g+r{'x' if folder else ''} {path}"
        )


def _plan_folder(plan: _Plan, folder: Path, relative: str, walked: tuple[Path, ...]) -> None:
    """Every file under `folder` (real path; `relative` is its name in the config dir), in name
    order. `walked` holds the real folders above it, so a folder link back into one of them is
    named and not followed forever."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = f"{relative}/{entry.name}"
        found = _resolve(plan, Path(entry.path), name)
        if found is None:
            continue
        if not found.folder:
            plan.copies.append((name, found.real))
        elif found.link is not None and any(done.is_relative_to(found.real) for done in walked):
            plan.skip(name, f"a symbolic link to {found.link!r}, a folder that holds it: not "
                            f"followed, it would copy itself without end")
        else:
            _plan_folder(plan, found.real, name, (*walked, found.real))


def _plan_entry(plan: _Plan, config_dir: Path, entry: str) -> None:
    """One BACKUP_CONFIG_FILES entry: a file, or a folder when it ends in '/' or is one. An
    entry that contributes no file is missing (also when it is skipped, which says why)."""
    relative = entry.rstrip("/")
    source = config_dir / relative
    found = _resolve(plan, source, relative) if os.path.lexists(source) else None
    before = len(plan.copies)
    if found is not None:
        _check_readable(found.real, found.folder)
        if found.folder:
            _plan_folder(plan, found.real, relative, (found.real,))
        elif not entry.endswith("/"):
            plan.copies.append((relative, found.real))
    if len(plan.copies) == before:
        plan.missing.append(entry)


def _plan_config(config_dir: Path, entries: tuple[str, ...]) -> _Plan:
    """What snapshot_config copies and leaves out, decided before anything is opened."""
    plan = _Plan(root=Path(os.path.realpath(config_dir)))
    for entry in entries:
        _plan_entry(plan, config_dir, entry)
    return plan


def planned_bytes(config_dir: Path, entries: tuple[str, ...]) -> int:
    """What the snapshot will copy, in bytes, for the disk estimate: only the configured entries,
    through the links it follows. 0 when the plan cannot be made (the snapshot says why)."""
    try:
        return sum(real.stat().st_size for _, real in _plan_config(config_dir, entries).copies)
    except OSError:
        return 0


def _copy(relative: str, source: Path, target: Path) -> FileEntry:
    """Copy one planned regular file. It is opened without blocking and without following a
    link, and checked again once open: a file swapped for a FIFO or a link since the plan is
    refused, never waited on."""
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{relative} ({source}) changed while the configuration was copied: "
                          f"it is no longer a regular file")
        make_private_dirs(target.parent)
        with open_private(target) as dst:
            writer = HashingWriter(dst)
            for block in iter(lambda: src.read(BLOCK_SIZE), b""):
                writer.write(block)
    return FileEntry(f"{layout.CONFIG_DIR}/{relative}", writer.size, writer.sha256)


@dataclass(frozen=True)
class ConfigSnapshot:
    """What the snapshot copied (as the archive's files), what is missing, what it did not
    copy and why."""

    config_dir: str
    files: tuple[FileEntry, ...]
    missing: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]

    def manifest_entry(self) -> ConfigEntry:
        return ConfigEntry(self.config_dir, tuple(f.path for f in self.files), self.missing,
                           self.skipped)


def snapshot_config(config_dir: Path, entries: tuple[str, ...], staging: Path
                    ) -> ConfigSnapshot:
    """Copy each entry (a file, or a folder when it ends in '/') into staging/config/."""
    plan = _plan_config(config_dir, entries)
    files = tuple(_copy(relative, source, staging / layout.CONFIG_DIR / relative)
                  for relative, source in plan.copies)
    return ConfigSnapshot(str(config_dir), files, tuple(plan.missing), tuple(plan.skipped))


def config_spec(settings: Settings) -> dg.AssetSpec:
    return dg.AssetSpec(
        CONFIG_KEY,
        group_name="config",
        kinds={"file"},
        description=f"{', '.join(settings.config_files)} from BACKUP_CONFIG_DIR "
                    f"({settings.config_dir}), as config/ in the archive.",
    )


def build_config_snapshot(settings: Settings) -> dg.OpDefinition:
    @dg.op(
        name="config_snapshot",
        out={CONFIG_OUTPUT: dg.Out(dg.Nothing),
             "config_record": dg.Out(ConfigSnapshot, io_manager_key=VALUES_IO_MANAGER)},
        description="Copies the deployment's configuration files into the run's staging folder.",
    )
    def config_snapshot(context: dg.OpExecutionContext, storage: BackupStorage):
        retry_the_whole_run(context)
        staging = storage.staging(context.run.run_id)
        if not settings.config_dir.is_dir():
            context.log.warning(
                f"BACKUP_CONFIG_DIR {settings.config_dir} does not exist: no configuration file "
                f"will be in this backup"
            )
        try:
            record = snapshot_config(settings.config_dir, settings.config_files, staging)
        except OSError as error:
            shutil.rmtree(staging / layout.CONFIG_DIR, ignore_errors=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskSpaceError(
                    f"BACKUP_DIR {storage.root} is full: no space left while copying the "
                    f"configuration from BACKUP_CONFIG_DIR {settings.config_dir} "
                    f"({tree_bytes(settings.config_dir) // 1024} KiB) into the run's staging "
                    f"folder. Free space by hand (df -h {storage.root}), then run the backup "
                    f"again.") from error
            raise RuntimeError(
                f"could not copy the configuration from BACKUP_CONFIG_DIR {settings.config_dir}: "
                f"{error}. Check that the folder is mounted and readable by the backup user."
            ) from error
        for entry in record.missing:
            context.log.warning(f"config file missing, not in this backup: {entry}")
        for skipped in record.skipped:
            context.log.warning(f"config file NOT COPIED, not in this backup: {skipped.path} "
                                f"({skipped.reason})")
        yield dg.Output(None, CONFIG_OUTPUT, metadata={
            "config_dir": dg.MetadataValue.path(str(settings.config_dir)),
            "included": dg.MetadataValue.json([f.path for f in record.files]),
            "missing": dg.MetadataValue.json(list(record.missing)),
            "missing_count": len(record.missing),
            "skipped": dg.MetadataValue.json([s.to_json() for s in record.skipped]),
            "skipped_count": len(record.skipped),
            "bytes": sum(f.size for f in record.files),
        })
        yield dg.Output(record, "config_record")

    return config_snapshot
