"""BACKUP_DIR rules: atomic names, status files, retention that never loses the newest."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_pipeline import layout
from backup_pipeline.health import collect_status
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import load_settings
from backup_pipeline.verify import verify_archive
from backup_pipeline_tests.helpers import BACKUP_PIPELINE, REPO, archives, run_backup

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def _storage(path: Path, **kwargs) -> BackupStorage:
    return BackupStorage(backup_dir=str(path), **kwargs)


def _archive_at(folder: Path, days_ago: float, content: bytes = b"x") -> Path:
    path = folder / layout.archive_name(NOW - timedelta(days=days_ago), "UTC")
    path.write_bytes(content)
    return path


def test_retention_keeps_recent_and_minimum_and_foreign_files(tmp_path):
    storage = _storage(tmp_path, retention_days=30, retention_min_count=3)
    recent = [_archive_at(tmp_path, d) for d in (1, 10)]
    old = [_archive_at(tmp_path, d) for d in (40, 50, 60)]
    foreign = [tmp_path / "critical_backup_manual.tar.gz", tmp_path / "notes.txt",
               tmp_path / "critical_backup_20200101_000000.tar.gz.bak"]
    for path in foreign:
        path.write_text("admin's own file")
    link = tmp_path / layout.archive_name(NOW - timedelta(days=90), "UTC")
    link.symlink_to(old[-1])

    result = storage.apply_retention(newest=recent[0], now=NOW)

    assert sorted(result.deleted) == sorted(p.name for p in old[1:])
    assert all(p.exists() for p in recent + old[:1] + foreign)
    assert link.is_symlink()


def test_retention_never_deletes_the_newest_even_when_everything_is_old(tmp_path):
    storage = _storage(tmp_path, retention_days=1, retention_min_count=1)
    olds = [_archive_at(tmp_path, d) for d in (100, 200, 300)]
    result = storage.apply_retention(newest=olds[0], now=NOW)
    assert olds[0].exists()
    assert sorted(result.deleted) == sorted(p.name for p in olds[1:])


def test_two_archives_in_the_same_second_both_keep_their_name_pattern(tmp_path):
    storage = _storage(tmp_path)
    storage.ensure_root()
    names = []
    for run in ("run-aaaa-1111", "run-bbbb-2222"):
        partial = storage.partial_path(layout.archive_name(NOW, "UTC"), run)
        partial.write_bytes(run.encode())
        names.append(storage.publish(partial, NOW).name)
    assert names == ["critical_backup_20261123_020000.tar.gz",
                     "critical_backup_20261123_020001.tar.gz"]
    assert (tmp_path / names[0]).read_bytes() == b"run-aaaa-1111"
    assert not list(tmp_path.glob("*.partial"))


def test_status_files_never_move_backwards(tmp_path):
    storage = _storage(tmp_path)
    storage.ensure_root()
    archive = _archive_at(tmp_path, 0)
    storage.write_status(archive, 5 * 1024 * 1024 + 1, "ab" * 32, 2_000_000_000)
    storage.write_status(archive, 1, "cd" * 32, 1_000_000_000)
    assert (tmp_path / layout.LAST_SUCCESS_FILE).read_text() == "2000000000\n"
    assert (tmp_path / layout.LAST_SIZE_FILE).read_text() == "6\n"
    assert json.loads((tmp_path / layout.LAST_BACKUP_FILE).read_text())["sha256"] == "ab" * 32


def test_a_good_run_applies_retention_after_verification(backup_env, instance):
    backup_dir = Path(backup_env["BACKUP_DIR"])
    backup_dir.mkdir(mode=0o700)
    env = {**backup_env, "BACKUP_RETENTION_DAYS": "30", "BACKUP_RETENTION_MIN_COUNT": "1"}
    old = backup_dir / layout.archive_name(datetime.now(UTC) - timedelta(days=45), "UTC")
    old.write_bytes(b"old archive")
    result = run_backup(env, instance)
    assert result.success
    assert not old.exists()
    [archive] = archives(backup_dir)
    status = next(e.step_materialization_data.materialization.metadata
                  for e in result.get_asset_materialization_events()
                  if e.asset_key.to_user_string() == "backup_status")
    assert status["deleted"].value == [old.name]
    assert json.loads((backup_dir / layout.LAST_BACKUP_FILE).read_text())["archive"] \
        == archive.name


def test_a_failed_check_applies_no_retention_and_keeps_the_status(backup_env, instance):
    backup_dir = Path(backup_env["BACKUP_DIR"])
    backup_dir.mkdir(mode=0o700)
    old = backup_dir / layout.archive_name(datetime.now(UTC) - timedelta(days=45), "UTC")
    old.write_bytes(b"old archive")
    env = {**backup_env, "BACKUP_RETENTION_MIN_COUNT": "1", "BACKUP_MAX_SIZE_MB": "0.001"}
    result = run_backup(env, instance)
    assert not result.success
    size_check = next(c for c in result.get_asset_check_evaluations()
                      if c.check_name == "size_within_bounds")
    assert not size_check.passed
    assert "outside BACKUP_MIN_SIZE_MB=0 .. BACKUP_MAX_SIZE_MB=0.001" in size_check.description
    assert old.exists()
    assert not (backup_dir / layout.LAST_SUCCESS_FILE).exists()
    # The rule for a failure after publication: the file keeps its name (it is complete and
    # verified) but nothing records it as a good backup, and status says so.
    [new] = [p for p in archives(backup_dir) if p != old]
    status = collect_status(load_settings(env))
    assert status.newest_archive.name == new.name and status.newest_archive.verified is None
    assert verify_archive(new).ok


def _dagster_job_execute(env: dict[str, str], home: Path) -> subprocess.Popen:
    home.mkdir()
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "job", "execute",
         "-m", "backup_pipeline.definitions", "-j", "backup_job"],
        env={**os.environ, **env, "DAGSTER_HOME": str(home)}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_dagster_job_execute_twice_at_once(backup_env, tmp_path):
    """Two runs at once (by hand while the schedule fires) make two good archives."""
    runs = [_dagster_job_execute(backup_env, tmp_path / f"home{i}") for i in (1, 2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
        assert "RUN_SUCCESS" in output
        assert backup_env["POSTGRES_PASSWORD"] not in output
    found = archives(backup_env["BACKUP_DIR"])
    assert len(found) == 2
    assert all(verify_archive(a).ok for a in found)
    status = json.loads((Path(backup_env["BACKUP_DIR"]) / layout.LAST_BACKUP_FILE).read_text())
    assert status["archive"] in {a.name for a in found}
    # Each run is recorded in its Dagster instance, not a throwaway one.
    for i in (1, 2):
        assert (tmp_path / f"home{i}" / "history" / "runs.db").exists()


def test_dagster_job_execute_rejects_an_invalid_setting(backup_env, tmp_path):
    env = {**backup_env, "BACKUP_TRANSACTION_MONTHS": "three"}
    run = _dagster_job_execute(env, tmp_path / "home")
    output = run.communicate(timeout=120)[0]
    assert run.returncode != 0
    assert "BACKUP_TRANSACTION_MONTHS='three' is not valid" in output
    assert not Path(backup_env["BACKUP_DIR"]).exists()
    shutil.rmtree(tmp_path / "home")


def test_retention_prunes_outbox_emails_with_the_archives(tmp_path):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    old, new = outbox / "old_success.eml", outbox / "new_success.eml"
    old.write_text("old")
    new.write_text("new")
    forty_days = (NOW - timedelta(days=40)).timestamp()
    os.utime(old, (forty_days, forty_days))
    storage = _storage(tmp_path, retention_days=30, outbox_dir=str(outbox))
    storage.apply_retention(newest=_archive_at(tmp_path, 0), now=NOW)
    assert not old.exists() and new.exists()


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path):
    precious = tmp_path / "backups"
    precious.mkdir()
    (precious / "critical_backup_20260101_020000.tar.gz").write_text("real archive")
    done = subprocess.run([BACKUP_PIPELINE, "quickstart", "--dir", str(precious)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to use" in done.stderr
    assert (precious / "critical_backup_20260101_020000.tar.gz").read_text() == "real archive"


def _staged_by(root: Path, run_id: str, locked: bool) -> subprocess.Popen | None:
    """A staging folder and temporary archive as run `run_id` leaves them; with `locked`, a
    live process holds the folder's lock as a running backup does."""
    folder = root / layout.STAGING_DIR / run_id
    folder.mkdir(parents=True)
    (folder / "data.csv").write_bytes(b"x" * 50_000)
    (root / f".critical_backup_20261201_020000.tar.gz.{run_id[:8]}.partial").write_bytes(
        b"y" * 10_000)
    (folder / ".lock").touch()
    if not locked:
        return None
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_leftovers_of_dead_runs_are_removed_and_a_live_runs_kept(tmp_path):
    root = tmp_path / "backups"
    live = _staged_by(root, "aaaaaaaa-live", locked=True)
    try:
        _staged_by(root, "bbbbbbbb-dead", locked=False)
        freed = _storage(root).remove_leftovers()
        assert freed == 60_000
        assert sorted(p.name for p in (root / layout.STAGING_DIR).iterdir()) == ["aaaaaaaa-live"]
        assert [p.name for p in root.glob("*.partial")] == [
            ".critical_backup_20261201_020000.tar.gz.aaaaaaaa.partial"]
    finally:
        live.kill()
        live.wait()
    # Its process gone, the kernel dropped the lock: the next run removes its files too.
    assert _storage(root).remove_leftovers() == 60_000
    assert list((root / layout.STAGING_DIR).iterdir()) == [] and not list(root.glob("*.partial"))


def _without_access(args: list[str], env: dict[str, str], folder: Path
                    ) -> subprocess.CompletedProcess:
    """`args` run by a user who may not enter `folder`. Root reads everything, so as root the
    folder goes to the postgres user and the command runs without the capabilities that
    override file modes; otherwise the folder is made 000."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("as root this needs a postgres OS user to own the folder")
        if shutil.which("setpriv") is None:
            pytest.skip("as root this needs setpriv (util-linux) to drop the DAC capabilities")
        shutil.chown(folder, "postgres")
        args = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--",
                *args]
    else:
        folder.chmod(0)
    try:
        return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60)
    finally:
        if os.geteuid() == 0:
            shutil.chown(folder, 0)
        else:
            folder.chmod(0o700)


def test_a_backup_dir_the_user_cannot_use_is_named_with_its_owner_and_the_fix(tmp_path):
    root = tmp_path / "backups"
    root.mkdir(mode=0o700)
    _archive_at(root, 1)
    env = {"BACKUP_DIR": str(root), "BACKUP_CONFIG_DIR": str(tmp_path)}
    done = _without_access([BACKUP_PIPELINE, "status"], env, root)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"NOT READABLE: BACKUP_DIR {root} cannot be read by uid" in done.stdout
    done = _without_access([BACKUP_PIPELINE, "health-check"], env, root)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"UNHEALTHY: BACKUP_DIR {root} cannot be read by uid" in done.stdout

    code = ("from backup_pipeline.resources.storage import BackupStorage; import sys; "
            "BackupStorage(backup_dir=sys.argv[1]).ensure_root()")
    done = _without_access([sys.executable, "-c", code, str(root)], env, root)
    assert done.returncode == 1
    assert (f"BackupDirAccessError: BACKUP_DIR {root} is not readable and writable by uid"
            in done.stderr), done.stderr
    assert f"chmod 700 {root}" in done.stderr
