"""The throwaway PostgreSQL: it answers, dies with its parent, and a killed owner's folder is swept.

Real servers and real processes: the restore proof relies on the kernel's parent-death signal,
which only a real SIGKILL shows.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from backup_pipeline.throwaway_pg import (
    ClusterError,
    LocalCluster,
    server_bindir,
    start_cluster,
    sweep_leftovers,
)

REPO = Path(__file__).resolve().parents[1]
DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")

CHILD = """
import time
from backup_pipeline.throwaway_pg import start_cluster
cluster = start_cluster(die_with_parent={die_with_parent}, prefix={prefix!r})
print(cluster.base, cluster.data_dir, flush=True)
time.sleep(600)
"""


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def processes_in(data_dir: Path) -> list[int]:
    """Processes of the server in `data_dir`: the postmaster names it, its children run in it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline, cwd = (proc / "cmdline").read_bytes(), os.readlink(proc / "cwd")
        except OSError:
            continue
        if os.fsencode(data_dir) in cmdline or cwd == str(data_dir):
            found.append(int(proc.name))
    return found


def major_of(bindir: Path) -> int:
    out = subprocess.run([bindir / "postgres", "--version"], capture_output=True, text=True)
    return int(re.search(r"\(PostgreSQL\) (\d+)", out.stdout).group(1))


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    """A prefix no other test run uses, so sweeping never reaches anyone else's folders."""
    prefix = f"bp_test_throwaway_{uuid.uuid4().hex[:8]}_"
    yield prefix
    for leftover in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@pytest.fixture(scope="module")
def own_cluster(prefix: str) -> Iterator[LocalCluster]:
    """A server this test process owns, under the same prefix as the ones that get swept."""
    cluster = start_cluster(die_with_parent=True, prefix=prefix)
    yield cluster
    cluster.stop()


def test_cluster_answers_with_its_password_only(own_cluster: LocalCluster) -> None:
    with psycopg.connect(own_cluster.dsn()) as conn:
        row = conn.execute("SELECT current_setting('fsync'), current_setting('listen_addresses'),"
                           " current_setting('password_encryption')").fetchone()
    assert row == ("off", "127.0.0.1", "scram-sha-256")
    wrong = own_cluster.dsn().replace(own_cluster.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server user switch happens only as root")
def test_server_runs_as_the_postgres_user_when_root(own_cluster: LocalCluster) -> None:
    assert own_cluster.process is not None
    owner = Path(f"/proc/{own_cluster.process.pid}").stat().st_uid
    assert owner == pwd.getpwnam("postgres").pw_uid


def test_cluster_outlives_the_thread_that_started_it_and_stop_removes_it(prefix: str) -> None:
    # The parent-death signal fires when the forking *thread* ends: a server started from a
    # short-lived worker thread must still be there after that thread is gone.
    started: list[LocalCluster] = []
    worker = threading.Thread(
        target=lambda: started.append(start_cluster(die_with_parent=True, prefix=prefix)))
    worker.start()
    worker.join()
    [cluster] = started
    try:
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop()
    assert not cluster.base.exists()
    assert cluster.process is not None and cluster.process.returncode is not None
    assert wait_for(lambda: not processes_in(cluster.data_dir), seconds=5)


@pytest.mark.parametrize("die_with_parent", [True, False], ids=["die_with_parent", "daemon"])
def test_killed_owner_leaves_no_server_and_its_folder_is_swept(
        prefix: str, own_cluster: LocalCluster, die_with_parent: bool) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(die_with_parent=die_with_parent, prefix=prefix)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child did not start its cluster within 60 s"
        base, data_dir = (Path(part) for part in child.stdout.readline().split())
        assert processes_in(data_dir)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    if die_with_parent:
        assert wait_for(lambda: not processes_in(data_dir)), "the server outlived its owner"
    else:
        assert processes_in(data_dir), "a pg_ctl daemon is meant to outlive its owner"
    assert sweep_leftovers(prefix) == [base]
    assert not base.exists()
    assert wait_for(lambda: not processes_in(data_dir), seconds=5)
    assert own_cluster.base.exists(), "the live owner's folder was swept"
    with psycopg.connect(own_cluster.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _bootstrapping(prefix: str) -> Path | None:
    """The data folder under `prefix` whose initdb is in its bootstrap step, if any."""
    for data_dir in Path(tempfile.gettempdir()).glob(f"{prefix}*/data"):
        for pid in processes_in(data_dir):
            try:
                if b"--boot" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                    return data_dir
            except OSError:
                continue
    return None


def test_an_owner_killed_during_initdb_takes_initdb_with_it() -> None:
    # initdb ignores SIGPIPE: orphaned, it would finish on its own, starting servers in a
    # folder the next sweep removes. Killed in its bootstrap step, it must never get as far
    # as the `postgres` database (base/5).
    prefix = f"bp_test_initdb_{uuid.uuid4().hex[:8]}_"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(die_with_parent=True, prefix=prefix)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (data_dir := _bootstrapping(prefix)) is None and child.poll() is None:
            assert time.monotonic() < deadline, "initdb's bootstrap step was never seen"
            time.sleep(0.005)
        assert data_dir is not None, "the child ended before its initdb was seen"
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert wait_for(lambda: not processes_in(data_dir), seconds=20), \
            "initdb or its server processes outlived their owner"
        time.sleep(1)  # an orphaned initdb would start its next step's server by now
        assert processes_in(data_dir) == []
        assert not (data_dir / "base" / "5").exists(), "initdb went on after its owner died"
        assert sweep_leftovers(prefix) == [data_dir.parent]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for leftover in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def test_sweep_tells_a_reused_pid_from_the_owner_and_skips_unknown_owners(
        prefix: str, own_cluster: LocalCluster) -> None:
    owner = json.loads((own_cluster.base / "owner.json").read_text())
    reused = Path(tempfile.mkdtemp(prefix=prefix))
    (reused / "owner.json").write_text(json.dumps({**owner, "start_time": owner["start_time"] - 1}))
    unknown = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        assert sweep_leftovers(prefix) == [reused]
        assert unknown.exists() and own_cluster.base.exists()
    finally:
        shutil.rmtree(reused, ignore_errors=True)
        shutil.rmtree(unknown)


def test_sweep_spares_folders_younger_than_asked(prefix: str) -> None:
    gone = Path(tempfile.mkdtemp(prefix=prefix))
    (gone / "owner.json").write_text(json.dumps({"pid": os.getpid(), "start_time": -1}))
    try:
        assert sweep_leftovers(prefix, older_than_seconds=3600) == []
        assert sweep_leftovers(prefix) == [gone]
    finally:
        shutil.rmtree(gone, ignore_errors=True)


@pytest.mark.skipif(not DEBIAN_15.is_dir(), reason="needs Debian's PostgreSQL 15 server")
def test_server_bindir_finds_the_major_asked_for() -> None:
    assert server_bindir(15) == DEBIAN_15


def test_server_bindir_falls_back_to_a_newer_major_only() -> None:
    assert major_of(server_bindir(12)) > 12
    with pytest.raises(ClusterError, match=r"PostgreSQL 99 .*postgresql-99"):
        server_bindir(99)
