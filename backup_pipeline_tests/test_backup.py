"""A real backup of a real database, restored by following BACKUP_INFO.txt literally."""

from __future__ import annotations

import re
import stat
import threading
import time
from pathlib import Path

import dagster as dg
import psycopg

from backup_pipeline import layout
from backup_pipeline.verify import verify_archive
from backup_pipeline_tests.helpers import (
    CRITICAL,
    EXCLUDED,
    WINDOWED,
    archives,
    follow_restore_procedure,
    manifest,
    outbox_messages,
    plain_text,
    read_member,
    rows,
    run_backup,
    scalar,
)


def _window_rows(dsn: str, table: str, cutoff: str) -> list[str]:
    return rows(dsn, table, f"created_at >= '{cutoff}'")


def test_full_run_makes_a_verified_private_archive(throwaway_proof, server, source_db, instance):
    backup_env = throwaway_proof
    result = run_backup(backup_env, instance)
    assert result.success

    backup_dir = Path(backup_env["BACKUP_DIR"])
    [archive] = archives(backup_dir)
    assert layout.ARCHIVE_NAME.match(archive.name)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    assert verify_archive(archive).ok
    assert not list(backup_dir.glob(".*.partial"))
    assert not any((backup_dir / layout.STAGING_DIR).iterdir())

    # Status files, as the seeds' monitoring reads them.
    success = int((backup_dir / layout.LAST_SUCCESS_FILE).read_text())
    assert abs(success - time.time()) < 120
    assert int((backup_dir / layout.LAST_SIZE_FILE).read_text()) >= 1

    # The UI's story: per-table row counts that match the source, and every check passed.
    dsn = server.dsn(source_db)
    materialized = {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    for table in CRITICAL:
        count = materialized[f"dumps/{table}"]["dagster/row_count"].value
        assert count == scalar(dsn, f"SELECT count(*) FROM {table}") > 0
    assert materialized["backup_archive"]["sha256"].value
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {"gzip_and_tar_integrity", "manifest_checksums",
                                              "dumps_readable", "size_within_bounds"}
    assert all(c.passed for c in checks)

    # The layout the user guide relies on.
    data = manifest(archive)
    names = {f["path"] for f in data["files"]}
    assert {f"database/{t}.sql" for t in CRITICAL} <= names
    assert {f"database/{t}.csv" for t in WINDOWED} <= names
    assert {"config/.env.production", "config/docker-compose.prod.yml",
            "config/nginx.prod.conf", "config/ssl/cert.pem", "config/ssl/key.pem"} <= names
    assert data["config"]["missing"] == []
    assert data["server_version"] == scalar(dsn, "SHOW server_version")
    assert "pg_dump" in data["pg_dump_version"]
    # No secret in the archive's names or its manifest.
    assert backup_env["POSTGRES_PASSWORD"] not in archive.name
    assert backup_env["POSTGRES_PASSWORD"].encode() not in read_member(archive, "manifest.json")
    assert backup_env["POSTGRES_PASSWORD"].encode() not in read_member(archive, "BACKUP_INFO.txt")


def test_archive_restores_completely_by_following_backup_info(
        backup_env, server, source_db, scratch_db, instance, tmp_path):
    assert run_backup(backup_env, instance).success
    [archive] = archives(backup_env["BACKUP_DIR"])
    project = tmp_path / "project"
    project.mkdir()

    done = follow_restore_procedure(archive, tmp_path / "restore", backup_env, scratch_db, project)
    assert done.returncode == 0, done.stderr
    assert "restore complete" in done.stdout
    # Step 5 printed the restored row counts: they are the manifest's.
    for table in manifest(archive)["tables"]:
        assert re.search(rf"{re.escape(table['table'])}\s*\|\s*{table['rows']}\b", done.stdout)

    source, restored = server.dsn(source_db), server.dsn(scratch_db)
    cutoff = manifest(archive)["window"]["cutoff"]
    for table in CRITICAL:
        assert rows(restored, table) == rows(source, table), table
    for table in WINDOWED:
        restored_rows = rows(restored, table)
        # Every row of the window is there, identical ...
        assert set(_window_rows(source, table, cutoff)) <= set(restored_rows), table
        # ... and nothing that is not in the source.
        assert set(restored_rows) <= set(rows(source, table)), table
    # Windowed rows that reference rows older than the window restored with their references.
    assert scalar(restored, "SELECT count(*) FROM credit_transactions c JOIN purchases p "
                            "ON p.id = c.purchase_id WHERE p.created_at < %s", (cutoff,)) > 0
    assert scalar(restored, "SELECT count(*) FROM purchases WHERE created_at < %s "
                            "AND id IN (SELECT refund_of FROM purchases)", (cutoff,)) > 0
    for table in EXCLUDED:
        assert scalar(restored, f"SELECT count(*) FROM {table}") == 0, table
        assert scalar(source, f"SELECT count(*) FROM {table}") > 0, table

    # Every table, constraint, index, sequence, view and trigger of the source, all valid.
    catalog = {
        "tables": "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class "
                  "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
        "constraints": "SELECT string_agg(conname || ':' || convalidated, ',' ORDER BY conname) "
                       "FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "indexes": "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
                   "WHERE schemaname = 'public'",
        "sequences": "SELECT string_agg(sequencename, ',' ORDER BY sequencename) "
                     "FROM pg_sequences",
        "views": "SELECT string_agg(viewname, ',' ORDER BY viewname) FROM pg_views "
                 "WHERE schemaname = 'public'",
        "triggers": "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger "
                    "WHERE NOT tgisinternal",
    }
    for what, query in catalog.items():
        assert scalar(restored, query) == scalar(source, query), what
    assert "false" not in scalar(restored, catalog["constraints"])

    # New rows with default ids insert without colliding with restored ones.
    with psycopg.connect(restored) as conn:
        user = conn.execute("INSERT INTO users (email) VALUES ('new@example.com') RETURNING id"
                            ).fetchone()[0]
        conn.execute("INSERT INTO purchases (user_id, amount) VALUES (%s, 1)", (user,))
        conn.execute("INSERT INTO credit_transactions (user_id, amount, balance_after) "
                     "VALUES (%s, 1, 1)", (user,))
        conn.execute("INSERT INTO point_transactions (user_id, amount, reason) "
                     "VALUES (%s, 1, 'x')", (user,))
        conn.execute("INSERT INTO audit_logs (user_id, action) VALUES (%s, 'x')", (user,))
        conn.execute("INSERT INTO organizations (name, slug) VALUES ('n', 'n-new')")

    # Step 6 put the configuration back.
    assert (project / ".env.production").read_text().startswith("POSTGRES_PASSWORD=")
    # Readable by the stack's backup service (group 10001), or the next backup could not copy it.
    for path in [project / ".env.production", project / "ssl" / "key.pem"]:
        info = path.stat()
        assert info.st_gid == 10001 and info.st_mode & 0o040 and not info.st_mode & 0o007, path
    assert (project / "ssl" / "key.pem").exists()


def test_window_boundary(backup_env, server, source_db, instance):
    dsn = server.dsn(source_db)
    with psycopg.connect(dsn) as conn:
        conn.execute("""
            INSERT INTO credit_transactions (user_id, amount, balance_after, description,
                                             created_at)
            VALUES (1, 1, 1, 'just inside', now() - interval '3 months' + interval '1 hour'),
                   (1, 1, 1, 'just outside', now() - interval '3 months' - interval '1 hour')
        """)
    assert run_backup(backup_env, instance).success
    [archive] = archives(backup_env["BACKUP_DIR"])
    data = manifest(archive)
    cutoff = data["window"]["cutoff"]
    assert data["window"]["months"] == 3
    text = read_member(archive, "database/credit_transactions.csv").decode()
    assert "just inside" in text
    assert "just outside" not in text
    entry = next(t for t in data["tables"] if t["table"] == "public.credit_transactions")
    in_window = scalar(dsn, "SELECT count(*) FROM credit_transactions WHERE created_at >= %s",
                       (cutoff,))
    assert entry["rows_in_window"] == in_window
    assert entry["rows"] >= in_window
    # Old rows are only there when a newer backed-up row references them.
    referenced = scalar(dsn, """
        SELECT count(*) FROM credit_transactions c WHERE c.created_at < %(cut)s AND c.id IN (
            SELECT credit_transaction_id FROM point_transactions WHERE created_at >= %(cut)s)
    """.replace("%(cut)s", "%s"), (cutoff, cutoff))
    assert entry["rows"] == in_window + referenced


def test_missing_config_file_is_named_not_skipped(backup_env, instance, tmp_path):
    Path(backup_env["BACKUP_CONFIG_DIR"], "nginx.prod.conf").unlink()
    secret = tmp_path / "shadow"
    secret.write_text("not for the archive\n")
    Path(backup_env["BACKUP_CONFIG_DIR"], "ssl", "evil.pem").symlink_to(secret)
    result = run_backup(backup_env, instance)
    assert result.success
    [archive] = archives(backup_env["BACKUP_DIR"])
    config = manifest(archive)["config"]
    assert config["missing"] == ["nginx.prod.conf"]
    [refused] = config["skipped"]
    assert refused["path"] == "ssl/evil.pem" and "outside BACKUP_CONFIG_DIR" in refused["reason"]
    assert "config/ssl/evil.pem" not in config["included"]
    info = read_member(archive, "BACKUP_INFO.txt").decode()
    assert "MISSING configuration files" in info and "nginx.prod.conf" in info
    assert "Configuration files NOT COPIED" in info and "ssl/evil.pem: a symbolic link" in info
    [email] = [m for m in outbox_messages(backup_env) if "OK" in m["Subject"]]
    assert "Configuration files NOT COPIED (not in this backup): ssl/evil.pem (" in \
        plain_text(email)
    metadata = next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("config_snapshot")
    )
    assert metadata["missing"].value == ["nginx.prod.conf"]
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("config file missing" in m and "nginx.prod.conf" in m for m in logs)


def test_one_snapshot_while_the_application_writes(
        backup_env, server, source_db, scratch_db, instance, tmp_path):
    """Each write adds a purchase, its credit and the user's balance in one transaction; the
    archive must hold each write whole or not at all, across users.sql and the CSVs."""
    dsn = server.dsn(source_db)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE users SET credits = 0 WHERE id = 1")
    stop = threading.Event()
    writes = []

    def application() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    purchase = conn.execute(
                        "INSERT INTO purchases (user_id, amount, metadata) "
                        "VALUES (1, 10, '{\"writer\": true}') RETURNING id").fetchone()[0]
                    conn.execute(
                        "INSERT INTO credit_transactions (user_id, purchase_id, amount, "
                        "balance_after, description) VALUES (1, %s, 10, 0, 'writer')",
                        (purchase,))
                    conn.execute("UPDATE users SET credits = credits + 10 WHERE id = 1")
                writes.append(purchase)

    writer = threading.Thread(target=application)
    writer.start()
    try:
        time.sleep(0.3)
        assert run_backup(backup_env, instance).success
        time.sleep(0.2)
    finally:
        stop.set()
        writer.join()
    assert len(writes) > 5

    [archive] = archives(backup_env["BACKUP_DIR"])
    done = follow_restore_procedure(archive, tmp_path / "restore", backup_env, scratch_db,
                                    tmp_path)
    assert done.returncode == 0, done.stderr
    restored = server.dsn(scratch_db)
    purchases = scalar(restored, "SELECT count(*) FROM purchases WHERE metadata ? 'writer'")
    credits = scalar(restored, "SELECT count(*) FROM credit_transactions "
                               "WHERE description = 'writer'")
    balance = scalar(restored, "SELECT credits FROM users WHERE id = 1")
    assert 0 < purchases < len(writes)
    assert credits == purchases
    assert balance == 10 * purchases


def test_every_output_gives_the_same_size_and_file_count(backup_env, instance):
    """One unit and one rounding for the archive's size, one way to count its files: the email,
    the UI's metadata, `status` and `verify` agree."""
    import os
    import subprocess

    from backup_pipeline.assets.archive import ARCHIVE_KEY
    from backup_pipeline_tests.helpers import BACKUP_PIPELINE

    assert run_backup(backup_env, instance).success
    [made] = archives(backup_env["BACKUP_DIR"])
    size = layout.size_text(made.stat().st_size)
    assert re.fullmatch(r"\d+\.\d\d MB", size)
    metadata = instance.get_latest_materialization_event(
        ARCHIVE_KEY).asset_materialization.metadata
    assert metadata["size"].value == size and metadata["bytes"].value == made.stat().st_size
    [email] = outbox_messages(backup_env)
    assert email["Subject"].endswith(f"({size})") and f"{size} (" in plain_text(email)
    status = subprocess.run([BACKUP_PIPELINE, "status"], capture_output=True, text=True,
                            env={**os.environ, **backup_env}, timeout=60)
    assert f"{made.name}  {size}  " in status.stdout, status.stdout
    files = metadata["files"].value
    assert files == len(manifest(made)["files"])
    assert verify_archive(made).summary() == f"{made.name}: {files} files verified"
