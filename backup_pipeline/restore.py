"""Restore an archive into a database: the command an administrator runs when the database is gone.

Everything here assumes the worst night. The archive is verified before anything is touched and a
bad one is refused. A database that already holds tables is refused unless `force` says to replace
them, and then the old schema is dropped inside the same transaction as the restore, so a failed
restore leaves the old database exactly as it was. The full restore creates the roles the schema
names where they are missing, then loads the archive through one connection in one transaction
(restore_load.py: from the manifest, never running the archive's own script), stopping at the
first error. Afterwards it is compared with the archive (restore_checks.py): row counts, every
table's content byte for byte, every constraint, every sequence. The restore proof of every
backup run is this same code.

A partial restore (`tables`) merges the archive's rows of the named tables into an existing
database by primary key: rows changed or deleted since the backup come back, rows added since are
kept, and no other table is touched.

With `config_to`, the archive's config/ folder is written out too. Whether that folder can be
written is checked before the database is touched (a file given for the folder is refused, with
nothing changed); what can only fail later (a full disk) fails after the database is committed,
and is then reported beside the restore (`RestoreReport.config_problem`), never as a failed
restore: the database restore stands.
"""

from __future__ import annotations

import errno
import getpass
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipeline import layout
from backup_pipeline.data_files import quote_identifier
from backup_pipeline.export_plan import table_source
from backup_pipeline.files import make_private_dirs, open_private
from backup_pipeline.manifest import Manifest, TableEntry
from backup_pipeline.pg import reader_settings
from backup_pipeline.restore_checks import compare_content, invalid_constraints, sequences_behind
from backup_pipeline.restore_load import LoadError, copy_rows, load_archive
from backup_pipeline.restore_script import ManifestError
from backup_pipeline.roles import Role
from backup_pipeline.signing import PublicKey
from backup_pipeline.sources import ArchiveSource, as_source
from backup_pipeline.verify import VerificationReport, read_manifest, verify_archive

Progress = Callable[[str], None]

_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema', 'pg_toast')"


class RestoreError(RuntimeError):
    """The restore was refused or failed; the target database is as it was before."""


@dataclass
class TableComparison:
    table: str
    expected: int
    restored: int
    note: str = ""
    # Why the restored content is not the archive's (None: identical, or not compared).
    content_problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.expected == self.restored and self.content_problem is None


@dataclass
class RestoreReport:
    archive: ArchiveSource
    target: str
    seconds: float = 0.0
    tables: list[TableComparison] = field(default_factory=list)
    invalid_constraints: list[str] = field(default_factory=list)
    sequences_behind: list[str] = field(default_factory=list)
    roles_created: list[str] = field(default_factory=list)
    content_compared: bool = False
    # Why the target database does not have the source's collation, when it does not.
    locale_note: str | None = None
    # Seconds of each step (verify_and_extract, load, compare): where a restore spends its time.
    phases: dict[str, float] = field(default_factory=dict)
    config_written: list[str] = field(default_factory=list)
    # Why the configuration was not (all) written, after the database was committed: the
    # database restore stands, whatever this says.
    config_problem: str | None = None

    @property
    def ok(self) -> bool:
        return (all(t.ok for t in self.tables) and not self.invalid_constraints
                and not self.sequences_behind)

    @property
    def problems(self) -> list[str]:
        """Every mismatch, each naming its table, constraint or sequence."""
        found = []
        for t in self.tables:
            if t.expected != t.restored:
                found.append(f"{t.table}: {t.restored} rows restored, the archive holds "
                             f"{t.expected}")
            elif t.content_problem:
                found.append(f"{t.table}: {t.content_problem}")
        found += [f"constraint {c} is NOT valid after the restore"
                  for c in self.invalid_constraints]
        return found + [f"sequence {s}" for s in self.sequences_behind]

    def table_text(self) -> str:
        width = max([len(t.table) for t in self.tables] + [5])
        lines = [f"{'table':<{width}}  {'archive':>9}  {'restored':>9}  result"]
        for t in self.tables:
            state = "ok" if t.ok else "MISMATCH"
            lines.append(f"{t.table:<{width}}  {t.expected:>9}  {t.restored:>9}  {state} {t.note}"
                         .rstrip())
        if self.content_compared:
            lines.append("every table's content is byte for byte the archive's"
                         if not any(t.content_problem for t in self.tables)
                         else "content NOT the archive's: " + "; ".join(
                             f"{t.table}: {t.content_problem}" for t in self.tables
                             if t.content_problem))
        elif self.phases.get("compare") is not None:
            lines.append("content not compared, only row counts: the archive was made before "
                         "archives carried what that needs (manifest format 1)")
        if self.invalid_constraints:
            lines.append("constraints NOT valid: " + ", ".join(self.invalid_constraints))
        else:
            lines.append("every foreign key and check constraint is valid")
        if self.sequences_behind:
            lines.append("sequences BEHIND their column: " + "; ".join(self.sequences_behind))
        return "\n".join(lines)


def describe_target(dsn: str) -> str:
    """The target without its password, for messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise RestoreError(f"--target is not a valid connection string or URI: {error}. "
                           f"Example: \"host=db dbname=smart_ai_hub user=postgres\"") from None
    if not parts.get("dbname"):
        raise RestoreError("--target names no database: add dbname=... (the database to "
                           "restore into; it is created when missing)")
    return (f"database {parts.get('dbname', '?')} on {parts.get('host', 'localhost')}:"
            f"{parts.get('port', 5432)} as {parts.get('user', getpass.getuser())}")


def _libpq_env(dsn: str) -> dict[str, str]:
    """psql's environment for `dsn`: the password travels in PGPASSWORD, never in argv."""
    parts = conninfo_to_dict(dsn)
    env = dict(os.environ)
    mapping = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
               "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "passfile": "PGPASSFILE"}
    for key, variable in mapping.items():
        if parts.get(key):
            env[variable] = str(parts[key])
    env["PGAPPNAME"] = "backup_pipeline_restore"
    return env


def verified(archive: ArchiveSource, progress: Progress, extract_to: Path | None = None,
             signer: PublicKey | None = None, allow_unsigned: bool = False
             ) -> VerificationReport:
    progress(f"verifying {archive.name}" + (" while extracting it" if extract_to else ""))
    report = verify_archive(archive, extract_to=extract_to, signer=signer,
                            allow_unsigned=allow_unsigned)
    if signer is not None or report.signature != "unsigned":
        progress(f"signature: {report.signature}")
    if not report.ok:
        raise RestoreError(
            f"refusing to restore {archive.name}: it failed verification: "
            + "; ".join(report.problems)
            + ". Nothing was changed. Use another archive (backup-pipeline verify ARCHIVE)."
        )
    return report


def _with_locale(name: str, locale: dict) -> sql.Composable:
    """CREATE DATABASE with the source's encoding and collation (from template0, the only
    template that accepts another locale)."""
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} "
                        "LC_CTYPE {}").format(
        sql.Identifier(name), sql.Literal(locale["encoding"]), sql.Literal(locale["collate"]),
        sql.Literal(locale["ctype"]))
    provider = {"i": "icu", "b": "builtin"}.get(locale.get("provider") or "c")
    if provider:
        keyword = "ICU_LOCALE" if provider == "icu" else "BUILTIN_LOCALE"
        statement += sql.SQL(f" LOCALE_PROVIDER {provider} {keyword} {{}}").format(
            sql.Literal(locale["locale"]))
    return statement


def ensure_database(dsn: str, progress: Progress, locale: dict | None = None) -> str | None:
    """Create the target database when it does not exist yet (the usual disaster case), with
    the source's encoding and collation when the archive names them. Returns a note when the
    server lacks that collation and the database got the server's default instead."""
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
        return None
    except psycopg.OperationalError as error:
        name = conninfo_to_dict(dsn)["dbname"]
        if f'database "{name}" does not exist' not in str(error):
            raise RestoreError(f"cannot connect to {describe_target(dsn)}: "
                               f"{str(error).strip()}") from None
    progress(f"creating database {name}"
             + (f" ({locale['encoding']}, collation {locale['locale'] or locale['collate']})"
                if locale else ""))
    note = None
    try:
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True,
                             connect_timeout=10) as conn:
            try:
                if locale:
                    conn.execute(_with_locale(name, locale))
                    return None
            except psycopg.Error as error:
                note = (f"the source's collation ({locale['locale'] or locale['collate']}) is not "
                        f"available on this server ({str(error).strip()}): the database was "
                        f"created with the server's default. Text sorts and text-dependent "
                        f"partitions or constraints may differ; install that locale (Debian: "
                        f"locales-all) for a faithful restore.")
                progress(f"WARNING: {note}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as error:
        raise RestoreError(
            f"database {name} does not exist and could not be created: {str(error).strip()}. "
            f"Create it (CREATE DATABASE), or restore as a user with CREATEDB."
        ) from None
    return note


@contextmanager
def scratch_database_lock(dsn: str) -> Iterator[None]:
    """Held while a scratch database (the drill's, the proof's) is dropped, restored and
    compared: two runs at once (the schedule and one by hand) take turns instead of dropping
    the database under each other. A session advisory lock on the server, freed however the
    holder ends."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True,
                         connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"backup_pipeline:{name}",))
        yield


def drop_database(dsn: str) -> None:
    """Drop a scratch database (the drill's, the proof's), from the server's maintenance
    database; the restore creates it again, with the archive's collation."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True,
                         connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def existing_tables(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute(
        f"SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        f"WHERE schemaname NOT IN {_SYSTEM_SCHEMAS} ORDER BY 1")]


def _replace_statements(conn: psycopg.Connection) -> str:
    """SQL that empties the target: every user schema dropped, a fresh public schema."""
    schemas = [row[0] for row in conn.execute(
        f"SELECT quote_ident(nspname) FROM pg_namespace WHERE nspname NOT IN {_SYSTEM_SCHEMAS} "
        "AND nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'")]
    drops = "".join(f"DROP SCHEMA {s} CASCADE; " for s in schemas)
    return (drops + "CREATE SCHEMA public AUTHORIZATION pg_database_owner; "
            "GRANT USAGE ON SCHEMA public TO PUBLIC;")


def compare_counts(conn: psycopg.Connection, manifest: Manifest) -> list[TableComparison]:
    """Each table's row count against the manifest's."""
    tables = []
    for entry in manifest.tables:
        schema, name = entry.schema, entry.name
        partitioned = conn.execute(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = %s::regclass",
            (sql.Identifier(schema, name).as_string(conn),)).fetchone()[0]
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            table_source(schema, name, partitioned))).fetchone()[0]
        tables.append(TableComparison(entry.table, entry.rows, count))
    return tables


def _missing_roles(conn: psycopg.Connection, roles: list[Role]) -> list[Role]:
    present = {row[0] for row in conn.execute("SELECT rolname FROM pg_roles")}
    return [role for role in roles if role.name not in present]


def check_roles(conn: psycopg.Connection, roles: list[Role], target: str) -> list[Role]:
    """The roles the target lacks, after checking that this user can create them and hand
    objects to the owners; refuses up front (naming the roles and the fix) when it cannot."""
    missing = _missing_roles(conn, roles)
    user, superuser, createrole = conn.execute(
        "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles "
        "WHERE rolname = current_user").fetchone()
    if missing and not (superuser or createrole):
        names = ", ".join(r.name for r in missing)
        raise RestoreError(
            f"the archive's schema names roles that {target} lacks ({names}) and {user} may not "
            f"create roles. Restore as a superuser, create them first (CREATE ROLE name "
            f"NOLOGIN), or pass --no-owner (every object then belongs to {user}, without the "
            f"archive's grants). Nothing was changed.")
    owners = [r.name for r in roles if r.owner and r.name != user]
    if owners and not superuser:
        foreign = [name for name in owners if name in {r.name for r in missing}
                   or not conn.execute("SELECT pg_has_role(%s, 'MEMBER')", (name,)).fetchone()[0]]
        if foreign:
            raise RestoreError(
                f"objects in this archive belong to {', '.join(foreign)}, and {user} is neither "
                f"a superuser nor a member of those roles, so it cannot give the objects back "
                f"to them. Restore as a superuser, or pass --no-owner. Nothing was changed.")
    return missing


def full_restore(workdir: Path, dsn: str, manifest: Manifest, force: bool, no_owner: bool,
                 progress: Progress) -> list[str]:
    """Everything in one transaction; returns the roles it created."""
    target = describe_target(dsn)
    roles = [] if no_owner else list(manifest.roles)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        present = existing_tables(conn)
        if present and not force:
            shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
            raise RestoreError(
                f"{target} already has {len(present)} tables ({shown}): refusing to "
                f"restore over them. Restore into an empty database, or pass --force to replace "
                f"them (every schema is dropped in the same transaction as the restore, so a "
                f"failed restore changes nothing)."
            )
        missing = check_roles(conn, roles, target) if roles else []
        if present:
            progress(f"replacing {len(present)} existing tables (--force)")
        for role in missing:
            progress(f"creating role {role.name}: {role.restore_advice}")
        progress("restoring in one transaction: " + ("roles, " if roles else "")
                 + "schema, tables, transactions, sequences, indexes and constraints"
                 + (" (without owners and privileges: --no-owner)" if no_owner else ""))
        conn.execute("SET client_encoding = 'UTF8'")
        try:
            with conn.transaction():
                load_archive(conn, workdir, manifest, roles=roles, no_owner=no_owner,
                             replace=_replace_statements(conn) if present else "",
                             progress=progress)
        except (LoadError, psycopg.Error) as error:
            raise RestoreError(
                f"the restore stopped at the first error; the transaction was rolled back and "
                f"{target} is as it was: {error}") from None
    return [role.name for role in missing]


def compare_restored(dsn: str, manifest: Manifest, report: RestoreReport) -> None:
    """Counts, content, constraints and sequences of a full restore against the archive."""
    with psycopg.connect(dsn) as conn:
        report.tables = compare_counts(conn, manifest)
        report.invalid_constraints = invalid_constraints(
            conn, manifest.not_valid_constraints)
        report.sequences_behind = sequences_behind(conn)
    content = {r.table: r for r in compare_content(_libpq_env(dsn), manifest,
                                                   reader_settings(60))}
    report.content_compared = any(r.rows >= 0 for r in content.values())
    for table in report.tables:
        table.content_problem = content[table.table].problem


def _primary_key(conn: psycopg.Connection, schema: str, name: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        (quote_identifier(schema, name),))]


def merge_table(conn: psycopg.Connection, workdir: Path, entry: TableEntry) -> TableComparison:
    """Upsert the archive's rows of one table by primary key; nothing else is touched."""
    schema, name = entry.schema, entry.name
    key = _primary_key(conn, schema, name)
    if not key:
        raise RestoreError(
            f"{entry.table} has no primary key, so its rows cannot be merged: restore the "
            f"whole archive into a scratch database and copy the rows from there."
        )
    columns = list(entry.columns)
    target = sql.Identifier(schema, name)
    staging = sql.Identifier(f"_restore_{name}")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(staging, target))
    # The archive's values as they were: no user trigger (e.g. one touching updated_at) rewrites
    # them. Foreign key checks are system triggers and stay on.
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(target))
    with conn.cursor() as cur:
        copy_rows(cur, workdir, entry, staging)
    updates = [c for c in columns if c not in key]
    conflict = (sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
        if updates else sql.SQL("DO NOTHING"))
    merged = conn.execute(sql.SQL(
        "INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {staging} "
        "ON CONFLICT ({key}) {conflict} RETURNING (xmax = 0)").format(
            target=target, cols=cols, staging=staging, conflict=conflict,
            key=sql.SQL(", ").join(sql.Identifier(c) for c in key))).fetchall()
    inserted = sum(1 for row in merged if row[0])
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(target))
    _advance_sequences(conn, schema, name)
    present = conn.execute(sql.SQL(
        "SELECT count(*) FROM {staging} s WHERE EXISTS (SELECT 1 FROM {target} t WHERE {match})"
    ).format(staging=staging, target=target, match=sql.SQL(" AND ").join(
        sql.SQL("t.{0} = s.{0}").format(sql.Identifier(c)) for c in key))).fetchone()[0]
    total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]
    note = (f"({inserted} inserted, {len(merged) - inserted} updated, "
            f"{total - present} newer rows kept)")
    return TableComparison(entry.table, entry.rows, present, note)


def _advance_sequences(conn: psycopg.Connection, schema: str, name: str) -> None:
    """Owned sequences move past the restored ids, never backwards."""
    for column, sequence in conn.execute(
        "SELECT a.attname, pg_get_serial_sequence(%s, a.attname) FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
        "AND pg_get_serial_sequence(%s, a.attname) IS NOT NULL",
        (quote_identifier(schema, name),) * 3,
    ).fetchall():
        conn.execute(sql.SQL(
            "SELECT setval({seq}, greatest((SELECT max({col}) FROM {tbl}), "
            "(SELECT last_value FROM {seq_ident})))").format(
                seq=sql.Literal(sequence), col=sql.Identifier(column),
                tbl=sql.Identifier(schema, name),
                seq_ident=sql.SQL(sequence)))


def partial_restore(workdir: Path, dsn: str, manifest: Manifest, tables: list[str],
                    progress: Progress) -> list[TableComparison]:
    by_name: dict[str, dict] = {}
    for entry in manifest.tables:
        by_name[entry.table] = entry
        by_name.setdefault(entry.table.removeprefix("public."), entry)
    unknown = [t for t in tables if t not in by_name]
    if unknown:
        raise RestoreError(
            f"{', '.join(unknown)} is not in this archive; it holds "
            f"{', '.join(e.table for e in manifest.tables)}."
        )
    results = []
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
            for table in tables:
                progress(f"merging {by_name[table].table} by primary key")
                results.append(merge_table(conn, workdir, by_name[table]))
    except (psycopg.Error, LoadError, ManifestError) as error:
        raise RestoreError(
            f"the partial restore into {describe_target(dsn)} failed and was rolled back, "
            f"nothing changed: {str(error).strip()}"
        ) from None
    return results


def config_files(manifest: Manifest | None) -> list[PurePosixPath]:
    """The manifest's files under config/, relative to it: the files --config-to writes. Only
    those, and only paths that stay inside the folder; a manifest not yet verified (or not one at
    all) gives what it can."""
    found = []
    for entry in manifest.files if manifest else ():
        path = entry.path
        if path.startswith(f"{layout.CONFIG_DIR}/") and ".." not in PurePosixPath(path).parts:
            found.append(PurePosixPath(path).relative_to(layout.CONFIG_DIR))
    return found


def _not_a_folder(path: Path) -> str:
    kind = ("a symbolic link to nothing" if path.is_symlink() and not path.exists()
            else "a file" if path.is_file() else "not a folder")
    return f"{path} is {kind}"


def unwritable_config_reason(target: Path, files: list[PurePosixPath]) -> str | None:
    """Why the configuration cannot be written to `target`, or None. Checked before the database
    is touched, so that the usual mistakes (a file named as the folder, or under a file, a folder
    this user may not write, a folder or link where a file goes) refuse the restore with nothing
    changed. A full disk can still fail the writing later."""
    existing = target
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        return _not_a_folder(existing) + ("" if existing == target else
                                          f", so {target} cannot be created under it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".backup_pipeline_probe_", dir=existing))
    except OSError as error:
        return f"{existing} is not writable by this user ({error.strerror})"
    for relative in files:
        destination = target.joinpath(*relative.parts)
        for folder in reversed(destination.parents):
            if folder.is_relative_to(target) and os.path.lexists(folder) and not folder.is_dir():
                return _not_a_folder(folder) + f", where the archive has the folder of {relative}"
        if os.path.lexists(destination) and (destination.is_symlink()
                                             or not destination.is_file()):
            return (f"{destination} is a symbolic link or a folder: the restore replaces files, "
                    f"never writes through a link or over a folder")
    return None


def write_config(workdir: Path, manifest: Manifest, target: Path) -> Iterator[str]:
    """Copy config/ out as it was, private (0600 files, 0700 folders), never through a link;
    yields each file's name once it is written. Each file replaces the one of its name whole,
    through a temporary file beside it: a write that fails (a full disk) leaves no half file.

    Only files the verification checked (the manifest's files under config/) are written, and
    only inside `target`.
    """
    for relative in config_files(manifest):
        destination = target.joinpath(*relative.parts)
        make_private_dirs(destination.parent)
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.restoring")
        try:
            with open_private(partial, exclusive=True) as out, \
                    (workdir / layout.CONFIG_DIR).joinpath(*relative.parts).open("rb") as source:
                shutil.copyfileobj(source, out)
            os.replace(partial, destination)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        yield str(relative)


def _write_config_after_restore(workdir: Path, manifest: Manifest, target: Path,
                                report: RestoreReport, progress: Progress) -> None:
    """write_config, after the database was committed: a failure now is reported in `report`,
    never raised, for the restore it would seem to fail is done and stands."""
    files = config_files(manifest)
    try:
        for name in write_config(workdir, manifest, target):
            report.config_written.append(name)
    except OSError as error:
        done = len(report.config_written)
        report.config_problem = (
            f"could not write the configuration to {target}: {error.strerror or error} (writing "
            f"{files[done]}); {done} of {len(files)} files were written")
        return
    if report.config_written:
        progress(f"wrote {len(report.config_written)} config files to {target}")


def _extracted(archive: ArchiveSource, workdir: Path, listed: Manifest | None,
               progress: Progress, signer: PublicKey | None, allow_unsigned: bool) -> Manifest:
    """Verify and extract into `workdir` (in TMPDIR): a full TMPDIR is named, with the room the
    archive needs, before it is filled if the manifest (`listed`, not yet verified) says so, or
    as soon as a write fails."""
    needed = listed.data_bytes if listed else 0
    free = shutil.disk_usage(workdir).free
    if needed > free:
        raise RestoreError(_no_room(workdir, needed, free))
    try:
        manifest = verified(archive, progress, extract_to=workdir, signer=signer,
                            allow_unsigned=allow_unsigned).manifest
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise RestoreError(_no_room(workdir, needed, shutil.disk_usage(workdir).free)) from None
    assert manifest is not None
    return manifest


def _no_room(workdir: Path, needed: int, free: int) -> str:
    return (f"no room to extract the archive in TMPDIR {workdir.parent}: it needs about "
            f"{math.ceil(needed / 2**20)} MB, {free // 2**20} MB are free. Nothing was changed. "
            f"Point TMPDIR at a folder with room: TMPDIR=/var/tmp backup-pipeline restore ...")


def _refuse_unwritable_config(archive: ArchiveSource, target: Path, listed: Manifest | None
                              ) -> None:
    reason = unwritable_config_reason(target, config_files(listed))
    if reason:
        raise RestoreError(
            f"refusing to restore: the configuration cannot be written to {target}: {reason}. "
            f"Nothing was changed. Give --config-to a folder that can be created or written "
            f"(a new, empty one), or leave --config-to out and extract config/ later by hand: "
            f"{extract_config_command(archive)}")


def extract_config_command(archive: ArchiveSource | Path) -> str:
    """The shell command that gets the configuration out of `archive` without this program."""
    return as_source(archive).extract_command(layout.CONFIG_DIR)


def restore_archive(archive: ArchiveSource | Path, target_dsn: str, *, force: bool = False,
                    tables: list[str] | None = None, config_to: Path | None = None,
                    no_owner: bool = False, progress: Progress = print,
                    signer: PublicKey | None = None, allow_unsigned: bool = False
                    ) -> RestoreReport:
    """Verify, then restore `archive` into `target_dsn` (everything, or only `tables`), and
    write its configuration to `config_to`. RestoreError means nothing was changed. A
    configuration that cannot be written is refused up front when it can be known then; when
    it fails only after the commit, it is `report.config_problem`, never an exception. With
    `signer`, an archive it did not sign is refused unless `allow_unsigned` (verify_archive)."""
    started = time.monotonic()
    archive = as_source(archive)
    report = RestoreReport(archive=archive, target=describe_target(target_dsn))
    listed = read_manifest(archive)
    if config_to is not None:
        _refuse_unwritable_config(archive, Path(config_to), listed)
    with tempfile.TemporaryDirectory(prefix="backup_pipeline_restore_") as folder:
        workdir = Path(folder)
        manifest = _extracted(archive, workdir, listed, progress, signer, allow_unsigned)
        report.phases["verify_and_extract"] = round(time.monotonic() - started, 2)
        if tables:
            report.tables = partial_restore(workdir, target_dsn, manifest, tables, progress)
            with psycopg.connect(target_dsn) as conn:
                report.invalid_constraints = invalid_constraints(
                    conn, manifest.not_valid_constraints)
        else:
            report.locale_note = ensure_database(target_dsn, progress,
                                                 manifest.database_locale)
            loading = time.monotonic()
            report.roles_created = full_restore(workdir, target_dsn, manifest, force, no_owner,
                                                progress)
            comparing = time.monotonic()
            report.phases["load"] = round(comparing - loading, 2)
            progress("comparing with the archive: row counts, every table's content, "
                     "constraints and sequences")
            compare_restored(target_dsn, manifest, report)
            report.phases["compare"] = round(time.monotonic() - comparing, 2)
        if config_to is not None:
            _write_config_after_restore(workdir, manifest, Path(config_to), report, progress)
    report.seconds = time.monotonic() - started
    return report
