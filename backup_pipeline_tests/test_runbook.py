"""The runbook's restore procedures, run as written: every ```bash block of each procedure of
BACKUP_OPERATIONS.md (and BACKUP_SYSTEM.md's summary), with only its placeholders replaced by
this test's server, archive and folders. A step that stops working, or a command that drifts
from what the program accepts, fails here before an administrator meets it on the worst night.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml

from backup_pipeline import layout
from backup_pipeline.throwaway_pg import LocalCluster, start_cluster
from backup_pipeline_tests.conftest import Server, drop_database, new_database, sample_env
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    REPO,
    age_key,
    archives,
    manifest,
    procedure_commands,
    read_member,
    rows,
    run_backup,
    scalar,
    signed_copy,
    ssh_key,
)

DOCS = REPO / "docs"
PATH = f"{Path(BACKUP_PIPELINE).parent}:{os.environ['PATH']}"
ARCHIVE_PLACEHOLDER = "critical_backup_YYYYMMDD_HHMMSS.tar.gz"


def section(doc: str, heading: str) -> str:
    text = (DOCS / doc).read_text()
    assert f"### {heading}\n" in text, f"{doc} lost its section {heading!r}"
    return text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


def blocks(doc: str, heading: str, steps: range | None = None) -> list[str]:
    """The ```bash blocks of section `heading`, only those of numbered `steps` if given."""
    text = section(doc, heading)
    if steps is not None:
        text = "".join(text.split(f"\n{n}. ", 1)[1].split(f"\n{n + 1}. ", 1)[0] for n in steps)
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def as_written(script: str, values: dict[str, str]) -> str:
    """`script` with each placeholder (every one must occur) replaced in one pass."""
    missing = [placeholder for placeholder in values if placeholder not in script]
    assert not missing, f"the runbook no longer holds {missing}:\n{script}"
    pattern = "|".join(re.escape(p) for p in sorted(values, key=len, reverse=True))
    return re.sub(pattern, lambda match: values[match.group(0)], script)


def bash(script: str, cwd: Path, env: dict[str, str], stdin: str | None = None
         ) -> subprocess.CompletedProcess:
    """Run `script` with bash, stopping at the first failure; in a session of its own, with
    no terminal, so that a prompt (psql's \\password) reads `stdin`."""
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd,
                          env={**os.environ, "PATH": PATH, **env}, input=stdin,
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def succeeded(done: subprocess.CompletedProcess) -> bool:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return True


def pg_env(host: str, port: int, user: str, password: str) -> dict[str, str]:
    return {"PGHOST": host, "PGPORT": str(port), "PGUSER": user, "PGPASSWORD": password}


@pytest.fixture
def new_server() -> Iterator[LocalCluster]:
    """A server that never saw this database or its roles: the new host's."""
    cluster = start_cluster(die_with_parent=True, prefix="bp_test_new_server_")
    yield cluster
    cluster.stop()


@dataclass(frozen=True)
class OwnedArchive:
    """An archive whose tables belong to an application role, as a real deployment's do."""

    path: Path
    owner: str  # LOGIN on the source
    readers: str  # a NOLOGIN group granted SELECT


@pytest.fixture(scope="module")
def owned_archive(server: Server, sample_template: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[OwnedArchive]:
    tag = uuid.uuid4().hex[:8]
    owner, readers = f"bp_app_{tag}", f"bp_app_readers_{tag}"
    source, proof = new_database(server, sample_template), f"bp_proof_{tag}"
    with server.admin() as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN")
        conn.execute(f"CREATE ROLE {readers} NOLOGIN")
    try:
        with psycopg.connect(server.dsn(source), autocommit=True) as conn:
            conn.execute(f"ALTER TABLE users OWNER TO {owner}")
            conn.execute(f"GRANT SELECT ON users TO {readers}")
        with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
            env = sample_env(server, source, proof, tmp_path_factory.mktemp("owned"),
                              monkeypatch)
            assert run_backup(env, instance).success
            [made] = archives(env["BACKUP_DIR"])
        yield OwnedArchive(made, owner, readers)
    finally:
        drop_database(server, source)
        drop_database(server, proof)
        with server.admin() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {owner}")
            conn.execute(f"DROP ROLE IF EXISTS {readers}")


def test_the_emergency_restore_runs_as_the_runbook_writes_it(archive, server, scratch_db,
                                                              tmp_path):
    """Steps 2 to 5 of "Full emergency restore, step by step"."""
    damaged = f"{scratch_db}_damaged"
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{scratch_db}"')  # the damaged database to keep
    config = tmp_path / "restored_config"
    script = as_written("\n".join(blocks("BACKUP_OPERATIONS.md",
                                         "Full emergency restore, step by step", range(2, 6))), {
        f"/backups/{ARCHIVE_PLACEHOLDER}": str(archive),
        "/backups": str(archive.parent),
        "PGHOST=localhost PGPORT=5432 PGUSER=postgres":
            f"PGHOST={server.host} PGPORT={server.port} PGUSER={server.user}",
        "PGPASSWORD=...": f"PGPASSWORD={server.password}",
        "smart_ai_hub_damaged": damaged, "smart_ai_hub": scratch_db,
        "/root/restored_config": str(config)})
    try:
        done = bash(script, tmp_path, {"BACKUP_DIR": str(archive.parent)})
        assert succeeded(done)
        assert archive.name in done.stdout and "Snapshot" in done.stdout
        assert f"RESTORE OK into database {scratch_db}" in done.stdout
        assert (config / ".env.production").is_file()
        assert scalar(server.dsn(scratch_db), "SELECT count(*) FROM users") > 0
    finally:
        drop_database(server, damaged)


def test_the_system_guide_restore_runs_as_written(archive, server, scratch_db, tmp_path):
    """BACKUP_SYSTEM.md's own restore command, and its plain-shell summary holding exactly the
    commands the archive's BACKUP_INFO.txt gives (which another test runs)."""
    [command] = blocks("BACKUP_SYSTEM.md", "Emergency restore with `backup-pipeline restore`")
    config = tmp_path / "restored_config"
    done = bash(as_written(command, {
        "PGPASSWORD=...": f"PGPASSWORD={server.password}",
        f"/backups/{ARCHIVE_PLACEHOLDER}": str(archive),
        "host=localhost port=5432 dbname=smart_ai_hub user=postgres":
            f"host={server.host} port={server.port} dbname={scratch_db} user={server.user}",
        "/root/restored_config": str(config)}), tmp_path, {})
    assert succeeded(done) and f"RESTORE OK into database {scratch_db}" in done.stdout
    assert (config / "nginx.prod.conf").is_file()

    summary = section("BACKUP_SYSTEM.md", "Plain-shell restore (tar and psql only)")

    def shape(command: str) -> str:  # the values exported are this archive's own
        return re.sub(r"=(<[^>]*>|\S+)", "=...", command) if command.startswith("export ") \
            else command

    summarised = [shape(line.strip()) for block in re.findall(r"```\n(.*?)```", summary,
                                                              re.DOTALL)
                  for line in block.splitlines() if line.strip()]
    given = [shape(c) for c in procedure_commands(read_member(archive,
                                                              layout.BACKUP_INFO).decode())]
    assert len(summarised) > 8 and [c for c in summarised if c not in given] == []


def test_the_new_server_restore_runs_as_the_runbook_writes_it(owned_archive, new_server,
                                                               tmp_path):
    """Steps 1, 4 and 5 of "Restore into a new server": what the archive needs, the copy and
    its check, the restore that creates the database and the roles the server lacks."""
    archive = owned_archive.path
    work = tmp_path / "new_host"
    work.mkdir()
    script = as_written("\n".join(blocks("BACKUP_OPERATIONS.md", "Restore into a new server")), {
        "ARCHIVE": archive.name,
        f"scp backup-host:{ARCHIVE_PLACEHOLDER}": f"cp {archive}",
        ARCHIVE_PLACEHOLDER: archive.name,
        "NEW_HOST": new_server.host, "port=5432": f"port={new_server.port}"})
    done = bash(f"cp {shlex.quote(str(archive))} .\n{script}", work,
                {"PGPASSWORD": new_server.password})
    assert succeeded(done)
    assert re.search(r"^Server +PostgreSQL \d+", done.stdout, re.MULTILINE), done.stdout
    assert "Roles this schema names: " in done.stdout and "no extensions" in done.stdout
    assert f"creating role {owned_archive.owner}: NOLOGIN, no password (on the source: LOGIN)" \
        in done.stdout
    assert f"creating role {owned_archive.readers}: NOLOGIN, no password, as on the source" \
        in done.stdout
    assert "RESTORE OK into database smart_ai_hub" in done.stdout
    assert (work / "restored_config" / ".env.production").is_file()
    tables = {t["table"]: t["rows"] for t in manifest(archive)["tables"]}
    restored = new_server.dsn("smart_ai_hub")
    assert scalar(restored, "SELECT count(*) FROM users") == tables["public.users"]
    assert scalar(restored, "SELECT tableowner FROM pg_tables WHERE tablename = 'users'") == \
        owned_archive.owner


def test_the_partial_recovery_runs_as_the_runbook_writes_it(archive, server, scratch_db,
                                                             tmp_path):
    """"Partial recovery of tables": a bad UPDATE and DELETE undone by the merge as written,
    rows added since kept; then the comparison restore into a scratch database."""
    target = server.dsn(scratch_db)
    assert succeeded(subprocess.run([BACKUP_PIPELINE, "restore", str(archive), "--target",
                                     target], capture_output=True, text=True, timeout=600))
    before = rows(target, "users")
    with psycopg.connect(target) as conn:
        conn.execute("UPDATE users SET email = 'oops' || id || '@example.com' WHERE id % 3 = 0")
        conn.execute("DELETE FROM user_roles WHERE user_id % 5 = 0")
    merge, compare = blocks("BACKUP_OPERATIONS.md", "Partial recovery of tables (`--table`)")
    comparison_db = f"{scratch_db}_restore"
    try:
        done = bash(as_written(merge + compare, {
            f"/backups/{ARCHIVE_PLACEHOLDER}": str(archive), "ARCHIVE": str(archive),
            "host=localhost dbname=smart_ai_hub_restore user=postgres":
                f"host={server.host} port={server.port} dbname={comparison_db} "
                f"user={server.user}",
            "host=localhost dbname=smart_ai_hub user=postgres":
                f"host={server.host} port={server.port} dbname={scratch_db} user={server.user}",
        }), tmp_path, {"PGPASSWORD": server.password})
        assert succeeded(done)
        assert rows(target, "users") == before
        assert "RESTORE OK into database " + comparison_db in done.stdout
        assert rows(server.dsn(comparison_db), "user_roles") == rows(target, "user_roles")
    finally:
        drop_database(server, comparison_db)


def test_the_config_restore_runs_as_the_runbook_writes_it(archive, tmp_path):
    """"Configuration restore": verify, extract config only, and a diff against the folder it
    was backed up from that finds nothing."""
    source = archive.parent.parent / "config"  # the archive fixture's BACKUP_CONFIG_DIR
    assert (source / ".env.production").is_file()
    [script] = blocks("BACKUP_OPERATIONS.md", "Configuration restore (`--config-to`)")
    restored = tmp_path / "restored_config"
    done = bash(as_written(script, {"ARCHIVE": str(archive), "/root/restored_config":
                                    str(restored), "/path/to/project": str(source)}),
                tmp_path, {})
    assert succeeded(done)
    assert (restored / "config" / "ssl" / "key.pem").read_bytes() == \
        (source / "ssl" / "key.pem").read_bytes()
    assert not (restored / "database").exists()


def test_the_salvage_runs_as_the_runbook_writes_it(archive, server, scratch_db, tmp_path):
    """"When every archive fails verification", steps 2 and 3, on an archive cut short: the
    intact schema and first tables load into a new database as written."""
    data = archive.read_bytes()
    damaged = tmp_path / archive.name
    damaged.write_bytes(data[: len(data) * 6 // 10])
    salvaged = tmp_path / "salvaged"
    salvage, load = blocks("BACKUP_OPERATIONS.md", "When every archive fails verification")
    values = {f"/backups/{ARCHIVE_PLACEHOLDER}": str(damaged), "/root/salvaged": str(salvaged)}
    done = bash(as_written(salvage, values), tmp_path, {})
    assert done.returncode == 1, done.stdout + done.stderr  # something was lost, as it says
    intact = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("intact ")}
    assert {"database/_schema_pre_data.sql", "database/users.sql"} <= intact, done.stdout
    try:
        done = bash(as_written(load, {"/root/salvaged": str(salvaged),
                                      "smart_ai_hub_salvaged": scratch_db}), tmp_path,
                    pg_env(server.host, server.port, server.user, server.password))
        assert succeeded(done)
        assert "\\copy " in done.stdout  # what the sed line is there to show
        with tarfile.open(archive) as tar:
            expected = sum(1 for line in tar.extractfile("database/users.sql")
                           if line[:1].isdigit())
        assert scalar(server.dsn(scratch_db), "SELECT count(*) FROM users") == expected > 0
    finally:
        drop_database(server, scratch_db)


# --- the compose stack ---------------------------------------------------------------------

_COMPOSE = re.compile(r"^docker compose -f docker-compose\.prod\.yml "
                      r"(?:--env-file \.env\.production )?(?P<verb>\w+) (?P<args>.*)$", re.DOTALL)


def _commands(script: str) -> list[str]:
    """The script's commands, each with its backslash continuations joined."""
    return [c.strip() for c in script.replace("\\\n", " ").splitlines()
            if c.strip() and not c.strip().startswith("#")]


def in_the_containers(script: str, services: dict, env_for: dict[str, dict[str, str]]) -> str:
    """`script` as it runs: each `docker compose ... exec [-T] SERVICE COMMAND` becomes COMMAND
    run with that container's environment; `build`, `up` and `ps` are checked (every service
    they name exists) and left out. Anything else runs on the host, as written."""
    lines = []
    for command in _commands(script):
        found = _COMPOSE.match(command)
        if found is None:
            assert not command.startswith("docker"), command
            lines.append(command)
            continue
        verb, args = found["verb"], found["args"]
        if verb == "exec":
            service, _, rest = re.sub(r"^-T ", "", args).partition(" ")
            assert service in services, f"no service {service!r} in docker-compose.prod.yml"
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_for[service].items())
            lines.append(f"( export {exports}; {rest} )")
        else:
            assert verb in ("build", "up", "ps"), command
            named = [a for a in shlex.split(args) if not a.startswith("-") and not a.isdigit()
                     and "=" not in a]
            assert set(named) <= set(services), command
    return "\n".join(lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp 10001, as the runbook does, needs root")
def test_the_compose_stack_restore_runs_as_the_runbook_writes_it(owned_archive, new_server,
                                                                  tmp_path):
    """"Restore into a new server with the compose stack", every step: the host's commands as
    written, each `docker compose exec` as its container runs it (the backup user's environment
    from .env.production, `/backups` its volume), the compose file's services and mounts as the
    steps assume them."""
    archive, owner = owned_archive.path, owned_archive.owner
    compose = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
    services = compose["services"]
    assert "backups:/backups" in services["backup-code"]["volumes"]
    assert "./initdb:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    assert "USER 10001:10001" in (REPO / "Dockerfile.backup").read_text()
    assert "install -d -o backup -g backup -m 0700 /backups" in \
        (REPO / "Dockerfile.backup").read_text()
    host, volume = tmp_path / "project", tmp_path / "backups_volume"
    host.mkdir()
    volume.mkdir(mode=0o700)
    for name in ("docker-compose.prod.yml", "Dockerfile.backup"):
        (host / name).write_bytes((REPO / name).read_bytes())
    with psycopg.connect(new_server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE smart_ai_hub")  # what the postgres image makes
    backup_code = {"POSTGRES_PASSWORD": new_server.password, "POSTGRES_USER": new_server.user,
                   "BACKUP_DIR": str(volume)}
    postgres = pg_env(new_server.host, new_server.port, new_server.user, new_server.password)
    heading, env_for = "Restore into a new server with the compose stack", {
        "backup-code": backup_code, "postgres": postgres, "backup-daemon": backup_code}
    in_the_containers("\n".join(blocks("BACKUP_OPERATIONS.md", heading, range(7, 8))),
                      services, env_for)  # step 7 (the stack's first backup) is only checked
    script = "\n".join(blocks("BACKUP_OPERATIONS.md", heading, range(1, 7)))
    script = as_written(in_the_containers(script, services, env_for), {
        "/path/to/": f"{archive.parent}/", ARCHIVE_PLACEHOLDER: archive.name,
        "/backups/": f"{volume}/",
        "host=postgres port=5432": f"host={new_server.host} port={new_server.port}",
        "-U postgres": f"-U {new_server.user}",
        "ROLE app LOGIN": f"ROLE {owner} LOGIN", "\\password app": f"\\password {owner}"})
    done = bash(script, host, {}, stdin="app-password\napp-password\n")
    assert succeeded(done)
    assert "RESTORE OK into database smart_ai_hub" in done.stdout
    assert f"creating role {owner}: NOLOGIN" in done.stdout
    stored = volume / archive.name
    assert stored.read_bytes() == archive.read_bytes() and stored.stat().st_mode & 0o077 == 0
    env_file = host / ".env.production"
    assert env_file.stat().st_gid == 10001 and env_file.stat().st_mode & 0o777 == 0o640
    assert not (host / "config").exists() and (host / "ssl" / "cert.pem").is_file()
    with psycopg.connect(f"host={new_server.host} port={new_server.port} user={owner} "
                         f"password=app-password dbname=smart_ai_hub") as conn:
        assert conn.execute("SELECT current_user, count(*) FROM users").fetchone() == (
            owner, manifest(archive)["tables"][0]["rows"])


def test_the_bucket_restore_runs_as_the_runbook_writes_it(archive, s3_server, new_server,
                                                          tmp_path):
    """"Restore when the server is gone: from the bucket, with the key": a sealed, signed
    archive in a real S3 server, listed, verified and restored from there as written, on a
    machine that holds only the key, the signing public key and the bucket's credentials."""
    from backup_pipeline.files import file_sha256
    from backup_pipeline.offsite import upload_archive
    from backup_pipeline.sealing import parse_recipients, seal
    from backup_pipeline_tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

    work = tmp_path / "new_host"
    work.mkdir()
    _, public = age_key(work)  # key.txt, as the runbook has it
    signing = ssh_key(tmp_path)
    (work / "signing_key.pub").write_text(signing.with_suffix(".pub").read_text())
    signed = signed_copy(archive, signing, tmp_path / archive.name)
    sealed = seal(signed, tmp_path / f"{archive.name}{layout.AGE_SUFFIX}",
                  parse_recipients(public, "test"), file_sha256(signed))
    bucket = s3_server.make_bucket(f"bp-runbook-{uuid.uuid4().hex[:12]}")
    upload_archive(s3_server.target(bucket, "smart-ai-hub"), sealed.path, sealed.sha256)

    heading = "Restore when the server is gone: from the bucket, with the key"
    script = as_written("\n".join(blocks("BACKUP_OPERATIONS.md", heading)), {
        "my-backups": bucket, "https://s3.example.com": s3_server.endpoint_url,
        "YOUR_ACCESS_KEY_ID": ACCESS_KEY_ID, "NEW_HOST": new_server.host,
        "port=5432": f"port={new_server.port}"})
    done = bash(script, work, {"PGPASSWORD": new_server.password},
                stdin=SECRET_ACCESS_KEY + "\n")
    assert succeeded(done)
    assert f"restoring s3://{bucket}/smart-ai-hub/{sealed.path.name}" in done.stdout
    assert "(BACKUP_SIGNING_PUBLIC_KEY): good" in done.stdout
    assert "RESTORE OK into database smart_ai_hub" in done.stdout
    assert SECRET_ACCESS_KEY not in done.stdout + done.stderr
    assert (work / "restored_config" / ".env.production").is_file()
    tables = {t["table"]: t["rows"] for t in manifest(archive)["tables"]}
    assert scalar(new_server.dsn("smart_ai_hub"), "SELECT count(*) FROM users") == \
        tables["public.users"]
