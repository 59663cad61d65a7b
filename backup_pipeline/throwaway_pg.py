"""A throwaway PostgreSQL: for the backup's restore proof, the quickstart, the tests, the benchmark.

Every backup proves its archive by restoring it into a private server it starts itself, so that
server must never be left behind. PostgreSQL refuses to run as root, and CI runs as root: the
cluster is then created and run as the unprivileged `postgres` user in a temporary folder that
user owns. It listens on 127.0.0.1 on a free port, requires a password (so clients are exercised
with password authentication) and is removed on stop.

Two ways to run it:
- `die_with_parent=True` (the restore proof): the postmaster is our direct child, armed with the
  Linux parent-death signal SIGQUIT (immediate shutdown), so it ends with the process that
  started it, even one killed with SIGKILL.
- `die_with_parent=False` (the quickstart's --keep-server): a `pg_ctl start` daemon that outlives
  the command that started it.
Either way `initdb` gets SIGKILL if we die while it runs: a half-made folder is the sweep's.

Each folder holds an `owner.json` naming the process that started it, so `sweep_leftovers` can
remove what a killed process left without ever touching the folder of a live one.

No Dagster here: the CLI, the tests and the pipeline's resources all call this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_pipeline.files import make_private_dirs, open_private, write_private_text

SERVER_USER = "postgres"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
DATA_DIR = "data"
LOG_FILE = "server.log"
OWNER_FILE = "owner.json"
READY_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ClusterError(RuntimeError):
    """The throwaway server could not be found, created or started; the message says why."""


@functools.cache
def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if not pg_config:
        return None
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
    return Path(out.stdout.strip()) if out.returncode == 0 else None


@functools.cache
def _server_major(bindir: Path) -> int | None:
    """The major version of `bindir/postgres`, asked once: every cluster start looks it up."""
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"],
                             capture_output=True, text=True)
    except OSError:
        return None
    found = re.search(r"\(PostgreSQL\) (\d+)", out.stdout)
    return int(found.group(1)) if found else None


def _candidate_bindirs(major: int | None) -> list[Path]:
    """Folders holding initdb, pg_ctl and postgres, most preferred first, each once."""
    debian = sorted((p for p in DEBIAN_ROOT.glob("*/bin") if p.parent.name.isdigit()),
                    key=lambda p: int(p.parent.name), reverse=True)
    pg_config, initdb = _pg_config_bindir(), shutil.which("initdb")
    candidates = [DEBIAN_ROOT / str(major) / "bin"] if major is not None else []
    candidates += [pg_config] if pg_config else []
    candidates += debian
    candidates += [Path(initdb).resolve().parent] if initdb else []
    found: list[Path] = []
    for candidate in candidates:
        complete = all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
        if complete and candidate.resolve() not in found:
            found.append(candidate.resolve())
    return found


def server_bindir(major: int | None = None) -> Path:
    """The folder holding initdb, pg_ctl and postgres.

    With `major`, that major when it is installed, else the lowest newer one: a dump restores
    into a newer server, not into an older one. Without, the first of `pg_config --bindir`, the
    newest Debian major and PATH.
    """
    candidates = _candidate_bindirs(major)
    if major is None:
        if candidates:
            return candidates[0]
        raise ClusterError(
            "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found in "
            f"`pg_config --bindir`, {DEBIAN_ROOT}/*/bin or PATH: install them "
            "(Debian: apt-get install postgresql)."
        )
    by_major: dict[int, Path] = {}
    for bindir in candidates:
        found = _server_major(bindir)
        if found is not None:
            by_major.setdefault(found, bindir)
    usable = sorted(found for found in by_major if found >= major)
    if usable:
        return by_major[usable[0]]
    installed = ", ".join(f"{found} in {path}" for found, path in sorted(by_major.items()))
    raise ClusterError(
        f"PostgreSQL {major} (or newer) server programs (initdb, pg_ctl, postgres) were not found "
        f"in {DEBIAN_ROOT}/{major}/bin, `pg_config --bindir` or PATH (installed: "
        f"{installed or 'none'}): install the PostgreSQL {major} server programs "
        f"(Debian: apt-get install postgresql-{major})."
    )


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    """A running throwaway server; `stop()` ends it and removes its folder."""

    base: Path
    port: int
    password: str = field(repr=False)
    bindir: Path
    user: str = "postgres"
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base / DATA_DIR

    @property
    def major(self) -> int | None:
        """The server's major version (the one asked for, or a newer one)."""
        return _server_major(self.bindir)

    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host={self.host} port={self.port} user={self.user} "
                f"password={self.password} dbname={dbname}")

    def env(self, dbname: str) -> dict[str, str]:
        """The seeds' POSTGRES_* variables pointing at this cluster."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DB": dbname,
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
        }

    def stop(self) -> None:
        """Immediate shutdown (the data is thrown away anyway), then remove the folder."""
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        elif self.data_dir.exists():
            _run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                  "stop"], _server_account(), check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def _server_account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterError(
            f"running as root, PostgreSQL needs an unprivileged user {SERVER_USER!r} to run "
            f"as: install the postgresql package (it creates one) or run as a normal user."
        ) from None


def _as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen arguments switching the child to `account`: CPython does it before preexec_fn."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(command: list[str], account: pwd.struct_passwd | None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, cwd="/",
                            **_as_account(account))
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout}")
    return result


def _log_tail(cluster: LocalCluster, lines: int = 20) -> str:
    """The end of the server log, for an error message: the folder is removed right after."""
    try:
        text = (cluster.base / LOG_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return "\nlast lines of the server log:\n" + "".join(text.splitlines(keepends=True)[-lines:])


@functools.cache
def _has_c_utf8() -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True)
    return any(loc.lower() in ("c.utf8", "c.utf-8") for loc in out.stdout.split())


def _process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), None if it is gone or a zombie.

    With the pid it names one process: a pid reused by a later process has another start time.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _write_owner(base: Path) -> None:
    pid = os.getpid()
    write_private_text(base / OWNER_FILE,
                       json.dumps({"pid": pid, "start_time": _process_start(pid)}))


def _owner_alive(base: Path) -> bool | None:
    """Whether the process that started the cluster in `base` still runs; None if unknown."""
    try:
        owner = json.loads((base / OWNER_FILE).read_text())
        pid, start_time = int(owner["pid"]), int(owner["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _process_start(pid) == start_time


def _initdb(cluster: LocalCluster, account: pwd.struct_passwd | None) -> None:
    """Create the data folder; the password goes through a file, never through argv."""
    pwfile = cluster.base / "pwfile"
    write_private_text(pwfile, cluster.password + "\n")
    if account is not None:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    command = [str(cluster.bindir / "initdb"), "-D", str(cluster.data_dir), "-U", cluster.user,
               "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
               "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"]
    try:
        # initdb ignores SIGPIPE: orphaned, it would go on for seconds, starting server
        # processes in the folder the next run's sweep removes. SIGKILL ends it at once.
        initdb = _spawn_dying_with_us(command, account, signal.SIGKILL, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = initdb.communicate()
        except BaseException:  # interrupted: initdb must not outlive the folder it writes
            initdb.kill()
            initdb.wait()
            raise
    finally:
        pwfile.unlink()
    if initdb.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed (exit {initdb.returncode}): "
                           f"{err.strip() or out}")


def _start_daemon(cluster: LocalCluster, settings: dict[str, str],
                  account: pwd.struct_passwd | None) -> None:
    options = "".join(f" -c {name}={value}" for name, value in settings.items())
    result = _run([str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data_dir),
                   "-l", str(cluster.base / LOG_FILE), "-o", options,
                   "-w", "-t", str(READY_TIMEOUT_SECONDS), "start"], account, check=False)
    if result.returncode != 0:
        raise ClusterError(f"pg_ctl start failed for {cluster.data_dir}: "
                           f"{result.stderr.strip() or result.stdout.strip()}{_log_tail(cluster)}")


@functools.cache
def _spawner(pid: int) -> ThreadPoolExecutor:
    """This process's one long-lived thread to fork initdb and postmasters from (see
    `_spawn_dying_with_us`).

    Keyed by pid: a forked child inherits the executor but not its thread.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="throwaway_pg")


def _spawn_dying_with_us(command: list[str], account: pwd.struct_passwd | None,
                         death_signal: signal.Signals, **popen: Any) -> subprocess.Popen[Any]:
    """Start `command` as our child, armed to get `death_signal` when this process dies.

    Two kernel rules shape this. The death signal is sent when the *thread* that forked the
    child ends, not the process: the fork happens on a thread that lives as long as the process.
    The signal is cleared when the child's credentials change: it is armed in preexec_fn, which
    CPython runs after Popen's user=/group= switch (runuser would switch after it and clear it).
    """
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(death_signal)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)  # the parent died before the signal was armed: nobody would stop us

    return _spawner(parent).submit(subprocess.Popen, command, cwd="/",
                                   preexec_fn=die_with_parent, **_as_account(account),
                                   **popen).result()


def _spawn_postmaster(cluster: LocalCluster, settings: dict[str, str],
                      account: pwd.struct_passwd | None) -> subprocess.Popen[bytes]:
    """Start `postgres` as our child: SIGQUIT (immediate shutdown) when we die."""
    command = [str(cluster.bindir / "postgres"), "-D", str(cluster.data_dir)]
    for name, value in settings.items():
        command += ["-c", f"{name}={value}"]
    with open_private(cluster.base / LOG_FILE, append=True) as log:
        return _spawn_dying_with_us(command, account, signal.SIGQUIT, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)


def _wait_until_ready(cluster: LocalCluster, process: subprocess.Popen[bytes]) -> None:
    probe = [str(cluster.bindir / "pg_isready"), "-q", "-h", cluster.host,
             "-p", str(cluster.port), "-t", "1"]
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while subprocess.run(probe).returncode != 0:
        if process.poll() is not None:
            raise ClusterError(f"postgres in {cluster.data_dir} exited with status "
                               f"{process.returncode} while starting{_log_tail(cluster)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"postgres in {cluster.data_dir} did not accept connections "
                               f"within {READY_TIMEOUT_SECONDS} s{_log_tail(cluster)}")
        time.sleep(0.05)


def start_cluster(base: Path | None = None, settings: dict[str, str] | None = None, *,
                  major: int | None = None, die_with_parent: bool = False,
                  prefix: str = "backup_pipeline_pg_") -> LocalCluster:
    """initdb and start a private server (with extra server `settings`); the caller stops it.

    `major` picks the server programs as `server_bindir` does. `die_with_parent` ties the
    server's life to this process; without it the server is a daemon that outlives it.
    """
    bindir = server_bindir(major)
    account = _server_account()
    base = Path(base or tempfile.mkdtemp(prefix=prefix))
    make_private_dirs(base)
    _write_owner(base)
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    base.chmod(0o700)
    cluster = LocalCluster(base=base, port=free_port(), password=secrets.token_hex(16),
                           bindir=bindir)
    server_settings = {
        "port": str(cluster.port), "listen_addresses": cluster.host,
        "unix_socket_directories": str(base), "fsync": "off", "full_page_writes": "off",
        "synchronous_commit": "off", "max_connections": "50", **(settings or {}),
    }
    try:
        _initdb(cluster, account)
        if die_with_parent:
            cluster.process = _spawn_postmaster(cluster, server_settings, account)
            _wait_until_ready(cluster, cluster.process)
        else:
            _start_daemon(cluster, server_settings, account)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _stop_leftover_server(data_dir: Path) -> None:
    """Best effort: a pg_ctl daemon outlives its owner; a die_with_parent server is gone already."""
    if not (data_dir / "postmaster.pid").exists():
        return
    with contextlib.suppress(OSError, ValueError, ClusterError):
        bindir = server_bindir(int((data_dir / "PG_VERSION").read_text()))
        _run([str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"],
             _server_account(), check=False)


def sweep_leftovers(prefix: str, older_than_seconds: float = 0) -> list[Path]:
    """Remove the cluster folders `<prefix>*` in the temp folder whose owner process is gone.

    A killed backup leaves its folder behind (and, for a pg_ctl daemon, a running server): a
    later one cleans it. Left alone: folders of a live owner, folders without a readable
    owner.json (one may be being created right now), and anything this user did not create
    (the temp folder is world-writable). Returns the folders removed.
    """
    account = _server_account()
    ours = {os.geteuid(), *([account.pw_uid] if account else [])}
    cutoff = time.time() - older_than_seconds
    removed = []
    for base in sorted(Path(tempfile.gettempdir()).iterdir()):
        if not base.name.startswith(prefix):
            continue
        try:
            info = base.lstat()
        except FileNotFoundError:  # another sweep was quicker
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in ours or info.st_mtime > cutoff:
            continue
        if _owner_alive(base) is not False:
            continue
        _stop_leftover_server(base / DATA_DIR)
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed
