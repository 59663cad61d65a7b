"""The deployment's configuration files, copied into the archive under their own names.

A missing file is not an error (a deployment without nginx is legitimate) but it is never silent:
it is listed as missing in the run's log, the asset's metadata, the manifest and BACKUP_INFO.txt.
Symbolic links (certbot's live/ folder is made of them) are followed, so the archive holds the
certificate itself, not a link that would point nowhere on the restored server.
"""


import json
import os
import shutil
from pathlib import Path

import dagster as dg

from backup_pipeline import layout
from backup_pipeline.pg import HashingWriter
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import Settings

CONFIG_RECORD = "config.json"
CONFIG_KEY = dg.AssetKey("config_snapshot")


def _copy(source: Path, target: Path) -> dict:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
        writer = HashingWriter(dst)
        for block in iter(lambda: src.read(1 << 20), b""):
            writer.write(block)
    return {"size": writer.size, "sha256": writer.sha256}


def snapshot_config(config_dir: Path, entries: tuple[str, ...], staging: Path) -> dict:
    """Copy each entry (a file, or a folder when it ends in '/') into staging/config/."""
    files, missing = [], []
    for entry in entries:
        source = config_dir / entry.rstrip("/")
        folder = source.is_dir()
        if source.exists() and not os.access(source, os.R_OK | (os.X_OK if folder else 0)):
            raise PermissionError(
                f"{source} exists but the backup user (uid {os.getuid()}) cannot read it: make "
                f"it readable, e.g. chgrp {os.getgid()} {source} && chmod "
                f"g+r{'x' if folder else ''} {source}"
            )
        if entry.endswith("/") or source.is_dir():
            if not source.is_dir():
                missing.append(entry)
                continue
            members = sorted(p for p in source.rglob("*") if p.is_file())
            if not members:
                missing.append(entry)
            for member in members:
                relative = member.relative_to(config_dir).as_posix()
                path = f"{layout.CONFIG_DIR}/{relative}"
                files.append({"path": path, **_copy(member, staging / path)})
        elif source.is_file():
            path = f"{layout.CONFIG_DIR}/{entry}"
            files.append({"path": path, **_copy(source, staging / path)})
        else:
            missing.append(entry)
    return {"config_dir": str(config_dir), "files": files, "missing": missing}


def build_config_snapshot(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name="config_snapshot",
        group_name="config",
        kinds={"file"},
        description=f"{', '.join(settings.config_files)} from BACKUP_CONFIG_DIR "
                    f"({settings.config_dir}), as config/ in the archive.",
    )
    def config_snapshot(context: dg.AssetExecutionContext, storage: BackupStorage
                        ) -> dg.MaterializeResult:
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
            raise RuntimeError(
                f"could not copy the configuration from BACKUP_CONFIG_DIR {settings.config_dir}: "
                f"{error}. Check that the folder is mounted and readable by the backup user."
            ) from error
        (staging / CONFIG_RECORD).write_text(json.dumps(record, indent=2))
        for entry in record["missing"]:
            context.log.warning(f"config file missing, not in this backup: {entry}")
        return dg.MaterializeResult(
            metadata={
                "config_dir": dg.MetadataValue.path(str(settings.config_dir)),
                "included": dg.MetadataValue.json([f["path"] for f in record["files"]]),
                "missing": dg.MetadataValue.json(record["missing"]),
                "missing_count": len(record["missing"]),
                "bytes": sum(f["size"] for f in record["files"]),
            }
        )

    return config_snapshot
