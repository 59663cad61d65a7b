"""`backup-pipeline status` and `health-check`, as the Docker healthcheck runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from backup_pipeline import layout
from backup_pipeline_tests.helpers import BACKUP_PIPELINE, archives, blocked_run, run_backup


def cli(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([BACKUP_PIPELINE, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
    return done, time.monotonic() - started


def test_health_check_before_any_backup(backup_env):
    done, _ = cli(backup_env, "health-check")
    assert done.returncode == 1
    assert "UNHEALTHY: no verified backup has ever been recorded" in done.stdout


def test_healthy_after_a_backup_then_each_problem_on_its_own_line(backup_env, instance):
    assert run_backup(backup_env, instance).success
    done, seconds = cli(backup_env, "health-check")
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == "healthy"
    assert seconds < 10

    status_file = Path(backup_env["BACKUP_DIR"]) / layout.LAST_SUCCESS_FILE
    status_file.write_text(f"{int(time.time()) - 30 * 3600}\n")
    broken = {**backup_env, "POSTGRES_PORT": "1", "BACKUP_MIN_SIZE_MB": "50",
              "BACKUP_MIN_FREE_DISK_MB": str(10**9)}
    done, seconds = cli(broken, "health-check")
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4, lines
    assert "no verified backup within BACKUP_MAX_AGE_HOURS=25: the last one finished 30.0 h ago" \
        in lines[0]
    assert "outside BACKUP_MIN_SIZE_MB=50" in lines[1]
    assert "below BACKUP_MIN_FREE_DISK_MB" in lines[2]
    assert lines[3].startswith("UNHEALTHY: database unreachable: host")
    assert backup_env["POSTGRES_PASSWORD"] not in done.stdout
    assert seconds < 10


def test_status_json_with_run_history(backup_env, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**backup_env, "DAGSTER_HOME": str(home)}
    run = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "execute",
                          "-m", "backup_pipeline.definitions", "-j", "backup_job"],
                         env={**os.environ, **env}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]
    done, _ = cli(env, "status", "--json", "--verify")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    [archive] = archives(backup_env["BACKUP_DIR"])
    assert status["newest_archive"]["name"] == archive.name
    assert status["newest_archive"]["verified"] is True
    assert status["newest_archive"]["age_hours"] < 1
    assert status["history_source"] == "dagster instance"
    assert status["last_run"]["status"] == "SUCCESS"
    assert status["last_run"]["duration_seconds"] > 0
    assert status["success_rate"] == {"succeeded": 1, "finished": 1, "percent": 100.0}
    assert status["free_disk_mb"] > 0
    text, _ = cli(env, "status")
    assert archive.name in text.stdout and "1/1 of the last runs (100.0 %)" in text.stdout


def test_status_and_health_check_name_a_dead_run_then_its_failure(backup_env, dagster_home,
                                                                  server):
    """No daemon here: the run's process is killed and nothing marks it failed, so status and
    health-check must see it themselves (by its silent heartbeat), then its failure."""
    env = {**backup_env, **dagster_home}
    home = Path(dagster_home["DAGSTER_HOME"])
    with blocked_run(env, home, server.dsn(backup_env["POSTGRES_DB"])) as (process, run_id):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    time.sleep(10)  # the instance allows 9 s of silence; its last beat came before the kill
    text, _ = cli(env, "status")
    assert "last run          STARTED" in text.stdout, text.stdout
    assert "(its process DIED: see health-check)" in text.stdout and run_id in text.stdout
    done, _ = cli(env, "health-check")
    assert done.returncode == 1
    assert (f"UNHEALTHY: backup_job run {run_id} is STARTED but its process has sent no "
            "heartbeat for") in done.stdout, done.stdout

    instance = dg.DagsterInstance.get()
    instance.report_run_failed(instance.get_run_by_id(run_id), "declared dead in this test")
    done, _ = cli(env, "health-check")
    assert done.returncode == 1
    assert (f"UNHEALTHY: the last backup_job run {run_id} (started ") in done.stdout
    assert "FAILED at database_export: declared dead in this test" in done.stdout, done.stdout
    text, _ = cli(env, "status")
    assert "failed at database_export: declared dead in this test" in text.stdout, text.stdout
