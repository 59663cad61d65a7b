"""The one Definitions of the backup pipeline: assets, checks, job, schedule and resources.

Settings are read and validated here, when the code location loads: an invalid value stops
`dagster job execute` and shows in the UI before any backup work starts.
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline.assets import build_assets
from backup_pipeline.jobs import backup_job, restore_drill_job
from backup_pipeline.resources import build_resources
from backup_pipeline.schedules import (
    build_nightly_backup_schedule,
    build_restore_drill_schedule,
)
from backup_pipeline.sensors import build_sensors
from backup_pipeline.settings import Settings, load_settings


def build_defs(settings: Settings) -> dg.Definitions:
    """The project's definitions for `settings`; tests build theirs from their own settings."""
    assets = build_assets(settings)
    return dg.Definitions(
        assets=assets,
        jobs=[backup_job, restore_drill_job],
        schedules=[
            build_nightly_backup_schedule(settings, backup_job),
            build_restore_drill_schedule(settings, restore_drill_job),
        ],
        sensors=build_sensors(settings, {key for asset in assets for key in asset.keys}),
        resources=build_resources(settings),
        executor=dg.in_process_executor,
    )


defs = build_defs(load_settings())
