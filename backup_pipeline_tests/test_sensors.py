"""The age and size sensors with a real Dagster instance and cursor: one alert an incident."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline import layout
from backup_pipeline.alerts import ALERT_TAG
from backup_pipeline.definitions import build_defs
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import run_backup
from backup_pipeline_tests.smtp_server import start_smtp


@pytest.fixture
def monitored(tmp_path, monkeypatch):
    smtp = start_smtp(tmp_path)
    env = {"BACKUP_DIR": str(tmp_path / "backups"), "ADMIN_EMAILS": "oncall@example.com",
           "BACKUP_EMAIL_RETRY_BASE_SECONDS": "0.01", **smtp.env()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "backups").mkdir()
    yield env, smtp
    smtp.stop()


class Ticker:
    """Evaluates a sensor tick after tick, carrying its cursor as the daemon does."""

    def __init__(self, env: dict[str, str], name: str, instance: dg.DagsterInstance) -> None:
        defs = build_defs(load_settings(env))
        self.sensor = defs.resolve_sensor_def(name)
        self.resources = {k: defs.resources[k] for k in ("storage", "mailer")}
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> str:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                     resources=self.resources) as context:
            result = self.sensor.evaluate_tick(context)
            self.cursor = result.cursor if result.cursor is not None else self.cursor
        return result.skip_message or ""


def _subjects(smtp) -> list[str]:
    return [message["Subject"] for _, message in smtp.recorder.messages]


def _write_success(backup_dir: str, hours_ago: float) -> None:
    finished = int(time.time() - hours_ago * 3600)
    Path(backup_dir, layout.LAST_SUCCESS_FILE).write_text(f"{finished}\n")


def test_age_sensor_alerts_once_per_incident_and_notes_recovery(monitored, instance):
    env, smtp = monitored
    ticker = Ticker(env, "backup_age_sensor", instance)
    assert "ALERT sent (ok): no verified backup has ever been made" in ticker.tick()
    assert "still open" in ticker.tick()
    assert len(smtp.recorder.messages) == 1

    _write_success(env["BACKUP_DIR"], 2)
    assert "recovered" in ticker.tick()
    assert "newest verified backup is 2.0 h old" in ticker.tick()
    assert _subjects(smtp) == ["URGENT: Smart AI Hub backup is overdue",
                               "RESOLVED: Smart AI Hub backup is overdue"]

    _write_success(env["BACKUP_DIR"], 26)
    message = ticker.tick()
    assert "ALERT sent (ok): the newest verified backup finished 26.0 h ago" in message
    ticker.tick()
    assert len(smtp.recorder.messages) == 3
    text = smtp.recorder.messages[-1][1].get_body(("plain",)).get_content()
    assert "more than BACKUP_MAX_AGE_HOURS=25" in text and "nightly_backup_schedule" in text


def _archive(backup_dir: str, hours_ago: float, size: int) -> Path:
    name = layout.archive_name(datetime.fromtimestamp(time.time() - hours_ago * 3600, UTC), "UTC")
    path = Path(backup_dir, name)
    path.write_bytes(b"\0" * size)
    return path


def test_size_sensor_alerts_for_too_small_and_too_large(monitored, instance):
    env, smtp = monitored
    env = {**env, "BACKUP_MIN_SIZE_MB": "1", "BACKUP_MAX_SIZE_MB": "2"}
    ticker = Ticker(env, "backup_size_sensor", instance)
    assert "no archive yet" in ticker.tick()
    small = _archive(env["BACKUP_DIR"], 3, 100_000)
    assert f"ALERT sent (ok): the newest archive {small.name} is 0.10 MB" in ticker.tick()
    assert "still open" in ticker.tick()
    large = _archive(env["BACKUP_DIR"], 2, 3 * 1024 * 1024)
    assert f"ALERT sent (ok): the newest archive {large.name} is 3.00 MB" in ticker.tick()
    normal = _archive(env["BACKUP_DIR"], 1, 1536 * 1024)
    assert "recovered" in ticker.tick()
    assert f"newest archive {normal.name} is 1.50 MB" in ticker.tick()
    assert _subjects(smtp) == ["URGENT: Smart AI Hub backup has an abnormal size"] * 2 + [
        "RESOLVED: Smart AI Hub backup has an abnormal size"]


def test_sensors_are_on_by_default():
    defs = build_defs(load_settings({}))
    for name in ("backup_age_sensor", "backup_size_sensor", "backup_failure_alert_sensor",
                 "undelivered_alert_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_an_alert_that_could_not_be_sent_is_tried_again(monitored, instance):
    env, smtp = monitored
    ticker = Ticker(env, "backup_age_sensor", instance)
    smtp.recorder.refuse = 100
    assert "ALERT sent (FAILED)" in ticker.tick()
    smtp.recorder.refuse = 0
    assert "ALERT sent (ok)" in ticker.tick()
    assert "still open" in ticker.tick()
    assert len(smtp.recorder.messages) == 1


def test_a_failure_alert_that_could_not_be_sent_is_sent_again_by_the_sensor(monitored, instance):
    env, smtp = monitored
    env = {**env, "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1",
           "BACKUP_DB_RETRY_BASE_SECONDS": "0.01"}
    smtp.recorder.refuse = 100
    result = run_backup(env, instance)
    assert not result.success
    run_id = result.run_id
    assert instance.get_run_by_id(run_id).tags[ALERT_TAG] == "failed"
    assert smtp.recorder.messages == []

    ticker = Ticker(env, "undelivered_alert_sensor", instance)
    assert f"alerts sent again: {run_id[:8]} still undelivered" in ticker.tick()
    smtp.recorder.refuse = 0
    assert f"alerts sent again: {run_id[:8]} sent" in ticker.tick()
    assert ticker.tick() == "every failure alert was delivered"
    [(_, message)] = smtp.recorder.messages
    assert message["Subject"] == "URGENT: Smart AI Hub backup_job FAILED at database_export"
    assert "could not connect to PostgreSQL" in message.get_body(("plain",)).get_content()
    assert instance.get_run_by_id(run_id).tags[ALERT_TAG] == "sent"
