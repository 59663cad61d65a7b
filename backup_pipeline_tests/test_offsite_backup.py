"""The off-site copy in a real backup: sealed, uploaded to a real S3 server (moto's, on
127.0.0.1), verified as stored, kept by the bucket's retention, linked in the email, listed,
verified and restored from `s3://` as the replacement server would, and a store that is down
failing the run with one alert while the local archive stays good.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_pipeline import layout
from backup_pipeline.health import collect_status, offsite_problem
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    age_key,
    outbox_messages,
    plain_text,
    rows,
    run_backup,
)
from backup_pipeline_tests.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY


def s3_env(server, bucket: str) -> dict[str, str]:
    return {"BACKUP_S3_BUCKET": bucket, "BACKUP_S3_PREFIX": "nightly",
            "BACKUP_S3_ENDPOINT_URL": server.endpoint_url, "BACKUP_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([BACKUP_PIPELINE, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_a_backup_goes_off_site_sealed_and_restores_from_the_bucket(
        s3_server, backup_env: dict[str, str], instance, monkeypatch, tmp_path: Path, server,
        source_db: str, scratch_db: str) -> None:
    from backup_pipeline import offsite

    bucket = s3_server.make_bucket(f"bp-offsite-{os.urandom(6).hex()}")
    identity, public = age_key(tmp_path)
    env = {**backup_env, **s3_env(s3_server, bucket), "BACKUP_AGE_RECIPIENTS": public,
           "BACKUP_RETENTION_MIN_COUNT": "1", "BACKUP_EMAIL_MAX_MB": "0.01"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    target = s3_server.target(bucket, "nightly")
    s3 = offsite.client(target)
    old_name = layout.archive_name(datetime.now(UTC) - timedelta(days=40), "UTC")
    for key in (f"nightly/{old_name}", "nightly/notes.txt", f"elsewhere/{old_name}"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"not a backup")

    result = run_backup(env, instance)
    assert result.success

    [kept] = sorted(Path(env["BACKUP_DIR"]).glob("critical_backup_*.tar.gz.age"))
    key = f"nightly/{kept.name}"
    stored = s3.get_object(Bucket=bucket, Key=key)
    body = stored["Body"].read()
    assert body == kept.read_bytes()
    assert stored["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    # Retention: the 40-day-old copy of ours went, nothing that is not ours was touched.
    listed = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {key, "nightly/notes.txt", f"elsewhere/{old_name}"}
    [materialized] = [e for e in result.get_asset_materialization_events()
                      if e.asset_key.path == ["offsite_copy"]]
    metadata = materialized.materialization.metadata
    assert metadata["key"].value == key
    assert metadata["deleted"].value == [f"nightly/{old_name}"]
    recorded = json.loads((Path(env["BACKUP_DIR"]) / layout.LAST_OFFSITE_FILE).read_text())
    assert recorded["url"] == f"s3://{bucket}/{key}" and recorded["size_bytes"] == len(body)

    # The email (too large to attach here) links the off-site object: it works without the
    # server, over plain HTTP, with no credentials.
    [message] = [m for m in outbox_messages(env) if "backup OK" in m["Subject"]]
    [link] = re.findall(r"^(http://127\.0\.0\.1:\d+/\S+)$", plain_text(message), re.MULTILINE)
    assert bucket in link and "X-Amz-Signature=" in link
    with urllib.request.urlopen(link, timeout=30) as response:
        assert response.read() == kept.read_bytes()

    # status and health-check report the copy and its age.
    settings = load_settings(env)
    assert offsite_problem(settings, collect_status(settings)) is None
    shown = cli("status", env=env)
    assert f"off-site copy     s3://{bucket}/{key}" in shown.stdout, shown.stdout

    # The replacement server: no BACKUP_DIR, only the bucket, the credentials and the key.
    fresh = {**s3_env(s3_server, bucket), "BACKUP_DIR": str(tmp_path / "new_server")}
    listing = cli("list", "--remote", env=fresh)
    assert listing.returncode == 0 and f"s3://{bucket}/{key}" in listing.stdout
    assert old_name not in listing.stdout
    url = f"s3://{bucket}/{key}"
    checked = cli("verify", url, "--identity", str(identity), env=fresh)
    assert checked.returncode == 0, checked.stderr
    assert not (tmp_path / "new_server").exists()  # streamed: nothing was downloaded
    restored = cli("restore", url, "--identity", str(identity), "--target",
                   server.dsn(scratch_db), env=fresh)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rows(server.dsn(scratch_db), "users") == rows(server.dsn(source_db), "users")


def test_a_store_that_is_down_fails_the_run_with_one_alert_and_the_archive_stays_good(
        stopped_s3_server, backup_env: dict[str, str], instance, monkeypatch) -> None:
    env = {**backup_env, **s3_env(stopped_s3_server, "bp-down")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_backup(env, instance)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "backup.offsite_copy"
    backup_dir = Path(env["BACKUP_DIR"])
    [kept] = sorted(backup_dir.glob(layout.ARCHIVE_GLOB))
    # The archive is good and recorded: the status files name it, `verify` passes.
    assert json.loads((backup_dir / layout.LAST_BACKUP_FILE).read_text())["archive"] == kept.name
    assert subprocess.run([BACKUP_PIPELINE, "verify", str(kept)], capture_output=True
                          ).returncode == 0
    assert not (backup_dir / layout.LAST_OFFSITE_FILE).exists()
    messages = outbox_messages(env)
    assert [m["Subject"].startswith("URGENT") for m in messages] == [True]
    text = plain_text(messages[0])
    assert f"s3://bp-down/nightly/{kept.name}" in text
    assert stopped_s3_server.endpoint_url in text
    assert "The archive is good and recorded in BACKUP_DIR" in text
    assert SECRET_ACCESS_KEY not in text
    # And health-check says the copy off this server is missing.
    settings = load_settings(env)
    problem = offsite_problem(settings, collect_status(settings))
    assert problem is not None and "no off-site copy has ever been recorded" in problem


@pytest.fixture(scope="module")
def uploaded(s3_server, archive: Path) -> str:
    """The session's (clear) archive uploaded as the pipeline does: its s3:// URL."""
    from backup_pipeline import offsite
    from backup_pipeline.files import file_sha256

    bucket = s3_server.make_bucket(f"bp-plain-{os.urandom(6).hex()}")
    copy = offsite.upload_archive(s3_server.target(bucket, "nightly"), archive,
                                  file_sha256(archive))
    return copy.url


def test_verify_streams_an_archive_from_the_bucket(s3_server, uploaded: str) -> None:
    env = {"BACKUP_S3_ENDPOINT_URL": s3_server.endpoint_url, "BACKUP_S3_REGION": REGION,
           "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
           "BACKUP_S3_BUCKET": uploaded.split("/")[2]}
    checked = cli("verify", uploaded, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "files verified" in checked.stdout
    missing = cli("verify", uploaded.replace("critical_backup_", "critical_backup_9"), env=env)
    assert missing.returncode == 2
    assert "NoSuchKey" in missing.stderr or "does not exist" in missing.stderr
    assert SECRET_ACCESS_KEY not in missing.stderr
