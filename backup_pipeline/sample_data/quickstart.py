"""The README's first command: a real backup, end to end, on a throwaway sample database.

It starts a private PostgreSQL, loads the sample Smart AI Hub data, writes sample config files,
and runs `dg launch --job backup_job` exactly as an administrator would, with the seeds' environment
variables pointing at all of it. Everything lives under one folder (`.demo/` by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg

from backup_pipeline import layout
from backup_pipeline.files import make_private_dirs, open_private, write_private_text
from backup_pipeline.sample_data.generate import create_schema, load_sample_data
from backup_pipeline.throwaway_pg import start_cluster
from backup_pipeline.verify import verify_archive

SAMPLE_CONFIG = {
    ".env.production": "POSTGRES_PASSWORD=change-me\nSMTP_HOST=smtp.example.com\n",
    "docker-compose.prod.yml": "services:\n  api:\n    image: smart-ai-hub/api:latest\n",
    "nginx.prod.conf": "server {\n  listen 443 ssl;\n  server_name hub.example.com;\n}\n",
    "ssl/cert.pem": "-----BEGIN CERTIFICATE-----\n(sample)\n-----END CERTIFICATE-----\n",
    "ssl/key.pem": "-----BEGIN PRIVATE KEY-----\n(sample)\n-----END PRIVATE KEY-----\n",
}


def _write_config(folder: Path) -> None:
    for name, text in SAMPLE_CONFIG.items():
        path = folder / name
        make_private_dirs(path.parent)
        write_private_text(path, text)


# Set in the demo's environment, each with the reason demo.env states above it.
DEMO_SETTINGS = {
    "BACKUP_MIN_SIZE_MB": (
        "0", "The size check guards a production database against an archive that shrank "
             "suspiciously; the sample data at a small --scale makes a real archive under the "
             "default 1 MB, which is not a fault. Set your own bound for your database."),
}


# The demo's Dagster instance: SQLite in its DAGSTER_HOME (no database of its own to set up),
# the deployment's queue and dead-run monitoring, and no telemetry.
DEMO_INSTANCE = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 1
run_launcher:
  module: backup_pipeline.run_monitoring
  class: HeartbeatRunLauncher
  config:
    heartbeat_timeout_seconds: 180
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  max_resume_run_attempts: 0
telemetry:
  enabled: false
"""


def demo_env(cluster_env: dict[str, str], workdir: Path) -> dict[str, str]:
    """The seeds' variables for the demo: the sample server, everything under `workdir`, and
    DEMO_SETTINGS, so the demo succeeds at any --scale."""
    return {
        **cluster_env,
        "BACKUP_DIR": str(workdir / "backups"),
        "BACKUP_CONFIG_DIR": str(workdir / "config"),
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        "ADMIN_EMAILS": "admin@example.com",
        **{name: value for name, (value, _) in DEMO_SETTINGS.items()},
    }


def env_file_text(env: dict[str, str]) -> str:
    """demo.env: one NAME=value a line, for `set -a; . demo.env`, with a comment above each
    demo-only setting saying why it is there."""
    lines = []
    for name, value in env.items():
        if name in DEMO_SETTINGS:
            lines += [f"# {line}" for line in textwrap.wrap(DEMO_SETTINGS[name][1], 96)]
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def project_folder() -> Path | None:
    """The clone this package runs from, when it is one (pyproject.toml with [tool.dg]): where
    `dg` finds the project. None for an installed package: `dagster` then."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    return root if pyproject.is_file() and "[tool.dg]" in pyproject.read_text() else None


def ui_command(env_file: Path, project: Path | None) -> str:
    """The shell line that opens the UI on the demo's instance, without a warning: from the
    project folder, which holds no dagster.yaml of its own (the stack's is in deploy/)."""
    env = f"set -a && . {env_file} && set +a"
    if project:
        return f"cd {project} && {env} && {Path(sys.executable).with_name('dg')} dev"
    dagster = Path(sys.executable).with_name("dagster")
    return f"{env} && {dagster} dev -m backup_pipeline.definitions"


def run_quickstart(workdir: Path, scale: float, keep_server: bool) -> int:
    workdir = workdir.resolve()
    if workdir.exists():
        if any(workdir.iterdir()) and not (workdir / "demo.env").exists():
            print(f"refusing to use {workdir}: it is not empty and not an earlier quickstart "
                  f"folder (no demo.env); pick another --dir", file=sys.stderr)
            return 2
        shutil.rmtree(workdir)
    make_private_dirs(workdir)
    print("1/4 starting a throwaway PostgreSQL", flush=True)
    # In a temporary folder, not under workdir: when running as root the server runs as the
    # postgres user, who may not be allowed into the clone's folder (e.g. under /root).
    cluster = start_cluster()
    try:
        print(f"2/4 loading the sample Smart AI Hub data (scale {scale:g})", flush=True)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE smart_ai_hub")
        with psycopg.connect(cluster.dsn("smart_ai_hub"), autocommit=True) as conn:
            create_schema(conn)
            counts = load_sample_data(conn, scale=scale)
        print(f"    {sum(counts.values()):,} rows", flush=True)
        _write_config(workdir / "config")
        env = demo_env(cluster.env("smart_ai_hub"), workdir)
        home = Path(env["DAGSTER_HOME"])
        home.mkdir(mode=0o700)
        write_private_text(home / "dagster.yaml", DEMO_INSTANCE)
        env_file = workdir / "demo.env"
        write_private_text(env_file, env_file_text(env))
        project = project_folder()
        launch = (["dg", "launch", "--job", "backup_job"] if project else
                  ["dagster", "job", "execute", "-m", "backup_pipeline.definitions", "-j",
                   "backup_job"])
        print(f"3/4 running: {' '.join(launch)}", flush=True)
        log = workdir / "backup_run.log"
        with open_private(log) as handle:
            result = subprocess.run(
                [str(Path(sys.executable).with_name(launch[0])), *launch[1:]],
                env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT,
                cwd=project or workdir,
            )
        if result.returncode != 0:
            print(f"the backup run FAILED (exit {result.returncode}); its log: {log}")
            print("".join(log.read_text().splitlines(keepends=True)[-30:]))
            return result.returncode
        found = sorted((workdir / "backups").glob(layout.ARCHIVE_GLOB))
        archive = found[-1]
        report = verify_archive(archive)
        print(f"4/4 verified: {report.summary()}")
        proof = json.loads((workdir / "backups" / layout.LAST_BACKUP_FILE).read_text()
                           )["restore_proof"]
        print(f"    restore proof: restored into {proof['target']} and compared with the "
              f"archive, table by table, in {proof['seconds']:.1f} s")
        print(f"\nArchive:  {archive} ({layout.size_text(archive.stat().st_size)})")
        print(f"Run log:  {log}")
        outbox = workdir / "backups" / "outbox"
        for eml in sorted(outbox.glob("*.eml")):
            print(f"Email:    {eml}  (no SMTP_HOST: written to the local outbox)")
        print(f"Inside:   tar -tzf {archive}   and   tar -xzOf {archive} BACKUP_INFO.txt")
        print("\nOpen the Dagster UI on this run (then http://127.0.0.1:3000):")
        print(f"  {ui_command(env_file, project)}")
        if keep_server:
            print(f"\nThe sample PostgreSQL keeps running on 127.0.0.1:{cluster.port}; stop it "
                  f"with: runuser -u postgres -- pg_ctl -D {cluster.data_dir} stop  "
                  f"(without runuser when not root)")
        else:
            print("(the sample PostgreSQL is stopped now; pass --keep-server to keep it for "
                  "materializing again from the UI)")
        return 0
    finally:
        if not keep_server:
            cluster.stop()
