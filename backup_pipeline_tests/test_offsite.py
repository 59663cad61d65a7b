"""The off-site copy against a real S3 server (moto's, over HTTP): verified uploads, retention
that deletes only our old copies, streaming reads, and failures that say where and why."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from backup_pipeline import layout, offsite
from backup_pipeline.alerts import kind_of
from backup_pipeline_tests.s3_server import S3Server, start_s3_server, unique_bucket

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
TZ = "UTC"


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket(unique_bucket())


@pytest.fixture
def target(s3_server: S3Server, bucket: str) -> offsite.S3Target:
    return s3_server.target(bucket, "backups")


def _archive(folder: Path, size: int) -> tuple[Path, str]:
    """A file named as the archive made at NOW, of random bytes, and its sha256."""
    data = os.urandom(size)
    path = folder / _old_name(0)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _keys(target: offsite.S3Target, prefix: str = "") -> set[str]:
    pages = offsite.client(target).get_paginator("list_objects_v2").paginate(
        Bucket=target.bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", ())}


def _put(target: offsite.S3Target, *keys: str) -> None:
    s3 = offsite.client(target)
    for key in keys:
        s3.put_object(Bucket=target.bucket, Key=key, Body=b"x")


def _open_uploads(target: offsite.S3Target) -> list:
    return offsite.client(target).list_multipart_uploads(Bucket=target.bucket).get("Uploads", [])


def _open(target: offsite.S3Target, key: str) -> None:
    with offsite.open_remote(target, key):
        pass


def _old_name(days_ago: float, suffix: str = "") -> str:
    return layout.archive_name(NOW - timedelta(days=days_ago), TZ) + suffix


# --- the target ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "stored"), [
    ("backups", "backups/"), ("/backups/", "backups/"), ("a/b", "a/b/"), ("", ""), ("/", "")])
def test_the_prefix_is_empty_or_ends_in_one_slash(given, stored):
    target = offsite.S3Target(bucket="b", prefix=given)
    assert target.prefix == stored
    assert target.key_for("x.tar.gz") == f"{stored}x.tar.gz"
    assert target.url(target.key_for("x")) == f"s3://b/{stored}x"


def test_credentials_go_together_and_empty_ones_are_unset():
    with pytest.raises(ValueError, match="go together"):
        offsite.S3Target(bucket="b", access_key_id="id")
    with pytest.raises(ValueError, match="session token"):
        offsite.S3Target(bucket="b", session_token="token")
    with pytest.raises(ValueError, match="bucket name"):
        offsite.S3Target(bucket="b/c")
    target = offsite.S3Target(bucket="b", access_key_id="", secret_access_key="",
                              endpoint_url="")
    assert (target.access_key_id, target.secret_access_key, target.endpoint_url) == (None,) * 3


def test_parse_s3_url():
    assert offsite.parse_s3_url("s3://bucket/backups/a.tar.gz") == ("bucket", "backups/a.tar.gz")
    for wrong in ("bucket/a.tar.gz", "s3://bucket", "s3://bucket/", "s3:///key",
                  "s3://bucket/folder/", "https://bucket/key"):
        with pytest.raises(ValueError, match="expected s3://<bucket>/<key>"):
            offsite.parse_s3_url(wrong)


# --- uploads ------------------------------------------------------------------------------------

def test_a_multipart_upload_is_stored_verified_and_downloads_the_same(target, tmp_path):
    path, sha256 = _archive(tmp_path, 20 * layout.MB + 123)
    copy = offsite.upload_archive(target, path, sha256, part_mb=5)

    key = f"backups/{path.name}"
    assert (copy.bucket, copy.key, copy.size, copy.sha256) == (
        target.bucket, key, path.stat().st_size, sha256)
    assert copy.url == f"s3://{target.bucket}/{key}" and copy.seconds > 0
    s3 = offsite.client(target)
    head = s3.head_object(Bucket=target.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-5")  # 4 parts of 5 MB and the rest: multipart
    assert head["Metadata"] == {"sha256": sha256}
    s3.download_file(target.bucket, key, str(tmp_path / "downloaded"))
    assert (tmp_path / "downloaded").read_bytes() == path.read_bytes()
    assert _open_uploads(target) == []


def test_a_copy_that_does_not_hash_to_the_archive_is_deleted(target, tmp_path):
    path, _ = _archive(tmp_path, 1000)
    wrong = hashlib.sha256(b"another archive").hexdigest()
    with pytest.raises(offsite.OffsiteError, match="did not verify") as raised:
        offsite.upload_archive(target, path, wrong)
    message = str(raised.value)
    assert target.url(target.key_for(path.name)) in message
    assert "it was deleted" in message and wrong in message
    assert kind_of(raised.value) == "offsite"
    assert _keys(target) == set()


def test_upload_refuses_a_part_size_s3_would_refuse_and_a_malformed_hash(target, tmp_path):
    path, sha256 = _archive(tmp_path, 10)
    with pytest.raises(ValueError, match="part_mb"):
        offsite.upload_archive(target, path, sha256, part_mb=4)
    with pytest.raises(ValueError, match="sha256"):
        offsite.upload_archive(target, path, sha256.upper())
    assert _keys(target) == set()


def test_a_multipart_upload_the_store_refuses_leaves_no_object_and_no_open_upload(tmp_path):
    """A server that wants 6 MB parts refuses the upload at its last step (after every part was
    sent): boto3 aborts it, and neither an object nor the parts stay behind."""
    strict = start_s3_server(env={"S3_UPLOAD_PART_MIN_SIZE": str(6 * layout.MB)})
    try:
        target = strict.target(strict.make_bucket(unique_bucket()), "backups")
        path, sha256 = _archive(tmp_path, 12 * layout.MB)
        with pytest.raises(offsite.OffsiteError, match="EntityTooSmall") as raised:
            offsite.upload_archive(target, path, sha256, part_mb=5)
        assert target.url(target.key_for(path.name)) in str(raised.value)
        assert _keys(target) == set()
        assert _open_uploads(target) == []
    finally:
        strict.stop()


def _kill_after_first_part(server: S3Server, target: offsite.S3Target, done: threading.Event,
                           killed: list[bool]) -> None:
    """Kill the server as soon as it holds one part of the upload: the others are on the way."""
    s3 = offsite.client(target)
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        for upload in s3.list_multipart_uploads(Bucket=target.bucket).get("Uploads", []):
            parts = s3.list_parts(Bucket=target.bucket, Key=upload["Key"],
                                  UploadId=upload["UploadId"]).get("Parts", [])
            if parts:
                killed.append(not done.is_set())
                server.stop()
                return
        time.sleep(0.01)


def test_an_upload_cut_off_by_a_dying_server_fails_in_bounded_time(tmp_path):
    server = start_s3_server()
    try:
        target = server.target(server.make_bucket(unique_bucket()), "backups", attempts=2,
                               connect_timeout=1, read_timeout=3)
        path = tmp_path / _old_name(0)
        with path.open("wb") as sparse:
            sparse.truncate(128 * layout.MB)
        done, killed = threading.Event(), []
        killer = threading.Thread(target=_kill_after_first_part,
                                  args=(server, target, done, killed))
        killer.start()
        started = time.monotonic()
        try:
            with pytest.raises(offsite.OffsiteError) as raised:
                offsite.upload_archive(target, path, "0" * 64, part_mb=5)
        finally:
            done.set()
            killer.join()
        assert killed == [True], "the server was not killed during the upload"
        assert time.monotonic() - started < 15
        message = str(raised.value)
        assert f"s3://{target.bucket}/backups/{path.name}" in message
        assert "Error" in message and "Check the endpoint URL" in message
        assert "\n" not in message
    finally:
        server.stop()


def test_a_stopped_server_fails_every_operation_cleanly(stopped_s3_server, tmp_path):
    target = stopped_s3_server.target(unique_bucket(), "backups", attempts=1, connect_timeout=1,
                                      read_timeout=1)
    path, sha256 = _archive(tmp_path, 10)
    started = time.monotonic()
    attempts = [
        lambda: offsite.upload_archive(target, path, sha256),
        lambda: offsite.remote_archives(target, TZ),
        lambda: offsite.apply_remote_retention(target, newest_key=target.key_for(path.name),
                                               retention_days=1, min_count=1, timezone=TZ),
        lambda: _open(target, target.key_for(path.name)),
        lambda: offsite.object_size(target, target.key_for(path.name)),
    ]
    for attempt in attempts:
        with pytest.raises(offsite.OffsiteError, match="Could not connect") as raised:
            attempt()
        assert target.bucket in str(raised.value) and "\n" not in str(raised.value)
    assert time.monotonic() - started < 10


# --- listing and retention ----------------------------------------------------------------------

FOREIGN = [
    "backups/notes.txt",
    f"backups/{_old_name(40)}.bak",
    f"backups/sub/{_old_name(40)}",
    f"backups//{_old_name(40)}",
    f"other/{_old_name(40)}",
    f"backups-old/{_old_name(40)}",
    _old_name(40),
]


def test_retention_deletes_only_our_old_copies(target, monkeypatch):
    """Over several listing pages and delete requests (small ones here, 1000 in use)."""
    monkeypatch.setattr(offsite, "LIST_PAGE_SIZE", 3)
    monkeypatch.setattr(offsite, "DELETE_BATCH", 2)
    ours = {days: f"backups/{_old_name(days)}" for days in range(0, 41, 5)}
    _put(target, *ours.values(), *FOREIGN)

    listed = offsite.remote_archives(target, TZ)
    assert [archive.key for archive in listed] == [ours[days] for days in sorted(ours)]
    assert listed[0].moment == NOW and listed[0].size == 1
    assert listed[0].name == _old_name(0) and listed[0].last_modified.tzinfo is not None

    outcome = offsite.apply_remote_retention(target, newest_key=ours[0], retention_days=14,
                                             min_count=2, timezone=TZ, now=NOW)
    assert outcome.kept == [ours[0], ours[5], ours[10]]
    assert outcome.deleted == [ours[days] for days in range(15, 41, 5)]
    assert _keys(target) == {ours[0], ours[5], ours[10], *FOREIGN}


def test_retention_keeps_the_minimum_and_the_newest_when_everything_is_old(target):
    ours = [f"backups/{_old_name(days)}" for days in (30, 31, 32, 33)]
    _put(target, *ours, *FOREIGN)
    kept = offsite.apply_remote_retention(target, newest_key=ours[0], retention_days=7,
                                          min_count=2, timezone=TZ, now=NOW)
    assert (kept.kept, kept.deleted) == (ours[:2], ours[2:])
    newest = offsite.apply_remote_retention(target, newest_key=ours[0], retention_days=7,
                                            min_count=0, timezone=TZ, now=NOW)
    assert (newest.kept, newest.deleted) == ([ours[0]], [ours[1]])
    assert _keys(target) == {ours[0], *FOREIGN}


def test_retention_deletes_nothing_when_the_newest_copy_is_not_listed(target):
    ours = [f"backups/{_old_name(days)}" for days in (30, 31)]
    _put(target, *ours)
    with pytest.raises(offsite.OffsiteError, match="nothing was deleted"):
        offsite.apply_remote_retention(target, newest_key=f"backups/{_old_name(0)}",
                                       retention_days=7, min_count=0, timezone=TZ, now=NOW)
    assert _keys(target) == set(ours)


def _user_who_may_not_delete(server: S3Server, bucket: str) -> offsite.S3Target:
    """IAM credentials allowed everything on S3 but s3:DeleteObject (moto enforces IAM after
    the INITIAL_NO_AUTH_ACTION_COUNT requests that make them)."""
    iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="admin", aws_secret_access_key="admin")
    iam.create_user(UserName="backup")
    iam.put_user_policy(UserName="backup", PolicyName="no-delete", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                      {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="backup")["AccessKey"]
    return server.target(bucket, "backups", access_key_id=key["AccessKeyId"],
                         secret_access_key=key["SecretAccessKey"])


def test_a_copy_the_store_refuses_to_delete_fails_retention(tmp_path):
    """DeleteObjects answers 200 and lists the keys it did not delete: that is an error."""
    server = start_s3_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "6"})
    try:
        bucket = server.make_bucket(unique_bucket())
        ours = [f"backups/{_old_name(days)}" for days in (0, 30)]
        _put(server.target(bucket), *ours)
        user = _user_who_may_not_delete(server, bucket)
        with pytest.raises(offsite.OffsiteError, match="could not delete 1 of 1") as raised:
            offsite.apply_remote_retention(user, newest_key=ours[0], retention_days=7,
                                           min_count=1, timezone=TZ, now=NOW)
        assert f"{ours[1]}: AccessDenied" in str(raised.value)
        assert _keys(user) == set(ours)
    finally:
        server.stop()


def test_encrypted_archive_names_count_once_layout_accepts_them(target):
    if layout.archive_time("critical_backup_20260101_000000.tar.gz.age", "UTC") is None:
        pytest.skip("layout does not accept .tar.gz.age names yet")
    ours = {days: f"backups/{_old_name(days, '.age' if days % 10 else '')}"
            for days in range(0, 41, 5)}
    _put(target, *ours.values(), *FOREIGN, f"backups/{_old_name(40)}.age.bak")
    outcome = offsite.apply_remote_retention(target, newest_key=ours[0], retention_days=14,
                                             min_count=2, timezone=TZ, now=NOW)
    assert outcome.deleted == [ours[days] for days in range(15, 41, 5)]
    assert _keys(target) == {ours[0], ours[5], ours[10], *FOREIGN,
                             f"backups/{_old_name(40)}.age.bak"}


# --- links and streaming ------------------------------------------------------------------------

def _expires(url: str) -> int:
    return int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Expires"][0])


def test_a_presigned_url_downloads_the_copy_without_credentials(target, tmp_path):
    path, sha256 = _archive(tmp_path, 300_000)
    copy = offsite.upload_archive(target, path, sha256)
    url = offsite.presigned_url(target, copy.key, ttl_hours=24)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == path.read_bytes()
    assert _expires(url) == 24 * 3600


def test_a_presigned_url_lasts_at_most_seven_days(target):
    """moto does not refuse expired links: what is checked is the lifetime signed into it."""
    key = target.key_for(_old_name(0))
    assert _expires(offsite.presigned_url(target, key, 0.5)) == 1800
    assert _expires(offsite.presigned_url(target, key, 1 / 7200)) == 1
    for too_long in (24 * 7 + 1, 10_000, math.inf):
        assert _expires(offsite.presigned_url(target, key, too_long)) == 7 * 24 * 3600
    for wrong in (0, -1, math.nan):
        with pytest.raises(ValueError, match="ttl_hours"):
            offsite.presigned_url(target, key, wrong)


def test_open_remote_streams_the_copy(target, tmp_path):
    path, sha256 = _archive(tmp_path, 3 * layout.MB + 17)
    copy = offsite.upload_archive(target, path, sha256)
    assert offsite.object_size(target, copy.key) == copy.size
    with offsite.open_remote(target, copy.key) as stream:
        assert stream.size == copy.size and stream.readable()
        blocks = iter(lambda: stream.read(64 * 1024), b"")
        assert b"".join(blocks) == path.read_bytes()
    assert stream.closed
    with offsite.open_remote(target, copy.key) as stream:
        digest = hashlib.sha256()
        for chunk in stream.iter_chunks(1024 * 1024):
            digest.update(chunk)
        assert digest.hexdigest() == sha256


def test_a_tar_gz_copy_reads_as_it_streams(target, tmp_path):
    """As `verify s3://...` and `restore s3://...` read it: one pass, nothing downloaded."""
    member = os.urandom(2 * layout.MB)
    path = tmp_path / _old_name(0)
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(layout.BACKUP_INFO)
        info.size = len(member)
        archive.addfile(info, io.BytesIO(member))
    copy = offsite.upload_archive(target, path, hashlib.sha256(path.read_bytes()).hexdigest())
    with offsite.open_remote(target, copy.key) as stream, tarfile.open(
            fileobj=stream, mode="r|gz") as archive:
        entry = archive.next()
        assert entry is not None and entry.name == layout.BACKUP_INFO
        extracted = archive.extractfile(entry)
        assert extracted is not None and extracted.read() == member


def test_a_copy_cut_off_while_it_streams_raises(tmp_path):
    server = start_s3_server()
    try:
        target = server.target(server.make_bucket(unique_bucket()), "backups", attempts=1,
                               connect_timeout=1, read_timeout=2)
        path, sha256 = _archive(tmp_path, 32 * layout.MB)
        copy = offsite.upload_archive(target, path, sha256, part_mb=32)
        with offsite.open_remote(target, copy.key) as stream:
            assert len(stream.read(layout.MB)) == layout.MB
            server.stop()
            with pytest.raises(offsite.OffsiteError, match="download of") as raised:
                while stream.read(layout.MB):
                    pass
        assert copy.url in str(raised.value) and "\n" not in str(raised.value)
    finally:
        server.stop()


def test_open_remote_of_a_missing_key_or_bucket_says_which_in_one_line(s3_server, target):
    missing = target.key_for(_old_name(3))
    with pytest.raises(offsite.OffsiteError, match="NoSuchKey") as raised:
        _open(target, missing)
    assert f"s3://{target.bucket}/{missing}" in str(raised.value)
    assert "\n" not in str(raised.value)
    nowhere = s3_server.target(unique_bucket(), "backups")
    with pytest.raises(offsite.OffsiteError, match=r"NoSuchBucket.*Create the bucket") as raised:
        _open(nowhere, missing)
    assert nowhere.bucket in str(raised.value) and "\n" not in str(raised.value)


# --- credentials and checksums ------------------------------------------------------------------

KEY_ID, SECRET, TOKEN = "AKIDDISTINCT7731", "s3cr3t-DISTINCT-9F2Q", "tok3n-DISTINCT-5XZ"


def _chain(error: BaseException | None) -> str:
    text = ""
    while error is not None:
        text += f"{error!r} {error}\n"
        error = error.__cause__ or error.__context__
    return text


def test_credentials_never_show(s3_server, stopped_s3_server, bucket, tmp_path):
    target = s3_server.target(bucket, "backups", access_key_id=KEY_ID, secret_access_key=SECRET,
                              session_token=TOKEN)
    dead_target = stopped_s3_server.target(bucket, access_key_id=KEY_ID,
                                           secret_access_key=SECRET, session_token=TOKEN,
                                           attempts=1, connect_timeout=1)
    path, sha256 = _archive(tmp_path, 100)
    wrong = hashlib.sha256(b"").hexdigest()
    failures = [
        lambda: offsite.upload_archive(target, path, wrong),
        lambda: _open(target, "backups/missing"),
        lambda: _open(s3_server.target(unique_bucket(), access_key_id=KEY_ID,
                                       secret_access_key=SECRET), "k"),
        lambda: offsite.apply_remote_retention(target, newest_key="backups/missing",
                                               retention_days=1, min_count=1, timezone=TZ),
        lambda: offsite.upload_archive(dead_target, path, sha256),
        lambda: offsite.object_size(target, "backups/missing"),
    ]
    shown = [repr(target), str(target), target.describe()]
    for failure in failures:
        with pytest.raises(offsite.OffsiteError) as raised:
            failure()
        shown.append(_chain(raised.value))
    for text in shown:
        for secret in (KEY_ID, SECRET, TOKEN):
            assert secret not in text
    assert target.bucket in target.describe() and s3_server.endpoint_url in target.describe()


def test_legacy_checksums_upload_verify_and_delete_without_crc_headers(s3_server, bucket,
                                                                      tmp_path):
    """boto3 >= 1.36 stores a CRC32 with every upload, and sends one with DeleteObjects instead
    of the Content-MD5 older stores require: with legacy checksums neither is sent."""
    legacy = s3_server.target(bucket, "legacy", legacy_checksums=True)
    default = s3_server.target(bucket, "default")
    path, sha256 = _archive(tmp_path, 7 * layout.MB)
    for target in (legacy, default):
        copy = offsite.upload_archive(target, path, sha256, part_mb=5)
        assert copy.sha256 == sha256 and copy.size == 7 * layout.MB
    s3 = offsite.client(legacy)
    stored = {target.prefix: s3.head_object(Bucket=bucket, Key=target.key_for(path.name),
                                            ChecksumMode="ENABLED") for target in (legacy, default)}
    assert "ChecksumCRC32" not in stored["legacy/"] and "ChecksumCRC32" in stored["default/"]

    sent = []
    s3.meta.events.register("before-send.s3.DeleteObjects",
                            lambda request, **_: sent.append(dict(request.headers)))
    _put(legacy, f"legacy/{_old_name(30)}")
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"legacy/{_old_name(30)}"}]})
    assert "Content-MD5" in sent[0]
    assert not any(name.lower().startswith("x-amz-checksum") for name in sent[0])
    _put(legacy, f"legacy/{_old_name(31)}")
    outcome = offsite.apply_remote_retention(legacy, newest_key=legacy.key_for(path.name),
                                             retention_days=7, min_count=1, timezone=TZ, now=NOW)
    assert outcome.deleted == [f"legacy/{_old_name(31)}"]
    assert _keys(legacy, "legacy/") == {legacy.key_for(path.name)}
