"""The configuration snapshot: links are followed only inside BACKUP_CONFIG_DIR, a link out of it
is refused by name, and whatever is not copied (pipes, sockets, dangling links, loops) is
named, never opened and never dropped silently. Real files, links, FIFOs and sockets in tmp_path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pytest

from backup_pipeline.assets.config_snapshot import (
    ConfigSnapshot,
    build_config_snapshot,
    snapshot_config,
)
from backup_pipeline.assets.values import VALUES_IO_MANAGER, step_values
from backup_pipeline.resources.storage import BackupStorage
from backup_pipeline.settings import DEFAULT_CONFIG_FILES, load_settings
from backup_pipeline_tests.conftest import write_config_dir

BASE_FILES = ["config/.env.production", "config/docker-compose.prod.yml",
              "config/nginx.prod.conf", "config/ssl/cert.pem", "config/ssl/key.pem"]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return write_config_dir(tmp_path / "config")


def _paths(record: ConfigSnapshot) -> list[str]:
    return [f.path for f in record.files]


def _snapshot_unblocked(config_dir: Path, staging: Path, fifos: list[Path]) -> dict:
    """snapshot_config in a thread. Opening a FIFO for reading waits for a writer forever: if
    the snapshot does that, this opens the writer end after a while so the test fails instead
    of hanging. A snapshot that never opens them returns at once."""
    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(record=snapshot_config(config_dir, DEFAULT_CONFIG_FILES,
                                                          staging)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):  # ENXIO: no reader waits on this one
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
        pytest.fail("the snapshot opened a FIFO and waited for a writer")
    return done["record"]


def test_links_inside_the_config_dir_are_copied_as_the_files_they_name(config_dir, tmp_path):
    """certbot's live/ files link into archive/; a folder link and a top-level entry that is a
    link work too, also when BACKUP_CONFIG_DIR itself is reached through a link."""
    ssl = config_dir / "ssl"
    (ssl / "archive").mkdir()
    (ssl / "archive" / "fullchain1.pem").write_text("CHAIN 1\n")
    (ssl / "live").mkdir()
    (ssl / "live" / "fullchain.pem").symlink_to("../archive/fullchain1.pem")
    (ssl / "current").symlink_to("archive")
    (config_dir / "sites").mkdir()
    (config_dir / "sites" / "prod.conf").write_text("server { listen 8443 ssl; }\n")
    (config_dir / "nginx.prod.conf").unlink()
    (config_dir / "nginx.prod.conf").symlink_to("sites/prod.conf")
    through_link = tmp_path / "config-link"
    through_link.symlink_to(config_dir)
    staging = tmp_path / "staging"

    record = snapshot_config(through_link, DEFAULT_CONFIG_FILES, staging)

    assert _paths(record) == [*BASE_FILES[:3], "config/ssl/archive/fullchain1.pem",
                              "config/ssl/cert.pem", "config/ssl/current/fullchain1.pem",
                              "config/ssl/key.pem", "config/ssl/live/fullchain.pem"]
    assert (record.missing, record.skipped) == ((), ())
    for copied in ("ssl/live/fullchain.pem", "ssl/current/fullchain1.pem"):
        path = staging / "config" / copied
        assert not path.is_symlink() and path.read_text() == "CHAIN 1\n"
    assert (staging / "config" / "nginx.prod.conf").read_text() == "server { listen 8443 ssl; }\n"


def test_a_link_out_of_the_config_dir_is_refused_naming_link_and_target(config_dir, tmp_path):
    """Copying it would put any file of the host (ssl/evil.pem -> /etc/shadow) into the archive
    and the email. Every such link is refused by name (also one inside a folder an entry goes
    through); the rest is copied, as the database backup must not wait on one link."""
    host = tmp_path / "host"
    host.mkdir()
    secret = host / "shadow"
    secret.write_text("root:$6$not-for-the-archive\n")
    (host / "site.conf").write_text("server {}\n")
    ssl = config_dir / "ssl"
    (ssl / "evil.pem").symlink_to(secret)
    (ssl / "climbing.pem").symlink_to("../../host/shadow")
    (ssl / "chained.pem").symlink_to("evil.pem")
    (config_dir / "nginx").symlink_to(host)
    staging = tmp_path / "staging"

    record = snapshot_config(config_dir, (*DEFAULT_CONFIG_FILES, "nginx/site.conf"), staging)

    refused = ", outside BACKUP_CONFIG_DIR: refused, so that no other file of this host ends " \
              "up in the archive; put a copy of the file in BACKUP_CONFIG_DIR instead"
    assert [asdict(s) for s in record.skipped] == [
        {"path": "ssl/chained.pem",
         "reason": f"a symbolic link to 'evil.pem' (resolves to {secret}){refused}"},
        {"path": "ssl/climbing.pem",
         "reason": f"a symbolic link to '../../host/shadow' (resolves to {secret}){refused}"},
        {"path": "ssl/evil.pem", "reason": f"a symbolic link to '{secret}'{refused}"},
        {"path": "nginx/site.conf",
         "reason": f"reached through a link (resolves to {host}/site.conf){refused}"},
    ]
    assert list(record.missing) == ["nginx/site.conf"]
    assert _paths(record) == BASE_FILES
    assert not any("not-for-the-archive" in p.read_text()
                   for p in (staging / "config").rglob("*") if p.is_file())


def test_special_files_are_named_as_skipped_and_never_opened(config_dir, tmp_path):
    ssl = config_dir / "ssl"
    fifos = [ssl / "pipe", config_dir / "nginx.prod.conf"]
    (config_dir / "nginx.prod.conf").unlink()
    for fifo in fifos:
        os.mkfifo(fifo)
    (ssl / "pipe.pem").symlink_to("pipe")
    with socket.socket(socket.AF_UNIX) as agent:
        agent.bind(str(ssl / "agent.sock"))

    record = _snapshot_unblocked(config_dir, tmp_path / "staging", fifos)

    assert [asdict(s) for s in record.skipped] == [
        {"path": "nginx.prod.conf", "reason": "a named pipe (FIFO): never opened"},
        {"path": "ssl/agent.sock", "reason": "a socket: never opened"},
        {"path": "ssl/pipe", "reason": "a named pipe (FIFO): never opened"},
        {"path": "ssl/pipe.pem", "reason": "a symbolic link to 'pipe', a named pipe (FIFO): "
                                           "never opened"},
    ]
    assert list(record.missing) == ["nginx.prod.conf"]
    assert _paths(record) == [p for p in BASE_FILES if p != "config/nginx.prod.conf"]


def test_dangling_links_and_link_loops_are_named(config_dir, tmp_path):
    ssl = config_dir / "ssl"
    (ssl / "old.pem").symlink_to("old-cert.pem")
    (ssl / "ping.pem").symlink_to("pong.pem")
    (ssl / "pong.pem").symlink_to("ping.pem")
    (ssl / "self").symlink_to(".")
    (ssl / "up").symlink_to("..")
    (config_dir / "docker-compose.prod.yml").unlink()
    (config_dir / "docker-compose.prod.yml").symlink_to("compose/prod.yml")

    record = snapshot_config(config_dir, DEFAULT_CONFIG_FILES, tmp_path / "staging")

    gone, loop = "which does not exist (or is a loop of links)", "a folder that holds it: " \
        "not followed, it would copy itself without end"
    assert [asdict(s) for s in record.skipped] == [
        {"path": "docker-compose.prod.yml",
         "reason": f"a symbolic link to 'compose/prod.yml', {gone}"},
        {"path": "ssl/old.pem", "reason": f"a symbolic link to 'old-cert.pem', {gone}"},
        {"path": "ssl/ping.pem", "reason": f"a symbolic link to 'pong.pem', {gone}"},
        {"path": "ssl/pong.pem", "reason": f"a symbolic link to 'ping.pem', {gone}"},
        {"path": "ssl/self", "reason": f"a symbolic link to '.', {loop}"},
        {"path": "ssl/up", "reason": f"a symbolic link to '..', {loop}"},
    ]
    assert list(record.missing) == ["docker-compose.prod.yml"]
    assert _paths(record) == [p for p in BASE_FILES if p != "config/docker-compose.prod.yml"]


def _materialize(config_dir: Path, tmp_path: Path, instance: dg.DagsterInstance,
                 backup_dir: Path | None = None) -> dg.ExecuteInProcessResult:
    """The config_snapshot step alone, as the pipeline builds it from the settings."""
    settings = load_settings({"BACKUP_DIR": str(backup_dir or tmp_path / "backups"),
                              "BACKUP_CONFIG_DIR": str(config_dir),
                              "ADMIN_EMAILS": "admin@example.com"})
    snapshot = build_config_snapshot(settings)

    @dg.job(resource_defs={"storage": BackupStorage(backup_dir=str(settings.backup_dir)),
                           VALUES_IO_MANAGER: step_values})
    def config_snapshot_alone():
        snapshot()

    return config_snapshot_alone.execute_in_process(instance=instance, raise_on_error=False)


def _asset_metadata(result: dg.ExecuteInProcessResult) -> dict:
    """What the step puts on the config_snapshot asset's materialization."""
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"
                and e.event_specific_data.step_output_handle.output_name == "config_snapshot"]
    return output.event_specific_data.metadata


def test_the_asset_names_what_it_skipped_in_its_metadata_and_the_run_log(
        config_dir, tmp_path, instance):
    os.mkfifo(config_dir / "ssl" / "pipe")
    result = _materialize(config_dir, tmp_path, instance)
    assert result.success
    metadata = _asset_metadata(result)
    assert metadata["skipped"].value == [
        {"path": "ssl/pipe", "reason": "a named pipe (FIFO): never opened"}]
    assert metadata["skipped_count"].value == 1
    warnings = [e.user_message for e in instance.all_logs(result.run_id)
                if e.level == logging.WARNING]
    assert ("config file NOT COPIED, not in this backup: ssl/pipe (a named pipe (FIFO): never "
            "opened)") in warnings


def test_the_asset_refuses_a_link_out_of_the_config_dir_and_goes_on(config_dir, tmp_path,
                                                                    instance):
    (config_dir / "ssl" / "evil.pem").symlink_to("/etc/shadow")
    result = _materialize(config_dir, tmp_path, instance)
    assert result.success
    metadata = _asset_metadata(result)
    [refused] = metadata["skipped"].value
    assert refused["path"] == "ssl/evil.pem" and "refused" in refused["reason"]
    warnings = [e.user_message for e in instance.all_logs(result.run_id)
                if e.level == logging.WARNING]
    assert any(w.startswith("config file NOT COPIED, not in this backup: ssl/evil.pem (a "
                            "symbolic link to '/etc/shadow'") for w in warnings), warnings


def test_a_full_backup_dir_while_copying_the_configuration_says_so(config_dir, tmp_path,
                                                                   instance, small_disk):
    (config_dir / "ssl" / "bundle.pem").write_bytes(b"x" * 200_000)
    result = _materialize(config_dir, tmp_path, instance, backup_dir=small_disk / "backups")
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    raised = failure.step_failure_data.error.cause
    assert raised.cls_name == "DiskSpaceError", raised.message
    assert raised.message.startswith(f"backup_pipeline.resources.storage.DiskSpaceError: "
                                     f"BACKUP_DIR {small_disk / 'backups'} is full: no space "
                                     "left while copying the configuration")
    assert "mounted" not in raised.message
