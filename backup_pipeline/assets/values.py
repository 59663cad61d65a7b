"""How the backup's steps hand each other what they made: typed values, in memory.

The steps of one backup run in one process (the in-process executor), one after the other, so
the export's record, the configuration's, the archive that was built and the proof's result
pass as Python values from step to step: no side file in the staging folder, no search of the
event log for what an earlier step materialized. They last as long as the run, like its staged
files: a backup cannot be resumed from a failed step. The UI's "Re-execute from failure" of a
backup run is therefore refused at its first step, with the reason and without an alert (a
click is not an incident); the daemon's own retries redo the whole run (ALL_STEPS).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from backup_pipeline.alerts import ALERT_RUN_TAG, ALERT_TAG
from backup_pipeline.run_monitoring import step_name

VALUES_IO_MANAGER = "backup_values"
RESUME_REFUSED_ALERT_STATE = "none: a re-execution of part of a backup was refused"


def output_name(key: dg.AssetKey) -> str:
    """The name of the step output that materializes `key` (a Python identifier)."""
    return key.to_python_identifier()


class ResumeRefused(Exception):
    """A run re-executes part of a backup: what its first steps made is gone with their run."""


class StepValues(dg.IOManager):
    """The values of one run's steps, kept in this process for as long as the run."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str], Any] = {}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self._values[(context.run_id, context.step_key, context.name)] = obj

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        assert upstream is not None
        key = (upstream.run_id, upstream.step_key, upstream.name)
        if key not in self._values:
            run_id = context.step_context.run_id
            # Before raising: the failure hook and sensor send nothing for a tagged run, and the
            # run-retry daemon leaves alone a run whose retries are used up.
            context.instance.add_run_tags(run_id, {ALERT_TAG: RESUME_REFUSED_ALERT_STATE,
                                                   ALERT_RUN_TAG: run_id,
                                                   "dagster/max_retries": "0"})
            raise ResumeRefused(
                f"refused: this run re-executes part of a backup, but what step "
                f"{step_name(upstream.step_key)} of run {upstream.run_id[:8]} made (its "
                f"{upstream.name} value, the staged files) is gone with that run. A backup is "
                f"made whole: launch backup_job again (dg launch --job backup_job, or the UI's "
                f"Materialize). Nothing was changed.")
        return self._values[key]


@dg.io_manager(description="The backup's steps' values, in memory, for the length of the run.")
def step_values() -> StepValues:
    return StepValues()
