"""`backup-pipeline restore`: real archives into real databases, compared table by table."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_pipeline import layout
from backup_pipeline.definitions import build_defs
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    CRITICAL,
    EXCLUDED,
    WINDOWED,
    archives,
    manifest,
    rows,
    run_backup,
    scalar,
    script_checks,
)


def restore(archive: Path, dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target", dsn, *args],
                          capture_output=True, text=True, timeout=600)


def fingerprint(dsn: str, tables: list[str]) -> dict[str, str]:
    return {t: hashlib.sha256("\n".join(rows(dsn, t)).encode()).hexdigest() for t in tables}


def repack(source: Path, target: Path, change) -> Path:
    """A consistent archive (manifest updated) whose content `change` altered: it verifies."""
    with tarfile.open(source, "r:gz") as old:
        members = [(m, old.extractfile(m).read() if m.isfile() else None) for m in old]
    data = {m.name: content for m, content in members}
    for name in list(data):
        if data[name] is not None and name != layout.MANIFEST:
            data[name] = change(name, data[name])
    meta = json.loads(data[layout.MANIFEST])
    for entry in meta["files"]:
        entry["size"] = len(data[entry["path"]])
        entry["sha256"] = hashlib.sha256(data[entry["path"]]).hexdigest()
    data[layout.MANIFEST] = json.dumps(meta).encode()
    with tarfile.open(target, "w:gz") as new:
        for member, _ in members:
            content = data[member.name]
            if content is not None:
                member.size = len(content)
            new.addfile(member, None if content is None else io.BytesIO(content))
    return target


def test_restore_into_a_new_database(archive, server, source_db, scratch_db, tmp_path):
    done = restore(archive, server.dsn(scratch_db), "--config-to", str(tmp_path / "cfg"))
    assert done.returncode == 0, done.stderr + done.stdout
    out = done.stdout
    assert f"creating database {scratch_db}" in out
    assert "verifying" in out and "  critical tables  (" in out  # progress of the long steps
    assert "  public.users: " in out and "restore complete" in out
    assert "every foreign key and check constraint is valid" in out
    assert "every table's content is byte for byte the archive's" in out
    assert "RESTORE OK" in out and " s\n" in out  # total time printed
    assert server.password not in out + done.stderr
    source, restored = server.dsn(source_db), server.dsn(scratch_db)
    for table in CRITICAL:
        assert rows(restored, table) == rows(source, table), table
    cutoff = manifest(archive)["window"]["cutoff"]
    for table in WINDOWED:
        assert set(rows(source, table, f"created_at >= '{cutoff}'")) \
            <= set(rows(restored, table)) <= set(rows(source, table)), table
    for table in EXCLUDED:
        assert scalar(restored, f"SELECT count(*) FROM {table}") == 0
    config = tmp_path / "cfg"
    assert (config / ".env.production").read_text().startswith("POSTGRES_PASSWORD=")
    assert (config / "ssl" / "key.pem").stat().st_mode & 0o777 == 0o600


def database_exists(server, name: str) -> bool:
    return scalar(server.dsn("postgres"), "SELECT count(*) FROM pg_database WHERE datname = %s",
                  (name,)) == 1


@pytest.mark.parametrize("mistake", ["a_file", "under_a_file", "a_folder_where_a_file_goes",
                                     "a_file_where_a_folder_goes"])
def test_a_config_folder_that_cannot_be_written_is_refused_before_the_database(
        archive, server, scratch_db, tmp_path, mistake):
    """The usual --config-to mistakes are found before the database is touched, so that
    RESTORE FAILED (exit 2) is true: nothing was changed."""
    given = tmp_path / "given"
    given.write_text("not a folder\n")
    folder = tmp_path / "restored_config"
    if mistake == "a_folder_where_a_file_goes":
        (folder / ".env.production").mkdir(parents=True)
    elif mistake == "a_file_where_a_folder_goes":
        folder.mkdir()
        (folder / "ssl").write_text("not a folder\n")
    target, reason = {
        "a_file": (given, f"{given} is a file."),
        "under_a_file": (given / "cfg", f"{given} is a file, so {given / 'cfg'} cannot be "
                                        f"created under it."),
        "a_folder_where_a_file_goes": (folder, f"{folder / '.env.production'} is a symbolic "
                                               f"link or a folder: the restore replaces files"),
        "a_file_where_a_folder_goes": (folder, f"{folder / 'ssl'} is a file, where the archive "
                                               f"has the folder of ssl/"),
    }[mistake]
    done = restore(archive, server.dsn(scratch_db), "--config-to", str(target))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"RESTORE FAILED: refusing to restore: the configuration "
                                  f"cannot be written to {target}: ")
    assert reason in done.stderr and "Nothing was changed." in done.stderr
    assert f"tar -xzf {archive} -C <folder> --no-same-owner config" in done.stderr
    assert "verifying" not in done.stdout, "refused before the archive was even read whole"
    assert not database_exists(server, scratch_db)
    assert given.read_text() == "not a folder\n"


def test_a_config_not_written_after_the_commit_is_reported_beside_the_restore(
        archive, server, scratch_db, small_disk):
    """A full disk lets the folder be made but no file be written, which only the writing finds
    out, after the commit: the database restore stands and says so (RESTORE OK), the
    configuration gets its own line and exit 3, and no half-written file is left behind."""
    filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(OSError, match="No space left on device"):
        while True:
            os.write(filler, b"\0" * 4096)
    os.close(filler)
    target = small_disk / "restored_config"
    done = restore(archive, server.dsn(scratch_db), "--config-to", str(target))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"RESTORE OK into database {scratch_db} on " in done.stdout
    assert "RESTORE FAILED" not in done.stderr
    assert done.stderr.startswith(
        f"CONFIG NOT WRITTEN: could not write the configuration to {target}: No space left on "
        f"device (writing ")
    assert "0 of 5 files were written; the database restore above stands. Extract it by " \
           f"hand: tar -xzf {archive} -C <folder> --no-same-owner config\n" in done.stderr
    counts = {t["table"]: t["rows"] for t in manifest(archive)["tables"]}
    assert scalar(server.dsn(scratch_db), "SELECT count(*) FROM users") == counts["public.users"]
    assert [p for p in target.rglob("*") if not p.is_dir()] == []


def test_refuses_a_database_that_has_tables(archive, server, source_db):
    before = fingerprint(server.dsn(source_db), CRITICAL)
    done = restore(archive, server.dsn(source_db))
    assert done.returncode == 2
    assert "already has 16 tables" in done.stderr and "--force" in done.stderr
    assert fingerprint(server.dsn(source_db), CRITICAL) == before


def test_force_replaces_a_damaged_database(archive, server, source_db):
    dsn = server.dsn(source_db)
    expected = fingerprint(dsn, CRITICAL)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM user_roles")
        conn.execute("UPDATE users SET email = 'broken-' || id")
        conn.execute("CREATE TABLE leftover (id int)")
    done = restore(archive, dsn, "--force")
    assert done.returncode == 0, done.stderr
    assert "replacing 17 existing tables (--force)" in done.stdout
    assert fingerprint(dsn, CRITICAL) == expected
    assert scalar(dsn, "SELECT to_regclass('public.leftover')") is None


def test_a_failing_restore_changes_nothing(archive, server, source_db, tmp_path):
    """psql stops at the first error and the one transaction leaves the old database intact,
    even with --force."""
    def change(name, data):
        if name == layout.SCHEMA_POST_DATA:
            return data.replace(b"-- PostgreSQL database dump complete",
                                b"SELECT 1/0;\n-- PostgreSQL database dump complete")
        return data

    bad = repack(archive, tmp_path / archive.name, change)
    dsn = server.dsn(source_db)
    before = fingerprint(dsn, CRITICAL + WINDOWED + EXCLUDED)
    done = restore(bad, dsn, "--force")
    assert done.returncode == 2
    assert "division by zero" in done.stderr
    assert "rolled back" in done.stderr
    assert fingerprint(dsn, CRITICAL + WINDOWED + EXCLUDED) == before


@pytest.mark.parametrize("damage", ["truncated", "tampered", "malicious"])
def test_refuses_a_bad_archive_and_touches_nothing(archive, server, scratch_db, tmp_path,
                                                    damage):
    bad = tmp_path / archive.name
    data = archive.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "tampered":
        with tarfile.open(archive, "r:gz") as old, tarfile.open(bad, "w:gz") as new:
            for member in old:
                content = old.extractfile(member).read() if member.isfile() else None
                if member.name == "database/users.sql":
                    content = content.replace(b"user1@", b"evil1@")
                new.addfile(member, None if content is None else io.BytesIO(content))
    else:
        with tarfile.open(archive, "r:gz") as old, tarfile.open(bad, "w:gz") as new:
            for member in old:
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
            link = tarfile.TarInfo("database/users.sql.link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
            new.addfile(link)
    done = restore(bad, server.dsn(scratch_db))
    assert done.returncode == 2
    assert "failed verification" in done.stderr and "Nothing was changed" in done.stderr
    with server.admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (scratch_db,)).fetchone() is None


def test_partial_restore_of_named_tables_touches_nothing_else(archive, server, source_db):
    dsn = server.dsn(source_db)
    expected = {t: rows(dsn, t) for t in ("system_settings", "users")}
    others = [t for t in CRITICAL + WINDOWED + EXCLUDED if t not in ("system_settings", "users")]
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE system_settings SET value = '{\"broken\": true}'")
        conn.execute("DELETE FROM system_settings WHERE key LIKE 'setting.1%'")
        conn.execute("INSERT INTO system_settings (key, value) VALUES ('added.later', '1')")
        conn.execute("UPDATE users SET display_name = 'oops' WHERE id <= 50")
    untouched = fingerprint(dsn, others)
    done = restore(archive, dsn, "--table", "system_settings", "--table", "public.users")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "RESTORE OK" in done.stdout
    assert "1 newer rows kept" in done.stdout
    assert rows(dsn, "system_settings", "key <> 'added.later'") == expected["system_settings"]
    assert rows(dsn, "users") == expected["users"]  # updated_at too: triggers were held off
    assert scalar(dsn, "SELECT count(*) FROM system_settings WHERE key = 'added.later'") == 1
    assert fingerprint(dsn, others) == untouched
    with psycopg.connect(dsn) as conn:  # sequences still hand out fresh ids
        conn.execute("INSERT INTO users (email) VALUES ('after-partial@example.com')")


def test_partial_restore_of_an_unknown_table_is_refused(archive, server, source_db):
    done = restore(archive, server.dsn(source_db), "--table", "sessions")
    assert done.returncode == 2
    assert "sessions is not in this archive" in done.stderr


def test_restore_drill_asset(backup_env, server, scratch_db, instance, monkeypatch):
    assert run_backup(backup_env, instance).success
    monkeypatch.setenv("BACKUP_DRILL_DSN", server.dsn(scratch_db))
    env = {**backup_env, "BACKUP_DRILL_DSN": server.dsn(scratch_db)}
    defs = build_defs(load_settings(env))
    assert defs.resolve_schedule_def("restore_drill_schedule").default_status \
        == dg.DefaultScheduleStatus.RUNNING
    result = defs.resolve_job_def("restore_drill_job").execute_in_process(instance=instance)
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata
    assert metadata["restore_seconds"].value > 0
    assert metadata["rows"].value == sum(t["rows"] for t in manifest(
        archives(backup_env["BACKUP_DIR"])[0])["tables"])
    record = json.loads((Path(backup_env["BACKUP_DIR"]) / layout.LAST_DRILL_FILE).read_text())
    assert record["ok"] is True
    # A second drill drops and recreates the scratch database.
    assert defs.resolve_job_def("restore_drill_job").execute_in_process(instance=instance).success
    status = subprocess.run([BACKUP_PIPELINE, "status"], capture_output=True, text=True,
                            env={**os.environ, **env})
    assert "(measured recovery time)" in status.stdout


def test_restore_drill_refuses_the_production_database(backup_env, server, source_db, instance,
                                                       monkeypatch):
    assert run_backup(backup_env, instance).success
    monkeypatch.setenv("BACKUP_DRILL_DSN", server.dsn(source_db))
    defs = build_defs(load_settings(backup_env))
    result = defs.resolve_job_def("restore_drill_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    assert scalar(server.dsn(source_db), "SELECT count(*) FROM sessions") > 0


def test_partial_restore_into_a_database_without_the_table_fails_cleanly(archive, server,
                                                                         scratch_db):
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{scratch_db}"')
    done = restore(archive, server.dsn(scratch_db), "--table", "users")
    assert done.returncode == 2
    assert "failed and was rolled back, nothing changed" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_mistakes_get_one_clear_line(archive, tmp_path, server):
    missing = subprocess.run([BACKUP_PIPELINE, "verify", str(tmp_path / "nope.tar.gz")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read the archive" in missing.stderr
    for target, expected in [("host=127.0.0.1 port=5432 dbname", "not a valid connection"),
                             (f"host={server.host} port={server.port} user=postgres",
                              "names no database")]:
        done = restore(archive, target)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr


def test_a_failed_drill_is_recorded_as_failed(backup_env, instance, monkeypatch):
    assert run_backup(backup_env, instance).success
    drill_dsn = "host=127.0.0.1 port=1 user=postgres dbname=smart_ai_hub_drill connect_timeout=2"
    monkeypatch.setenv("BACKUP_DRILL_DSN", drill_dsn)
    defs = build_defs(load_settings({**backup_env, "BACKUP_DRILL_DSN": drill_dsn}))
    result = defs.resolve_job_def("restore_drill_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert not result.success
    record = json.loads((Path(backup_env["BACKUP_DIR"]) / layout.LAST_DRILL_FILE).read_text())
    assert record["ok"] is False and "error" in record


def test_a_long_chain_of_older_rows_restores(backup_env, server, source_db, scratch_db,
                                             instance):
    """A recent refund of an old refund of an old refund ... : every link must be in the
    archive, however long the chain, or the restored foreign key could not be created."""
    dsn = server.dsn(source_db)
    with psycopg.connect(dsn) as conn:
        previous = None
        for age_days in (400, 390, 380, 370, 360, 350, 1):
            previous = conn.execute(
                "INSERT INTO purchases (user_id, amount, status, refund_of, metadata, created_at) "
                "VALUES (1, 5, 'refunded', %s, '{\"chain\": true}', "
                "now() - make_interval(days => %s)) RETURNING id", (previous, age_days)
            ).fetchone()[0]
    assert run_backup(backup_env, instance).success
    [made] = archives(backup_env["BACKUP_DIR"])
    done = restore(made, server.dsn(scratch_db))
    assert done.returncode == 0, done.stderr[-2000:]
    restored = server.dsn(scratch_db)
    assert scalar(restored, "SELECT count(*) FROM purchases WHERE metadata ? 'chain'") == 7


# Made by backup_job at commit 8db61ea (manifest format 1: schema without owners, no roles,
# no total orders), from the sample data at scale 0.1, with no config files.
FORMAT_1_ARCHIVE = Path(__file__).parent / "fixtures" / "critical_backup_20261201_214833.tar.gz"


def test_an_archive_made_before_format_2_still_restores(server, scratch_db):
    """The 30 days of archives made before this version stay restorable by it."""
    assert manifest(FORMAT_1_ARCHIVE)["format"] == 1
    done = restore(FORMAT_1_ARCHIVE, server.dsn(scratch_db))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "content not compared, only row counts" in done.stdout
    assert "every foreign key and check constraint is valid" in done.stdout
    counts = {t["table"]: t["rows"] for t in manifest(FORMAT_1_ARCHIVE)["tables"]}
    assert scalar(server.dsn(scratch_db), "SELECT count(*) FROM purchases") \
        == counts["public.purchases"]


def test_a_crafted_archive_runs_nothing_it_holds(archive, server, scratch_db, tmp_path):
    """Checksums recomputed, so it verifies: a shell command in the archive's own restore
    script is never run (restore builds its own load), and a COPY ... PROGRAM or a psql
    meta-command in the schema is refused, naming the file and line."""
    witness = tmp_path / "ran"

    def shell_in_script(name, data):
        if name == layout.RESTORE_SCRIPT:
            return data + f"\\! touch {witness}\n".encode()
        return data

    quiet = repack(archive, tmp_path / "script.tar.gz", shell_in_script)
    done = restore(quiet, server.dsn(scratch_db))
    assert done.returncode == 0, done.stderr
    assert not witness.exists()

    for bad in (f"COPY (SELECT 1) TO PROGRAM 'touch {witness}';",
                f"\\! touch {witness}"):
        def in_schema(name, data, bad=bad):
            return data + f"\n{bad}\n".encode() if name == layout.SCHEMA_PRE_DATA else data

        crafted = repack(archive, tmp_path / "schema.tar.gz", in_schema)
        refused = restore(crafted, server.dsn(scratch_db), "--force")
        assert refused.returncode == 2, refused.stdout
        assert "_schema_pre_data.sql line" in refused.stderr
        assert "do not use this archive" in refused.stderr.lower()
        assert not witness.exists()


def test_a_restore_with_a_full_tmpdir_names_it_and_changes_nothing(archive, server, scratch_db,
                                                                   small_disk):
    done = subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target",
                           server.dsn(scratch_db)], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(small_disk)}, timeout=120)
    assert done.returncode != 0
    assert f"no room to extract the archive in TMPDIR {small_disk}: it needs about" in done.stderr
    assert "Point TMPDIR at a folder with room" in done.stderr and "Traceback" not in done.stderr
    assert scalar(server.dsn("postgres"), "SELECT count(*) FROM pg_database WHERE datname = %s",
                  (scratch_db,)) == 0, "the restore created its database before it had room"


def test_the_plain_shell_checks_catch_a_crafted_archive(archive, tmp_path):
    """Checksums recomputed by whoever changed the files prove nothing: BACKUP_INFO.txt's checks
    read the scripts psql would run, and name every line that is not what this system writes."""
    folder = tmp_path / "restore_work"
    folder.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    checks = script_checks((folder / layout.BACKUP_INFO).read_text())
    assert len(checks) == 2

    def run(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert [run(c).startswith("OK: ") for c in checks] == [True, True]
    database = folder / "database"
    with (database / "_restore.psql").open("a") as script:
        script.write("\\! touch pwned\n\\copy users FROM PROGRAM 'id' WITH (FORMAT csv, HEADER)\n")
    users = database / "users.sql"
    users.write_text(users.read_text() + "\\! id > pwned\n")
    post = database / layout.SCHEMA_POST_DATA.split("/")[-1]
    post.write_text(post.read_text() + "COPY users FROM PROGRAM 'id';\n")
    restore_check, sql_check = (run(c) for c in checks)
    assert "OK" not in restore_check and "OK" not in sql_check
    assert "\\! touch pwned" in restore_check and "FROM PROGRAM 'id' WITH" in restore_check
    assert "users.sql:" in sql_check and "\\! id > pwned" in sql_check
    assert "COPY users FROM PROGRAM 'id';" in sql_check
    assert not (folder / "pwned").exists()
