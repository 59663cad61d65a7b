"""The signature over manifest.json: made and checked in OpenSSH's own format.

manifest.json holds the SHA-256 of every other file in the archive, so a signature over its exact
bytes vouches for the whole archive. It is written as the member `manifest.json.sig` in the SSHSIG
format (PROTOCOL.sshsig in the OpenSSH source), so an administrator can check an archive with
nothing of ours installed:

    ssh-keygen -Y verify -f allowed_signers -I backup -n critical-backup-manifest \\
        -s manifest.json.sig < manifest.json

Only Ed25519 keys are taken (`ssh-keygen -t ed25519`): one key type is one code path to get
right, and its signatures are deterministic, so ours are byte for byte what `ssh-keygen -Y sign`
makes. The namespace is part of what is signed and ssh-keygen refuses a signature made for
another one, so a signature the same key made over some other file cannot be passed off as a
manifest's. A signature is untrusted input (the archive may come from anywhere): it is parsed
strictly, no length in it is believed beyond the bytes that are there, and a refusal says in one
line what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from backup_pipeline.layout import MANIFEST

NAMESPACE = "critical-backup-manifest"
SIGNATURE_MEMBER = f"{MANIFEST}.sig"
KEY_FILE_VAR = "BACKUP_SIGNING_KEY_FILE"
PUBLIC_KEY_VAR = "BACKUP_SIGNING_PUBLIC_KEY"
DEFAULT_PRINCIPAL = "backup"

KEY_TYPE = "ssh-ed25519"
SIGN_HASH = "sha512"
# PROTOCOL.sshsig allows both; ssh-keygen signs with sha512 unless told otherwise.
VERIFY_HASHES = {"sha512": hashlib.sha512, "sha256": hashlib.sha256}
MAKE_KEY = "ssh-keygen -t ed25519 -N '' -f /etc/backup/signing_key"

_MAGIC = b"SSHSIG"
_VERSION = 1
_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
# sshbuf_dtob64 in OpenSSH wraps the armor's base64 at 70 characters, not PEM's 64 or MIME's 76.
_LINE = 70
_RAW_KEY_BYTES = 32
_RAW_SIGNATURE_BYTES = 64
# An Ed25519 SSHSIG is under 400 bytes armored: anything far larger is refused unparsed.
_MAX_SIGNATURE_BYTES = 16 * 1024


class SigningError(ValueError):
    """The signing key file or the public key given is not one this module can use."""


class SignatureMismatch(ValueError):
    """manifest.json.sig does not prove that BACKUP_SIGNING_PUBLIC_KEY's key signed this
    manifest.json: the message says why, in one line."""


@dataclass(frozen=True, repr=False)
class PublicKey:
    """An Ed25519 public key: what verifies a manifest's signature, and what an administrator
    puts in ssh-keygen's allowed_signers file."""

    raw: bytes
    comment: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != _RAW_KEY_BYTES:
            raise SigningError(f"an Ed25519 public key is {_RAW_KEY_BYTES} bytes, "
                               f"not {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """BACKUP_SIGNING_PUBLIC_KEY may hold the .pub file's line itself (easy to pass to a
        container) or the path of the .pub file (easy to rotate): both are taken."""
        text = text.strip()
        if "PRIVATE KEY" in text:
            raise SigningError(f"{PUBLIC_KEY_VAR} holds a private key: give the public half "
                               f"(the line of the key's .pub file), and make a new key, since "
                               f"this one has been exposed: {MAKE_KEY}")
        if not text.startswith(("ssh-", "ecdsa-", "sk-")):
            text = _read_public_key_file(text)
        return cls._from_line(text)

    @classmethod
    def _from_line(cls, line: str) -> PublicKey:
        fields = line.split(maxsplit=2)
        try:
            key = serialization.load_ssh_public_key(line.encode())
        except (ValueError, UnsupportedAlgorithm) as error:
            raise SigningError(
                f"{PUBLIC_KEY_VAR} is not an OpenSSH public key ({error}): give the line of the "
                f"signing key's .pub file ({KEY_TYPE} AAAA...) or the path to that file"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"{PUBLIC_KEY_VAR} is a {fields[0]} key, not {KEY_TYPE}: only "
                               f"Ed25519 keys are supported; make one with {MAKE_KEY}")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(raw, comment=fields[2] if len(fields) > 2 else "")

    @property
    def blob(self) -> bytes:
        """The key in SSH wire form: what a signature embeds and what a fingerprint hashes."""
        return _string(KEY_TYPE.encode()) + _string(self.raw)

    @property
    def fingerprint(self) -> str:
        """ssh-keygen -l's form, so an administrator can compare it with what ssh-keygen says."""
        return _fingerprint(self.blob)

    @property
    def openssh(self) -> str:
        return f"{KEY_TYPE} {base64.b64encode(self.blob).decode()}"

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raises SignatureMismatch unless `signature` is this key's SSHSIG over `data` in
        NAMESPACE: the same decision `ssh-keygen -Y verify` makes with allowed_signers_line."""
        parsed = _Signature.dearmor(signature)
        if parsed.public_key != self.blob:
            raise SignatureMismatch(f"{SIGNATURE_MEMBER} was made by key "
                                    f"{_fingerprint(parsed.public_key)}, not by "
                                    f"{PUBLIC_KEY_VAR} ({self.fingerprint})")
        parsed.check_namespace()
        signed = _signed_data(data, parsed.hash_algorithm)
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(parsed.raw_signature, signed)
        except InvalidSignature:
            raise SignatureMismatch(f"{SIGNATURE_MEMBER} does not match {MANIFEST}: the manifest "
                                    f"(or the signature) was changed after it was signed"
                                    ) from None

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint})"


@dataclass(frozen=True, eq=False)
class SigningKey:
    """The private key the pipeline signs manifests with (BACKUP_SIGNING_KEY_FILE). It is kept
    out of repr, so it cannot reach a log or an alert through one."""

    path: Path
    _key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        """Refuses what the unattended pipeline could not use: a passphrase needs a person at
        every run, and a key of another type would make signatures this module cannot check."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise SigningError(f"{KEY_FILE_VAR}={path} cannot be read ({error.strerror}): make "
                               f"the key with {MAKE_KEY} and let the pipeline's user read it"
                               ) from None
        return cls(path, _load_ed25519(data, path))

    @property
    def public_key(self) -> PublicKey:
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
        return PublicKey(raw)

    def sign(self, data: bytes) -> bytes:
        """The armored SSHSIG over `data` in NAMESPACE, as `ssh-keygen -Y sign -n NAMESPACE`
        writes it: Ed25519 is deterministic, so the bytes are the same as ssh-keygen's."""
        signature = self._key.sign(_signed_data(data, SIGN_HASH))
        blob = (_MAGIC + struct.pack(">I", _VERSION) + _string(self.public_key.blob)
                + _string(NAMESPACE.encode()) + _string(b"") + _string(SIGN_HASH.encode())
                + _string(_string(KEY_TYPE.encode()) + _string(signature)))
        return _armor(blob)


def allowed_signers_line(key: PublicKey, principal: str = DEFAULT_PRINCIPAL) -> str:
    """The line for ssh-keygen's allowed_signers file. It names the namespace, so the file does
    not make this key trusted for signatures of any other kind."""
    if not principal or any(c.isspace() or c in "\"'," for c in principal):
        raise ValueError(f"principal {principal!r} must be one word without quotes or commas")
    return f'{principal} namespaces="{NAMESPACE}" {key.openssh}'


def _read_public_key_file(text: str) -> str:
    path = Path(text).expanduser()
    try:
        content = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise SigningError(
            f"{PUBLIC_KEY_VAR}={text[:80]!r} is neither an OpenSSH public key line "
            f"({KEY_TYPE} AAAA...) nor a readable file holding one, such as the signing key's .pub"
        ) from None
    if "PRIVATE KEY" in content:
        raise SigningError(f"{PUBLIC_KEY_VAR} names {path}, a private key: name its .pub file")
    lines = [line for line in content.splitlines() if line.strip()]
    if len(lines) != 1:
        raise SigningError(f"{PUBLIC_KEY_VAR} names {path}, which holds {len(lines)} lines: "
                           f"name a file holding one public key line, such as the key's .pub")
    return lines[0].strip()


def _load_ed25519(data: bytes, path: Path) -> Ed25519PrivateKey:
    where = f"{KEY_FILE_VAR}={path}"
    if data.lstrip().startswith(b"ssh-"):
        raise SigningError(f"{where} is a public key: name the private key file "
                           f"(the one without .pub)")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying the key needs a passphrase.
        raise SigningError(f"{where} is protected by a passphrase, which an unattended backup "
                           f"cannot type: remove it with ssh-keygen -p -N '' -f {path} "
                           f"or make a new key with {MAKE_KEY}") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise SigningError(f"{where} is not an OpenSSH private key ({error}): make one with "
                           f"{MAKE_KEY}") from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey")
        raise SigningError(f"{where} holds an {kind} key, not Ed25519: only Ed25519 keys are "
                           f"supported; make one with {MAKE_KEY} and set {PUBLIC_KEY_VAR} to its "
                           f".pub")
    return key


@dataclass(frozen=True)
class _Signature:
    """An SSHSIG blob's fields, once its framing has been checked."""

    public_key: bytes
    namespace: bytes
    hash_algorithm: str
    raw_signature: bytes

    @classmethod
    def dearmor(cls, armored: bytes) -> _Signature:
        return cls.parse(_dearmor(armored))

    @classmethod
    def parse(cls, blob: bytes) -> _Signature:
        reader = _Reader(blob)
        if reader.take(len(_MAGIC)) != _MAGIC:
            raise _malformed("it does not start with SSHSIG")
        version = reader.uint32()
        if version != _VERSION:
            raise _malformed(f"it is of version {version}, not {_VERSION}")
        public_key, namespace, reserved = reader.string(), reader.string(), reader.string()
        hash_algorithm, signature = reader.string(), reader.string()
        reader.end("signature")
        if reserved:
            raise _malformed("its reserved field is not empty")
        _check_key_blob(public_key)
        name = hash_algorithm.decode("ascii", "replace")
        if name not in VERIFY_HASHES:
            raise _malformed(f"its hash algorithm is {name[:20]!r}, not sha512 or sha256")
        return cls(public_key, namespace, name, _raw_signature(signature))

    def check_namespace(self) -> None:
        if self.namespace != NAMESPACE.encode():
            shown = self.namespace.decode("utf-8", "replace")[:64]
            raise SignatureMismatch(f"{SIGNATURE_MEMBER} was made for namespace {shown!r}, not "
                                    f"{NAMESPACE!r}: it signs something other than a backup "
                                    f"manifest")


class _Reader:
    """Reads SSH wire fields, refusing any length that runs past the bytes there are."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, count: int) -> bytes:
        if count > len(self._data) - self._at:
            raise _malformed("it is truncated")
        chunk = self._data[self._at:self._at + count]
        self._at += count
        return chunk

    def uint32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.uint32())

    def end(self, what: str) -> None:
        if self._at != len(self._data):
            extra = len(self._data) - self._at
            raise _malformed(f"its {what} has extra bytes after its end ({extra})")


def _check_key_blob(blob: bytes) -> None:
    reader = _Reader(blob)
    key_type = reader.string()
    if key_type != KEY_TYPE.encode():
        raise _malformed(f"it was made by a {key_type[:40].decode('ascii', 'replace')!r} key, "
                         f"not {KEY_TYPE}")
    if len(reader.string()) != _RAW_KEY_BYTES:
        raise _malformed(f"its public key is not {_RAW_KEY_BYTES} bytes")
    reader.end("public key")


def _raw_signature(blob: bytes) -> bytes:
    reader = _Reader(blob)
    if reader.string() != KEY_TYPE.encode():
        raise _malformed(f"its signature is not an {KEY_TYPE} one")
    raw = reader.string()
    reader.end("signature field")
    if len(raw) != _RAW_SIGNATURE_BYTES:
        raise _malformed(f"its signature is {len(raw)} bytes, not {_RAW_SIGNATURE_BYTES}")
    return raw


def _signed_data(data: bytes, hash_algorithm: str) -> bytes:
    """What the key actually signs (PROTOCOL.sshsig): the namespace and the hash of the data,
    never the data itself."""
    digest = VERIFY_HASHES[hash_algorithm](data).digest()
    return (_MAGIC + _string(NAMESPACE.encode()) + _string(b"")
            + _string(hash_algorithm.encode()) + _string(digest))


def _armor(blob: bytes) -> bytes:
    encoded = base64.b64encode(blob).decode()
    lines = [encoded[i:i + _LINE] for i in range(0, len(encoded), _LINE)]
    return "\n".join([_BEGIN, *lines, _END, ""]).encode()


def _dearmor(armored: bytes) -> bytes:
    if len(armored) > _MAX_SIGNATURE_BYTES:
        raise _malformed(f"it is {len(armored)} bytes, far more than any Ed25519 signature")
    try:
        lines = armored.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        raise _malformed("it is not text") from None
    if len(lines) < 3 or lines[0].strip() != _BEGIN or lines[-1].strip() != _END:
        raise _malformed(f"it is not a {_BEGIN} ... {_END} block")
    try:
        return base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except binascii.Error:
        raise _malformed("its body is not base64") from None


def _malformed(reason: str) -> SignatureMismatch:
    return SignatureMismatch(f"{SIGNATURE_MEMBER} is not a valid SSH signature: {reason}")


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value
