"""A real S3 for the tests: moto's server, over HTTP on 127.0.0.1, in a process of its own.

A process rather than moto's ThreadedMotoServer: a test kills it half way through an upload, as
a store's outage would, and starts another. Its state (buckets, objects) lives in that process
and dies with it.

Use it from a test module with a fixture of its own:

    @pytest.fixture(scope="session")
    def s3_server():
        server = start_s3_server()
        yield server
        server.stop()

then `s3_server.make_bucket(unique_bucket())` and `s3_server.target(bucket, "backups")`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from backup_pipeline import offsite
from backup_pipeline.sample_data.cluster import free_port

REGION = "us-east-1"
ACCESS_KEY_ID, SECRET_ACCESS_KEY = "moto-test-key", "moto-test-secret"
READY_TIMEOUT = 30.0


def unique_bucket() -> str:
    """A bucket name of its own for each test: the tests share a server, never a bucket."""
    return f"bp-test-{uuid.uuid4().hex[:16]}"


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self, bucket: str, prefix: str = "", **options: Any) -> offsite.S3Target:
        """A target on this server with dummy credentials; `options` are S3Target fields."""
        fields = {"access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY,
                  **options}
        return offsite.S3Target(bucket=bucket, prefix=prefix, endpoint_url=self.endpoint_url,
                                region=REGION, **fields)

    def make_bucket(self, name: str) -> str:
        offsite.client(self.target(name)).create_bucket(Bucket=name)
        return name

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to open connections, as an outage), wait it out."""
        if self.running:
            self.process.kill()
        self.process.wait()
        self.log.close()

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def _ready(server: S3Server) -> bool:
    try:
        with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _start_once(env: Mapping[str, str]) -> S3Server:
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 (open for the server's life: stop() closes it)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **env})
    server = S3Server(process=process, port=port, log=log)
    deadline = time.monotonic() + READY_TIMEOUT
    while server.running and time.monotonic() < deadline:
        if _ready(server):
            return server
        time.sleep(0.05)
    text = server.log_text()
    server.stop()
    raise RuntimeError(f"moto's S3 server did not start on port {port}: {text[-2000:]}")


def start_s3_server(env: Mapping[str, str] | None = None, tries: int = 3) -> S3Server:
    """A running server, once it answers HTTP. `env` adds to its environment (moto reads
    settings there, e.g. S3_UPLOAD_PART_MIN_SIZE). Tried again on another port: the free port
    may be taken by someone else before the server binds it."""
    failure = RuntimeError("start_s3_server: tries must be at least 1")
    for _ in range(tries):
        try:
            return _start_once(env or {})
        except RuntimeError as error:
            failure = error
    raise failure
