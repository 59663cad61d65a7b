"""Dead runs: the heartbeat a run's process writes while it lives, and the launcher that reads it.

Why: Dagster's DefaultRunLauncher cannot tell whether a run's process is alive. A run whose
process is killed (kill -9, the OOM killer, a container or host restart, an interrupted
`dagster job execute`) stays STARTED forever, and behind it, in the QueuedRunCoordinator's one
slot, every later backup waits. So every run of this project beats: the run's resources write
the time into the Dagster instance every few seconds (`Heartbeat`). The daemon's run monitoring
(dagster.yaml `run_monitoring`) asks the run launcher about every STARTED run; this launcher
answers FAILED for a run whose heartbeat stopped more than `heartbeat_timeout_seconds` ago, and
Dagster marks the run failed: the queue moves on, and the run-failure sensor sends one alert.

A run that never beat (no backup resource, or killed in its first second) is left to the
monitor's maximum runtime: it is never declared dead on a guess.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._utils.error import SerializableErrorInfo

from backup_pipeline.alerts import DEAD_RUN_PHRASE, failure_kind

HEARTBEAT_KEY_PREFIX = "backup_pipeline/heartbeat/"
DEFAULT_TIMEOUT_SECONDS = 180
# Several beats fit in one timeout, so a slow database write or a busy moment is not death.
BEATS_PER_TIMEOUT = 6


def _key(run_id: str) -> str:
    return HEARTBEAT_KEY_PREFIX + run_id


def last_heartbeat(instance: dg.DagsterInstance, run_id: str) -> float | None:
    """The unix time of the run's last heartbeat, None when it never beat."""
    value = instance.run_storage.get_cursor_values({_key(run_id)}).get(_key(run_id))
    try:
        return float(value) if value else None
    except ValueError:
        return None


def heartbeat_timeout(instance: dg.DagsterInstance) -> float:
    """The instance's timeout (its HeartbeatRunLauncher's), or the default for any other."""
    launcher = instance.run_launcher
    if isinstance(launcher, HeartbeatRunLauncher):
        return launcher.heartbeat_timeout_seconds
    return DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Silence:
    """How long a run's process has been silent: what the launcher, status and health report."""

    last_beat: float
    seconds: float
    timeout: float

    @property
    def dead(self) -> bool:
        return self.seconds > self.timeout

    def message(self) -> str:
        """Stored in the run's failure and read hours later: times, not "N s ago"."""
        at = datetime.fromtimestamp(self.last_beat, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        declared = datetime.fromtimestamp(self.last_beat + self.seconds, UTC).strftime("%H:%M:%S")
        return (f"the run's process {DEAD_RUN_PHRASE} at {at}; declared dead at {declared} UTC, "
                f"{self.seconds:.0f} s later (the limit is {self.timeout:g} s): it was killed "
                f"(kill -9, the out-of-memory killer, a container or host restart) or froze.")


def silence(instance: dg.DagsterInstance, run_id: str, now: float | None = None
            ) -> Silence | None:
    beat = last_heartbeat(instance, run_id)
    if beat is None:
        return None
    now = time.time() if now is None else now
    return Silence(beat, max(0.0, now - beat), heartbeat_timeout(instance))


def step_name(step_key: str) -> str:
    """A step as the alerts and `status` name it: its op (`database_export`), without the
    graph it belongs to (the run's timeline shows `backup.database_export`)."""
    return step_key.rsplit(".", 1)[-1]


class RunFailure(NamedTuple):
    """Where a run failed and why, as its events tell it."""

    step: str
    error: str
    # (class name, message) of the error and its causes, outermost first: Dagster wraps the
    # exception a step raised in its own.
    errors: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        """The kind of failure, for the alert's advice (alerts.troubleshooting)."""
        return failure_kind(self.errors, self.error)


def _chain(error: SerializableErrorInfo | None) -> tuple[tuple[str, str], ...]:
    found = []
    while error is not None:
        found.append((error.cls_name or "", error.message or ""))
        error = error.cause or error.context
    return tuple(found)


def describe_failure(instance: dg.DagsterInstance, run_id: str) -> RunFailure:
    """The first failed step and its error, or for a run that failed outside any step (a dead
    process, a crash before the first step) the step it was in, if any, and the run's failure
    message."""
    failures = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if failures:
        event = failures[0].dagster_event
        error = event.event_specific_data.error
        return RunFailure(step_name(event.step_key) if event.step_key else "run",
                          error.to_string() if error else "the step failed", _chain(error))
    run_failed = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    message = (run_failed[-1].message if run_failed else "") or "run failed"
    running: list[str] = []
    for event in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START,
                                                    dg.DagsterEventType.STEP_SUCCESS}):
        if event.dagster_event_type == dg.DagsterEventType.STEP_START:
            running.append(event.step_key)
        elif event.step_key in running:
            running.remove(event.step_key)
    step = step_name(running[-1]) if running else "the run (before any step)"
    data = run_failed[-1].dagster_event.event_specific_data if run_failed else None
    return RunFailure(step, message, _chain(getattr(data, "error", None)))


class Heartbeat:
    """Writes the run's heartbeat from a daemon thread for as long as the context is open."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str) -> None:
        self._instance = instance
        self._run_id = run_id
        self._interval = max(1.0, heartbeat_timeout(instance) / BEATS_PER_TIMEOUT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, daemon=True,
                                        name=f"heartbeat-{run_id[:8]}")

    def _beat(self) -> None:
        self._instance.run_storage.set_cursor_values({_key(self._run_id): str(time.time())})

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception:  # a missed beat is retried next time; the timeout allows several
                continue

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """A beat stuck on a hung storage connection must not hold the finished run open."""
        self._stop.set()
        self._thread.join(timeout=self._interval)


class HeartbeatRunLauncher(DefaultRunLauncher):
    """The default launcher (runs in the user-code server), plus a worker health check that reads
    the heartbeat, so that run monitoring can fail a run whose process died.

    In dagster.yaml: `run_launcher: {module: backup_pipeline.run_monitoring, class:
    HeartbeatRunLauncher, config: {heartbeat_timeout_seconds: 180}}`.
    """

    def __init__(self, inst_data=None, heartbeat_timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
                 ) -> None:
        super().__init__(inst_data=inst_data)
        if heartbeat_timeout_seconds < 3:
            raise ValueError(f"heartbeat_timeout_seconds={heartbeat_timeout_seconds} in "
                             "dagster.yaml is too short: use 60 or more (3 at the very least)")
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        # Runs seen silent for too long: the beat seen then, and when (this process's monotonic
        # clock, which stops while the host sleeps).
        self._suspects: dict[str, tuple[float, float]] = {}

    @classmethod
    def config_type(cls) -> dict:
        return {"heartbeat_timeout_seconds": dg.Field(
            int, is_required=False, default_value=DEFAULT_TIMEOUT_SECONDS,
            description="A STARTED run silent for longer than this is declared dead.")}

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> HeartbeatRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        """Dead only when seen silent twice, two beats apart by this process's clock: after the
        host slept (or the daemon was paused), the run gets the chance to beat again first."""
        quiet = silence(self._instance, run.run_id)
        if quiet is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING,
                                        "no heartbeat yet: left to the maximum runtime")
        if not quiet.dead:
            self._suspects.pop(run.run_id, None)
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        now = time.monotonic()
        beat, since = self._suspects.setdefault(run.run_id, (quiet.last_beat, now))
        if beat != quiet.last_beat:
            self._suspects[run.run_id] = (quiet.last_beat, now)
            return CheckRunHealthResult(WorkerStatus.RUNNING, "silent: checked again first")
        interval = max(1.0, self.heartbeat_timeout_seconds / BEATS_PER_TIMEOUT)
        if now - since < 2 * interval:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "silent: checked again first")
        self._suspects.pop(run.run_id, None)
        current = self._instance.get_run_by_id(run.run_id)
        if current is None or current.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        message = quiet.message()
        # Reported here, in words: the monitor's own report would wrap them in the repr of
        # CheckRunHealthResult, which is what the UI and the alert would show. Seeing the run
        # ended, the monitor does not report it again.
        self._instance.report_run_failed(current, message)
        return CheckRunHealthResult(WorkerStatus.FAILED, message)
