"""The Definitions resolve: job, schedule, one asset per table, lineage back to every dump."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

from backup_pipeline.definitions import build_defs
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import CRITICAL, WINDOWED


def test_definitions_module_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKUP_DIR", str(tmp_path))
    import importlib

    import backup_pipeline.definitions as module

    module = importlib.reload(module)
    assert isinstance(module.defs, dg.Definitions)
    module.defs.resolve_job_def("backup_job")


def test_one_asset_per_table_and_lineage_to_every_dump():
    defs = build_defs(load_settings({}))
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {f"dumps/{t}" for t in CRITICAL} <= keys
    assert {f"transactions/{t}" for t in WINDOWED} <= keys
    assert {"database_schema", "config_snapshot", "backup_archive", "backup_status"} <= keys
    upstream = {k.to_user_string() for k in graph.get(dg.AssetKey("backup_archive")).parent_keys}
    assert {f"dumps/{t}" for t in CRITICAL} | {f"transactions/{t}" for t in WINDOWED} \
        | {"database_schema", "config_snapshot"} == upstream
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {"gzip_and_tar_integrity", "manifest_checksums", "dumps_readable",
                      "size_within_bounds"}
    assert all(graph.get_check_spec(k).blocking for k in graph.asset_check_keys)


def test_schedule_follows_the_settings():
    defs = build_defs(load_settings({"BACKUP_SCHEDULE": "30 3 * * *",
                                     "BACKUP_TIMEZONE": "Asia/Bangkok"}))
    schedule = defs.resolve_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "30 3 * * *"
    assert schedule.execution_timezone == "Asia/Bangkok"
    assert schedule.job_name == "backup_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_custom_table_list_changes_the_assets():
    defs = build_defs(load_settings({"BACKUP_TABLES": "users,organizations",
                                     "BACKUP_TRANSACTION_TABLES": "purchases"}))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "dumps/users" in keys and "dumps/agencies" not in keys
    assert "transactions/purchases" in keys and "transactions/credit_transactions" not in keys


def test_password_is_an_env_var_not_a_value(monkeypatch):
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cret-value")
    defs = build_defs(load_settings({}))
    postgres = defs.resources["postgres"]
    assert isinstance(postgres.password, dg.EnvVar)
    assert "s3cret-value" not in repr(postgres)


# What a restore on a bare host, the plain verification and the emails need: none of it may
# pull in Dagster (a broken Dagster install must not stop a restore).
CORE = ["verify", "restore", "salvage", "restore_proof", "throwaway_pg", "settings", "alerts",
        "emails.render", "pg", "pg_script", "export_plan", "layout", "downloads", "files",
        "manifest", "retry", "restore_script", "restore_load", "restore_checks", "data_files",
        "roles"]


def test_the_core_imports_no_dagster():
    probe = ("import importlib, json, sys\n"
             f"for name in {CORE!r}:\n"
             "    importlib.import_module('backup_pipeline.' + name)\n"
             "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in "
             "('dagster', 'dagster_shared', 'dagster_pipes'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(done.stdout) == []
    loaded = subprocess.run([sys.executable, "-c", probe.replace(
        "for name", "import backup_pipeline.definitions\nfor name")], capture_output=True,
        text=True, timeout=120, check=True)
    assert json.loads(loaded.stdout), "the probe must see Dagster when it is imported"


def test_dg_finds_the_project_and_its_definitions(tmp_path):
    """`dg` from the project folder ([tool.dg] in pyproject.toml): check defs passes, list defs
    names the jobs, schedules and sensors, with no warning on the way."""
    from backup_pipeline_tests.helpers import REPO

    dg_bin = str(Path(sys.executable).with_name("dg"))
    env = {**os.environ, "BACKUP_DIR": str(tmp_path / "backups")}
    env.pop("DAGSTER_HOME", None)
    checked = subprocess.run([dg_bin, "check", "defs"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=180)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    assert "warning" not in (checked.stdout + checked.stderr).lower()
    listed = subprocess.run([dg_bin, "list", "defs", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180, check=True)
    found = json.loads(listed.stdout)
    assert {j["name"] for j in found["jobs"]} == {"backup_job", "restore_drill_job"}
    assert {"nightly_backup_schedule", "restore_drill_schedule"} <= {
        s["name"] for s in found["schedules"]}
    assert "backup_failure_alert_sensor" in {s["name"] for s in found["sensors"]}


def test_the_settings_are_read_from_the_environment_in_settings_py_only():
    """Every variable of ours (BACKUP_*, POSTGRES_*, SMTP_*, ADMIN_EMAILS, DAGSTER_*) is read in
    settings.py; the other modules only pass the environment on to the programs they start."""
    package = Path(__file__).parents[1] / "backup_pipeline"
    ours = r'"(?:BACKUP|POSTGRES|SMTP|DAGSTER)_[A-Z0-9_]+"|"ADMIN_EMAILS"'
    reads = re.compile(rf"(?:environ(?:\.get)?[\[(]|getenv\()\s*(?:{ours})")
    found = {path.relative_to(package).as_posix(): reads.findall(path.read_text())
             for path in package.rglob("*.py") if path.name != "settings.py"}
    assert {path: names for path, names in found.items() if names} == {}
    assert reads.search('os.environ.get("BACKUP_LOG_FILE")')  # the pattern finds what it must


def test_every_combination_of_safeguards_resolves(tmp_path):
    """Proof on or off, sealed or not, off-site or not: the graph wires each step to the one
    before it that exists, and the success email hangs on the last one."""
    recipients = "age1qgdcv90zjy2ncu3t7f43ehsfa3u3uysjg828tuxf7aafg336y9qspklgj9"
    for proof in ("always", "off"):
        for sealed in (False, True):
            for offsite in (False, True):
                env = {"BACKUP_RESTORE_PROOF": proof}
                env |= {"BACKUP_AGE_RECIPIENTS": recipients} if sealed else {}
                env |= {"BACKUP_S3_BUCKET": "my-backups"} if offsite else {}
                defs = build_defs(load_settings(env))
                job = defs.resolve_job_def("backup_job")
                keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
                assert ("sealed_archive" in keys) is sealed
                assert ("offsite_copy" in keys) is offsite
                last = "offsite_copy" if offsite else "backup_status"
                hooked = {node.name for node in job.graph.node_dict["backup"].definition.nodes
                          if node.hook_defs and any(h.name == "backup_success_email"
                                                    for h in node.hook_defs)}
                assert hooked == {last}, (env, hooked)
