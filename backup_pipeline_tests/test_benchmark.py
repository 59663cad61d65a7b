"""A smoke run of benchmarks/run.py at a tiny scale: every approach runs and the figures add up.

No timing is asserted (figures at this scale mean nothing); what must hold is that the benchmark
measures what it says: the pipeline made a verified archive, the floor copies exactly the rows the
pipeline backs up, the ratios are computed from the medians it reports, and the restore ran.
"""

import json
import subprocess
import sys
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import run as benchmark  # noqa: E402


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--scales", "0.05",
         "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())["scale_0.05"]
    approaches = ("seeds", "pipeline", "pipeline_without_proof", "floor", "floor_window_only")
    for name in approaches:
        assert report[name]["median_seconds"] > 0
        assert report[name]["peak_rss_mb"] > 0
    assert report["pipeline"]["archive_mb"] > 0 and report["seeds"]["archive_mb"] > 0
    ratios = report["ratios"]
    pipeline = report["pipeline"]["median_seconds"]
    assert ratios["pipeline_over_seeds"] == round(pipeline / report["seeds"]["median_seconds"], 3)
    assert ratios["pipeline_over_floor"] == round(pipeline / report["floor"]["median_seconds"], 3)
    without = report["pipeline_without_proof"]["median_seconds"]
    assert ratios["pipeline_without_proof_over_seeds"] == round(
        without / report["seeds"]["median_seconds"], 3)
    # The proof's own time is the one the run recorded, and part of the run's time.
    proof = report["pipeline"]["runs"][0]["proof_seconds"]
    assert 0 < proof < pipeline
    assert report["restore"]["restore_proof_median_seconds"] == proof
    assert 0.5 < ratios["archive_pipeline_over_tar_czf_of_same_content"] < 1.5
    restore = report["restore"]
    assert restore["backup_pipeline_restore"]["seconds"] > 0
    assert restore["seeds_manual_psql"]["seconds"] > 0
    doubled = report["excluded_data_doubled"]
    assert doubled["database_mb"] > report["database_mb_generated"]
    assert len(doubled["runs"]) == 1 and doubled["pipeline_median_seconds"] > 0
    assert len(doubled["runs_before"]) == 1 and doubled["pipeline_median_seconds_before"] > 0
    assert doubled["change"] == round(doubled["pipeline_median_seconds"]
                                      / doubled["pipeline_median_seconds_before"] - 1, 3)
    assert "ratios" in result.stdout


def test_floor_copies_exactly_the_pipelines_rows(source_db, server):
    """The floor's queries are the pipeline's own: the window plus the older referenced rows."""
    dsn = server.dsn(source_db)
    script = benchmark.floor_script(dsn)
    lines = script.splitlines()
    assert len(lines) == 13 and all(line.startswith("\\copy (") for line in lines)
    with psycopg.connect(dsn) as conn:
        older_referenced = conn.execute(
            "SELECT count(*) FROM purchases p WHERE p.created_at < now() - interval '3 months' "
            "AND EXISTS (SELECT 1 FROM credit_transactions c WHERE c.purchase_id = p.id "
            "AND c.created_at >= now() - interval '3 months')").fetchone()[0]
        assert older_referenced > 0
        purchases = next(line for line in lines if '"purchases"' in line)
        query = purchases[len("\\copy ("):purchases.rindex(") TO '/dev/null'")]
        copied = conn.execute(f"SELECT count(*) FROM ({query}) q").fetchone()[0]
        in_window = conn.execute("SELECT count(*) FROM purchases "
                                 "WHERE created_at >= now() - interval '3 months'").fetchone()[0]
    assert copied >= in_window + older_referenced
