"""The backup's assets, built from the settings (the table list decides the asset keys)."""


import dagster as dg

from backup_pipeline.assets.archive import build_backup_archive
from backup_pipeline.assets.checks import archive_checks
from backup_pipeline.assets.config_snapshot import build_config_snapshot
from backup_pipeline.assets.database import build_database_export
from backup_pipeline.assets.restore_drill import restore_drill
from backup_pipeline.assets.status import backup_status
from backup_pipeline.settings import Settings


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [
        build_database_export(settings),
        build_config_snapshot(settings),
        build_backup_archive(settings),
        backup_status,
        restore_drill,
    ]


def build_asset_checks() -> list[dg.AssetChecksDefinition]:
    return [archive_checks]
