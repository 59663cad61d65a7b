"""`backup-pipeline quickstart`, the README's first command: a real backup, end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

from backup_pipeline import layout
from backup_pipeline_tests.helpers import BACKUP_PIPELINE


def test_quickstart_at_a_small_scale_makes_a_verified_backup(tmp_path):
    """At a small --scale the sample archive is under BACKUP_MIN_SIZE_MB's default of 1 MB, which
    would fail the blocking size check: the demo sets its own bound, and demo.env says why. (Its
    own throwaway servers: about 10 s.)"""
    demo = tmp_path / "demo"
    done = subprocess.run([BACKUP_PIPELINE, "quickstart", "--dir", str(demo), "--scale", "0.1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4/4 verified: critical_backup_" in done.stdout
    [archive] = (demo / "backups").glob(layout.ARCHIVE_GLOB)
    assert archive.stat().st_size < 1024 * 1024, "the case the default size bound refuses"
    lines = (demo / "demo.env").read_text().splitlines()
    bound = lines.index("BACKUP_MIN_SIZE_MB=0")
    assert lines[bound - 1].startswith("# ") and "--scale" in " ".join(lines[:bound])
    sourced = subprocess.run(["bash", "-c", f"set -a; . {demo / 'demo.env'}; set +a; "
                                            f"echo $BACKUP_MIN_SIZE_MB $BACKUP_DIR"],
                             capture_output=True, text=True, check=True)
    assert sourced.stdout.split() == ["0", str(demo / "backups")]
    # Launched with dg, on the demo's own instance, and not a warning on the way.
    assert "3/4 running: dg launch --job backup_job" in done.stdout
    run_log = (demo / "backup_run.log").read_text()
    assert "RUN_SUCCESS" in run_log
    assert "Warning" not in run_log and "telemetry" not in run_log.lower(), run_log[:3000]
    instance = (demo / "dagster_home" / "dagster.yaml").read_text()
    assert "telemetry:\n  enabled: false" in instance and "HeartbeatRunLauncher" in instance
    [ui] = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("cd ")]
    assert ui.endswith("/dg dev") and f". {demo / 'demo.env'}" in ui
    assert not (Path(ui.split()[1]) / "dagster.yaml").exists()  # no "will not be used" warning
