"""HeartbeatRunLauncher's verdict on a real Dagster instance: dead only when silent twice."""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.launcher import WorkerStatus

from backup_pipeline.run_monitoring import DEAD_RUN_PHRASE, HeartbeatRunLauncher, _key

LAUNCHER = {"module": "backup_pipeline.run_monitoring", "class": "HeartbeatRunLauncher",
            "config": {"heartbeat_timeout_seconds": 3}}


def _started_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    return instance.add_run(dg.DagsterRun(job_name="backup_job",
                                          status=dg.DagsterRunStatus.STARTED))


def _beat(instance: dg.DagsterInstance, run: dg.DagsterRun, seconds_ago: float) -> None:
    instance.run_storage.set_cursor_values({_key(run.run_id): str(time.time() - seconds_ago)})


def test_a_silent_run_is_declared_dead_only_when_seen_silent_twice_two_beats_apart():
    with dg.instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, HeartbeatRunLauncher)
        run = _started_run(instance)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING  # no beat

        _beat(instance, run, 10)  # silent for longer than the 3 s allowed: a suspect, not dead
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        _beat(instance, run, 0)  # it beat again (the host had slept): no longer a suspect
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

        _beat(instance, run, 10)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        time.sleep(2.1)  # two beats (1 s each with a 3 s timeout) by the daemon's own clock
        verdict = launcher.check_run_worker_health(run)
        assert verdict.status == WorkerStatus.FAILED and DEAD_RUN_PHRASE in verdict.msg
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        [event] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert event.message == verdict.msg
