"""A throwaway local PostgreSQL server for the quickstart, the tests and the benchmark.

PostgreSQL refuses to run as root, and CI runs as root: the cluster is then created and started
as the unprivileged `postgres` user (`runuser -u postgres -- initdb/pg_ctl`) in a temporary folder
that user owns. It listens on 127.0.0.1 on a free port, requires a password (so the pipeline is
exercised with password authentication, passed through the environment), and is removed on stop.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"


class ClusterError(RuntimeError):
    pass


def server_bindir() -> Path:
    """The directory holding initdb and pg_ctl: `pg_config --bindir`, else the newest Debian one."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                    reverse=True)
    candidates += debian
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise ClusterError(
        "PostgreSQL server programs (initdb, pg_ctl) were not found: install them, e.g. "
        "`apt-get install postgresql-15`, or set BACKUP_TEST_DSN to an existing server."
    )


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalCluster:
    base: Path
    port: int
    password: str
    user: str = "postgres"
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

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
        if self.data_dir.exists():
            _as_server_user([str(server_bindir() / "pg_ctl"), "-D", str(self.data_dir),
                             "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def _as_server_user(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout}")
    return result


def start_cluster(base: Path | None = None, settings: dict[str, str] | None = None
                  ) -> LocalCluster:
    """initdb and start a private server (with extra server `settings`); the caller stops it."""
    bindir = server_bindir()
    base = Path(base or tempfile.mkdtemp(prefix="backup_pipeline_pg_"))
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        try:
            server = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise ClusterError(
                f"running as root, PostgreSQL needs an unprivileged user {SERVER_USER!r} to run "
                f"as: install the postgresql package (it creates one) or run as a normal user."
            ) from None
        os.chown(base, server.pw_uid, server.pw_gid)
    os.chmod(base, 0o700)
    password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        os.chown(pwfile, server.pw_uid, server.pw_gid)
    cluster = LocalCluster(base=base, port=free_port(), password=password)
    _as_server_user([str(bindir / "initdb"), "-D", str(cluster.data_dir), "-U", "postgres",
                     "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                     "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C"])
    pwfile.unlink()
    options = (f"-c port={cluster.port} -c listen_addresses=127.0.0.1 "
               f"-c unix_socket_directories={base} -c fsync=off -c full_page_writes=off "
               f"-c synchronous_commit=off -c max_connections=50")
    options += "".join(f" -c {name}={value}" for name, value in (settings or {}).items())
    _as_server_user([str(bindir / "pg_ctl"), "-D", str(cluster.data_dir), "-l",
                     str(base / "server.log"), "-o", options, "-w", "-t", "60", "start"])
    return cluster


def _has_c_utf8() -> bool:
    out = subprocess.run(["locale", "-a"], capture_output=True, text=True)
    return any(loc.lower() in ("c.utf8", "c.utf-8") for loc in out.stdout.split())
