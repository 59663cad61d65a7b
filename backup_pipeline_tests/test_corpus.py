"""Pagila, a real schema nobody on this project wrote: backed up with two windows, proven by the
run itself, restored with `restore`, with BACKUP_INFO.txt's procedure and onto a new server that
has none of its roles, and compared object by object and row by row."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_pipeline import layout
from backup_pipeline.throwaway_pg import start_cluster
from backup_pipeline_tests.conftest import drop_database, new_database, schema_env
from backup_pipeline_tests.corpus import WHOLE, WINDOWED, load_pagila, pagila_env
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    archives,
    assert_same_catalog,
    follow_restore_procedure,
    manifest,
    rows,
    run_backup,
    scalar,
)


@pytest.fixture(scope="session")
def pagila_template(server):
    name = new_database(server)
    load_pagila(server.dsn(name))
    yield name
    drop_database(server, name)


@pytest.fixture(scope="module")
def pagila_backup(server, pagila_template, tmp_path_factory):
    """One proven backup of Pagila, which the tests below restore each in their own way:
    its environment, the archive and the run's result."""
    name = new_database(server, pagila_template)
    with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
        env = schema_env(server, name, tmp_path_factory.mktemp("pagila"), monkeypatch,
                         **pagila_env())
        result = run_backup(env, instance)
        assert result.success
        [archive] = archives(env["BACKUP_DIR"])
        yield env, archive, result
    drop_database(server, name)


@pytest.fixture
def pagila(server, pagila_template, tmp_path, monkeypatch):
    """A fresh copy of the arranged Pagila and the environment of its backup."""
    name = new_database(server, pagila_template)
    yield schema_env(server, name, tmp_path, monkeypatch, **pagila_env())
    drop_database(server, name)


def restore_cli(archive: Path, dsn: str) -> str:
    done = subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target", dsn],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "RESTORE OK" in done.stdout
    assert "every table's content is byte for byte the archive's" in done.stdout
    return done.stdout


def assert_restored(source: str, restored: str, cutoff: str) -> None:
    """Every object of the schema, the whole tables row for row, each window's rows, nothing
    that is not in the source, and every payment's rental."""
    assert_same_catalog(restored, source)
    for table in WHOLE:
        assert rows(restored, table) == rows(source, table), table
    for table, column in WINDOWED.items():
        window = set(rows(source, table, f"{column} >= '{cutoff}'::timestamptz"))
        got = set(rows(restored, table))
        assert window <= got <= set(rows(source, table)), table
    assert scalar(restored, "SELECT count(*) FROM payment p LEFT JOIN rental r USING (rental_id) "
                            "WHERE r.rental_id IS NULL") == 0


def test_pagila_is_proven_restored_and_compared(pagila_backup, server, scratch_db, tmp_path):
    pagila, archive, result = pagila_backup
    meta = manifest(archive)
    tables = {t["table"]: t for t in meta["tables"]}
    # The windows hold part of the data, and recent payments need rentals older than the window
    # (the keys are declared on each partition of payment, none on the table itself).
    assert 0 < tables["public.payment"]["rows_in_window"] < scalar(
        server.dsn(pagila["POSTGRES_DB"]), "SELECT count(*) FROM payment")
    assert tables["public.rental"]["rows_referenced_before_window"] > 1000
    assert {r["name"] for r in meta["roles"]} >= {"pagila_app", "pagila_reader", "postgres"}
    # The run proved it before recording it.
    [proof] = [e for e in result.all_events if e.is_step_materialization
               and e.asset_key.to_user_string() == "restore_proof"]
    record = json.loads((Path(pagila["BACKUP_DIR"]) / layout.LAST_BACKUP_FILE).read_text())
    assert record["restore_proof"]["target"].startswith("a throwaway PostgreSQL ")
    assert record["restore_proof"]["seconds"] > 0
    assert proof.event_specific_data.materialization.metadata["tables"].value == len(tables)

    source, cutoff = server.dsn(pagila["POSTGRES_DB"]), meta["window"]["cutoff"]
    restore_cli(archive, server.dsn(scratch_db))
    assert_restored(source, server.dsn(scratch_db), cutoff)

    # BACKUP_INFO.txt's procedure, literally, onto a new server that lacks Pagila's roles.
    cluster = start_cluster()
    try:
        done = follow_restore_procedure(archive, tmp_path / "plain", cluster.env("postgres"),
                                        "pagila", tmp_path / "project")
        assert done.returncode == 0, done.stderr
        assert "created role pagila_app" in done.stderr  # psql's NOTICE
        assert_restored(source, cluster.dsn("pagila"), cutoff)
    finally:
        cluster.stop()


def test_pagila_onto_a_new_server_without_its_roles(pagila_backup, server):
    pagila, archive, _ = pagila_backup
    cluster = start_cluster()
    try:
        out = restore_cli(archive, cluster.dsn("pagila"))
        assert "creating role pagila_app: NOLOGIN, no password" in out
        restored = cluster.dsn("pagila")
        assert scalar(restored, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pagila_app'") \
            is False
        assert scalar(restored, "SELECT tableowner FROM pg_tables WHERE tablename = 'rental'") \
            == "pagila_app"
        assert scalar(restored, "SELECT has_table_privilege('pagila_reader', 'public.film', "
                                "'SELECT')") is True
        assert scalar(restored, "SELECT has_table_privilege('pagila_reader', 'public.staff', "
                                "'SELECT')") is False
        assert_restored(server.dsn(pagila["POSTGRES_DB"]), restored,
                        manifest(archive)["window"]["cutoff"])
    finally:
        cluster.stop()


def test_pagila_without_rental_is_refused_naming_the_partition_key(pagila, instance,
                                                                   monkeypatch):
    env = {**pagila, "BACKUP_TRANSACTION_TABLES": "payment:payment_date"}
    monkeypatch.setenv("BACKUP_TRANSACTION_TABLES", env["BACKUP_TRANSACTION_TABLES"])
    result = run_backup(env, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.to_string()
    assert "payment is backed up but its partition payment_p2007_01's foreign key " \
           "payment_p2007_01_rental_id_fkey references rental, which is not" in message
    assert archives(pagila["BACKUP_DIR"]) == []
    assert not os.listdir(Path(pagila["BACKUP_DIR"]) / layout.STAGING_DIR)


def test_a_partition_beside_its_parent_is_refused(pagila, instance, monkeypatch):
    env = {**pagila, "BACKUP_TABLES": pagila["BACKUP_TABLES"] + ",payment_p2007_03"}
    monkeypatch.setenv("BACKUP_TABLES", env["BACKUP_TABLES"])
    result = run_backup(env, instance)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure
                   ).event_specific_data.error.to_string()
    assert "payment_p2007_03 is a partition of payment, and both are backed up" in message


def test_pagila_loads_as_its_readme_says(server, pagila_template):
    """The arranged copy is what the tests above rely on: Pagila's own keys on partitions."""
    dsn = server.dsn(pagila_template)
    with psycopg.connect(dsn) as conn:
        on_partitions = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
            "AND conrelid::regclass::text LIKE 'payment_p%'").fetchone()[0]
        on_parent = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                                 "AND conrelid = 'payment'::regclass").fetchone()[0]
    assert on_partitions >= 18 and on_parent == 0


def test_pagila_by_a_user_who_may_not_create_roles(pagila_backup):
    """Refused up front, naming the roles and the fix; with --no-owner everything restores as
    that user's own, without the archive's grants."""
    _, archive, _ = pagila_backup
    cluster = start_cluster()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE restorer LOGIN CREATEDB PASSWORD 'restorer-pw'")
        target = cluster.dsn("pagila").replace(f"user={cluster.user}", "user=restorer") \
            .replace(f"password={cluster.password}", "password=restorer-pw")
        refused = subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target", target],
                                 capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2
        assert "pagila_app" in refused.stderr and "may not create roles" in refused.stderr
        assert "--no-owner" in refused.stderr and "Nothing was changed" in refused.stderr
        assert scalar(cluster.dsn("pagila"), "SELECT count(*) FROM pg_tables "
                                             "WHERE schemaname = 'public'") == 0

        done = subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target", target,
                               "--no-owner"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr + done.stdout
        assert "byte for byte" in done.stdout and "creating role" not in done.stdout
        restored = cluster.dsn("pagila")
        assert scalar(restored, "SELECT count(*) FROM pg_roles WHERE rolname ^@ 'pagila'") == 0
        assert scalar(restored, "SELECT count(DISTINCT tableowner) FROM pg_tables "
                                "WHERE schemaname = 'public'") == 1
        assert scalar(restored, "SELECT tableowner FROM pg_tables WHERE tablename = 'rental'") \
            == "restorer"
        assert scalar(restored, "SELECT count(*) FROM pg_class WHERE relacl IS NOT NULL "
                                "AND relnamespace = 'public'::regnamespace") == 0
    finally:
        cluster.stop()
