"""What several tests do: run the backup through Dagster, read archives, compare databases."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import dagster as dg
import psycopg

from backup_pipeline import layout
from backup_pipeline.definitions import build_defs
from backup_pipeline.run_monitoring import last_heartbeat
from backup_pipeline.settings import load_settings

CRITICAL = ["users", "user_roles", "organizations", "agencies", "referrals", "exchange_rates",
            "system_settings", "roles", "permissions", "role_permissions"]
WINDOWED = ["credit_transactions", "point_transactions", "purchases"]
EXCLUDED = ["sessions", "audit_logs", "app_logs"]
REPO = Path(__file__).resolve().parents[1]
BACKUP_PIPELINE = str(Path(sys.executable).with_name("backup-pipeline"))


def run_backup(env: dict[str, str], instance: dg.DagsterInstance
               ) -> dg.ExecuteInProcessResult:
    """backup_job, as the schedule would run it, through Dagster's own in-process execution."""
    defs = build_defs(load_settings(env))
    return defs.resolve_job_def("backup_job").execute_in_process(
        instance=instance, raise_on_error=False
    )


def write_instance_yaml(home: Path, heartbeat_timeout: int = 9, poll_seconds: int = 2) -> None:
    """The deployment's dagster.yaml, with a dead run declared after seconds, not minutes."""
    text = (REPO / "deploy" / "dagster.yaml").read_text()
    short = (text.replace("heartbeat_timeout_seconds: 180",
                          f"heartbeat_timeout_seconds: {heartbeat_timeout}")
             .replace("poll_interval_seconds: 30", f"poll_interval_seconds: {poll_seconds}"))
    assert short.count(": 180") == text.count(": 180") - 1 and short != text
    (home / "dagster.yaml").write_text(short)


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def blocked_run(env: dict[str, str], home: Path, source_dsn: str, table: str = "users"
                ) -> Iterator[tuple[subprocess.Popen, str]]:
    """A backup run by `dagster job execute`, held in its export by a lock this test holds: a
    run alive, beating and in a known step for as long as the test needs. Yields the process
    (its own process group) and the run id; kills the group on the way out."""
    with psycopg.connect(source_dsn) as lock:
        lock.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        log = (home / "blocked_run.log").open("w")
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
             "backup_pipeline.definitions", "-j", "backup_job"],
            env={**os.environ, **env, "DAGSTER_HOME": str(home),
                 "BACKUP_LOCK_TIMEOUT_SECONDS": "600"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            def beating_and_waiting() -> str | None:
                assert process.poll() is None, (home / "blocked_run.log").read_text()[-3000:]
                runs = instance.get_run_records(
                    filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                waiting = lock.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                    (table,)).fetchone()[0]
                for record in runs:
                    if waiting and last_heartbeat(instance, record.dagster_run.run_id):
                        return record.dagster_run.run_id
                return None

            yield process, wait_for(beating_and_waiting, "the run to wait on the lock", 120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            instance.dispose()
            log.close()


def outbox_messages(env: dict[str, str]) -> list[EmailMessage]:
    """The emails written to the default outbox (BACKUP_DIR/outbox), oldest first."""
    folder = Path(env["BACKUP_DIR"]) / "outbox"
    return [message_from_bytes(p.read_bytes(), policy=policy.default)
            for p in sorted(folder.glob("*.eml"))]


def plain_text(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def archives(backup_dir: str | Path) -> list[Path]:
    return sorted(Path(backup_dir).glob(layout.ARCHIVE_GLOB))


def rewrite_archive(source: Path, target: Path, change=None,
                    extra: list[tarfile.TarInfo] = ()) -> Path:
    """Copy the archive member by member, letting `change(name, data)` alter a file's bytes
    (the manifest is not updated: its checksums still name the original) and adding `extra`."""
    with tarfile.open(source, "r:gz") as old, tarfile.open(target, "w:gz") as new:
        for member in old:
            data = old.extractfile(member).read() if member.isfile() else None
            if data is not None and change:
                data = change(member.name, data)
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
        for info in extra:
            new.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return target


def read_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{name} missing from {archive}"
        return member.read()


def manifest(archive: Path) -> dict:
    return json.loads(read_member(archive, layout.MANIFEST))


def rows(dsn: str, table: str, where: str = "true") -> list[str]:
    """Every row of `table` as text, sorted: content, not just counts."""
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT t::text FROM {table} t WHERE {where} ORDER BY 1")]


def scalar(dsn: str, query: str, params: tuple = ()):
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def procedure_commands(info_text: str) -> list[str]:
    """The `$ ` command lines of BACKUP_INFO.txt's restore procedure, in order."""
    return [m.group(1) for m in re.finditer(r"^\s+\$ (.+)$", info_text, re.MULTILINE)]


def follow_restore_procedure(archive: Path, workdir: Path, pg_env: dict[str, str],
                             restore_db: str, project_dir: Path) -> subprocess.CompletedProcess:
    """Run BACKUP_INFO.txt's commands literally with bash; step 1's exports come from us."""
    info = read_member(archive, layout.BACKUP_INFO).decode()
    commands = [c for c in procedure_commands(info) if not c.startswith("export ")]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / archive.name).write_bytes(archive.read_bytes())
    env = {
        **os.environ,
        "ARCHIVE": archive.name,
        "PGHOST": pg_env["POSTGRES_HOST"],
        "PGPORT": pg_env["POSTGRES_PORT"],
        "PGUSER": pg_env["POSTGRES_USER"],
        "PGPASSWORD": pg_env["POSTGRES_PASSWORD"],
        "RESTORE_DB": restore_db,
        "PROJECT_DIR": str(project_dir),
    }
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode == 0:  # the procedure's checks of the scripts passed, as they must
        assert "OK: database/_restore.psql only includes" in done.stdout, done.stdout
        assert "OK: no psql commands or COPY" in done.stdout, done.stdout
    return done


def script_checks(info_text: str) -> list[str]:
    """The procedure's two checks of the scripts before psql runs them (grep, then awk)."""
    return [c for c in procedure_commands(info_text) if c.startswith(("grep -nvE", "awk "))]


# The schema as PostgreSQL holds it, object by object, for comparing a restored database with
# its source: tables with their kind and owner, privileges, constraints (and whether valid),
# indexes, partitions with their bounds, triggers, rules, policies, row-level security, views,
# functions and sequence positions.
_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') " \
                "AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
CATALOG_QUERIES = {
    "relations": f"""SELECT format('%s.%s %s owner=%s acl=%s rls=%s/%s', n.nspname, c.relname,
                            c.relkind, pg_get_userbyid(c.relowner), c.relacl,
                            c.relrowsecurity, c.relforcerowsecurity)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND {_USER_SCHEMAS}""",
    "constraints": f"""SELECT format('%s %s %s valid=%s deferrable=%s %s', c.relname, con.conname,
                              con.contype, con.convalidated, con.condeferrable,
                              pg_get_constraintdef(con.oid))
                       FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
                       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}""",
    "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname NOT IN "
               "('pg_catalog', 'information_schema')",
    "partitions": """SELECT format('%s of %s %s', inhrelid::regclass, inhparent::regclass,
                            pg_get_expr(c.relpartbound, c.oid))
                     FROM pg_inherits JOIN pg_class c ON c.oid = inhrelid""",
    "triggers": "SELECT format('%s %s %s', tgrelid::regclass, tgname, tgenabled) "
                "FROM pg_trigger WHERE NOT tgisinternal",
    "rules": "SELECT format('%s %s', rulename, definition) FROM pg_rules "
             "WHERE schemaname NOT IN ('pg_catalog')",
    "policies": "SELECT format('%s %s %s %s %s', tablename, policyname, roles, cmd, qual) "
                "FROM pg_policies",
    "functions": f"""SELECT format('%s.%s(%s) owner=%s acl=%s', n.nspname, p.proname,
                            pg_get_function_arguments(p.oid), pg_get_userbyid(p.proowner),
                            p.proacl)
                     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE {_USER_SCHEMAS}""",
    "schemas": f"""SELECT format('%s owner=%s acl=%s', n.nspname, pg_get_userbyid(n.nspowner),
                          n.nspacl) FROM pg_namespace n WHERE {_USER_SCHEMAS}""",
    "sequences": "SELECT format('%s.%s %s', schemaname, sequencename, last_value) "
                 "FROM pg_sequences",
}


def catalog(dsn: str) -> dict[str, list[str]]:
    """Each kind of object of the database as sorted lines (see CATALOG_QUERIES)."""
    with psycopg.connect(dsn) as conn:
        return {kind: sorted(row[0] for row in conn.execute(query))
                for kind, query in CATALOG_QUERIES.items()}


def assert_same_catalog(restored: str, source: str) -> None:
    got, want = catalog(restored), catalog(source)
    for kind in CATALOG_QUERIES:
        assert got[kind] == want[kind], (kind, sorted(set(got[kind]) ^ set(want[kind]))[:10])


def table_json(table: str, kind: str, path: str, rows: int = 0) -> dict:
    """A manifest's table entry, as the pipeline writes one."""
    entry = {"table": table, "kind": kind, "path": path, "rows": rows, "columns": ["id"],
             "partitioned": False, "order": [{"column": "id", "collatable": False}]}
    if kind == "transactions":
        entry.update(rows_in_window=rows, rows_referenced_before_window=0,
                     timestamp_column="created_at")
    return entry


def manifest_json(tables: list[dict] | None = None, files: list[dict] | None = None,
                  **changes: object) -> bytes:
    """A whole manifest.json the pipeline would accept, for crafted archives."""
    manifest = {
        "format": layout.MANIFEST_FORMAT, "archive_name": "critical_backup_20260101_000000.tar.gz",
        "created_at": "2026-01-01T00:00:00+00:00",
        "database": {"host": "db", "port": 5432, "name": "app", "user": "backup"},
        "server_version": "15.4", "pg_dump_version": "pg_dump (PostgreSQL) 15.4",
        "snapshot_id": "00000003-00000002-1", "snapshot_taken_at": "2026-01-01T00:00:00+00:00",
        "window": {"months": 3, "cutoff": "2025-10-01T00:00:00+00:00"},
        "tables": tables or [], "config": {"config_dir": "/config", "included": [],
                                           "missing": []},
        "versions": {}, "files": files or [], **changes}
    return json.dumps(manifest).encode()


def backup_job_from_environment() -> dg.JobDefinition:
    """backup_job as the code location builds it from the process environment: reconstructable
    (dg.reconstructable), for runs Dagster must be able to rebuild, such as re-executions."""
    return build_defs(load_settings()).resolve_job_def("backup_job")


def age_key(folder: Path, name: str = "key.txt") -> tuple[Path, str]:
    """A real age key pair made by age-keygen: the identity file and its public key."""
    path = folder / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                            text=True).stdout.strip()
    return path, public


def ssh_key(folder: Path, name: str = "signing_key") -> Path:
    """A real Ed25519 key pair made by ssh-keygen (no passphrase): the private key's path."""
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def signed_copy(archive: Path, key: Path, target: Path) -> Path:
    """`archive` with manifest.json.sig added after its manifest, signed with `key`, as the
    pipeline writes it with BACKUP_SIGNING_KEY_FILE."""
    from backup_pipeline.signing import SIGNATURE_MEMBER, SigningKey

    signature = SigningKey.from_file(key).sign(read_member(archive, layout.MANIFEST))
    info = tarfile.TarInfo(SIGNATURE_MEMBER)
    info.size = len(signature)
    with tarfile.open(archive, "r:gz") as old, tarfile.open(target, "w:gz") as new:
        for member in old:
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
            if member.name == layout.MANIFEST:
                new.addfile(info, io.BytesIO(signature))
    return target
