"""A backup is whole or not at all: Dagster runs every asset and check of it, or nothing.

The runs are the UI's: the implicit asset job with an asset selection, on a real instance, with
the real hooks. The UI expands a click on any backup asset to all of them (it asks to confirm);
a selection of only some of them is refused by Dagster before a run exists.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.errors import DagsterInvalidSubsetError

from backup_pipeline.assets import whole_backup_keys
from backup_pipeline.assets.archive import ARCHIVE_KEY
from backup_pipeline.definitions import build_defs
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import (
    archives,
    backup_job_from_environment,
    outbox_messages,
    run_backup,
)

USERS = dg.AssetKey(["dumps", "users"])


def _files(folder: Path) -> dict[str, bytes]:
    """Everything in BACKUP_DIR but the outbox and the logs, by name, with its content."""
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if p.is_file() and p.suffix != ".log"}


def _check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list:
    return [e.dagster_event.event_specific_data for e in instance.all_logs(run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]


PARTIAL = {"one_table": ({USERS}, None), "the_archive": ({ARCHIVE_KEY}, None),
           "the_status": ({dg.AssetKey("backup_status")}, None),
           "the_archive_and_the_drill": ({ARCHIVE_KEY, dg.AssetKey("restore_drill")}, None),
           "the_checks": (set(), {dg.AssetCheckKey(ARCHIVE_KEY, "manifest_checksums")})}


def test_a_partial_selection_is_refused_before_a_run_exists(backup_env, instance):
    assert run_backup(backup_env, instance).success  # a good archive and its status to keep
    folder = Path(backup_env["BACKUP_DIR"])
    before, emails = _files(folder), len(outbox_messages(backup_env))
    runs = instance.get_runs_count()
    job = build_defs(load_settings(backup_env)).resolve_implicit_global_asset_job_def()
    for chosen, (assets, checks) in PARTIAL.items():
        with pytest.raises(DagsterInvalidSubsetError, match="does not support subsetting"):
            job.get_subset(asset_selection=assets, asset_check_selection=checks)
            pytest.fail(f"{chosen} was not refused")
    assert instance.get_runs_count() == runs
    assert _files(folder) == before  # no new archive, the status files as they were
    assert len(archives(folder)) == 1
    assert len(outbox_messages(backup_env)) == emails  # no URGENT email for a click


def test_materialize_on_one_table_runs_the_whole_backup(backup_env, instance):
    """What the UI launches for "Materialize" on one table, once the administrator confirms
    the assets it must go with: every backup asset, and the archive's checks, in one run."""
    defs = build_defs(load_settings(backup_env))
    selection = dg.AssetSelection.assets(USERS).required_multi_asset_neighbors()
    keys = selection.resolve(defs.resolve_asset_graph())
    assert keys == whole_backup_keys(load_settings(backup_env))
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=list(keys), raise_on_error=False)
    assert result.success
    [archive] = archives(backup_env["BACKUP_DIR"])
    materialized = {e.asset_key for e in result.all_events
                    if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert materialized == keys
    [email] = outbox_messages(backup_env)
    assert archive.name in email["Subject"] or archive.name in str(email)

    # The checks ran on the archive this run built, and say what they proved.
    evaluations = {e.check_name: e for e in _check_evaluations(instance, result.run_id)}
    assert set(evaluations) == {"gzip_and_tar_integrity", "manifest_checksums",
                                "dumps_readable", "size_within_bounds"}
    for evaluation in evaluations.values():
        assert evaluation.passed
        assert evaluation.target_materialization_data.run_id == result.run_id
        assert evaluation.metadata["archive"].value == archive.name
    size = archive.stat().st_size
    assert evaluations["gzip_and_tar_integrity"].metadata["bytes"].value == size
    manifest = result.output_for_node("backup", "backup_status").archive.manifest
    listed = evaluations["manifest_checksums"].metadata
    assert listed["files_listed"].value == listed["files_matched"].value == len(manifest.files)
    assert listed["bytes_hashed"].value == manifest.data_bytes
    readable = evaluations["dumps_readable"].metadata
    assert readable["tables_read"].value == len(manifest.tables)
    assert readable["rows_counted"].value == manifest.rows > 0


def test_re_execution_from_a_failed_step_is_refused_without_an_alert(backup_env, instance,
                                                                     monkeypatch):
    """The UI's "Re-execute from failure" of a failed backup: its earlier steps' values and
    files are gone, so it is refused with the reason, no alert is sent, nothing is touched."""
    env = {**backup_env, "BACKUP_MAX_SIZE_MB": "0.001"}  # archive_checks fails
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    job = dg.reconstructable(backup_job_from_environment)
    failed = dg.execute_job(job, instance=instance, raise_on_error=False)
    assert not failed.success
    alerts = len(outbox_messages(env))
    assert alerts == 1  # the failed check's one alert
    folder = Path(env["BACKUP_DIR"])
    before = _files(folder)
    again = dg.execute_job(job, instance=instance, raise_on_error=False,
                           reexecution_options=dg.ReexecutionOptions.from_failure(
                               failed.run_id, instance))
    assert not again.success
    [failure] = [e for e in again.all_events if e.is_step_failure]
    assert failure.step_key == "backup.archive_checks"
    refused = failure.event_specific_data.error.cause
    assert refused.cls_name == "ResumeRefused", failure.event_specific_data.error.to_string()
    assert "what step backup_archive of run " in refused.message
    assert "A backup is made whole: launch backup_job again" in refused.message
    assert len(outbox_messages(env)) == alerts
    run = instance.get_run_by_id(again.run_id)
    assert run.tags["dagster/max_retries"] == "0"
    defs = build_defs(load_settings(env))
    sensor = defs.resolve_sensor_def("backup_failure_alert_sensor")
    run_failure = next(e for e in instance.all_logs(again.run_id) if e.dagster_event
                       and e.dagster_event.event_type_value == "PIPELINE_FAILURE")
    sensor(dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=run,
        dagster_event=run_failure.dagster_event,
        resources={"mailer": defs.resources["mailer"]}).for_run_failure())
    assert len(outbox_messages(env)) == alerts
    assert _files(folder) == before
