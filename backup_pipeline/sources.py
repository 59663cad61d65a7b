"""Where `verify` and `restore` read an archive from: a file, or an object in the off-site bucket
(`s3://bucket/key`), in clear or sealed with age (`.tar.gz.age`), always as one stream.

Both read an archive front to back, so neither needs it on disk in clear: a sealed archive is
decrypted as it streams (with BACKUP_AGE_IDENTITY_FILE or `--identity`), and an object is read
from the bucket as it streams, so the server that is gone is not needed, and neither is room for
a download.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from backup_pipeline import layout
from backup_pipeline.sealing import AGE_MAGIC, Identity, NoIdentity, decrypting

if TYPE_CHECKING:  # boto3 is loaded only for an s3:// archive
    from backup_pipeline.offsite import S3Target

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class ArchiveSource:
    """An archive to read: `open()` gives its .tar.gz bytes, decrypted when it is sealed."""

    location: str
    identities: tuple[Identity, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return PurePosixPath(self.location).name

    @property
    def sealed(self) -> bool:
        return layout.is_sealed(self.name)

    def stored_size(self) -> int:
        raise NotImplementedError

    def open_stored(self) -> AbstractContextManager[BinaryIO]:
        """The bytes as they are stored (sealed ones still sealed)."""
        raise NotImplementedError

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with self.open_stored() as stored:
            if not self._is_sealed(stored):
                yield stored
                return
            if not self.identities:
                raise NoIdentity(
                    f"{self.name} is encrypted with age: give the private key with --identity "
                    f"FILE (or BACKUP_AGE_IDENTITY_FILE), or decrypt it first: age -d -i key.txt "
                    f"{self.name} > {self.name.removesuffix(layout.AGE_SUFFIX)}")
            with decrypting(stored, list(self.identities), self.name) as plain:
                yield plain

    def _is_sealed(self, stored: BinaryIO) -> bool:
        return self.sealed

    def extract_command(self, what: str) -> str:
        """The shell command that extracts `what` from this archive without this program."""
        quoted = shlex.quote(self.location)
        tar = f"tar -xz -C <folder> --no-same-owner {what}"
        if self.sealed:
            return f"age -d -i <key.txt> {quoted} | {tar}"
        return f"tar -xzf {quoted} -C <folder> --no-same-owner {what}"

    def __str__(self) -> str:
        return self.location


@dataclass(frozen=True)
class LocalArchive(ArchiveSource):
    """An archive file. One renamed without its `.age` is still recognised by age's header."""

    @property
    def path(self) -> Path:
        return Path(self.location)

    def stored_size(self) -> int:
        return self.path.stat().st_size

    def open_stored(self) -> AbstractContextManager[BinaryIO]:
        return self.path.open("rb")

    def _is_sealed(self, stored: BinaryIO) -> bool:
        peek = getattr(stored, "peek", None)
        head = peek(len(AGE_MAGIC))[: len(AGE_MAGIC)] if peek else b""
        return self.sealed or head == AGE_MAGIC


@dataclass(frozen=True)
class BucketArchive(ArchiveSource):
    """An object in the off-site bucket, streamed (never downloaded whole)."""

    target: S3Target | None = None
    key: str = ""

    def stored_size(self) -> int:
        from backup_pipeline.offsite import object_size

        return object_size(self._target, self.key)

    def open_stored(self) -> AbstractContextManager[BinaryIO]:
        from backup_pipeline.offsite import open_remote

        return open_remote(self._target, self.key)

    @property
    def _target(self) -> S3Target:
        assert self.target is not None
        return self.target


def as_source(archive: ArchiveSource | Path | str) -> ArchiveSource:
    """A source for what the caller has: a source already, or a local path."""
    if isinstance(archive, ArchiveSource):
        return archive
    return LocalArchive(str(archive))


def open_source(location: str, identities: tuple[Identity, ...] = (),
                bucket: S3Target | None = None) -> ArchiveSource:
    """The archive the administrator named on the command line: a path or `s3://bucket/key`
    (read with the off-site settings' endpoint and credentials, `bucket` when they are set)."""
    if not location.startswith(S3_SCHEME):
        return LocalArchive(location, identities)
    from backup_pipeline.offsite import S3Target, parse_s3_url

    name, key = parse_s3_url(location)
    base = bucket or S3Target(bucket=name)
    return BucketArchive(location, identities, replace(base, bucket=name, prefix=""), key)
