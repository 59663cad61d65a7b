"""A schema written to break the backup (adversarial.py lists its shapes): every kind of foreign
key, row-level security, quoted names, an extension type, inheritance and partitions, date and
timestamp windows, roles. Backed up by the documented read-only backup role, proven by the run,
restored onto a new server and compared object by object and row by row."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from backup_pipeline.throwaway_pg import start_cluster
from backup_pipeline_tests.adversarial import ADVERSARIAL_ENV, EXPECTED, load_adversarial
from backup_pipeline_tests.conftest import drop_database, new_database, schema_env
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    REPO,
    archives,
    assert_same_catalog,
    follow_restore_procedure,
    manifest,
    run_backup,
    scalar,
)

BACKUP_ROLE, BACKUP_PASSWORD = "adv_backup", "adv-backup-Pa55"


def documented_backup_role_sql() -> str:
    """The read-only backup role exactly as docs/BACKUP_OPERATIONS.md gives it."""
    text = (REPO / "docs" / "BACKUP_OPERATIONS.md").read_text()
    block = re.search(r"<!-- read-only backup role -->\n```sql\n(.*?)```", text, re.DOTALL)
    assert block, "docs/BACKUP_OPERATIONS.md lost its read-only backup role block"
    return (block.group(1).replace("backup_reader", BACKUP_ROLE)
            .replace("'change-me'", f"'{BACKUP_PASSWORD}'"))


@pytest.fixture(scope="session")
def adversarial_template(server):
    name = new_database(server)
    load_adversarial(server.dsn(name))
    with server.admin() as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (BACKUP_ROLE,)
                            ).fetchone():
            conn.execute(documented_backup_role_sql())
    yield name
    drop_database(server, name)


@pytest.fixture(scope="module")
def adversarial_backup(server, adversarial_template, tmp_path_factory):
    """One proven backup of the adversarial schema by the read-only role: its environment and
    archive, which the tests below restore each in their own way."""
    name = new_database(server, adversarial_template)
    with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
        env = schema_env(server, name, tmp_path_factory.mktemp("adversarial"), monkeypatch,
                         **ADVERSARIAL_ENV, POSTGRES_USER=BACKUP_ROLE,
                         POSTGRES_PASSWORD=BACKUP_PASSWORD)
        assert run_backup(env, instance).success
        [archive] = archives(env["BACKUP_DIR"])
        yield env, archive
    drop_database(server, name)


@pytest.fixture
def adversarial(server, adversarial_template, tmp_path, monkeypatch):
    name = new_database(server, adversarial_template)
    yield schema_env(server, name, tmp_path, monkeypatch, **ADVERSARIAL_ENV,
                     POSTGRES_USER=BACKUP_ROLE, POSTGRES_PASSWORD=BACKUP_PASSWORD)
    drop_database(server, name)


def sql_name(table: str) -> str:
    return EXPECTED["sql_names"].get(table, table)


def table_rows(dsn: str, table: str, where: str = "true") -> list[str]:
    only = "ONLY " if table == "public.contacts" else ""
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT t::text FROM {only}{sql_name(table)} t WHERE {where} ORDER BY 1")]


def assert_restored(source: str, restored: str, cutoff: str) -> None:
    assert_same_catalog(restored, source)
    windowed = EXPECTED["window"]
    for table, count in EXPECTED["rows"].items():
        if table in EXPECTED["not_backed_up"]:
            assert scalar(restored, f"SELECT count(*) FROM {table}") == 0
            continue
        if table not in windowed:
            assert table_rows(restored, table) == table_rows(source, table), table
            assert len(table_rows(restored, table)) == count, table
            continue
        with psycopg.connect(source) as conn:
            condition = sql.SQL(windowed[table]).format(cutoff=sql.Literal(cutoff)).as_string(
                conn)
        window = table_rows(source, table, condition)
        got = table_rows(restored, table)
        # date, timestamp and timestamptz windows: exactly the window, plus older rows only.
        assert len(window) == EXPECTED["in_window"][table], table
        assert set(window) <= set(got) <= set(table_rows(source, table)), table
        assert len(got) > len(window), f"{table}: no older referenced rows were needed"
    # The NOT VALID key of the source stays NOT VALID (its violating row is there).
    assert scalar(restored, "SELECT count(*) FROM pg_constraint WHERE NOT convalidated") == 1


def test_adversarial_schema_by_the_read_only_role_onto_a_new_server(adversarial_backup, server):
    adversarial, archive = adversarial_backup
    meta = manifest(archive)
    assert {r["name"] for r in meta["roles"]} >= {"adv_owner", "adv_app", "adv_group",
                                                  BACKUP_ROLE}
    source, cutoff = server.dsn(adversarial["POSTGRES_DB"]), meta["window"]["cutoff"]

    cluster = start_cluster()
    try:
        done = subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target",
                               cluster.dsn("adversarial")], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "byte for byte" in done.stdout
        for role in ("adv_owner", "adv_app", "adv_group", BACKUP_ROLE):
            assert f"creating role {role}: NOLOGIN" in done.stdout
        restored = cluster.dsn("adversarial")
        assert_restored(source, restored, cutoff)
        # The application's role works on the new server: its grants, its group, its policy.
        assert scalar(restored, "SELECT pg_has_role('adv_app', 'adv_group', 'MEMBER')") is True
        assert scalar(restored, "SELECT has_table_privilege('adv_app', 'ledger.fx_rates', "
                                "'SELECT')") is True
        assert scalar(restored, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r "
                                "ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
                                "WHERE r.rolname = 'pg_read_all_data' AND u.rolname = %s",
                      (BACKUP_ROLE,)) == 1
    finally:
        cluster.stop()


def test_adversarial_schema_by_backup_info(adversarial_backup, server, tmp_path):
    adversarial, archive = adversarial_backup
    plain = new_database(server)
    drop_database(server, plain)
    try:
        superuser = {**adversarial, "POSTGRES_USER": server.user,
                     "POSTGRES_PASSWORD": server.password}
        done = follow_restore_procedure(archive, tmp_path / "plain", superuser, plain,
                                        tmp_path / "project")
        assert done.returncode == 0, done.stderr
        assert_restored(server.dsn(adversarial["POSTGRES_DB"]), server.dsn(plain),
                        manifest(archive)["window"]["cutoff"])
    finally:
        drop_database(server, plain)


def test_row_level_security_that_hides_rows_fails_up_front(adversarial, instance, monkeypatch):
    """The owner of a FORCE ROW LEVEL SECURITY table reads it through its policies (0 of 1,500
    rows): the run fails before anything is written, naming the table and the fix."""
    env = {**adversarial, "POSTGRES_USER": "adv_owner", "POSTGRES_PASSWORD": "adv_owner_pw"}
    monkeypatch.setenv("POSTGRES_USER", "adv_owner")
    monkeypatch.setenv("POSTGRES_PASSWORD", "adv_owner_pw")
    result = run_backup(env, instance)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure
                   ).event_specific_data.error.to_string()
    assert "secrets cannot be backed up completely" in message
    assert "BYPASSRLS" in message
    assert archives(adversarial["BACKUP_DIR"]) == []
    assert not (Path(adversarial["BACKUP_DIR"]) / ".last_backup_success").exists()
