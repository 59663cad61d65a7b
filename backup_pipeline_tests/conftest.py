"""A real PostgreSQL for the whole session, a fresh sample database per test.

The server is the one `BACKUP_TEST_DSN` names when it is set (it needs CREATEDB), otherwise a
throwaway cluster this suite starts itself (as the `postgres` user when running as root).
The sample data is generated once into a template; each test gets its own copy in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from backup_pipeline.sample_data.generate import create_schema, load_sample_data
from backup_pipeline.throwaway_pg import LocalCluster, start_cluster

TEST_SCALE = float(os.environ.get("BACKUP_TEST_SCALE", "0.25"))
TEMPLATE_DB = f"bp_sample_template_{uuid.uuid4().hex[:8]}"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets a temporary folder of its own (TMPDIR, inherited by
    every program a test starts): tests that look for what a killed run left in the temporary
    folder (a throwaway server's, a staging folder) must not find another worker's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        folder = Path(tempfile.gettempdir()) / f"bp_tests_{worker}_{uuid.uuid4().hex[:8]}"
        folder.mkdir(mode=0o700)
        folder.chmod(0o1777)  # as /tmp: the server's own user makes its folders here too
        os.environ["TMPDIR"] = str(folder)
        tempfile.tempdir = None
        config.stash[_WORKER_TMP] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_WORKER_TMP, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


_WORKER_TMP = pytest.StashKey[Path]()

# Whole runs of real processes (a stack of code server, webserver and daemon, killed runs,
# the quickstart, the benchmark, other people's schemas, the runbook's procedures), and every
# test that runs a backup of its own (it takes `backup_env`): `pytest -m "not slow"` leaves them
# out for a quick loop while editing (units, and the tests that read the session's archive);
# CI runs everything.
SLOW_MODULES = {"test_adversarial", "test_benchmark", "test_corpus", "test_deployment",
                "test_quickstart", "test_restore_proof", "test_schema_edges", "test_runbook",
                "test_health", "test_whole_backup", "test_failures", "test_throwaway_pg",
                "test_storage", "test_run_monitoring"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or "backup_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str

    def dsn(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    def env(self, dbname: str) -> dict[str, str]:
        return {"POSTGRES_HOST": self.host, "POSTGRES_PORT": str(self.port),
                "POSTGRES_DB": dbname, "POSTGRES_USER": self.user,
                "POSTGRES_PASSWORD": self.password}

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn(), autocommit=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    given = os.environ.get("BACKUP_TEST_DSN")
    if given:
        parts = conninfo_to_dict(given)
        yield Server(parts.get("host", "localhost"), int(parts.get("port", 5432)),
                     parts.get("user", "postgres"), parts.get("password", ""))
        return
    cluster: LocalCluster = start_cluster()
    try:
        yield Server(cluster.host, cluster.port, cluster.user, cluster.password)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sample_template(server: Server) -> Iterator[str]:
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    with psycopg.connect(server.dsn(TEMPLATE_DB), autocommit=True) as conn:
        create_schema(conn)
        load_sample_data(conn, scale=TEST_SCALE)
    yield TEMPLATE_DB
    with server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


def new_database(server: Server, template: str | None = None) -> str:
    name = f"bp_{uuid.uuid4().hex[:12]}"
    with server.admin() as conn:
        suffix = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    return name


def drop_database(server: Server, name: str) -> None:
    with server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def source_db(server: Server, sample_template: str) -> Iterator[str]:
    name = new_database(server, sample_template)
    yield name
    drop_database(server, name)


@pytest.fixture
def scratch_db(server: Server) -> Iterator[str]:
    """A name for a database the test creates itself (e.g. the restore's target)."""
    name = f"bp_restore_{uuid.uuid4().hex[:10]}"
    yield name
    drop_database(server, name)


def write_config_dir(path: Path) -> Path:
    """The deployment files the seeds back up, as an administrator's /config would hold them."""
    (path / "ssl").mkdir(parents=True)
    (path / ".env.production").write_text("POSTGRES_PASSWORD=app-secret\nSMTP_PASS=x\n")
    (path / "docker-compose.prod.yml").write_text("services:\n  app:\n    image: hub:1\n")
    (path / "nginx.prod.conf").write_text("server { listen 443 ssl; }\n")
    (path / "ssl" / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    (path / "ssl" / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n")
    return path


def schema_env(server: Server, dbname: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               **settings: str) -> dict[str, str]:
    """The environment of a backup of a database of another schema than the sample's (its
    table lists in `settings`), also set in os.environ for dg.EnvVar."""
    env = {**server.env(dbname), "BACKUP_DIR": str(tmp_path / "backups"),
           "BACKUP_CONFIG_DIR": str(write_config_dir(tmp_path / "config")),
           "BACKUP_MIN_SIZE_MB": "0", "ADMIN_EMAILS": "admin@example.com", **settings}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def proof_db(server: Server) -> Iterator[str]:
    """The scratch database the restore proof of `backup_env`'s runs restores into."""
    name = f"bp_proof_{uuid.uuid4().hex[:10]}"
    yield name
    drop_database(server, name)


@pytest.fixture
def backup_env(tmp_path: Path, server: Server, source_db: str, proof_db: str,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a backup of `source_db`, also set in os.environ for dg.EnvVar.

    Its restore proof goes to a scratch database of the suite's server (BACKUP_DRILL_DSN, a
    setting deployments use too), which spares each run a server of its own; the tests of
    the throwaway server take `throwaway_proof` instead."""
    return sample_env(server, source_db, proof_db, tmp_path, monkeypatch)


def sample_env(server: Server, dbname: str, proof_db: str, folder: Path,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        **server.env(dbname),
        "BACKUP_DIR": str(folder / "backups"),
        "BACKUP_CONFIG_DIR": str(write_config_dir(folder / "config")),
        "BACKUP_MIN_SIZE_MB": "0",
        "BACKUP_DB_RETRY_BASE_SECONDS": "0.1",
        "BACKUP_LOCK_TIMEOUT_SECONDS": "5",
        "ADMIN_EMAILS": "admin1@example.com,admin2@example.com",
        "BACKUP_EMAIL_RETRY_BASE_SECONDS": "0.05",
        "BACKUP_DRILL_DSN": server.dsn(proof_db),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def throwaway_proof(backup_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
                    ) -> dict[str, str]:
    """`backup_env` as a deployment has it by default: the proof starts its own server."""
    monkeypatch.delenv("BACKUP_DRILL_DSN")
    return {k: v for k, v in backup_env.items() if k != "BACKUP_DRILL_DSN"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted however the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 64 KiB tmpfs for a real ENOSPC needs root (CI runs as root)")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000, as a container or a cron job may leave it; restored after the test."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def dagster_home(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[dict[str, str]]:
    """A Dagster instance like the deployment's (its dagster.yaml, storage in a database of its
    own, a run silent for 9 s declared dead): the environment that names it, also set in os.environ.
    """
    from backup_pipeline_tests.helpers import write_instance_yaml

    database = f"dagster_{uuid.uuid4().hex[:8]}"
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    write_instance_yaml(home)
    env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": server.host,
           "DAGSTER_PG_PORT": str(server.port), "DAGSTER_PG_DB": database,
           "DAGSTER_PG_USER": server.user, "DAGSTER_PG_PASSWORD": server.password}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    with server.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def archive(server: Server, sample_template: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Path]:
    """A real archive of the sample data, made once by backup_job, for the tests that only read
    it (they restore it, or rewrite copies of it). Its source is a copy of the template, as
    `source_db` is."""
    from backup_pipeline_tests.helpers import archives, run_backup

    source, proof = new_database(server, sample_template), f"bp_proof_{uuid.uuid4().hex[:10]}"
    try:
        with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
            env = sample_env(server, source, proof, tmp_path_factory.mktemp("archive"),
                             monkeypatch)
            assert run_backup(env, instance).success
            [made] = archives(env["BACKUP_DIR"])
        yield made
    finally:
        drop_database(server, source)
        drop_database(server, proof)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's) on 127.0.0.1 for the worker's session; tests make buckets of
    their own on it."""
    from backup_pipeline_tests.s3_server import start_s3_server

    started = start_s3_server()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def stopped_s3_server():
    """A server that was started, then killed: what a store that is down looks like."""
    from backup_pipeline_tests.s3_server import start_s3_server

    started = start_s3_server()
    started.stop()
    return started
