"""The off-site copy: archives in an S3 bucket (AWS, or an S3-compatible store), verified as stored.

Whoever reads these copies has lost the server that made them, so the rules are BACKUP_DIR's: a
copy under its final key was read back from the store and hashed equal to the local archive (one
that is not is deleted, and the upload fails); remote retention deletes only names this pipeline
makes (`layout.archive_time` recognises them), only directly under the prefix, never the newest
copy and never below the minimum count; and every failure is an OffsiteError that names the
bucket, the key and the store's own cause, never the credentials.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as S3ConnectionError
from botocore.response import StreamingBody

from backup_pipeline import layout
from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.files import BLOCK_SIZE

# Everything boto3 raises for a request that failed: the store's answer (ClientError), no answer
# (BotoCoreError: connection, timeout, truncated body) and the transfer manager's wrapper.
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)

# Parts uploaded at once: an upload holds about this many parts in memory, whatever its size.
UPLOAD_THREADS = 4
# S3's limits on a part: at least 5 MB (but the last), at most 5 GB. The transfer manager makes
# parts larger by itself when an archive would need more than S3's 10,000 parts.
MIN_PART_MB, MAX_PART_MB = 5, 5 * 1024
# S3 refuses a SigV4 presigned URL valid for longer than 7 days.
PRESIGN_MAX_SECONDS = 7 * 24 * 3600
# S3's limits per request: keys per DeleteObjects, keys per listing page.
DELETE_BATCH = 1000
LIST_PAGE_SIZE = 1000

LEGACY_HINT = ("If this store rejects boto3's checksum headers (an S3-compatible provider), set "
               "BACKUP_S3_CHECKSUMS=when_required.")
_CREDENTIALS_HINT = ("Check the credentials and that they allow s3:PutObject, s3:GetObject, "
                     "s3:ListBucket and s3:DeleteObject on the bucket.")
_HINTS = {
    "NoSuchBucket": "Create the bucket, or correct its name.",
    "NoSuchKey": "List the copies (aws s3 ls s3://<bucket>/<prefix>) and use an existing key.",
    "AccessDenied": _CREDENTIALS_HINT,
    "InvalidAccessKeyId": _CREDENTIALS_HINT,
    "SignatureDoesNotMatch": _CREDENTIALS_HINT,
    "ExpiredToken": _CREDENTIALS_HINT,
    "InvalidToken": _CREDENTIALS_HINT,
    "MissingContentMD5": LEGACY_HINT,
    "404": "The bucket or the key does not exist (a HEAD request says no more): check both.",
}
_NETWORK_HINT = "Check the endpoint URL and that this host reaches it (network, firewall, proxy)."


class OffsiteError(KindOfFailure, RuntimeError):
    """The off-site copy, its listing, retention or reading failed; the local archive is
    unaffected."""

    kind = "offsite"


def _none_if_empty(value: str | None) -> str | None:
    return value or None


@dataclass(frozen=True)
class S3Target:
    """Where the off-site copies go. Credentials left None are found by boto3's own chain
    (environment, profile, instance role); they are kept out of repr so that a logged target
    never shows them. Empty strings count as unset: that is what an unset variable in an
    env file gives. The timeouts and attempts bound how long a dead store takes to fail."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    legacy_checksums: bool = False
    attempts: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket or self.bucket.strip() != self.bucket:
            raise ValueError(f"not an S3 bucket name: {self.bucket!r} (no slashes or spaces)")
        stripped = self.prefix.strip("/")
        object.__setattr__(self, "prefix", f"{stripped}/" if stripped else "")
        for name in ("endpoint_url", "region", "access_key_id", "secret_access_key",
                     "session_token"):
            object.__setattr__(self, name, _none_if_empty(getattr(self, name)))
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("an S3 access key id and secret access key go together: set both, "
                             "or neither to use boto3's own (environment, profile, instance role)")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("an S3 session token needs its access key id and secret access key")

    def key_for(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def describe(self) -> str:
        """The target as messages show it: where, never with what credentials."""
        where = self.endpoint_url or "AWS S3"
        region = f", region {self.region}" if self.region else ""
        return f"bucket {self.bucket}, prefix {self.prefix or '(none)'} at {where}{region}"

    def scrub(self, text: str) -> str:
        """`text` without this target's credentials, whatever put them there."""
        for secret in (self.secret_access_key, self.session_token, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text


def _content_md5(params: dict[str, Any], **_: Any) -> None:
    """boto3 >= 1.36 gives DeleteObjects a CRC32 where S3 used to require a Content-MD5, and
    stores that predate the change refuse the request (MissingContentMD5): give them the MD5,
    and no CRC header they may not know."""
    body = params.get("body") or b""
    data = body.encode() if isinstance(body, str) else body
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    params["headers"]["Content-MD5"] = base64.b64encode(digest).decode("ascii")
    checksum = params.get("context", {}).get("checksum", {})
    checksum.pop("request_algorithm", None)
    checksum.pop("request_algorithm_header", None)


@functools.cache
def _session() -> boto3.session.Session:
    """One session for the process, not boto3's default one: it loads S3's API model once (a
    tenth of a second per client otherwise) and finds the credentials boto3's own chain gives
    (environment, profile, instance role, refreshed as they expire) once."""
    return boto3.session.Session()


# Making a client from a shared session is not thread-safe; using the client is.
_CLIENT_LOCK = threading.Lock()


def client(target: S3Target) -> BaseClient:
    """An S3 client that fails in bounded time: each request takes at most `attempts` tries
    (standard retry mode, with its backoff) of `connect_timeout` + `read_timeout` each. SigV4
    always: boto3 would presign with SigV2 (no lifetime limit, refused by newer buckets). Its
    own credentials when the target has them. Path-style addressing for an endpoint: MinIO and
    moto do not resolve bucket.host names."""
    checksums = ({"request_checksum_calculation": "when_required",
                  "response_checksum_validation": "when_required"}
                 if target.legacy_checksums else {})
    config = Config(
        retries={"mode": "standard", "total_max_attempts": target.attempts},
        signature_version="s3v4",
        connect_timeout=target.connect_timeout,
        read_timeout=target.read_timeout,
        max_pool_connections=2 * UPLOAD_THREADS,
        s3={"addressing_style": "path"} if target.endpoint_url else None,
        **checksums,
    )
    with _CLIENT_LOCK:
        s3 = _session().client(
            "s3", endpoint_url=target.endpoint_url, region_name=target.region, config=config,
            aws_access_key_id=target.access_key_id,
            aws_secret_access_key=target.secret_access_key,
            aws_session_token=target.session_token)
    if target.legacy_checksums:
        s3.meta.events.register("before-call.s3.DeleteObjects", _content_md5)
    return s3


def _client_error(error: BaseException) -> ClientError | None:
    """The store's answer behind `error`: boto3's S3UploadFailedError carries it as context."""
    for candidate in (error, error.__cause__, error.__context__):
        if isinstance(candidate, ClientError):
            return candidate
    return None


def _cause(error: BaseException) -> str:
    """The store's error code and message, or what went wrong on the way: one line."""
    answer = _client_error(error)
    if answer is not None:
        info = answer.response.get("Error", {})
        code = info.get("Code") or answer.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", "error")
        text = f"{code}: {info.get('Message') or 'no message'}"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


def _hint(error: BaseException) -> str:
    answer = _client_error(error)
    if answer is None:
        network = isinstance(error, S3ConnectionError | HTTPClientError)
        return _NETWORK_HINT if network else ""
    info = answer.response.get("Error", {})
    if "checksum" in str(info.get("Message", "")).lower():
        return LEGACY_HINT
    return _HINTS.get(str(info.get("Code")), "")


def _failure(target: S3Target, doing: str, key: str, error: BaseException) -> OffsiteError:
    """`doing` (e.g. "upload to") of s3://bucket/key failed: the cause and what to do."""
    message = (f"off-site {doing} {target.url(key)} failed ({target.describe()}): "
               f"{_cause(error).rstrip('.')}. {_hint(error)}")
    return OffsiteError(target.scrub(message.strip()))


@dataclass(frozen=True)
class RemoteCopy:
    """A verified copy: `sha256` is the stored bytes' hash, `seconds` the upload and read-back."""

    bucket: str
    key: str
    size: int
    sha256: str
    seconds: float

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _check_upload_arguments(sha256: str, part_mb: int) -> None:
    if len(sha256) != 64 or any(char not in "0123456789abcdef" for char in sha256):
        raise ValueError(f"not a sha256 in lowercase hex: {sha256!r}")
    if not MIN_PART_MB <= part_mb <= MAX_PART_MB:
        raise ValueError(f"part_mb must be between {MIN_PART_MB} and {MAX_PART_MB} (S3's limits "
                         f"on a part), not {part_mb}")


def upload_archive(target: S3Target, path: Path, sha256: str, *, part_mb: int = 8) -> RemoteCopy:
    """Copy the archive at `path` to `target` and read it back: the copy is only reported once
    the bytes stored hash to `sha256` (the local archive's, also stored as x-amz-meta-sha256 for
    whoever verifies the copy later). Streamed in parts of `part_mb` MB, UPLOAD_THREADS at a
    time, so memory stays about their product whatever the archive's size; a failed upload is
    aborted by boto3 and leaves no object under the key, a copy that does not verify is
    deleted."""
    _check_upload_arguments(sha256, part_mb)
    key = target.key_for(path.name)
    size = path.stat().st_size
    part = part_mb * layout.MB
    transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                              max_concurrency=UPLOAD_THREADS, use_threads=True)
    s3 = client(target)
    started = time.monotonic()
    try:
        s3.upload_file(str(path), target.bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}},
                       Config=transfer)
    except S3_ERRORS as error:
        raise _failure(target, f"upload of {path} to", key, error) from error
    _verify_stored(s3, target, key, size, sha256)
    return RemoteCopy(bucket=target.bucket, key=key, size=size, sha256=sha256,
                      seconds=time.monotonic() - started)


def _stored_problem(s3: BaseClient, bucket: str, key: str, size: int, sha256: str) -> str | None:
    """What is wrong with the object as stored, or None: its size (HEAD), its sha256 metadata,
    and the hash of its bytes read back (the same object: If-Match its ETag)."""
    head = s3.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size:
        return f"{head['ContentLength']} bytes are stored where the archive has {size}"
    stored = head.get("Metadata", {}).get("sha256")
    if stored != sha256:
        return f"its sha256 metadata is {stored!r} where the archive's sha256 is {sha256}"
    body = s3.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"]
    digest = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(BLOCK_SIZE):
            digest.update(chunk)
    finally:
        body.close()
    if digest.hexdigest() != sha256:
        return f"its bytes hash to {digest.hexdigest()} where the archive's sha256 is {sha256}"
    return None


def _discard(s3: BaseClient, target: S3Target, key: str) -> str:
    """Delete a copy that did not verify, so nobody restores from it; says how that went."""
    try:
        s3.delete_object(Bucket=target.bucket, Key=key)
    except S3_ERRORS as error:
        return (f"deleting it failed too ({_cause(error)}): delete it by hand before anyone "
                f"restores from it (aws s3 rm {target.url(key)})")
    return "it was deleted; the archive was not copied off-site"


def _verify_stored(s3: BaseClient, target: S3Target, key: str, size: int, sha256: str) -> None:
    error: BaseException | None = None
    try:
        problem = _stored_problem(s3, target.bucket, key, size, sha256)
    except S3_ERRORS as failed:
        error, problem = failed, f"it could not be read back: {_cause(failed)}"
    if problem is None:
        return
    message = (f"off-site copy {target.url(key)} ({target.describe()}) did not verify: "
               f"{problem}; {_discard(s3, target, key)}. Run the backup again.")
    raise OffsiteError(target.scrub(message)) from error


@dataclass(frozen=True)
class RemoteArchive:
    """One of this pipeline's archives in the bucket; `moment` is the time in its name."""

    key: str
    name: str
    moment: datetime
    size: int
    last_modified: datetime


def _as_archive(item: dict[str, Any], prefix: str, timezone: str) -> RemoteArchive | None:
    """The listed object as an archive, or None when it is not ours: another name, or a key in
    a deeper "folder" (a store that ignores the listing's delimiter would still list those)."""
    key = item["Key"]
    name = key[len(prefix):]
    if not key.startswith(prefix) or "/" in name:
        return None
    moment = layout.archive_time(name, timezone)
    if moment is None:
        return None
    return RemoteArchive(key=key, name=name, moment=moment, size=item["Size"],
                         last_modified=item["LastModified"])


def _list_archives(s3: BaseClient, target: S3Target, timezone: str) -> list[RemoteArchive]:
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=target.bucket, Prefix=target.prefix, Delimiter="/",
        PaginationConfig={"PageSize": LIST_PAGE_SIZE})
    found = []
    try:
        for page in pages:
            for item in page.get("Contents", ()):
                archive = _as_archive(item, target.prefix, timezone)
                if archive is not None:
                    found.append(archive)
    except S3_ERRORS as error:
        raise _failure(target, "listing of", target.prefix, error) from error
    return sorted(found, key=lambda archive: (archive.moment, archive.key), reverse=True)


def remote_archives(target: S3Target, timezone: str) -> list[RemoteArchive]:
    """This pipeline's archives directly under the prefix, newest first (by their name)."""
    return _list_archives(client(target), target, timezone)


@dataclass(frozen=True)
class RetentionOutcome:
    kept: list[str]
    deleted: list[str]


def _delete_keys(s3: BaseClient, target: S3Target, keys: Sequence[str]) -> None:
    """Delete `keys`, DELETE_BATCH per request; a key the store did not delete is an error."""
    failed: list[dict[str, str]] = []
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start:start + DELETE_BATCH]
        try:
            response = s3.delete_objects(
                Bucket=target.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
        except S3_ERRORS as error:
            raise _failure(target, f"retention ({start} of {len(keys)} old copies deleted) in",
                           target.prefix, error) from error
        failed.extend(response.get("Errors", ()))
    if failed:
        shown = "; ".join(f"{item.get('Key')}: {item.get('Code')}: {item.get('Message')}"
                          for item in failed[:3])
        raise OffsiteError(target.scrub(
            f"off-site retention in {target.url(target.prefix)} ({target.describe()}) could not "
            f"delete {len(failed)} of {len(keys)} old copies: {shown}. {_CREDENTIALS_HINT}"))


def apply_remote_retention(target: S3Target, *, newest_key: str, retention_days: int,
                           min_count: int, timezone: str,
                           now: datetime | None = None) -> RetentionOutcome:
    """BACKUP_DIR's rule in the bucket: a copy older than `retention_days` (by the time in its
    name) is deleted unless it is among the `min_count` newest or is `newest_key`. Keys that are
    not this pipeline's archive names directly under the prefix are never touched. When the
    listing does not show `newest_key` (a wrong prefix, or a store whose listing lags), nothing
    is deleted: the rule cannot protect a copy it does not see."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    s3 = client(target)
    archives = _list_archives(s3, target, timezone)
    if newest_key not in {archive.key for archive in archives}:
        raise OffsiteError(target.scrub(
            f"off-site retention did not run: the newest copy {target.url(newest_key)} is not "
            f"among the archives listed in {target.describe()}; nothing was deleted. Check "
            f"that it is there: aws s3 ls {target.url(target.prefix)}"))
    kept, doomed = [], []
    for index, archive in enumerate(archives):
        protected = index < min_count or archive.key == newest_key
        (kept if protected or archive.moment >= cutoff else doomed).append(archive.key)
    _delete_keys(s3, target, doomed)
    return RetentionOutcome(kept=kept, deleted=doomed)


def presigned_url(target: S3Target, key: str, ttl_hours: float) -> str:
    """A link that downloads the copy without credentials (from the email, or curl on the
    replacement server), valid for `ttl_hours`, at most PRESIGN_MAX_SECONDS (7 days: S3 refuses
    a longer-lived SigV4 link, so a longer ttl is cut rather than giving a link that never
    works). A link signed with temporary credentials (a session token, an instance role) stops
    working when they expire, whatever its ttl. Until it expires the link is itself a credential
    for this one object (it carries the access key id, and the session token): do not log it."""
    if not ttl_hours > 0:
        raise ValueError(f"a presigned URL's ttl_hours must be positive, not {ttl_hours}")
    seconds = max(1, math.ceil(min(ttl_hours * 3600, PRESIGN_MAX_SECONDS)))
    try:
        return client(target).generate_presigned_url(
            "get_object", Params={"Bucket": target.bucket, "Key": key}, ExpiresIn=seconds)
    except S3_ERRORS as error:
        raise _failure(target, "link to", key, error) from error


def parse_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "key") of "s3://bucket/key", as `verify` and `restore` take a copy."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket or not key or key.endswith("/"):
        raise ValueError(f"not the URL of an S3 object: {url!r}; expected "
                         "s3://<bucket>/<key>, e.g. s3://backups/critical_backup_"
                         "20260101_020000.tar.gz")
    return bucket, key


class RemoteFile(io.RawIOBase):
    """A copy's bytes as a read-only binary file, streamed from the store (never downloaded
    whole), with its `size`. A failure while reading is an OffsiteError, and a body cut short
    raises as it ends: it is never taken for the whole archive."""

    def __init__(self, target: S3Target, key: str, body: StreamingBody, size: int) -> None:
        super().__init__()
        self.target, self.key, self.size = target, key, size
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except S3_ERRORS as error:
            raise _failure(self.target, "download of", self.key, error) from error

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def iter_chunks(self, chunk_size: int = BLOCK_SIZE) -> Iterator[bytes]:
        while chunk := self.read(chunk_size):
            yield chunk

    def close(self) -> None:
        self._body.close()
        super().close()


@contextmanager
def open_remote(target: S3Target, key: str) -> Iterator[RemoteFile]:
    """The copy at `key`, to verify or restore it as it streams (`verify s3://...`)."""
    try:
        response = client(target).get_object(Bucket=target.bucket, Key=key)
    except S3_ERRORS as error:
        raise _failure(target, "download of", key, error) from error
    with RemoteFile(target, key, response["Body"], response["ContentLength"]) as stream:
        yield stream


def object_size(target: S3Target, key: str) -> int:
    """The size of the copy at `key` as stored (HEAD: nothing is downloaded)."""
    try:
        return client(target).head_object(Bucket=target.bucket, Key=key)["ContentLength"]
    except S3_ERRORS as error:
        raise _failure(target, "size of", key, error) from error
