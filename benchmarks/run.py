"""Side-by-side benchmark: the seeds' Bash approach, the pipeline, and the floor, on the same data.

    .venv/bin/python benchmarks/run.py --scales 10,40 --repeats 3 --out benchmarks/results.json

For each scale it builds the sample Smart AI Hub database with the project's own generator on a
throwaway server (shared_buffers a quarter of the memory, at most 4GB), then runs alternately,
`--repeats` times each, in a different order each round:

- seeds:    what the seeds' guides do: `pg_dump --table` per critical table, `psql \\copy` of the
            windowed rows to CSV, `tar -czf` (gzip), `gzip -t`;
- pipeline: `dagster job execute -m backup_pipeline.definitions -j backup_job`, a real run,
            with its restore proof (the archive restored into a throwaway server and compared);
- pipeline_without_proof: the same with BACKUP_RESTORE_PROOF=off;
- floor:    the same data copied out of PostgreSQL to /dev/null in one psql session: exactly the
            rows the pipeline's archive holds (the window plus the older rows that backed-up rows
            reference), by the pipeline's own queries (`psql \\copy (...) TO '/dev/null'`);
- floor_window_only: the seeds' rows (the window alone) copied out the same way, for reference.

The pipeline runs against one Dagster instance per scale (as a deployment has), created before
the first timed run. It prints, per approach, the median wall time, the peak memory (RSS summed
over the whole process tree, sampled every 20 ms), the archive size and the ratios
pipeline/seeds and pipeline/floor, and the proof's own time (from `.last_backup.json`).
It compares `backup-pipeline restore` with the seeds' manual psql restore. Then it runs the
pipeline back to back (one untimed run, then `--repeats` timed), doubles the excluded data
(audit logs, sessions, old transactions) and runs it again the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from backup_pipeline.export_plan import build_plan
from backup_pipeline.sample_data.generate import add_excluded_data, create_schema, load_sample_data
from backup_pipeline.settings import (
    DEFAULT_CRITICAL_TABLES,
    DEFAULT_TRANSACTION_TABLES,
    load_settings,
)
from backup_pipeline.throwaway_pg import start_cluster

VENV_BIN = Path(sys.executable).parent
DB = "smart_ai_hub"

SEEDS_SCRIPT = r"""
set -euo pipefail
work=$(mktemp -d)
mkdir -p "$work/database" "$work/config"
for t in {critical}; do
  pg_dump --table="$t" > "$work/database/$t.sql"
done
for t in {windowed}; do
  psql -X -q -c "\copy (SELECT * FROM $t WHERE created_at >= now() - interval '3 months') \
TO '$work/database/$t.csv' CSV HEADER"
done
cp -r "$CONFIG_DIR"/. "$work/config/"
echo "backup" > "$work/BACKUP_INFO.txt"
tar -czf "$OUT" -C "$work" .
gzip -t "$OUT"
rm -rf "$work"
"""

FLOOR_WINDOW_ONLY_SCRIPT = r"""
set -euo pipefail
for t in {critical}; do
  psql -X -q -c "\copy $t TO '/dev/null'"
done
for t in {windowed}; do
  psql -X -q -c "\copy (SELECT * FROM $t WHERE created_at >= now() - interval '3 months') \
TO '/dev/null' CSV HEADER"
done
"""

SEEDS_RESTORE = r"""
set -euo pipefail
work=$(mktemp -d)
tar -xzf "$ARCHIVE" -C "$work"
psql -X -q -v ON_ERROR_STOP=1 -d "$RESTORE_DB" -f "$SCHEMA_PRE" > /dev/null
for t in {critical}; do
  psql -X -q -v ON_ERROR_STOP=1 -d "$RESTORE_DB" -f "$work/database/$t.sql" > /dev/null
done
for t in {windowed}; do
  psql -X -q -v ON_ERROR_STOP=1 -d "$RESTORE_DB" \
    -c "\copy $t FROM '$work/database/$t.csv' CSV HEADER"
done
psql -X -q -v ON_ERROR_STOP=1 -d "$RESTORE_DB" -f "$SCHEMA_POST" > /dev/null
rm -rf "$work"
"""


def floor_script(dsn: str) -> str:
    """A psql script copying exactly the pipeline's data to /dev/null, by the pipeline's queries."""
    settings = load_settings({"POSTGRES_HOST": "-", "POSTGRES_DB": DB, "POSTGRES_USER": "-",
                              "BACKUP_DIR": tempfile.gettempdir()})
    with psycopg.connect(dsn) as conn:
        cutoff = conn.execute("SELECT now() - interval '3 months'").fetchone()[0]
        plan = build_plan(conn, settings, cutoff)
        lines = [f"\\copy ({plan.critical_query(t).as_string(conn)}) TO '/dev/null'"
                 for t in plan.critical]
        lines += [f"\\copy ({plan.window_query(w).as_string(conn)}) TO '/dev/null' "
                  "WITH (FORMAT csv, HEADER)" for w in plan.windowed]
    return "\n".join(lines) + "\n"


def tree_rss(root: int) -> int:
    """RSS in bytes of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(command: list[str], env: dict[str, str], cwd: Path | None = None) -> dict:
    """Wall time and peak tree RSS of one command; fails loudly if the command fails."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output = process.communicate()[0]
    done.set()
    sampler.join()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({process.returncode}):\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 1024 / 1024, 1)}


def settle(conn: psycopg.Connection) -> None:
    """VACUUM, ANALYZE and CHECKPOINT fresh data before timing anything: otherwise autovacuum
    and the first readers' hint-bit writes land in whichever approach happens to run first."""
    conn.execute("VACUUM (ANALYZE)")
    conn.execute("CHECKPOINT")


def database_size_mb(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        return round(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
                     / 1024 / 1024, 1)


def shared_buffers() -> str:
    """A quarter of the memory, at most 4GB: what a server of this size is given. (With the
    default 128MB every read went to the page cache, which this VM empties of pages left idle
    for about 30 s: the approaches measured each other's cache instead of their own work.)"""
    quarter = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    return f"{max(128, min(4096, quarter // (1024 * 1024)))}MB"


def run_scale(scale: float, repeats: int, workdir: Path) -> dict:
    cluster = start_cluster(settings={"shared_buffers": shared_buffers()})
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        generated = time.monotonic()
        with psycopg.connect(cluster.dsn(DB), autocommit=True) as conn:
            create_schema(conn)
            load_sample_data(conn, scale=scale)
            settle(conn)
        generated_mb = database_size_mb(cluster.dsn(DB))
        print(f"scale {scale:g}: generated {generated_mb} MB in "
              f"{time.monotonic() - generated:.0f} s", flush=True)
        config = workdir / "config"
        (config / "ssl").mkdir(parents=True, exist_ok=True)
        for name in (".env.production", "docker-compose.prod.yml", "nginx.prod.conf",
                     "ssl/cert.pem", "ssl/key.pem"):
            (config / name).write_text(f"{name}\n")
        libpq = {**os.environ, "PGHOST": cluster.host, "PGPORT": str(cluster.port),
                 "PGUSER": cluster.user, "PGPASSWORD": cluster.password, "PGDATABASE": DB,
                 "CONFIG_DIR": str(config)}
        libpq["PATH"] = f"{VENV_BIN}:{libpq['PATH']}"
        critical = " ".join(DEFAULT_CRITICAL_TABLES)
        windowed = " ".join(DEFAULT_TRANSACTION_TABLES)
        seeds = SEEDS_SCRIPT.replace("{critical}", critical).replace("{windowed}", windowed)
        floor_window_only = FLOOR_WINDOW_ONLY_SCRIPT.replace("{critical}", critical).replace(
            "{windowed}", windowed)
        floor_file = workdir / "floor.psql"
        floor_file.write_text(floor_script(cluster.dsn(DB)))
        # Like the pipeline's readers: no JIT, the same room for the look-ups' hash tables.
        # Parallel query stays on: it helps a single session.
        floor_env = {**libpq, "PGOPTIONS": "-c jit=off -c work_mem=128MB"}
        home = workdir / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("")  # defaults: SQLite storage in this folder
        subprocess.run([str(VENV_BIN / "python"), "-c",
                        "import dagster; dagster.DagsterInstance.get().get_runs(limit=1)"],
                       env={**os.environ, "DAGSTER_HOME": str(home)}, check=True)

        def pipeline_env(run: int, proof: str = "always") -> dict[str, str]:
            return {**libpq, **cluster.env(DB), "BACKUP_DIR": str(workdir / f"pipe_{run}"),
                    "BACKUP_CONFIG_DIR": str(config), "DAGSTER_HOME": str(home),
                    "BACKUP_MIN_SIZE_MB": "0", "BACKUP_MAX_SIZE_MB": "100000",
                    "ADMIN_EMAILS": "bench@example.com", "BACKUP_RESTORE_PROOF": proof}

        results: dict[str, list[dict]] = {"seeds": [], "pipeline": [],
                                          "pipeline_without_proof": [], "floor": [],
                                          "floor_window_only": []}
        archives: dict[str, Path] = {}

        def run_seeds(run: int) -> None:
            out = workdir / f"seeds_{run}.tar.gz"
            seeds_run = measure(["bash", "-c", seeds], {**libpq, "OUT": str(out)})
            seeds_run["archive_mb"] = round(out.stat().st_size / 1024 / 1024, 2)
            archives["seeds"] = out
            results["seeds"].append(seeds_run)

        def run_pipeline(run: int, proof: bool = True) -> None:
            name = "pipeline" if proof else "pipeline_without_proof"
            env = pipeline_env(run if proof else 50 + run, "always" if proof else "off")
            pipe_run = measure([str(VENV_BIN / "dagster"), "job", "execute", "-m",
                                "backup_pipeline.definitions", "-j", "backup_job"], env)
            [archive] = Path(env["BACKUP_DIR"]).glob("critical_backup_*.tar.gz")
            pipe_run["archive_mb"] = round(archive.stat().st_size / 1024 / 1024, 2)
            status = json.loads((Path(env["BACKUP_DIR"]) / ".last_backup.json").read_text())
            if proof:
                pipe_run["proof_seconds"] = status["restore_proof"]["seconds"]
                pipe_run["proof_phases"] = status["restore_proof"]["phases"]
            archives[name] = archive
            results[name].append(pipe_run)

        def run_pipeline_without_proof(run: int) -> None:
            run_pipeline(run, proof=False)

        def run_floor(run: int) -> None:
            results["floor"].append(measure(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(floor_file)], floor_env))

        def run_floor_window_only(run: int) -> None:
            results["floor_window_only"].append(measure(["bash", "-c", floor_window_only],
                                                        floor_env))

        approaches = [run_seeds, run_pipeline, run_pipeline_without_proof, run_floor,
                      run_floor_window_only]
        for run in range(repeats):
            # The order turns every round: when the database does not fit in the page cache,
            # whoever reads a table right after another approach finds it cached.
            turn = run % len(approaches)
            for approach in approaches[turn:] + approaches[:turn]:
                approach(run)
            print(f"  run {run + 1}: " + ", ".join(
                f"{k} {v[-1]['seconds']} s" for k, v in results.items()), flush=True)

        summary = {name: {"median_seconds": statistics.median(r["seconds"] for r in runs),
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                          "archive_mb": runs[-1].get("archive_mb"), "runs": runs}
                   for name, runs in results.items()}
        summary["pipeline"]["proof_median_seconds"] = statistics.median(
            r["proof_seconds"] for r in results["pipeline"])
        pipe = summary["pipeline"]["median_seconds"]
        without = summary["pipeline_without_proof"]["median_seconds"]
        # The pipeline's archive carries more rows than the seeds' (older rows that backed-up
        # rows reference), so compare its compression on the same content as well.
        same = workdir / "same_content"
        same.mkdir()
        subprocess.run(["tar", "-xzf", str(archives["pipeline"]), "-C", str(same)], check=True)
        same_tar = workdir / "same_content.tar.gz"
        subprocess.run(["tar", "-czf", str(same_tar), "-C", str(same), "."], check=True)
        summary["seeds_tar_of_pipeline_content_mb"] = round(same_tar.stat().st_size / 2**20, 2)
        summary["ratios"] = {
            "pipeline_over_seeds": round(pipe / summary["seeds"]["median_seconds"], 3),
            "pipeline_over_floor": round(pipe / summary["floor"]["median_seconds"], 3),
            "pipeline_without_proof_over_seeds": round(
                without / summary["seeds"]["median_seconds"], 3),
            "pipeline_without_proof_over_floor": round(
                without / summary["floor"]["median_seconds"], 3),
            "pipeline_over_floor_window_only": round(
                pipe / summary["floor_window_only"]["median_seconds"], 3),
            "archive_pipeline_over_seeds": round(
                summary["pipeline"]["archive_mb"] / summary["seeds"]["archive_mb"], 3),
            "archive_pipeline_over_tar_czf_of_same_content": round(
                summary["pipeline"]["archive_mb"] / summary["seeds_tar_of_pipeline_content_mb"],
                3),
        }

        # Restore: the pipeline's command against the seeds' manual procedure, same server.
        restore_env = dict(libpq)
        for section in ("pre", "post"):
            path = workdir / f"schema_{section}.sql"
            subprocess.run(["pg_dump", f"--section={section}-data", "--no-owner", "-f",
                            str(path)], env=libpq, check=True)
            restore_env[f"SCHEMA_{section.upper()}"] = str(path)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE seeds_restore")
        seeds_restore = SEEDS_RESTORE.replace("{windowed}", windowed).replace(
            "{critical}", critical)
        # The seeds restore the pipeline's archive the way their guide says (their own archive
        # holds full CREATE TABLE dumps per table, which cannot be loaded over one schema).
        seeds_restore_run = measure(["bash", "-c", seeds_restore], {
            **restore_env, "ARCHIVE": str(archives["pipeline"]), "RESTORE_DB": "seeds_restore"})
        pipe_restore_run = measure([str(VENV_BIN / "backup-pipeline"), "restore",
                                    str(archives["pipeline"]), "--target",
                                    cluster.dsn("pipeline_restore")], libpq)
        summary["restore"] = {"seeds_manual_psql": seeds_restore_run,
                              "backup_pipeline_restore": pipe_restore_run,
                              "restore_proof_median_seconds":
                                  summary["pipeline"]["proof_median_seconds"]}

        # Excluded data doubled: the pipeline's time should barely move. Before and after are
        # measured the same way, back to back after one untimed run (the rounds above share
        # the cache with the other approaches, and loading the new data evicts it), without
        # the proof: it restores what the archive holds, which the excluded data is not.
        def pipeline_back_to_back(first: int) -> tuple[dict, list[dict]]:
            runs = [measure([str(VENV_BIN / "dagster"), "job", "execute", "-m",
                             "backup_pipeline.definitions", "-j", "backup_job"],
                            pipeline_env(first + run, "off")) for run in range(repeats + 1)]
            return runs[0], runs[1:]

        warm_before, before = pipeline_back_to_back(100)
        with psycopg.connect(cluster.dsn(DB), autocommit=True) as conn:
            add_excluded_data(conn, scale * 4)
            settle(conn)
        print(f"  excluded data added: database now {database_size_mb(cluster.dsn(DB))} MB",
              flush=True)
        warm_after, after = pipeline_back_to_back(200)
        before_median = statistics.median(r["seconds"] for r in before)
        after_median = statistics.median(r["seconds"] for r in after)
        summary["excluded_data_doubled"] = {
            "database_mb": database_size_mb(cluster.dsn(DB)),
            "pipeline_median_seconds_before": before_median,
            "pipeline_median_seconds": after_median,
            "change": round(after_median / before_median - 1, 3),
            "runs_before": before,
            "runs": after,
            "untimed_first_runs": {"before": warm_before, "after": warm_after},
        }
        summary["database_mb_generated"] = generated_mb
        summary["database_mb"] = database_size_mb(cluster.dsn(DB))
        return summary
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="10,40", help="comma-separated sample data scales")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--keep", action="store_true",
                        help="keep the other scales already in --out instead of replacing it")
    args = parser.parse_args()
    out = Path(args.out)
    # Scales measured earlier stay in the file (a large scale can be run on its own); the ones
    # measured now replace theirs.
    report = json.loads(out.read_text()) if args.keep and out.is_file() else {}
    for scale in (float(s) for s in args.scales.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix=f"bench_{scale:g}_"))
        try:
            report[f"scale_{scale:g}"] = run_scale(scale, args.repeats, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        result = report[f"scale_{scale:g}"]
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1,
                         default=str)[:4000], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    for name, result in report.items():
        print(f"\n{name} (database {result['database_mb']} MB after excluded data)")
        print(f"  {'approach':<17} {'median s':>9} {'peak MB':>8} {'archive MB':>11}")
        for approach in ("seeds", "pipeline", "pipeline_without_proof", "floor",
                         "floor_window_only"):
            if approach not in result:  # a scale measured before this approach existed
                continue
            r = result[approach]
            print(f"  {approach:<17} {r['median_seconds']:>9} {r['peak_rss_mb']:>8} "
                  f"{r['archive_mb'] if r['archive_mb'] is not None else '-':>11}")
        print(f"  ratios {result['ratios']}")
        print(f"  excluded data doubled: pipeline {result['excluded_data_doubled']['change']:+.1%}")
        print(f"  restore: {result['restore']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
