"""The `backup-pipeline` console script: thin, it calls the modules that do the work."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backup_pipeline import layout

if TYPE_CHECKING:
    from backup_pipeline.restore import RestoreReport
    from backup_pipeline.settings import Settings
    from backup_pipeline.signing import PublicKey
    from backup_pipeline.sources import ArchiveSource


class _Refused(Exception):
    """An archive the command cannot even start on: one line, exit 2."""


def _source(args: argparse.Namespace, settings: Settings) -> ArchiveSource:
    """The archive named on the command line: a file or s3://bucket/key, and the private key
    to open it with when it is sealed (--identity, else BACKUP_AGE_IDENTITY_FILE)."""
    from backup_pipeline.sealing import DecryptionError, load_identities
    from backup_pipeline.sources import open_source

    identity = Path(args.identity) if args.identity else settings.age_identity_file
    try:
        identities = tuple(load_identities(identity)) if identity else ()
        return open_source(args.archive, identities,
                           _bucket(settings) if settings.offsite else None)
    except (DecryptionError, ValueError) as error:
        raise _Refused(str(error)) from None


def _bucket(settings: Settings):
    """The bucket of BACKUP_S3_*, as the pipeline reaches it; credentials are boto3's to find
    (AWS_* in this shell, a profile, an instance role)."""
    from backup_pipeline.resources.offsite import OffsiteStorage

    return OffsiteStorage.from_settings(settings).target()


def _signer(settings: Settings) -> PublicKey | None:
    """Whose signature archives must carry: BACKUP_SIGNING_PUBLIC_KEY, else (on the backup host)
    the public half of BACKUP_SIGNING_KEY_FILE; None: signatures are not checked."""
    from backup_pipeline.signing import PublicKey, SigningError, SigningKey

    try:
        if settings.signing_public_key:
            return PublicKey.parse(settings.signing_public_key)
        if settings.signing_key_file:
            return SigningKey.from_file(settings.signing_key_file).public_key
    except SigningError as error:
        raise _Refused(str(error)) from None
    return None


def _verify(args: argparse.Namespace) -> int:
    from backup_pipeline.offsite import OffsiteError
    from backup_pipeline.sealing import DecryptionError
    from backup_pipeline.verify import verify_archive

    settings = _settings()
    try:
        report = verify_archive(_source(args, settings), signer=_signer(settings),
                                allow_unsigned=args.allow_unsigned)
    except OSError as error:
        print(f"cannot read the archive {args.archive}: {error.strerror or error}",
              file=sys.stderr)
        return 2
    except (_Refused, DecryptionError, OffsiteError) as error:
        print(f"VERIFY FAILED: {error}", file=sys.stderr)
        return 2
    for check in report.files.values():
        failed = check.problem or any(p.startswith(f"{check.path} ") for p in report.problems)
        state = "FAIL" if failed else "ok"
        print(f"{state:4}  {check.size:>12,}  {check.sha256[:16]}  {check.path}")
    for problem in report.problems:
        print(f"FAIL  {problem}", file=sys.stderr)
    print(f"signature  {report.signature}")
    print(("OK  " if report.ok else "FAILED  ") + report.summary())
    return 0 if report.ok else 1


def _salvage(args: argparse.Namespace) -> int:
    from backup_pipeline.salvage import DAMAGED_SUFFIX, salvage_archive

    try:
        report = salvage_archive(Path(args.archive), Path(args.to))
    except (OSError, ValueError) as error:
        print(f"SALVAGE FAILED: {error}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"FAIL  {problem}", file=sys.stderr)
    for path in report.intact:
        print(f"intact       {path}")
    for path in report.damaged:
        print(f"DAMAGED      {path}  (kept as {path}{DAMAGED_SUFFIX}: do not load it)")
    for path in report.unreached:
        print(f"NOT REACHED  {path}")
    for path in report.unverified:
        print(f"UNVERIFIED   {path}  (no manifest to check it against)")
    print(f"{len(report.intact)} intact, {len(report.damaged)} damaged, "
          f"{len(report.unreached)} not reached, {len(report.unverified)} unverified: in "
          f"{report.folder}")
    return 0 if report.complete else 1


def _restore(args: argparse.Namespace) -> int:
    import psycopg

    from backup_pipeline.offsite import OffsiteError
    from backup_pipeline.pg import PgDumpError
    from backup_pipeline.restore import RestoreError, restore_archive

    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {message}", flush=True)

    settings = _settings()
    try:
        report = restore_archive(
            _source(args, settings), args.target, force=args.force,
            tables=args.table or None,
            config_to=Path(args.config_to) if args.config_to else None,
            no_owner=args.no_owner, progress=progress, signer=_signer(settings),
            allow_unsigned=args.allow_unsigned,
        )
    except (RestoreError, OSError, ValueError, psycopg.Error, PgDumpError, OffsiteError,
            _Refused) as error:
        # Refused, or failed before its commit (a configuration that cannot be written after
        # the commit is in the report instead): one line, no traceback.
        print(f"RESTORE FAILED: {error}", file=sys.stderr)
        return 2
    return _restore_outcome(args, report)


def _restore_outcome(args: argparse.Namespace, report: RestoreReport) -> int:
    """The database's verdict, then the configuration's, each on its own: a configuration
    not written does not undo a committed restore, so it gets its own line and exit code 3
    (1 still wins: a database that differs from the archive matters more)."""
    from backup_pipeline.restore import extract_config_command

    print(report.table_text())
    for name in report.config_written:
        print(f"config: {args.config_to}/{name}")
    verdict = "RESTORE OK" if report.ok else "RESTORE INCOMPLETE: see MISMATCH above"
    print(f"{verdict} into {report.target} in {report.seconds:.1f} s", flush=True)
    if report.config_problem:
        print(f"CONFIG NOT WRITTEN: {report.config_problem}; the database restore above stands. "
              f"Extract it by hand: {extract_config_command(report.archive)}", file=sys.stderr)
        return 3 if report.ok else 1
    return 0 if report.ok else 1


def _settings():
    from backup_pipeline.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as error:
        print(f"invalid setting: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _list(args: argparse.Namespace) -> int:
    """The archives kept in BACKUP_DIR or, with --remote, in the bucket: newest first."""
    from backup_pipeline.resources.storage import BackupStorage, read_last_success

    settings = _settings()
    if args.remote:
        from backup_pipeline.offsite import OffsiteError, remote_archives

        if not settings.offsite:
            print("no off-site copy is configured: set BACKUP_S3_BUCKET (and the other "
                  "BACKUP_S3_* settings)", file=sys.stderr)
            return 2
        target = _bucket(settings)
        try:
            found = remote_archives(target, settings.timezone)
        except OffsiteError as error:
            print(f"LIST FAILED: {error}", file=sys.stderr)
            return 2
        print(f"{len(found)} archives in {target.describe()}, newest first")
        for item in found:
            print(f"{item.moment:%Y-%m-%d %H:%M}  {layout.size_text(item.size):>12}  "
                  f"{target.url(item.key)}")
        return 0
    storage = BackupStorage(backup_dir=str(settings.backup_dir), timezone=settings.timezone)
    found_local = storage.archives()
    last = read_last_success(settings.backup_dir)
    print(f"{len(found_local)} archives in {settings.backup_dir}, newest first")
    for moment, path in found_local:
        sealed = "age-encrypted" if layout.is_sealed(path.name) else "in clear"
        print(f"{moment:%Y-%m-%d %H:%M}  {layout.size_text(path.stat().st_size):>12}  "
              f"{sealed:13}  {path}")
    if found_local and last is None:
        print("note: no backup is recorded as good yet (.last_backup_success is missing)")
    return 0


def _run_line(run) -> str:
    """The `last run` line: a finished run's duration and failure, a running one's heartbeat."""
    line = f"{run.status}  started {run.started_at}  "
    if run.status in ("SUCCESS", "FAILURE", "CANCELED"):
        line += f"took {run.duration_seconds} s"
    else:
        line += f"running for {run.duration_seconds} s" if run.duration_seconds else "not started"
        if run.heartbeat_age_seconds is not None:
            line += f", last heartbeat {run.heartbeat_age_seconds:.0f} s ago"
            line += " (its process DIED: see health-check)" if run.dead else ""
    line += f"  (run {run.run_id})"
    return line + (f"\n                  failed {run.failure}" if run.failure else "")


def _status(args: argparse.Namespace) -> int:
    from backup_pipeline.health import collect_status
    from backup_pipeline.sealing import DecryptionError, load_identities
    from backup_pipeline.sources import open_source
    from backup_pipeline.verify import verify_archive

    settings = _settings()
    status = collect_status(settings)
    if args.verify and status.newest_archive:
        # A sealed archive needs a private key, which the backup host usually does not hold.
        identity = settings.age_identity_file
        try:
            source = open_source(status.newest_archive.path,
                                 tuple(load_identities(identity)) if identity else ())
            status.newest_archive.verified = verify_archive(source,
                                                            signer=_signer(settings)).ok
        except DecryptionError as error:
            status.notes.append(f"--verify could not open the newest archive: {error}")
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    newest = status.newest_archive
    print(f"BACKUP_DIR        {status.backup_dir} ({status.archive_count} archives, "
          f"{status.free_disk_mb} MB free)")
    if newest:
        verified = {True: "verified", False: "NOT verified", None: "not recorded as verified"}
        print(f"newest archive    {newest.name}  {layout.size_text(newest.size_bytes)}  "
              f"{newest.age_hours:.1f} h old  {verified[newest.verified]}")
    else:
        print("newest archive    none")
    print(f"last success      {status.last_success_at or 'never'}"
          + (f" ({status.last_success_age_hours:.1f} h ago)" if status.last_success_at else "")
          + (f"  {status.last_success_archive}" if status.last_success_archive else ""))
    if status.backup_dir_error:
        print(f"BACKUP_DIR        NOT READABLE: {status.backup_dir_error}")
    if status.last_run:
        print(f"last run          {_run_line(status.last_run)}")
    if status.oldest_queued:
        queued = status.oldest_queued
        print(f"queued            {queued['job']} run {queued['run_id']} waiting for "
              f"{queued['waiting_seconds']:.0f} s")
    if status.success_rate:
        rate = status.success_rate
        print(f"success rate      {rate['succeeded']}/{rate['finished']} of the last runs"
              + (f" ({rate['percent']} %)" if rate["percent"] is not None else ""))
    proof = status.last_restore_proof
    print("restore proof     " + (
        f"restored and compared in {proof['seconds']:.1f} s into {proof['target']} (measured "
        f"recovery time of the last good backup)" if proof
        else "none: the last good backup was not restored (BACKUP_RESTORE_PROOF=off or older)"
        if status.last_success_at else "never"))
    drill = status.last_restore_drill
    print("last restore drill " + (
        f"{drill['archive']}: {'ok' if drill['ok'] else 'FAILED'} in {drill['restore_seconds']} s "
        f"at {drill['finished_at']} (measured recovery time)" if drill else "never"))
    offsite = status.last_offsite_copy
    print("off-site copy     " + (
        f"{offsite.get('url')}  {layout.size_text(int(offsite.get('size_bytes') or 0))}  "
        f"uploaded {status.last_offsite_age_hours:.1f} h ago, read back and verified"
        if offsite and status.last_offsite_age_hours is not None
        else "none yet" if settings.offsite else "not configured (BACKUP_S3_BUCKET)"))
    email = status.last_email
    print("last email        " + (
        f"{email['kind']} {'delivered' if email['ok'] else 'NOT DELIVERED'} at {email['at']} "
        f"via {email['transport']}" + ("" if email["ok"] else f": {email['error']}")
        if email else "none sent yet"))
    print(f"history from      {status.history_source}")
    for note in status.notes:
        print(f"note: {note}")
    return 0


def _health_check(args: argparse.Namespace) -> int:
    from backup_pipeline.health import collect_status, health_problems

    settings = _settings()
    problems = health_problems(settings, collect_status(settings))
    for problem in problems:
        print(f"UNHEALTHY: {problem}")
    if not problems:
        print("healthy")
    return 1 if problems else 0


def _serve_downloads(args: argparse.Namespace) -> int:
    from backup_pipeline.downloads import make_server
    from backup_pipeline.settings import read_secret

    settings = _settings()
    try:
        server = make_server(settings.backup_dir, read_secret("BACKUP_DOWNLOAD_SECRET") or "",
                             args.host, args.port)
    except ValueError as error:
        print(f"cannot serve downloads: {error}", file=sys.stderr)
        return 2
    print(f"serving signed downloads of {settings.backup_dir} on http://{args.host}:{args.port}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from backup_pipeline.sample_data.quickstart import run_quickstart

    return run_quickstart(Path(args.dir), args.scale, args.keep_server)


def _safeguard_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--identity", metavar="FILE",
                         help="the age private key (age-keygen's key.txt, or an SSH private key) "
                              "that opens a sealed .tar.gz.age archive (default "
                              "BACKUP_AGE_IDENTITY_FILE)")
    command.add_argument("--allow-unsigned", action="store_true",
                         help="accept an archive that BACKUP_SIGNING_PUBLIC_KEY did not sign "
                              "(made before signing was on), saying so")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backup-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser("verify", help="check an archive completely; exit 0 only if good")
    verify.add_argument("archive", help="a file, or s3://bucket/key (streamed, not downloaded)")
    _safeguard_options(verify)
    verify.set_defaults(func=_verify)

    listing = commands.add_parser("list", help="the archives kept, newest first")
    listing.add_argument("--remote", action="store_true",
                         help="those in the off-site bucket (BACKUP_S3_BUCKET) instead")
    listing.set_defaults(func=_list)

    restore = commands.add_parser(
        "restore", help="verify, then restore an archive into a database")
    restore.add_argument("archive", help="a file, or s3://bucket/key (streamed)")
    _safeguard_options(restore)
    restore.add_argument("--target", required=True,
                         help="libpq connection string or URI of the database to restore into "
                              "(created when missing); a password in it never reaches argv of "
                              "psql")
    restore.add_argument("--force", action="store_true",
                         help="replace the tables a non-empty target already has")
    restore.add_argument("--table", action="append", metavar="NAME",
                         help="merge only this table's rows into an existing database "
                              "(repeatable)")
    restore.add_argument("--no-owner", action="store_true",
                         help="leave out owners, grants and roles: every object belongs to the "
                              "restoring user (for a user who may not create roles)")
    restore.add_argument("--config-to", metavar="DIR", help="also write config/ out to DIR")
    restore.set_defaults(func=_restore)

    salvage = commands.add_parser(
        "salvage", help="extract what a damaged archive still holds, each file checked against "
                        "its manifest; exit 0 only if nothing was lost")
    salvage.add_argument("archive")
    salvage.add_argument("--to", required=True, metavar="DIR",
                         help="a new (or empty) folder for the files")
    salvage.set_defaults(func=_salvage)

    status = commands.add_parser("status", help="newest archive, last runs, disk, last drill")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--verify", action="store_true",
                        help="verify the newest archive now (reads it completely)")
    status.set_defaults(func=_status)

    health = commands.add_parser(
        "health-check", help="exit 0 when healthy, 1 with one line per problem (Docker)")
    health.set_defaults(func=_health_check)

    serve = commands.add_parser(
        "serve-downloads", help="serve archives through signed, expiring download links")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=_serve_downloads)

    quick = commands.add_parser(
        "quickstart", help="run a real backup on a throwaway sample PostgreSQL (README step 1)")
    quick.add_argument("--dir", default=".demo", help="where everything goes (default .demo)")
    quick.add_argument("--scale", type=float, default=4.0, help="sample data scale (default 4)")
    quick.add_argument("--keep-server", action="store_true",
                       help="leave the sample PostgreSQL running afterwards")
    quick.set_defaults(func=_quickstart)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
