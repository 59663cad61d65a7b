"""The `backup-pipeline` console script: thin, it calls the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _verify(args: argparse.Namespace) -> int:
    from backup_pipeline.verify import verify_archive

    report = verify_archive(Path(args.archive))
    for check in report.files.values():
        state = "ok" if check.problem is None else "FAIL"
        print(f"{state:4}  {check.size:>12,}  {check.sha256[:16]}  {check.path}")
    for problem in report.problems:
        print(f"FAIL  {problem}", file=sys.stderr)
    print(("OK  " if report.ok else "FAILED  ") + report.summary())
    return 0 if report.ok else 1


def _quickstart(args: argparse.Namespace) -> int:
    from backup_pipeline.sample_data.quickstart import run_quickstart

    return run_quickstart(Path(args.dir), args.scale, args.keep_server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backup-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser("verify", help="check an archive completely; exit 0 only if good")
    verify.add_argument("archive")
    verify.set_defaults(func=_verify)

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
