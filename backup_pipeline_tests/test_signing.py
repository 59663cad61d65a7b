"""manifest.json.sig against the real ssh-keygen: what we sign it verifies, what it signs we
verify (and is byte for byte ours), and what either should refuse, both refuse."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from backup_pipeline.signing import (
    NAMESPACE,
    PUBLIC_KEY_VAR,
    SIGNATURE_MEMBER,
    PublicKey,
    SignatureMismatch,
    SigningError,
    SigningKey,
    allowed_signers_line,
)

SSH_KEYGEN = shutil.which("ssh-keygen")
pytestmark = pytest.mark.skipif(SSH_KEYGEN is None,
                                reason="ssh-keygen (OpenSSH) is not installed: the signatures "
                                       "are checked against the real program, not a stand-in")

MANIFEST_BYTES = b'{\n  "format": 2,\n  "files": {"database/users.csv": "9f86d08..."}\n}\n'


def keygen(folder: Path, name: str, *args: str) -> Path:
    path = folder / name
    subprocess.run([SSH_KEYGEN, "-q", "-C", f"{name}@test", "-f", str(path), *args], check=True)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    keygen(folder, "signer", "-t", "ed25519", "-N", "")
    keygen(folder, "other", "-t", "ed25519", "-N", "")
    return folder


@pytest.fixture(scope="module")
def signer(keys: Path) -> SigningKey:
    return SigningKey.from_file(keys / "signer")


@pytest.fixture(scope="module")
def public(keys: Path) -> PublicKey:
    return PublicKey.parse(str(keys / "signer.pub"))


def ssh_sign(key: Path, data: bytes, namespace: str = NAMESPACE, *options: str) -> bytes:
    done = subprocess.run([SSH_KEYGEN, "-Y", "sign", "-f", str(key), "-n", namespace, *options],
                          input=data, capture_output=True, check=True)
    return done.stdout


def ssh_verify(folder: Path, public: PublicKey, data: bytes, signature: bytes
               ) -> subprocess.CompletedProcess[str]:
    (folder / "allowed_signers").write_text(allowed_signers_line(public) + "\n")
    (folder / SIGNATURE_MEMBER).write_bytes(signature)
    return subprocess.run([SSH_KEYGEN, "-Y", "verify", "-f", str(folder / "allowed_signers"),
                           "-I", "backup", "-n", NAMESPACE, "-s", str(folder / SIGNATURE_MEMBER)],
                          input=data.decode("latin-1"), capture_output=True, text=True)


def test_our_signature_verifies_with_ssh_keygen(signer, public, tmp_path):
    done = ssh_verify(tmp_path, public, MANIFEST_BYTES, signer.sign(MANIFEST_BYTES))
    assert done.returncode == 0, done.stderr
    assert f'Good "{NAMESPACE}" signature for backup' in done.stdout
    assert public.fingerprint in done.stdout


def test_ssh_keygens_signature_verifies_with_ours_and_is_byte_for_byte_ours(keys, signer, public):
    theirs = ssh_sign(keys / "signer", MANIFEST_BYTES)
    public.verify(MANIFEST_BYTES, theirs)
    # Ed25519 is deterministic: the same key over the same data gives the same signature twice.
    assert ssh_sign(keys / "signer", MANIFEST_BYTES) == theirs
    assert signer.sign(MANIFEST_BYTES) == theirs
    assert theirs.endswith(b"-----END SSH SIGNATURE-----\n")
    assert {len(line) for line in theirs.splitlines()[1:-2]} == {70}


def test_a_sha256_signature_is_also_verified(keys, public):
    public.verify(MANIFEST_BYTES, ssh_sign(keys / "signer", MANIFEST_BYTES, NAMESPACE,
                                           "-O", "hashalg=sha256"))


def test_the_public_key_is_what_ssh_keygen_says_it_is(keys, signer, public):
    line = (keys / "signer.pub").read_text()
    listed = subprocess.run([SSH_KEYGEN, "-l", "-f", str(keys / "signer.pub")],
                            capture_output=True, text=True, check=True).stdout
    assert listed.split()[1] == public.fingerprint
    assert PublicKey.parse(line) == public == signer.public_key
    assert public.openssh == " ".join(line.split()[:2])
    assert public.comment == "signer@test"
    assert allowed_signers_line(public) == f'backup namespaces="{NAMESPACE}" {public.openssh}'
    assert allowed_signers_line(public, "ops").startswith("ops namespaces=")
    with pytest.raises(ValueError, match="one word"):
        allowed_signers_line(public, "two words")


def test_a_changed_manifest_is_refused(signer, public, tmp_path):
    signature = signer.sign(MANIFEST_BYTES)
    changed = MANIFEST_BYTES.replace(b"9f86", b"9f87")
    with pytest.raises(SignatureMismatch) as refused:
        public.verify(changed, signature)
    assert str(refused.value) == (f"{SIGNATURE_MEMBER} does not match manifest.json: the manifest "
                                  f"(or the signature) was changed after it was signed")
    assert ssh_verify(tmp_path, public, changed, signature).returncode != 0


def test_a_signature_by_another_key_is_refused_naming_both(keys, public, tmp_path):
    other = SigningKey.from_file(keys / "other")
    signature = ssh_sign(keys / "other", MANIFEST_BYTES)
    assert other.sign(MANIFEST_BYTES) == signature
    with pytest.raises(SignatureMismatch) as refused:
        public.verify(MANIFEST_BYTES, signature)
    assert str(refused.value) == (f"{SIGNATURE_MEMBER} was made by key "
                                  f"{other.public_key.fingerprint}, not by {PUBLIC_KEY_VAR} "
                                  f"({public.fingerprint})")
    assert ssh_verify(tmp_path, public, MANIFEST_BYTES, signature).returncode != 0


def test_a_signature_for_another_namespace_is_refused(keys, public, tmp_path):
    signature = ssh_sign(keys / "signer", MANIFEST_BYTES, "file")
    with pytest.raises(SignatureMismatch, match=f"made for namespace 'file', not '{NAMESPACE}'"):
        public.verify(MANIFEST_BYTES, signature)
    assert ssh_verify(tmp_path, public, MANIFEST_BYTES, signature).returncode != 0


def _blob(armored: bytes) -> bytes:
    return base64.b64decode(b"".join(armored.splitlines()[1:-1]))


def _armor(blob: bytes) -> bytes:
    body = base64.encodebytes(blob).replace(b"\n", b"")
    return b"-----BEGIN SSH SIGNATURE-----\n" + body + b"\n-----END SSH SIGNATURE-----\n"


def _field(blob: bytes, index: int) -> tuple[int, int]:
    """Where the index-th string field of an SSHSIG blob starts (its length) and ends."""
    at = 10
    for _ in range(index):
        at += 4 + struct.unpack(">I", blob[at:at + 4])[0]
    return at, at + 4 + struct.unpack(">I", blob[at:at + 4])[0]


def _replace_field(blob: bytes, index: int, value: bytes) -> bytes:
    start, end = _field(blob, index)
    return blob[:start] + struct.pack(">I", len(value)) + value + blob[end:]


def _flip_last_signature_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


BROKEN: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "cut in half": (lambda s: s[: len(s) // 2], "is not a -----BEGIN SSH SIGNATURE"),
    "empty": (lambda s: b"", "is not a -----BEGIN SSH SIGNATURE"),
    "not text": (lambda s: s.replace(b"U1NI", b"\xff\xfe"), "is not text"),
    "garbled base64": (lambda s: s.replace(b"U1NI", b"U!NI"), "its body is not base64"),
    "huge": (lambda s: s * 100, "far more than any Ed25519 signature"),
    "truncated blob": (lambda s: _armor(_blob(s)[:-7]), "it is truncated"),
    "trailing bytes": (lambda s: _armor(_blob(s) + b"\0"), "extra bytes after its end (1)"),
    "wrong magic": (lambda s: _armor(b"SSHSIH" + _blob(s)[6:]), "does not start with SSHSIG"),
    "version 2": (lambda s: _armor(b"SSHSIG\0\0\0\2" + _blob(s)[10:]), "of version 2, not 1"),
    "a length past the end": (
        lambda s: _armor(_blob(s)[:10] + b"\xff\xff\xff\xff" + _blob(s)[14:]), "it is truncated"),
    "reserved field used": (lambda s: _armor(_replace_field(_blob(s), 2, b"x")),
                            "reserved field is not empty"),
    "md5": (lambda s: _armor(_replace_field(_blob(s), 3, b"md5")),
            "hash algorithm is 'md5', not sha512 or sha256"),
    "an rsa key inside": (lambda s: _armor(_replace_field(_blob(s), 0, b"\0\0\0\7ssh-rsa")),
                          "made by a 'ssh-rsa' key"),
    "a short signature": (lambda s: _armor(_replace_field(
        _blob(s), 4, b"\0\0\0\x0bssh-ed25519\0\0\0\2ab")), "signature is 2 bytes, not 64"),
    "a flipped signature bit": (lambda s: _armor(_flip_last_signature_byte(_blob(s))),
                                "does not match manifest.json"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_malformed_signature_is_refused_saying_how(case, signer, public):
    damage, reason = BROKEN[case]
    with pytest.raises(SignatureMismatch) as refused:
        public.verify(MANIFEST_BYTES, damage(signer.sign(MANIFEST_BYTES)))
    message = str(refused.value)
    assert message.startswith(f"{SIGNATURE_MEMBER} ") and "\n" not in message
    assert reason in message


def test_ssh_keygen_refuses_the_malformed_ones_too(signer, public, tmp_path):
    signature = signer.sign(MANIFEST_BYTES)
    for case in ("truncated blob", "trailing bytes", "a flipped signature bit"):
        damaged = BROKEN[case][0](signature)
        assert ssh_verify(tmp_path, public, MANIFEST_BYTES, damaged).returncode != 0, case


def test_an_rsa_key_is_refused_naming_the_file_and_the_fix(tmp_path):
    path = keygen(tmp_path, "rsa", "-t", "rsa", "-b", "2048", "-N", "")
    with pytest.raises(SigningError) as refused:
        SigningKey.from_file(path)
    message = str(refused.value)
    assert f"BACKUP_SIGNING_KEY_FILE={path}" in message and "RSA" in message
    assert "ssh-keygen -t ed25519 -N '' -f " in message
    with pytest.raises(SigningError, match=f"{PUBLIC_KEY_VAR} is a ssh-rsa key, not ssh-ed25519"):
        PublicKey.parse(path.with_suffix(".pub").read_text())


def test_a_passphrase_protected_key_is_refused_naming_the_file_and_the_fix(tmp_path):
    path = keygen(tmp_path, "locked", "-t", "ed25519", "-N", "correct horse", "-a", "1")
    with pytest.raises(SigningError) as refused:
        SigningKey.from_file(path)
    message = str(refused.value)
    assert f"BACKUP_SIGNING_KEY_FILE={path}" in message and "passphrase" in message
    assert f"ssh-keygen -p -N '' -f {path}" in message


@pytest.mark.parametrize("what", ["missing", "public half", "junk"])
def test_an_unusable_key_file_is_refused_naming_it(what, keys, tmp_path):
    path = {"missing": tmp_path / "nowhere", "public half": keys / "signer.pub",
            "junk": tmp_path / "junk"}[what]
    if what == "junk":
        path.write_text("not a key\n")
    with pytest.raises(SigningError, match=re.escape(f"BACKUP_SIGNING_KEY_FILE={path}")):
        SigningKey.from_file(path)


@pytest.mark.parametrize("text", ["junk", "ssh-ed25519 AAAAnot-base64", "ssh-ed25519",
                                  "/nonexistent/signing_key.pub"])
def test_a_public_key_that_is_not_one_is_refused_naming_the_variable(text):
    with pytest.raises(SigningError, match=PUBLIC_KEY_VAR):
        PublicKey.parse(text)


def test_a_private_key_given_as_the_public_one_is_refused_and_not_echoed(keys):
    private_text = (keys / "signer").read_text()
    for given in (private_text, str(keys / "signer")):
        with pytest.raises(SigningError, match=f"{PUBLIC_KEY_VAR} .*private key") as refused:
            PublicKey.parse(given)
        assert private_text.splitlines()[1] not in str(refused.value)


def test_the_private_key_never_appears_in_repr_or_str(keys, signer):
    private = serialization.load_ssh_private_key((keys / "signer").read_bytes(), None)
    seed = private.private_bytes_raw()
    file_body = "".join((keys / "signer").read_text().splitlines()[1:-1])
    for shown in (repr(signer), str(signer), f"{signer!r}", repr(signer.public_key)):
        assert seed.hex() not in shown and base64.b64encode(seed).decode()[:20] not in shown
        assert file_body[:40] not in shown and file_body[-40:] not in shown
    assert repr(signer) == f"SigningKey(path={keys / 'signer'!r})"
