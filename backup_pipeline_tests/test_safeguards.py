"""Encryption (age) and signing, end to end: what a sealed, signed backup keeps, how it opens on a
new server with the Debian `age` program or `backup-pipeline`, and what is refused.

Real programs throughout: the pipeline through Dagster, pyrage, the `age` and `age-keygen`
programs, `ssh-keygen` for the signing key, psql for the manual procedure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from backup_pipeline import layout
from backup_pipeline.sealing import (
    EncryptionError,
    KeyMismatch,
    decrypting,
    load_identities,
    parse_recipients,
    seal,
)
from backup_pipeline.settings import SettingsError, load_settings
from backup_pipeline.signing import SIGNATURE_MEMBER, PublicKey
from backup_pipeline.sources import LocalArchive
from backup_pipeline.verify import SIGNATURE, verify_archive
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    age_key,
    archives,
    follow_restore_procedure,
    outbox_messages,
    plain_text,
    read_member,
    rewrite_archive,
    rows,
    run_backup,
    signed_copy,
    ssh_key,
)
from backup_pipeline_tests.helpers import (
    manifest as read_manifest_json,
)

AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(AGE is None, reason="the age program is not installed "
                                                    "(scripts/test.sh installs it as root)")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BACKUP_PIPELINE, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def sealed_archives(backup_dir: str | Path) -> list[Path]:
    return sorted(Path(backup_dir).glob(f"{layout.ARCHIVE_GLOB}{layout.AGE_SUFFIX}"))


# --- the age format, both ways between pyrage and the age program --------------------------

def test_pyrage_seals_what_age_opens_and_opens_what_age_seals(tmp_path: Path) -> None:
    key, public = age_key(tmp_path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(3 * 64 * 1024 + 17))  # several age chunks and a partial one
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    sealed = seal(plain, tmp_path / "ours.age", parse_recipients(public, "test"), digest)
    assert sealed.size == (tmp_path / "ours.age").stat().st_size
    opened = subprocess.run([AGE, "-d", "-i", str(key), str(sealed.path)], check=True,
                            capture_output=True).stdout
    assert opened == plain.read_bytes()

    theirs = tmp_path / "theirs.age"
    subprocess.run([AGE, "-r", public, "-o", str(theirs), str(plain)], check=True)
    with theirs.open("rb") as stored, decrypting(stored, load_identities(key), "theirs") as out:
        assert out.read() == plain.read_bytes()


def test_an_ssh_key_can_be_the_recipient_too(tmp_path: Path) -> None:
    private = ssh_key(tmp_path, "admin_ed25519")
    public = private.with_suffix(".pub").read_text().strip()
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"secret\n" * 1000)
    sealed = seal(plain, tmp_path / "x.age", parse_recipients(public, "test"),
                  hashlib.sha256(plain.read_bytes()).hexdigest())
    opened = subprocess.run([AGE, "-d", "-i", str(private), str(sealed.path)], check=True,
                            capture_output=True).stdout
    assert opened == plain.read_bytes()


def test_a_wrong_key_is_one_clear_error(tmp_path: Path) -> None:
    _, public = age_key(tmp_path, "right.txt")
    wrong, _ = age_key(tmp_path, "wrong.txt")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x" * 100)
    sealed = seal(plain, tmp_path / "x.tar.gz.age", parse_recipients(public, "test"),
                  hashlib.sha256(b"x" * 100).hexdigest())
    with pytest.raises(KeyMismatch, match="was not sealed to this key"):
        verify_archive(LocalArchive(str(sealed.path), tuple(load_identities(wrong))))


def test_a_sealed_archive_cut_short_fails_verification_saying_where(
        archive: Path, tmp_path: Path) -> None:
    key, public = age_key(tmp_path)
    sealed = seal(archive, tmp_path / f"{archive.name}.age", parse_recipients(public, "test"),
                  hashlib.sha256(archive.read_bytes()).hexdigest())
    cut = tmp_path / "cut" / sealed.path.name
    cut.parent.mkdir()
    cut.write_bytes(sealed.path.read_bytes()[: sealed.size * 2 // 3])
    source = LocalArchive(str(cut), tuple(load_identities(key)))
    assert verify_archive(LocalArchive(str(sealed.path), source.identities)).ok
    report = verify_archive(source)
    assert not report.ok and report.broken is not None
    assert any("its age encryption is damaged or cut short" in p for p in report.problems)


def test_a_full_disk_mid_encryption_leaves_no_file(tmp_path: Path, small_disk: Path) -> None:
    _, public = age_key(tmp_path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(200 * 1024))  # larger than the 64 KiB disk
    target = small_disk / "x.tar.gz.age"
    with pytest.raises(EncryptionError, match=r"sealing plain\.bin with age failed"):
        seal(plain, target, parse_recipients(public, "test"),
             hashlib.sha256(plain.read_bytes()).hexdigest())
    assert list(small_disk.iterdir()) == []


def test_a_broken_recipient_stops_the_settings(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="BACKUP_AGE_RECIPIENTS holds an invalid public key"):
        load_settings({"BACKUP_AGE_RECIPIENTS": "age1notakey"})
    with pytest.raises(SettingsError, match="holds a PRIVATE age key") as refused:
        load_settings({"BACKUP_AGE_RECIPIENTS": "AGE-SECRET-KEY-1QQQSECRETQQQ"})
    assert "QQQSECRET" not in str(refused.value)
    empty = tmp_path / "recipients.txt"
    empty.write_text("# nobody yet\n")
    with pytest.raises(SettingsError, match="holds no public key"):
        load_settings({"BACKUP_AGE_RECIPIENTS_FILE": str(empty)})


# --- a sealed, signed backup through Dagster ---------------------------------------------

@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path | str]:
    folder = tmp_path / "keys"
    folder.mkdir()
    identity, public = age_key(folder)
    signing = ssh_key(folder)
    return {"identity": identity, "public": public, "signing": signing,
            "signing_public": signing.with_suffix(".pub")}


@pytest.fixture
def sealed_backup(backup_env: dict[str, str], keys: dict, instance, monkeypatch
                  ) -> dict[str, str]:
    env = {**backup_env, "BACKUP_AGE_RECIPIENTS": keys["public"],
           "BACKUP_SIGNING_KEY_FILE": str(keys["signing"])}
    for name in ("BACKUP_AGE_RECIPIENTS", "BACKUP_SIGNING_KEY_FILE"):
        monkeypatch.setenv(name, env[name])
    result = run_backup(env, instance)
    assert result.success
    return env


def test_a_sealed_backup_keeps_only_the_sealed_archive_and_it_restores(
        sealed_backup: dict[str, str], keys: dict, source_db: str, scratch_db: str, server,
        instance, tmp_path: Path) -> None:
    backup_dir = Path(sealed_backup["BACKUP_DIR"])
    [kept] = sealed_archives(backup_dir)
    # No plaintext archive under any name: not a final one, not a hidden temporary one.
    assert archives(backup_dir) == []
    assert [p for p in backup_dir.rglob("*") if ".tar.gz" in p.name and p != kept] == []
    assert kept.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    status = (backup_dir / layout.LAST_BACKUP_FILE).read_text()
    assert kept.name in status and '"format": "age"' in status

    # backup-pipeline verify with the key: complete, and signed by the key's public half.
    checked = cli("verify", str(kept), "--identity", str(keys["identity"]),
                  env={"BACKUP_SIGNING_PUBLIC_KEY": str(keys["signing_public"])})
    assert checked.returncode == 0, checked.stderr
    fingerprint = PublicKey.parse(str(keys["signing_public"])).fingerprint
    assert f"signature  signed by {fingerprint}" in checked.stdout
    # Without a key, or with another one: one line, exit 2, nothing else.
    no_key = cli("verify", str(kept))
    assert no_key.returncode == 2 and "is encrypted with age: give the private key" in no_key.stderr
    other, _ = age_key(tmp_path, "other.txt")
    wrong = cli("verify", str(kept), "--identity", str(other))
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [wrong.stderr.strip()]
    assert "was not sealed to this key" in wrong.stderr

    # backup-pipeline restore streams the decryption: the database comes back.
    restored = cli("restore", str(kept), "--identity", str(keys["identity"]), "--target",
                   server.dsn(scratch_db),
                   env={"BACKUP_SIGNING_PUBLIC_KEY": str(keys["signing_public"])})
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rows(server.dsn(scratch_db), "users") == rows(server.dsn(source_db), "users")

    # The weekly drill opens the sealed archive with BACKUP_AGE_IDENTITY_FILE, and says what
    # it lacks without it.
    from backup_pipeline.definitions import build_defs

    without = build_defs(load_settings(sealed_backup)).resolve_job_def(
        "restore_drill_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not without.success
    [failure] = [e for e in without.all_events if e.is_step_failure]
    assert "BACKUP_AGE_IDENTITY_FILE is not set" in str(failure.event_specific_data.error)
    drilled = build_defs(load_settings({**sealed_backup, "BACKUP_AGE_IDENTITY_FILE": str(
        keys["identity"])})).resolve_job_def("restore_drill_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert drilled.success

    # The email's procedure, literally: age -d, then BACKUP_INFO.txt's steps with tar and psql.
    workdir = tmp_path / "by_hand"
    workdir.mkdir()
    plain = workdir / kept.name.removesuffix(layout.AGE_SUFFIX)
    subprocess.run(f"age -d -i {keys['identity']} {kept} > {plain}", shell=True, check=True)
    manual_db = f"{scratch_db}_manual"
    project = tmp_path / "project"  # where the procedure puts the configuration back
    project.mkdir()
    done = follow_restore_procedure(plain, workdir / "steps", server.env(manual_db), manual_db,
                                    project)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert rows(server.dsn(manual_db), "users") == rows(server.dsn(source_db), "users")
    finally:
        with server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{manual_db}" WITH (FORCE)')

    # The signature inside verifies with ssh-keygen alone, as BACKUP_INFO.txt says, literally.
    with tarfile.open(plain, "r:gz") as tar:
        tar.extractall(workdir / "unpacked", members=[
            tar.getmember(name) for name in (layout.MANIFEST, SIGNATURE_MEMBER)], filter="data")
        info = tar.extractfile(layout.BACKUP_INFO).read().decode()
    assert f"Signed by     {fingerprint}" in info
    assert f"Kept as       {kept.name}, encrypted with age" in info
    commands = info.split("CHECKING THE SIGNATURE (", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in commands.splitlines() if line.startswith("   ")]
    assert len(commands) == 2 and commands[1].startswith("ssh-keygen -Y verify")
    (workdir / "unpacked" / "signing_key.pub").write_text(keys["signing_public"].read_text())
    verified = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)],
                              cwd=workdir / "unpacked", capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert "Good \"critical-backup-manifest\" signature" in verified.stdout + verified.stderr

    # The success email carries the sealed archive and the decrypt-then-restore steps.
    [message] = [m for m in outbox_messages(sealed_backup) if "backup OK" in m["Subject"]]
    text = plain_text(message)
    assert f"age -d -i key.txt {kept.name} > {plain.name}" in text
    assert "sealed to 1 public key(s)" in text and "IN CLEAR" not in text
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == kept.name
    assert attachment.get_content() == kept.read_bytes()


def test_a_recipient_that_breaks_after_loading_fails_the_run_and_keeps_nothing(
        backup_env: dict[str, str], keys: dict, instance, monkeypatch, tmp_path: Path) -> None:
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(keys["public"] + "\n")
    env = {**backup_env, "BACKUP_AGE_RECIPIENTS_FILE": str(recipients)}
    monkeypatch.setenv("BACKUP_AGE_RECIPIENTS_FILE", str(recipients))
    from backup_pipeline.definitions import build_defs

    defs = build_defs(load_settings(env))
    recipients.write_text("age1broken\n")  # after the code location loaded: at run time
    result = defs.resolve_job_def("backup_job").execute_in_process(instance=instance,
                                                                   raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "backup.backup_archive"
    assert "none is kept unencrypted" in str(failure.event_specific_data.error)
    backup_dir = Path(env["BACKUP_DIR"])
    assert [p for p in backup_dir.rglob("*") if ".tar.gz" in p.name] == []
    assert not (backup_dir / layout.LAST_SUCCESS_FILE).exists()


# --- signatures: tampered, unsigned, wrong key -------------------------------------------

@pytest.fixture(scope="module")
def signed(tmp_path_factory, archive: Path) -> dict[str, Path]:
    """A signed copy of the session's archive: its manifest signed with a real key."""
    folder = tmp_path_factory.mktemp("signed")
    key = ssh_key(folder)
    return {"archive": signed_copy(archive, key, folder / archive.name),
            "public": key.with_suffix(".pub"), "folder": folder}


def test_a_signed_archive_verifies_and_a_crafted_one_is_refused(signed: dict) -> None:
    public = PublicKey.parse(str(signed["public"]))
    assert verify_archive(signed["archive"], signer=public).ok

    # An attacker changes a table and recomputes its checksum in the manifest: every checksum
    # holds, but the manifest is no longer what was signed.
    original = read_manifest_json(signed["archive"])
    users = next(f for f in original["files"] if f["path"] == "database/users.sql")
    forged_users = read_member(signed["archive"], users["path"])
    forged_users = forged_users.replace(b"@", b"#", 1)
    forged = dict(original, files=[
        dict(f, size=len(forged_users), sha256=hashlib.sha256(forged_users).hexdigest())
        if f["path"] == users["path"] else f for f in original["files"]])

    def craft(name: str, data: bytes) -> bytes:
        if name == layout.MANIFEST:
            return (json.dumps(forged, indent=2) + "\n").encode()
        return forged_users if name == users["path"] else data

    crafted = rewrite_archive(signed["archive"], signed["folder"] / "crafted.tar.gz", craft)
    assert verify_archive(crafted).ok  # checksums alone cannot tell
    report = verify_archive(crafted, signer=public)
    assert not report.ok
    assert report.problems_of(SIGNATURE) == [
        p for p in report.problems if "does not match manifest.json" in p]
    assert report.problems_of(SIGNATURE)

    refused = cli("restore", str(crafted), "--target", "dbname=never_used",
                  env={"BACKUP_SIGNING_PUBLIC_KEY": str(signed["public"])})
    assert refused.returncode == 2 and "does not match manifest.json" in refused.stderr


def test_unsigned_and_wrongly_signed_archives_are_refused_unless_allowed(
        signed: dict, archive: Path, tmp_path: Path) -> None:
    env = {"BACKUP_SIGNING_PUBLIC_KEY": str(signed["public"])}
    unsigned = cli("verify", str(archive), env=env)
    assert unsigned.returncode == 1
    assert "manifest.json.sig is missing: the archive is unsigned" in unsigned.stderr
    allowed = cli("verify", str(archive), "--allow-unsigned", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert "NOT VERIFIED, accepted because of --allow-unsigned" in allowed.stdout

    other = ssh_key(tmp_path, "other_key")
    wrong = cli("verify", str(signed["archive"]),
                env={"BACKUP_SIGNING_PUBLIC_KEY": other.with_suffix(".pub").read_text()})
    assert wrong.returncode == 1
    assert "was made by key" in wrong.stderr and "not by BACKUP_SIGNING_PUBLIC_KEY" in wrong.stderr

    # Without a public key configured, a signed archive verifies and says it was not checked.
    unchecked = cli("verify", str(signed["archive"]))
    assert unchecked.returncode == 0
    assert "the signature was NOT checked" in unchecked.stdout
