"""The production stack without a Docker engine, and the compose file checked against the code.

The same processes, dagster.yaml and workspace.yaml as docker-compose.prod.yml, against the
suite's own PostgreSQL."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
import yaml

from backup_pipeline import layout
from backup_pipeline import settings as settings_module
from backup_pipeline.assets import whole_backup_keys
from backup_pipeline.sample_data.cluster import free_port
from backup_pipeline_tests.helpers import (
    REPO,
    archives,
    blocked_run,
    outbox_messages,
    plain_text,
)

BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
BACKUP_SERVICES = ["backup-code", "backup-webserver", "backup-daemon", "backup-downloads"]


def _env_names_in(path: Path) -> set[str]:
    text = path.read_text()
    names = set(re.findall(r'env(?:iron)?(?:\.get)?\(\s*"([A-Z][A-Z0-9_]+)"', text))
    names |= set(re.findall(
        r'_(?:text|number|names|secret|file)\(\s*(?:env,\s*)?"([A-Z][A-Z0-9_]+)"', text))
    names |= set(re.findall(r'EnvVar\("([A-Z][A-Z0-9_]+)"\)', text))
    names |= set(re.findall(r"env: ([A-Z][A-Z0-9_]+)", text))
    names |= set(re.findall(r'\bname = "([A-Z][A-Z0-9_]+)"', text))
    return names


def _read_by_the_code() -> set[str]:
    package = REPO / "backup_pipeline"
    names = set()
    for path in [*package.rglob("*.py"), *(REPO / "deploy").glob("*.yaml")]:
        names |= _env_names_in(path)
    return names


def _env_example() -> set[str]:
    return {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines()
            if re.match(r"^[A-Z][A-Z0-9_]*=", line)}


def test_every_variable_passed_is_read_and_every_setting_is_documented():
    read = _read_by_the_code()
    settings_vars = _env_names_in(Path(settings_module.__file__))
    assert {"POSTGRES_PASSWORD", "BACKUP_DIR", "SMTP_PASS", "DAGSTER_PG_HOST",
            "BACKUP_DOWNLOAD_SECRET", "BACKUP_LOG_FILE"} <= read
    compose_only = {"PG_MAJOR", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD",
                    "BACKUP_IMAGE_TAG"}
    unknown = _env_example() - read - compose_only
    assert not unknown, f".env.example lists variables nothing reads: {unknown}"
    # Dagster's own variable: the image sets it, .env.production must not move it.
    undocumented = settings_vars - _env_example() - {"DAGSTER_HOME"}
    assert not undocumented, f"settings read variables .env.example omits: {undocumented}"
    for service in BACKUP_SERVICES:
        passed = set(COMPOSE["services"][service].get("environment", {}))
        assert passed <= read, f"{service} passes variables nothing reads: {passed - read}"


def _settings_defaults() -> dict[str, str]:
    """Each setting's default as load_settings reads it: `_number(env, "X", DEFAULTS.x, ...)`,
    `_text(env, "X", DEFAULTS.x)` (the Settings field's default) or a literal, or `_text(env,
    "X", A_CONSTANT)` of that module."""
    source = Path(settings_module.__file__).read_text()
    found = {}
    for name, field in re.findall(r'_(?:number|text)\(\s*env,\s*"([A-Z][A-Z0-9_]+)",\s*'
                                  r'(?:str\()?DEFAULTS\.([a-z_]+)', source):
        found[name] = str(getattr(settings_module.DEFAULTS, field))
    found |= dict(re.findall(r'_number\(\s*env,\s*"([A-Z][A-Z0-9_]+)",\s*([0-9.]+)', source))
    found |= dict(re.findall(r'_text\(\s*env,\s*"([A-Z][A-Z0-9_]+)",\s*"([^"]*)"\)', source))
    for name, constant in re.findall(r'_text\(\s*env,\s*"([A-Z][A-Z0-9_]+)",\s*([A-Z][A-Z0-9_]+)\)',
                                     source):
        found[name] = str(getattr(settings_module, constant))
    return found


def _env_example_values() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            name, value = line.split("=", 1)
            values[name] = re.split(r"\s+#", value)[0].strip()
    return values


# .env.example shows these with an example value, not their default (its header says so).
EXAMPLE_VALUES = {"ADMIN_EMAILS", "SMTP_HOST", "BACKUP_DOWNLOAD_BASE_URL",
                  "POSTGRES_HOST"}  # the compose file's service name, not localhost


def test_env_example_gives_each_setting_its_default():
    defaults, shown = _settings_defaults(), _env_example_values()
    assert len(defaults) > 20, defaults

    def same(a: str, b: str) -> bool:
        try:
            return float(a) == float(b)
        except ValueError:
            return a == b

    wrong = {name: (shown[name], default) for name, default in defaults.items()
             if name in shown and name not in EXAMPLE_VALUES and not same(shown[name], default)}
    assert not wrong, f".env.example value, settings default: {wrong}"


def _readme_variables() -> set[str]:
    """The names in the first column of the README's variable table."""
    rows = [line for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_the_readme_variable_table_names_every_setting_and_nothing_else():
    settings_vars = _env_names_in(Path(settings_module.__file__))
    secrets = {"POSTGRES_PASSWORD", "SMTP_PASS", "BACKUP_DOWNLOAD_SECRET",  # read as dg.EnvVar
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    documented = _readme_variables()
    assert not settings_vars - documented, f"README omits {settings_vars - documented}"
    assert not documented - settings_vars - secrets, \
        f"README documents what nothing reads: {documented - settings_vars - secrets}"


def test_every_command_the_compose_file_runs_exists():
    commands = [COMPOSE["services"][s]["command"] for s in BACKUP_SERVICES]
    commands += [COMPOSE["services"][s]["healthcheck"]["test"][1:] for s in BACKUP_SERVICES
                 if COMPOSE["services"][s]["healthcheck"]["test"][1] != "python"]
    for command in commands:
        words = [w for w in command if not w.startswith("-")][:3]
        program = BIN / words[0]
        assert program.exists(), f"{words[0]} is not installed by this package"
        prefix = [str(program)] + [w for w in words[1:] if re.fullmatch(r"[a-z-]+", w)]
        done = subprocess.run([*prefix, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(words)}: {done.stderr[-500:]}"


def test_volumes_match_the_paths_the_code_uses():
    dockerfile = (REPO / "Dockerfile.backup").read_text()
    assert "BACKUP_DIR=/backups" in dockerfile and "BACKUP_CONFIG_DIR=/config" in dockerfile
    assert 'HEALTHCHECK --interval=1h --timeout=10s' in dockerfile and "--retries=3" in dockerfile
    assert 'CMD ["backup-pipeline", "health-check"]' in dockerfile
    assert "USER 10001:10001" in dockerfile and "ARG PG_MAJOR" in dockerfile
    # The restore proof starts a throwaway server: the image carries the server programs.
    assert '"postgresql-${PG_MAJOR}"' in dockerfile and "create_main_cluster = false" in dockerfile
    code = COMPOSE["services"]["backup-code"]
    mounts = {v.split(":")[1]: v for v in code["volumes"]}
    assert "/backups" in mounts and "/var/log/backup" in mounts
    for entry in settings_module.DEFAULT_CONFIG_FILES:
        target = f"/config/{entry.rstrip('/')}"
        assert target in mounts and mounts[target].endswith(":ro"), target
    assert code["environment"]["BACKUP_LOG_FILE"].startswith("/var/log/backup/")
    for service in BACKUP_SERVICES:
        assert any(v.split(":")[1] == "/backups" for v in COMPOSE["services"][service]["volumes"])
        assert COMPOSE["services"][service]["restart"] == "unless-stopped"
    daemon = COMPOSE["services"]["backup-daemon"]
    assert daemon["deploy"]["replicas"] == 1
    assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert daemon["healthcheck"]["interval"] == "1h" and daemon["healthcheck"]["retries"] == 3


def test_dockerfile_is_clean_under_hadolint():
    done = subprocess.run([str(BIN / "hadolint"), str(REPO / "Dockerfile.backup")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_gets_the_templates(tmp_path):
    """Dockerfile.backup installs the package without -e: every template must be in the wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    [wheel] = tmp_path.glob("backup_pipeline-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for template in ("backup_pipeline/templates/BACKUP_INFO.txt.j2",
                     "backup_pipeline/emails/templates/success.html.j2",
                     "backup_pipeline/emails/templates/failure.txt.j2",
                     "backup_pipeline/sample_data/schema.sql"):
        assert template in names, template


class Stack:
    """The compose file's processes, for real: user-code server, webserver, daemon."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: list[subprocess.Popen] = []
        self.logs = Path(env["DAGSTER_HOME"])

    def start(self, name: str, command: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("w")
        self.processes.append(subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log,
                                               stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-3000:]


def _wait(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"GraphQL {error.code}: {error.read()[:2000]!r}") from None
    assert "errors" not in body, body
    return body["data"]


REPOSITORY = {"repositoryLocationName": "backup_pipeline", "repositoryName": "__repository__"}
LAUNCH = """
mutation($selector: JobOrPipelineSelector!) {
  launchRun(executionParams: {selector: $selector, mode: "default"}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}"""


@pytest.fixture
def stack(backup_env, dagster_home, tmp_path):
    code_port, web_port = free_port(), free_port()
    env = {**os.environ, **backup_env, **dagster_home,
           "DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(code_port),
           "BACKUP_LOG_FILE": str(tmp_path / "log" / "backup.log")}
    running = Stack(env)
    workspace = str(REPO / "deploy" / "workspace.yaml")
    try:
        running.start("code", [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                               "-p", str(code_port), "-m", "backup_pipeline.definitions"])
        _wait(lambda: subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-p",
                                      str(code_port)], env=env, capture_output=True
                                     ).returncode == 0, "the user-code server")
        running.start("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                                    str(web_port), "-w", workspace])
        running.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace])
        _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{web_port}/server_info",
                                             timeout=5).status == 200, "the webserver")
        running.web_port = web_port
        yield running
    finally:
        running.stop()


def _ticks(port: int, sensor: str) -> list[dict] | None:
    query = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
                 ... on Sensor { sensorState { ticks(limit: 5) { status skipReason } } } } }"""
    selector = {**REPOSITORY, "sensorName": sensor}
    ticks = _graphql(port, query, {"s": selector})["sensorOrError"]["sensorState"]["ticks"]
    return ticks or None


def test_the_stack_runs_queues_and_monitors(stack, backup_env, server):
    port = stack.web_port
    # The webserver reports the job, the schedule, both sensors and the lineage.
    data = _wait(lambda: _graphql(port, """
      query($repo: RepositorySelector!) {
        repositoryOrError(repositorySelector: $repo) {
          ... on Repository { jobs { name } schedules { name scheduleState { status } }
                              sensors { name sensorState { status } } }
        }
        assetNodes { assetKey { path } dependencyKeys { path } }
      }""", {"repo": REPOSITORY}), "the webserver to answer GraphQL", timeout=60)
    repository = data["repositoryOrError"]
    assert {"backup_job", "restore_drill_job"} <= {j["name"] for j in repository["jobs"]}
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    assert schedules["nightly_backup_schedule"] == "RUNNING"
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert sensors["backup_age_sensor"] == sensors["backup_size_sensor"] == "RUNNING"
    archive = next(n for n in data["assetNodes"] if n["assetKey"]["path"] == ["backup_archive"])
    upstream = {"/".join(k["path"]) for k in archive["dependencyKeys"]}
    assert {"dumps/users", "dumps/role_permissions", "transactions/purchases",
            "database_schema", "config_snapshot"} <= upstream

    # Two runs launched at once execute one after the other: backup_job, and what the UI
    # launches for "Materialize" on one table once the administrator confirms the assets it
    # must go with (every asset of the backup).
    whole = [{"path": list(key.path)} for key in sorted(
        whole_backup_keys(settings_module.load_settings(backup_env)),
        key=lambda k: k.to_user_string())]
    selectors = [{**REPOSITORY, "jobName": "backup_job"},
                 {**REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": whole}]
    launched = [_graphql(port, LAUNCH, {"selector": selector})["launchRun"]
                for selector in selectors]
    assert all(r["__typename"] == "LaunchRunSuccess" for r in launched), launched
    run_ids = [r["run"]["runId"] for r in launched]

    def finished():
        query = """query($ids: [String!]) { runsOrError(filter: {runIds: $ids}) {
                     ... on Runs { results { runId status startTime endTime } } } }"""
        runs = _graphql(port, query, {"ids": run_ids})["runsOrError"]["results"]
        return runs if all(r["status"] in ("SUCCESS", "FAILURE") for r in runs) else None

    try:
        runs = _wait(finished, "both runs", timeout=240)
    except AssertionError:
        raise AssertionError(stack.log("daemon") + stack.log("code")) from None
    assert [r["status"] for r in runs] == ["SUCCESS", "SUCCESS"], stack.log("code")
    first, second = sorted(runs, key=lambda r: r["startTime"])
    assert first["endTime"] <= second["startTime"], "the queue let two backups overlap"
    def about_runs() -> list[str]:  # the age sensor may have found no backup yet: not these
        subjects = [str(m["Subject"]) for m in outbox_messages(backup_env)]
        return [s for s in subjects if "backup OK" in s or "FAILED" in s]

    assert len(about_runs()) == 2, about_runs()  # one success email each

    # "Materialize" on one table, the archive or the status alone, as launchRun receives it:
    # refused by Dagster with the reason, before a run exists; no email, no archive.
    for alone in (["dumps", "users"], ["backup_archive"], ["backup_status"]):
        partial = {**REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": [{"path": alone}]}
        refused = _graphql(port, LAUNCH, {"selector": partial})["launchRun"]
        assert refused["__typename"] == "InvalidSubsetError", refused
        assert "does not support subsetting" in refused["message"]
    assert len(_graphql(port, """{ runsOrError { ... on Runs { results { runId } } } }"""
                        )["runsOrError"]["results"]) == 2
    assert len(about_runs()) == 2
    assert len(archives(backup_env["BACKUP_DIR"])) == 2

    # The history is in PostgreSQL, in the Dagster instance's own database.
    with psycopg.connect(server.dsn(stack.env["DAGSTER_PG_DB"])) as conn:
        stored = {row[0] for row in conn.execute("SELECT run_id FROM runs")}
    assert set(run_ids) <= stored

    # The daemon evaluated the sensors on its own.
    ticks = _wait(lambda: _ticks(port, "backup_age_sensor"), "a backup_age_sensor tick", 120)
    assert ticks[0]["status"] in ("SKIPPED", "SUCCESS")

    # The run log also went to the plain file operators tail.
    log_file = Path(stack.env["BACKUP_LOG_FILE"])
    assert log_file.exists() and "backup_archive" in log_file.read_text()


def _runs(port: int, run_ids: list[str]) -> dict[str, dict]:
    query = """query($ids: [String!]) { runsOrError(filter: {runIds: $ids}) {
                 ... on Runs { results { runId status startTime endTime } } } }"""
    results = _graphql(port, query, {"ids": run_ids})["runsOrError"]["results"]
    return {r["runId"]: r for r in results}


def test_a_killed_run_is_failed_alerted_and_the_queue_moves_on(stack, backup_env, server):
    """kill -9 of a run's process: the daemon's run monitoring fails it within seconds (the
    stack's dagster.yaml allows 9 s of silence), one alert names it, the queued run goes."""
    # A run-failure sensor's first tick only sets its cursor: start once it has ticked.
    _wait(lambda: _ticks(stack.web_port, "backup_failure_alert_sensor"), "the sensor", 120)
    with blocked_run(stack.env, Path(stack.env["DAGSTER_HOME"]), server.dsn(
            backup_env["POSTGRES_DB"])) as (process, run_id):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        selector = {**REPOSITORY, "jobName": "backup_job"}
        queued = _graphql(stack.web_port, LAUNCH, {"selector": selector})["launchRun"]
        queued_id = queued["run"]["runId"]

    def both_ended():
        runs = _runs(stack.web_port, [run_id, queued_id])
        done = all(r["status"] in ("SUCCESS", "FAILURE") for r in runs.values())
        return runs if done else None

    try:
        runs = _wait(both_ended, "the dead run to be failed and the queued one to run", 180)
    except AssertionError:
        raise AssertionError(stack.log("daemon")) from None
    dead, after = runs[run_id], runs[queued_id]
    assert dead["status"] == "FAILURE" and after["status"] == "SUCCESS", stack.log("daemon")
    assert after["startTime"] >= dead["endTime"], "the queued run started beside a dead one"
    assert dead["endTime"] - dead["startTime"] < 60
    query = """query($id: ID!) { runOrError(runId: $id) { ... on Run { eventConnection {
                 events { __typename ... on MessageEvent { message } } } } } }"""
    events = _graphql(stack.web_port, query, {"id": run_id})["runOrError"]["eventConnection"]
    [failed] = [e["message"] for e in events["events"] if e["__typename"] == "RunFailureEvent"]
    assert failed.startswith("the run's process stopped sending heartbeats at "), failed
    # The queued run removed what the dead one had staged (its lock died with it).
    assert not (Path(backup_env["BACKUP_DIR"]) / ".staging" / run_id).exists()

    def alerted():
        return [m for m in outbox_messages(backup_env) if run_id in plain_text(m)]

    [alert] = _wait(alerted, "the alert for the dead run", 90)
    time.sleep(3)
    assert len(alerted()) == 1, [m["Subject"] for m in outbox_messages(backup_env)]
    assert alert["Subject"].endswith("backup_job FAILED at database_export")
    text = plain_text(alert)
    assert "stopped sending heartbeats" in text and "dmesg" in text, text
    # Started with `dagster job execute`: the daemon cannot retry it, and the alert says so.
    assert "This run is NOT tried again" in text and "runs it once more" not in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page_text(url: str, profile: Path, expected: str) -> tuple[str, str]:
    """The page as headless Chromium renders it (the DOM after its GraphQL answers arrived,
    and that DOM as text), tried again while `expected` is not on it yet."""
    for _ in range(3):
        rendered = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120).stdout
        visible = re.sub(r"<script.*?</script>|<style.*?</style>", " ", rendered, flags=re.S)
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", visible)))
        if expected in text:
            return rendered, text
    raise AssertionError(f"{url} never showed {expected!r}:\n{text[:3000]}")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here to look at the UI with; "
                    "scripts/test.sh installs it when run as root (apt-get install chromium)")
def test_the_ui_shows_the_archive_its_checks_and_lineage(stack, backup_env, tmp_path):
    """What an administrator opening the UI after a backup must see, in a real browser: the
    archive with its name and size, its four checks passed on that archive (and no button to
    run them apart from a backup), and lineage from every table to the archive."""
    port = stack.web_port
    launched = _graphql(port, LAUNCH, {"selector": {**REPOSITORY, "jobName": "backup_job"}})
    run_id = launched["launchRun"]["run"]["runId"]
    _wait(lambda: _runs(port, [run_id])[run_id]["status"] in ("SUCCESS", "FAILURE"),
          "the backup", 240)
    [archive] = archives(backup_env["BACKUP_DIR"])
    settings = settings_module.load_settings(backup_env)
    tables = ([f"dumps / {table}" for table in settings.critical_tables]
              + [f"transactions / {entry.name}" for entry in settings.transaction_tables])
    base, profile = f"http://127.0.0.1:{port}", tmp_path / "chromium"

    _, page = _page_text(f"{base}/assets/backup_archive", profile, archive.name)
    assert re.search(rf"size [^|]*? {layout.size_text(archive.stat().st_size)} ", page), page
    assert "Latest check results" in page and "Upstream assets" in page
    upstream = page[page.index("Upstream assets"):]
    assert [t for t in tables if t not in upstream] == []

    rendered, page = _page_text(f"{base}/assets/backup_archive?view=checks", profile,
                                "Checks (4)")
    for check in ("gzip_and_tar_integrity", "manifest_checksums", "dumps_readable",
                  "size_within_bounds"):
        assert f"{check} {check} Succeeded" in page, page
    assert f"Metadata archive {archive.name}" in page, page
    execute_all = rendered[rendered.rfind("<button", 0, rendered.index("Execute all")):]
    assert execute_all.startswith("<button disabled"), "the checks can be run apart"

    # The graph: names of 16 characters and more are cut in its boxes.
    _, page = _page_text(f"{base}/assets/backup_archive?view=lineage", profile,
                         "backup_status")
    for node in ("backup_archive", "config_snapshot", "database_schema", "users",
                 "restore_proof", "backup_status", "restore_drill"):
        assert f" {node} " in page, page
