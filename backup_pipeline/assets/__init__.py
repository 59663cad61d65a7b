"""The backup's assets, built from the settings (the table list decides the asset keys).

The hooks are attached to the assets, not to a job, so the emails go out however the assets are
materialized: by the schedule, `dagster job execute`, or the UI.
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline.assets.archive import ARCHIVE_KEY, build_backup_archive
from backup_pipeline.assets.checks import build_archive_checks
from backup_pipeline.assets.config_snapshot import CONFIG_KEY, build_config_snapshot
from backup_pipeline.assets.database import build_database_export, export_specs
from backup_pipeline.assets.restore_drill import build_restore_drill
from backup_pipeline.assets.restore_proof import PROOF_KEY, build_restore_proof
from backup_pipeline.assets.status import STATUS_KEY, build_backup_status
from backup_pipeline.hooks import build_hooks
from backup_pipeline.settings import Settings


def whole_backup_keys(settings: Settings) -> frozenset[dg.AssetKey]:
    """Every asset one backup makes: a run selects them all, or is refused (whole_backup)."""
    proof = {PROOF_KEY} if settings.restore_proof else set()
    return frozenset({spec.key for spec in export_specs(settings)} | {CONFIG_KEY, ARCHIVE_KEY,
                                                                       STATUS_KEY} | proof)


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    success_email, failure_alert = build_hooks(settings)
    whole = whole_backup_keys(settings)
    proof = ([build_restore_proof(whole).with_hooks({failure_alert})] if settings.restore_proof
             else [])
    return [
        build_database_export(settings, whole).with_hooks({failure_alert}),
        build_config_snapshot(settings, whole).with_hooks({failure_alert}),
        build_backup_archive(settings, whole).with_hooks({failure_alert}),
        *proof,
        build_backup_status(settings, whole).with_hooks({success_email, failure_alert}),
        build_restore_drill(whole).with_hooks({failure_alert}),
    ]


def build_asset_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    return [build_archive_checks(settings)]
