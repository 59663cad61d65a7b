"""Every file the pipeline writes has its mode whatever the umask (a container's may be 000)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from backup_pipeline.files import make_private_dirs, open_private, write_private_text
from backup_pipeline_tests.helpers import archives, run_backup


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_private_files_and_folders_under_umask_000(tmp_path, open_umask):
    make_private_dirs(tmp_path / "a" / "b" / "c")
    assert [_mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    write_private_text(tmp_path / "a" / "secret", "x")
    with open_private(tmp_path / "a" / "data") as handle:
        handle.write(b"y")
    assert _mode(tmp_path / "a" / "secret") == _mode(tmp_path / "a" / "data") == 0o600
    (tmp_path / "link").symlink_to(tmp_path / "a" / "secret")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        write_private_text(tmp_path / "link", "through a link")
    assert (tmp_path / "a" / "secret").read_text() == "x", "written through a symlink"


def test_a_backup_under_umask_000_leaves_nothing_others_can_read_or_write(backup_env, instance,
                                                                         tmp_path, open_umask):
    env = {**backup_env, "BACKUP_DIR": str(tmp_path / "deep" / "backups"),
           "BACKUP_MAIL_LOG": str(tmp_path / "logs" / "mail.log")}
    assert run_backup(env, instance).success
    root = Path(env["BACKUP_DIR"])
    assert _mode(tmp_path / "deep") == _mode(root) == 0o700
    [archive] = archives(root)
    assert _mode(archive) == 0o600
    assert _mode(Path(env["BACKUP_MAIL_LOG"])) == 0o600
    for path in [root, *root.rglob("*")]:
        assert not _mode(path) & 0o022, f"{path} is {_mode(path):04o} under umask 000"
    for path in (root / "outbox").iterdir():
        assert _mode(path) == 0o600, path
