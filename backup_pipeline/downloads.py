"""Signed, expiring download links for archives too large to attach, and the server behind them.

A link is `BASE/download/<archive>?expires=<unix>&sig=<hmac>`, the HMAC-SHA256 of name and
expiry under BACKUP_DOWNLOAD_SECRET. The server (`backup-pipeline serve-downloads`) answers only
for names of this pipeline's archives in BACKUP_DIR: a tampered or expired link gets 403, an
unknown archive 404, and nothing else on the disk can be named. Files stream in chunks; a Range
request (`curl -C -`) resumes a broken download.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from backup_pipeline import layout

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def signature(secret: str, name: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()


def signed_link(base_url: str, secret: str, name: str, ttl_hours: float,
                now: float | None = None) -> tuple[str, int]:
    """The download URL of archive `name` and the unix time it expires."""
    expires = int((now or time.time()) + ttl_hours * 3600)
    url = (f"{base_url.rstrip('/')}/download/{quote(name)}?expires={expires}"
           f"&sig={signature(secret, name, expires)}")
    return url, expires


def check_link(secret: str, name: str, expires: str, sig: str, now: float | None = None
               ) -> HTTPStatus | None:
    """None when the link is good, else the status to answer with."""
    if not layout.ARCHIVE_NAME.match(name):
        return HTTPStatus.NOT_FOUND
    if not expires.isdigit():
        return HTTPStatus.FORBIDDEN
    if not hmac.compare_digest(signature(secret, name, int(expires)), sig):
        return HTTPStatus.FORBIDDEN
    if int(expires) < (now or time.time()):
        return HTTPStatus.FORBIDDEN
    return None


def make_handler(backup_dir: Path, secret: str) -> type[BaseHTTPRequestHandler]:
    class DownloadHandler(BaseHTTPRequestHandler):
        server_version = "backup-pipeline-downloads"

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def log_message(self, format: str, *args) -> None:
            # The query string holds the signature: log the path only.
            code = args[1] if len(args) > 1 else ""
            print(f"{self.address_string()} {self.command} {urlsplit(self.path).path} {code}",
                  flush=True)

        def _refuse(self, status: HTTPStatus, why: str) -> None:
            body = f"{status.value} {status.phrase}: {why}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self, send_body: bool) -> None:
            parts = urlsplit(self.path)
            match = re.fullmatch(r"/download/([^/]+)", parts.path)
            if not match:
                return self._refuse(HTTPStatus.NOT_FOUND, "no such download")
            name = match.group(1)
            query = parse_qs(parts.query)
            status = check_link(secret, name, query.get("expires", [""])[0],
                                query.get("sig", [""])[0])
            if status is not None:
                why = "unknown archive" if status == HTTPStatus.NOT_FOUND else \
                    "this link is invalid or has expired: ask for a new backup email"
                return self._refuse(status, why)
            path = backup_dir / name
            if not path.is_file() or path.is_symlink():
                return self._refuse(HTTPStatus.NOT_FOUND, "this archive no longer exists")
            size = path.stat().st_size
            start, end = 0, size - 1
            header = self.headers.get("Range")
            if header:
                found = _RANGE.match(header.strip())
                if not found or (not found.group(1) and not found.group(2)):
                    return self._refuse(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "bad range")
                if found.group(1):
                    start = int(found.group(1))
                    end = min(int(found.group(2)), size - 1) if found.group(2) else size - 1
                else:
                    start = max(0, size - int(found.group(2)))
                if start > end or start >= size:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    return None
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Disposition", f'attachment; filename="{name}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not send_body:
                return None
            with path.open("rb") as handle:
                handle.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    block = handle.read(min(CHUNK, remaining))
                    if not block:
                        break
                    self.wfile.write(block)
                    remaining -= len(block)
            return None

    return DownloadHandler


def make_server(backup_dir: Path, secret: str, host: str, port: int) -> ThreadingHTTPServer:
    if not secret:
        raise ValueError("BACKUP_DOWNLOAD_SECRET is not set: links cannot be checked. Set it to "
                         "a long random value (e.g. openssl rand -hex 32), the same for the "
                         "pipeline and this server.")
    return ThreadingHTTPServer((host, port), make_handler(Path(backup_dir), secret))
