"""A backup is whole or not at all: a UI click on some of its assets is refused, touching nothing.

The runs are the UI's: the implicit asset job with an asset selection, on a real instance, with
the real hooks and the failure sensor evaluated afterwards (the daemon's part).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.definitions import build_defs
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import archives, outbox_messages, run_backup


def _files(folder: Path) -> dict[str, bytes]:
    """Everything in BACKUP_DIR but the outbox and the logs, by name, with its content."""
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.is_file() and p.suffix != ".log"}


def _check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.dagster_event
            and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]


@pytest.mark.parametrize("chosen", ["one_table", "the_archive", "the_status",
                                    "the_archive_and_the_drill"])
def test_a_partial_selection_is_refused_before_anything_is_touched(backup_env, instance, chosen):
    assert run_backup(backup_env, instance).success  # a good archive and its status to keep
    folder = Path(backup_env["BACKUP_DIR"])
    before, emails = _files(folder), len(outbox_messages(backup_env))
    defs = build_defs(load_settings(backup_env))
    export = next(a for a in defs.assets if dg.AssetKey(["dumps", "users"]) in a.keys)
    selection = {"one_table": set(export.keys),  # what the UI asks to confirm: the whole export
                 "the_archive": {dg.AssetKey("backup_archive")},
                 "the_status": {dg.AssetKey("backup_status")},
                 # the drill has no upstream step in such a run: it is refused too, untouched
                 "the_archive_and_the_drill": {dg.AssetKey("backup_archive"),
                                               dg.AssetKey("restore_drill")}}[chosen]
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=list(selection), raise_on_error=False)

    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and {f.event_specific_data.error.cls_name for f in failures} == {
        "PartialBackupRefused"}
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]
    message = failures[0].event_specific_data.error.message
    assert "refused: a backup is made whole or not at all" in message
    assert f"selected {len(selection - {dg.AssetKey('restore_drill')})} of the backup's " in message
    assert "Nothing was exported, and no archive, check or status file was touched" in message
    assert _files(folder) == before  # no new archive, the status files as they were
    assert len(archives(folder)) == 1
    assert _check_evaluations(instance, result.run_id) == []  # not evaluated: nothing failed
    run = instance.get_run_by_id(result.run_id)
    assert run.tags["dagster/max_retries"] == "0"

    sensor = defs.resolve_sensor_def("backup_failure_alert_sensor")
    run_failure = next(e for e in instance.all_logs(result.run_id) if e.dagster_event
                       and e.dagster_event.event_type_value == "PIPELINE_FAILURE")
    sensor(dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=run,
        dagster_event=run_failure.dagster_event,
        resources={"mailer": defs.resources["mailer"]}).for_run_failure())
    assert len(outbox_messages(backup_env)) == emails  # no URGENT email for a click


def test_checking_the_archive_again_alone_still_verifies_it(backup_env, instance):
    """The UI's "Execute checks" on the archive selects no backup asset: it is not a partial
    backup, and verifies the newest archive again."""
    assert run_backup(backup_env, instance).success
    defs = build_defs(load_settings(backup_env))
    checks = [key for spec_def in defs.asset_checks for key in spec_def.check_keys]
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection=set(checks))
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    evaluations = _check_evaluations(instance, result.run_id)
    assert len(evaluations) == len(checks) and all(
        e.dagster_event.event_specific_data.passed for e in evaluations)
