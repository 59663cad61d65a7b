"""The backup's assets, built from the settings (the table list decides the asset keys).

The hooks are attached to the assets' steps, not to a job, so the emails go out however the
assets are materialized: by the schedule, `dg launch`, `dagster job execute`, or the UI.
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline.assets.backup import backup_specs, build_backup
from backup_pipeline.assets.restore_drill import restore_drill
from backup_pipeline.hooks import build_hooks
from backup_pipeline.settings import Settings


def whole_backup_keys(settings: Settings) -> frozenset[dg.AssetKey]:
    """Every asset one backup makes: Dagster runs them together or not at all."""
    return frozenset(spec.key for spec in backup_specs(settings))


def build_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    success_email, failure_alert = build_hooks(settings)
    return [
        build_backup(settings, success_email, failure_alert),
        restore_drill.with_hooks({failure_alert}),
    ]
