"""Encryption of archives with age (BACKUP_AGE_RECIPIENTS): sealing on the backup host, opening
on restore night.

The format is age's (age-encryption.org/v1), written by pyrage (Python bindings of rage, the Rust
implementation): any age implementation opens it, so restore night needs only the private key and
the Debian `age` program (`age -d -i key.txt X.tar.gz.age | tar -xz`), never this project. The
backup host holds only public keys (age `age1...` or SSH `ssh-ed25519`/`ssh-rsa` ones): a
stolen backup host, bucket or mailbox gives away no archive.

A sealed file cannot be checked by decryption here (no private key), so sealing checks what can be
checked without it: every byte of the verified plaintext went in (hashed while it streams), and
the result has age's header and exactly the length age's STREAM gives that many bytes, so a
short write (a full disk) is caught before the sealed file gets its name.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyrage

from backup_pipeline.alerts import KindOfFailure
from backup_pipeline.files import BLOCK_SIZE, HashingReader, file_sha256, open_private

AGE_MAGIC = b"age-encryption.org/v1\n"
# age's STREAM: a 16-byte nonce, then 64 KiB chunks of plaintext, each with a 16-byte tag (an
# empty file is one empty chunk).
_NONCE, _CHUNK, _TAG = 16, 64 * 1024, 16
# The header of a file sealed to a few hundred recipients stays well under this.
_HEADER_MAX = 1024 * 1024

Recipient = pyrage.x25519.Recipient | pyrage.ssh.Recipient
Identity = pyrage.x25519.Identity | pyrage.ssh.Identity


class EncryptionError(KindOfFailure, RuntimeError):
    """The archive could not be sealed: nothing under an archive's name was written."""

    kind = "encryption"


class RecipientsError(ValueError):
    """BACKUP_AGE_RECIPIENTS (or its file) holds something that is not a public key."""


class DecryptionError(ValueError):
    """An archive could not be opened: wrong key, not an age file, damaged or cut short."""


class NoIdentity(DecryptionError):
    """A sealed archive, and no private key to open it with."""


class KeyMismatch(DecryptionError):
    """The private key given is not one the archive was sealed to: the administrator's mistake
    to fix, not damage to report."""


def parse_recipients(text: str, source: str) -> tuple[Recipient, ...]:
    """The public keys in `text`: comma or line separated, `#` comments (age's recipients
    file format). `source` names where they came from, for the error."""
    keys: list[Recipient] = []
    for raw in text.replace(",", "\n").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keys.append(_recipient(line, source))
    return tuple(keys)


def _shown(line: str) -> str:
    """The start of a key line, enough to recognise it (a pasted private key is not echoed)."""
    return repr(line) if len(line) <= 24 else repr(line[:24]) + "..."


def _recipient(line: str, source: str) -> Recipient:
    try:
        if line.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(line)
        if line.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(line)
    except pyrage.RecipientError as error:
        raise RecipientsError(f"{source} holds an invalid public key {_shown(line)}: {error}. "
                              f"Copy it again from `age-keygen -y key.txt` (age1...) or from "
                              f"the .pub file of an SSH key.") from None
    if line.startswith("AGE-SECRET-KEY-"):
        raise RecipientsError(
            f"{source} holds a PRIVATE age key (AGE-SECRET-KEY-...): only public keys belong "
            f"there, and the private key stays off the backup host. Put its public key instead "
            f"(age-keygen -y key.txt prints it), and consider this private key exposed.")
    raise RecipientsError(
        f"{source} holds {_shown(line)}, which is not an age public key (age1...) or an SSH "
        f"public key (ssh-ed25519 ... or ssh-rsa ...). Only public keys belong there: the "
        f"private key stays off the backup host. Make a key pair with age-keygen -o key.txt and "
        f"use the public key it prints.")


def load_recipients(listed: str | None, file: Path | None) -> tuple[Recipient, ...]:
    """BACKUP_AGE_RECIPIENTS and BACKUP_AGE_RECIPIENTS_FILE together; () when neither is set."""
    keys = parse_recipients(listed, "BACKUP_AGE_RECIPIENTS") if listed else ()
    if file is not None:
        try:
            text = file.read_text()
        except OSError as error:
            raise RecipientsError(f"BACKUP_AGE_RECIPIENTS_FILE {file} cannot be read: "
                                  f"{error.strerror or error}") from None
        from_file = parse_recipients(text, f"BACKUP_AGE_RECIPIENTS_FILE {file}")
        if not from_file:
            raise RecipientsError(f"BACKUP_AGE_RECIPIENTS_FILE {file} holds no public key: "
                                  f"an empty file would mean archives sealed to nobody")
        keys += from_file
    return keys


def sealed_size(plain_bytes: int, header_bytes: int) -> int:
    """The length of an age file of `plain_bytes` with a header of `header_bytes`."""
    chunks = max(1, math.ceil(plain_bytes / _CHUNK))
    return header_bytes + _NONCE + plain_bytes + chunks * _TAG


def header_length(path: Path) -> int:
    """The length of the age header at the start of `path` (through its `---` MAC line)."""
    with path.open("rb") as handle:
        head = handle.read(_HEADER_MAX)
    if not head.startswith(AGE_MAGIC):
        raise DecryptionError(f"{path.name} is not an age file (it does not start with "
                              f"{AGE_MAGIC.decode().strip()!r})")
    end = head.find(b"\n--- ")
    newline = head.find(b"\n", end + 1) if end >= 0 else -1
    if newline < 0:
        raise DecryptionError(f"{path.name}'s age header is cut short or damaged")
    return newline + 1


@dataclass(frozen=True)
class SealedFile:
    """The sealed copy of an archive: what is kept, mailed, linked and uploaded."""

    path: Path
    size: int
    sha256: str
    plain_sha256: str
    recipients: int


def seal(plain: Path, target: Path, recipients: tuple[Recipient, ...],
         plain_sha256: str, name: str | None = None) -> SealedFile:
    """Encrypt `plain` (verified, whose SHA-256 is `plain_sha256`; `name` is what messages call
    it) into the new private file `target`, fsynced, and check it holds all of it; on any
    failure `target` is removed and EncryptionError raised."""
    name = name or plain.name
    if not recipients:
        raise EncryptionError("no age recipient to seal the archive to")
    try:
        with plain.open("rb") as source, open_private(target, exclusive=True) as sink:
            reading = HashingReader(source)
            pyrage.encrypt_io(io.BufferedReader(reading, BLOCK_SIZE), sink, list(recipients))
            sink.flush()
            os.fsync(sink.fileno())
        if reading.hash.hexdigest() != plain_sha256:
            raise EncryptionError(f"{name} changed while it was being sealed (sha256 "
                                  f"{reading.hash.hexdigest()[:12]}, verified as "
                                  f"{plain_sha256[:12]})")
        size = target.stat().st_size
        expected = sealed_size(reading.size, header_length(target))
        if size != expected:
            raise EncryptionError(f"the sealed archive is {size} bytes where age writes "
                                  f"{expected} for {reading.size}: it was cut short")
        sha256 = file_sha256(target)
    except EncryptionError:
        target.unlink(missing_ok=True)
        raise
    except (OSError, pyrage.EncryptError, DecryptionError) as error:
        target.unlink(missing_ok=True)
        raise EncryptionError(f"sealing {name} with age failed: {error}. No encrypted "
                              f"or plaintext archive was kept from this run.") from error
    return SealedFile(target, size, sha256, plain_sha256, len(recipients))


def load_identities(path: Path) -> list[Identity]:
    """The private keys in an age identity file (`AGE-SECRET-KEY-1...` lines, as age-keygen
    writes them) or an unencrypted SSH private key file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DecryptionError(f"the identity file {path} cannot be read: "
                              f"{error.strerror or error}") from None
    if b"PRIVATE KEY-----" in data:
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except pyrage.IdentityError as error:
            raise DecryptionError(f"{path} is an SSH private key pyrage cannot use ({error}): "
                                  f"a passphrase-protected key must be decrypted with "
                                  f"`age -d -i {path}` by hand") from None
    keys = []
    for line in data.decode(errors="replace").splitlines():
        if line.strip().startswith("AGE-SECRET-KEY-"):
            try:
                keys.append(pyrage.x25519.Identity.from_str(line.strip()))
            except pyrage.IdentityError as error:
                raise DecryptionError(f"{path} holds a damaged age secret key: {error}") from None
    if not keys:
        raise DecryptionError(f"{path} holds no age secret key (AGE-SECRET-KEY-1...) and no "
                              f"SSH private key: give the key file made with age-keygen")
    return keys


class _DecryptedReader(io.RawIOBase):
    """The plaintext of an age stream, decrypted by pyrage in a thread into a pipe. At the end
    of the stream, a decryption failure (wrong key, damage) is raised to the reader, so nobody
    takes a cut plaintext for a whole one."""

    def __init__(self, source: BinaryIO, identities: list[Identity], name: str) -> None:
        self._name = name
        self._error: BaseException | None = None
        read_end, write_end = os.pipe()
        self._pipe = os.fdopen(read_end, "rb", buffering=0)
        self._thread = threading.Thread(target=self._decrypt,
                                        args=(source, identities, write_end), daemon=True)
        self._thread.start()

    def _decrypt(self, source: BinaryIO, identities: list[Identity], write_end: int) -> None:
        try:
            with os.fdopen(write_end, "wb") as sink:
                pyrage.decrypt_io(source, sink, identities)
        except BrokenPipeError:
            pass  # the reader stopped early (a manifest read): nothing is wrong
        except BaseException as error:  # handed to the reader, raised at the end of the stream
            self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._pipe.readinto(buffer)
        if not count:
            self._thread.join()
            if self._error is not None:
                raise _decrypt_problem(self._name, self._error)
        return count or 0

    def close(self) -> None:
        if not self.closed:
            self._pipe.close()
            self._thread.join()
        super().close()


def _decrypt_problem(name: str, error: BaseException) -> DecryptionError:
    text = str(error)
    if "No matching keys" in text:
        return KeyMismatch(
            f"{name} was not sealed to this key: the identity file does not hold the private key "
            f"of any recipient it was encrypted to (use the key matching one of "
            f"BACKUP_AGE_RECIPIENTS at the time of the backup)")
    if "Header is invalid" in text:
        return DecryptionError(f"{name} is not an age-encrypted file, or its age header is "
                               f"damaged")
    return DecryptionError(f"{name} could not be decrypted: its age encryption is damaged or "
                           f"cut short ({text})")


@contextmanager
def decrypting(source: BinaryIO, identities: list[Identity], name: str
               ) -> Iterator[BinaryIO]:
    """A readable stream of the plaintext of the age stream `source`, in bounded memory."""
    reader = _DecryptedReader(source, identities, name)
    try:
        yield io.BufferedReader(reader, BLOCK_SIZE)
    finally:
        reader.close()
