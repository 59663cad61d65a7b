"""Failures are reported as failures, say what broke, and lose nothing."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from backup_pipeline import layout
from backup_pipeline.pg import HashingWriter
from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline_tests.helpers import archives, run_backup


def _failure_text(result, instance) -> str:
    """Everything the run said about its failure: step errors and log lines."""
    parts = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            parts.append(str(event.step_failure_data.error.to_string()))
    parts += [entry.user_message for entry in instance.all_logs(result.run_id)]
    return "\n".join(parts)


def _good_first_backup(env, instance) -> tuple[Path, dict[str, str]]:
    assert run_backup(env, instance).success
    [archive] = archives(env["BACKUP_DIR"])
    status = {name: (Path(env["BACKUP_DIR"]) / name).read_text()
              for name in (layout.LAST_SUCCESS_FILE, layout.LAST_SIZE_FILE,
                           layout.LAST_BACKUP_FILE)}
    return archive, status


def _assert_nothing_changed(env, archive: Path, status: dict[str, str]) -> None:
    backup_dir = Path(env["BACKUP_DIR"])
    assert archives(backup_dir) == [archive]
    for name, text in status.items():
        assert (backup_dir / name).read_text() == text
    assert not list(backup_dir.glob(".*.partial"))
    staging = backup_dir / layout.STAGING_DIR
    assert not staging.exists() or not any(staging.iterdir())


def test_refused_connection_is_retried_then_named(backup_env, instance, monkeypatch):
    env = {**backup_env, "POSTGRES_PORT": "1", "BACKUP_DB_RETRY_BASE_SECONDS": "0.2"}
    started = time.monotonic()
    result = run_backup(env, instance)
    elapsed = time.monotonic() - started
    assert not result.success
    text = _failure_text(result, instance)
    assert "after 4 attempts" in text
    assert f"host {env['POSTGRES_HOST']} port 1 database {env['POSTGRES_DB']} " \
           f"user {env['POSTGRES_USER']}" in text
    assert "connection 3/4" in text  # each retry was logged
    assert env["POSTGRES_PASSWORD"] not in text
    assert elapsed >= 0.2 + 0.4 + 0.8  # the backoff really waited
    assert archives(env["BACKUP_DIR"]) == []
    assert not (Path(env["BACKUP_DIR"]) / layout.LAST_SUCCESS_FILE).exists()


def test_a_run_failing_half_way_leaves_everything_as_it_was(backup_env, server, source_db,
                                                            instance):
    """A lock held by the application makes pg_dump give up after the data is staged."""
    archive, status = _good_first_backup(backup_env, instance)
    staged = threading.Event()
    with psycopg.connect(server.dsn(source_db)) as blocker:
        blocker.execute("LOCK TABLE app_logs IN ACCESS EXCLUSIVE MODE")
        env = {**backup_env, "BACKUP_LOCK_TIMEOUT_SECONDS": "1"}

        def watch() -> None:
            staging = Path(env["BACKUP_DIR"]) / layout.STAGING_DIR
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not staged.is_set():
                if list(staging.glob("*/database/users.sql.gz")):
                    staged.set()
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        result = run_backup(env, instance)
        staged.set()
        watcher.join()
        blocker.rollback()
    assert not result.success
    text = _failure_text(result, instance)
    assert "pg_dump --section=pre-data failed" in text
    assert "app_logs" in text
    _assert_nothing_changed(env, archive, status)


def test_pg_dump_older_than_the_server_fails_up_front(backup_env, instance, tmp_path):
    old = tmp_path / "old_client"
    old.mkdir()
    pg_dump = old / "pg_dump"
    pg_dump.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    pg_dump.chmod(0o755)
    env = {**backup_env, "BACKUP_PG_BINDIR": str(old)}
    result = run_backup(env, instance)
    assert not result.success
    text = _failure_text(result, instance)
    assert "pg_dump 9 (" in text and "is older than the PostgreSQL server 15" in text
    assert "postgresql-client-15" in text
    assert archives(env["BACKUP_DIR"]) == []


def test_too_little_disk_fails_early_saying_how_much(backup_env, instance):
    archive, status = _good_first_backup(backup_env, instance)
    env = {**backup_env, "BACKUP_DISK_RESERVE_MB": str(10**9)}
    result = run_backup(env, instance)
    assert not result.success
    text = _failure_text(result, instance)
    assert "not enough free disk in BACKUP_DIR" in text
    assert "the backup needs about" in text and "MB are free" in text
    _assert_nothing_changed(env, archive, status)


def test_missing_table_fails_before_any_work(backup_env, instance):
    env = {**backup_env, "BACKUP_TABLES": "users,no_such_table"}
    result = run_backup(env, instance)
    assert not result.success
    text = _failure_text(result, instance)
    assert "BACKUP_TABLES lists 'no_such_table', but there is no such table" in text
    assert archives(env["BACKUP_DIR"]) == []


def test_foreign_key_into_a_table_not_backed_up_is_refused(backup_env, instance):
    env = {**backup_env, "BACKUP_TABLES": "users,organizations,roles,user_roles,permissions,"
                                          "role_permissions,referrals,exchange_rates"}
    result = run_backup(env, instance)
    assert not result.success
    text = _failure_text(result, instance)
    assert "users is backed up but its foreign key users_agency_id_fkey references agencies" \
        in text
    assert "Add agencies to BACKUP_TABLES" in text


def test_a_backup_dir_that_is_a_file_is_named(backup_env, instance, tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    env = {**backup_env, "BACKUP_DIR": str(parent / "file_not_dir")}
    (parent / "file_not_dir").write_text("not a folder")
    result = run_backup(env, instance)
    assert not result.success
    assert "file_not_dir" in _failure_text(result, instance)


def _postgres(server, database: str) -> PostgresResource:
    return PostgresResource(host=server.host, port=server.port, database=database,
                            user=server.user, password=server.password)


def test_a_failed_table_read_names_psql_and_the_error(server, source_db):
    """A read that fails says which query, which server and psql's own error; the snapshot
    stays usable, and a good read returns the server's row count."""
    with _postgres(server, source_db).snapshot() as snap:
        with pytest.raises(RuntimeError, match=r"psql exit status [1-9].*division by zero"):
            snap.copy_to(sql.SQL("SELECT 1 / (count(*) - count(*)) FROM users"),
                         HashingWriter(io.BytesIO()))
        out = io.BytesIO()
        rows = snap.copy_to(sql.SQL("SELECT id FROM users"), HashingWriter(out))
        expected = snap.connection.execute("SELECT count(*) FROM users").fetchone()[0]
    assert rows == expected == out.getvalue().count(b"\n")


def test_the_password_is_never_in_a_readers_argv(server, source_db):
    """psql gets the password through its environment; its command line never holds it."""
    seen: list[bytes] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in Path("/proc").iterdir():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"psql" in cmdline and b"SET TRANSACTION SNAPSHOT" in cmdline:
                    seen.append(cmdline)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with _postgres(server, source_db).snapshot() as snap:
            snap.copy_to(sql.SQL("SELECT pg_sleep(0.5)"), HashingWriter(io.BytesIO()))
    finally:
        done.set()
        watcher.join()
    assert seen, "the reader's psql process was never seen"
    assert not any(server.password.encode() in cmdline for cmdline in seen)
