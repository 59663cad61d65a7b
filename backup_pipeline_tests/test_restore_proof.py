"""The restore proof of every run: an archive that does not restore, or not to what it holds,
fails its run before anything calls it good; the throwaway server never outlives its run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from backup_pipeline import layout
from backup_pipeline.export_plan import ExportPlan
from backup_pipeline.restore import RestoreReport, compare_restored, restore_archive
from backup_pipeline.restore_proof import PROOF_PREFIX
from backup_pipeline.verify import read_manifest
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    REPO,
    archives,
    manifest,
    outbox_messages,
    run_backup,
)


def test_an_archive_that_does_not_restore_fails_its_run(throwaway_proof, instance, monkeypatch):
    """Simulated: the export misses the older rows that recent rows reference (the bug Pagila's
    partition keys caused). Every checksum holds; only a restore shows it."""
    backup_env = throwaway_proof
    monkeypatch.setattr(ExportPlan, "_older_rows", lambda *args, **kwargs: None)
    result = run_backup(backup_env, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "backup.restore_proof"
    error = failure.event_specific_data.error.to_string()
    assert "did not restore" in error and "violates foreign key constraint" in error
    # The archive is kept under its name, but nothing calls it good.
    backup_dir = Path(backup_env["BACKUP_DIR"])
    [archive] = archives(backup_dir)
    assert not (backup_dir / layout.LAST_SUCCESS_FILE).exists()
    assert not (backup_dir / layout.LAST_BACKUP_FILE).exists()
    # Exactly one email: the alert, naming the table, saying what it means.
    [alert] = outbox_messages(backup_env)
    assert alert["Subject"].startswith("URGENT:") and "restore_proof" in alert["Subject"]
    text = alert.get_body(("plain",)).get_content()
    assert "violates foreign key constraint" in text and 'on table "' in text
    assert "did NOT restore" in text and "not recorded as a good backup" in text
    status = subprocess.run([BACKUP_PIPELINE, "status"], capture_output=True, text=True,
                            env={**os.environ, **backup_env}, timeout=60)
    assert f"{archive.name}" in status.stdout and "not recorded as verified" in status.stdout
    assert "restore proof     never" in status.stdout


def test_a_restore_that_differs_in_content_is_caught(archive, server, scratch_db):
    """Counts can match while rows differ: the proof compares each table's bytes."""
    dsn = server.dsn(scratch_db)
    report = restore_archive(archive, dsn, progress=lambda _: None)
    assert report.ok and report.content_compared
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE users SET email = 'changed@example.com' WHERE id = "
                     "(SELECT min(id) FROM users)")
        conn.execute("UPDATE point_transactions SET reason = reason || '!' WHERE id = "
                     "(SELECT max(id) FROM point_transactions)")
        conn.execute("SELECT setval('purchases_id_seq', 1)")
    again = RestoreReport(archive=archive, target=dsn)
    compare_restored(dsn, read_manifest(archive), again)
    problems = "\n".join(again.problems)
    assert not again.ok
    assert "public.users: its content differs" in problems
    # Same row count as the archive, other rows: only the content shows it.
    point = next(t for t in again.tables if t.table == "public.point_transactions")
    assert point.expected == point.restored and point.content_problem
    assert "purchases_id_seq would give 2 next" in problems


def test_without_the_proof_nothing_pretends(backup_env, instance, monkeypatch):
    monkeypatch.setenv("BACKUP_RESTORE_PROOF", "off")
    env = {**backup_env, "BACKUP_RESTORE_PROOF": "off"}
    result = run_backup(env, instance)
    assert result.success
    assert "backup.restore_proof" not in {e.step_key for e in result.all_events if e.step_key}
    record = json.loads((Path(env["BACKUP_DIR"]) / layout.LAST_BACKUP_FILE).read_text())
    assert record["restore_proof"] is None
    [email] = outbox_messages(env)
    assert "Restore proof not proven (BACKUP_RESTORE_PROOF=off)" in email.get_body(
        ("plain",)).get_content()


def test_a_proven_run_says_so_in_the_email_and_status(throwaway_proof, instance):
    backup_env = throwaway_proof
    assert run_backup(backup_env, instance).success
    proof = json.loads((Path(backup_env["BACKUP_DIR"]) / layout.LAST_BACKUP_FILE).read_text()
                       )["restore_proof"]
    # Where the recovery time goes, step by step, within the proof's own time.
    assert set(proof["phases"]) == {"server_start", "verify_and_extract", "load", "compare"}
    assert 0 < sum(proof["phases"].values()) <= proof["seconds"]
    [email] = outbox_messages(backup_env)
    text = email.get_body(("plain",)).get_content()
    assert "Restore proof restored and compared in " in text
    assert "into a throwaway PostgreSQL" in text
    # Without BACKUP_AGE_RECIPIENTS the email says plainly what the attachment holds in clear.
    assert "Encryption    NONE: the archive is in clear" in text
    assert "IN CLEAR, and it is attached to this email" in text
    assert "set BACKUP_AGE_RECIPIENTS" in text
    status = subprocess.run([BACKUP_PIPELINE, "status"], capture_output=True, text=True,
                            env={**os.environ, **backup_env}, timeout=60)
    assert "restore proof     restored and compared in " in status.stdout


def _proof_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{PROOF_PREFIX}*"))


def _postgres_in(folder: Path) -> list[int]:
    """Server processes working in `folder` (their cwd is the data folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cwd").resolve().is_relative_to(folder):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _describe(pids: list[int], folder: Path) -> str:
    """What the processes left in `folder` are, for a failure message."""
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            status = dict(line.split(":\t", 1) for line in
                          Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"{pid} ppid {status.get('PPid')} state {status.get('State')} "
                         f"{command}")
    with contextlib.suppress(OSError):
        lines.append("owner " + (folder / "owner.json").read_text())
    with contextlib.suppress(OSError):
        lines.append("log " + (folder / "server.log").read_text()[-2000:])
    return "\n".join(lines)


def _server_runs_in(folder: Path) -> bool:
    """Whether the proof's server (not initdb's standalone backend, whose pid the lock file
    holds negated) runs in `folder`."""
    try:
        pid = (folder / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return False
    return pid.isdigit()


def _kill_during_the_proof(env: dict[str, str], home: Path) -> Path | None:
    """Run the backup with `dagster job execute` and SIGKILL it while its throwaway server
    runs; the server's folder, or None when the run was over before it could be killed."""
    before = _proof_folders()
    run = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "job", "execute",
                            "-m", "backup_pipeline.definitions", "-j", "backup_job"],
                           env={**os.environ, **env, "DAGSTER_HOME": str(home)}, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and run.poll() is None:
            new = [f for f in _proof_folders() - before if _server_runs_in(f)]
            if new:
                os.kill(run.pid, signal.SIGKILL)
                run.wait()
                return new[0]
            time.sleep(0.02)
        return None
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_a_killed_run_leaves_no_server_and_the_next_run_cleans_up(throwaway_proof, instance,
                                                                   tmp_path):
    backup_env = throwaway_proof
    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        home.mkdir()
        folder = _kill_during_the_proof(backup_env, home)
        if folder is not None:
            break
    else:
        pytest.fail("the proof was never caught running in three tries")
    deadline = time.monotonic() + 30
    while _postgres_in(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _postgres_in(folder) == [], f"the throwaway server outlived its killed run: " \
        f"{_describe(_postgres_in(folder), folder)}"
    assert folder.exists()  # what the killed run could not remove ...
    result = run_backup(backup_env, instance)
    assert result.success
    assert not folder.exists()  # ... the next proof removed
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any(f"removed the throwaway server a killed run left in {folder}" in m for m in logs)


def test_the_proof_uses_the_scratch_database_when_one_is_named(backup_env, instance, server,
                                                               scratch_db, monkeypatch):
    monkeypatch.setenv("BACKUP_DRILL_DSN", server.dsn(scratch_db))
    env = {**backup_env, "BACKUP_DRILL_DSN": server.dsn(scratch_db)}
    before = _proof_folders()
    assert run_backup(env, instance).success
    record = json.loads((Path(env["BACKUP_DIR"]) / layout.LAST_BACKUP_FILE).read_text())
    assert record["restore_proof"]["target"].startswith(
        f"the scratch database BACKUP_DRILL_DSN (database {scratch_db} on ")
    assert _proof_folders() == before  # no throwaway server was started
    [made] = archives(env["BACKUP_DIR"])
    tables = {t["table"]: t["rows"] for t in manifest(made)["tables"]}
    with psycopg.connect(server.dsn(scratch_db)) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == tables["public.users"]
