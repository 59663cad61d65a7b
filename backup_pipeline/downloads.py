"""Signed, expiring download links for archives too large to attach, and the server behind them.

A link is `BASE/download/<archive>?expires=<unix>&sig=<hmac>`, the HMAC-SHA256 of name and
expiry under BACKUP_DOWNLOAD_SECRET. The server (`backup-pipeline serve-downloads`) answers only
for names of this pipeline's archives in BACKUP_DIR: a damaged link (no `sig`, or no plain
unix time in `expires`) gets 400, a tampered or expired one 403, an unknown archive 404, and
nothing else on the disk can be named. Files stream in chunks; a single-range request
(`curl -C -`) resumes a broken download, and a Range the server does not serve (several
ranges, another unit, an invalid one) gets the whole file, as RFC 9110 section 14.2 allows.

The server faces the internet behind a proxy, so no client can hold it: the request line and
headers must arrive within `timeout` seconds of connecting, every later send may wait at most
`timeout` seconds for the client to read, and at most `max_connections` are served at once
(the rest get 503 at once).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import socket
import stat
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit

from backup_pipeline import layout
from backup_pipeline.files import BLOCK_SIZE

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_CONNECTIONS = 32
# A blocked send wakes only once a third of the socket's send buffer has drained, and Linux
# lets that buffer grow to 4 MiB: a stalled client would pin 4 MiB and a slow one would have to
# take 1.3 MiB per timeout. Fixed (Linux doubles it), a reader must take about 170 KiB per
# timeout (6 KB/s at 30 s); the cost, 5 MB/s at 100 ms round trip, is none behind a local proxy.
SEND_BUFFER = 256 * 1024

# What `signed_link` writes: a unix time (12 digits last until the year 33658).
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SINGLE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
# Larger than any file: a position with more digits than this is "past the end".
_BEYOND_ANY_FILE = 10**18
_SIGNATURE_IN_LOG = re.compile(r"sig=[^&\s\"']*", re.IGNORECASE)
_LOG_LIMIT = 500
_CONTROL_CHARS = str.maketrans(
    {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {ord("\\"): "\\\\"})
_BUSY_BODY = b"503 Service Unavailable: too many downloads at once, try again in a minute\n"
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Retry-After: 60\r\nConnection: close\r\n"
         + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode() + _BUSY_BODY)

_WHY = {
    HTTPStatus.NOT_FOUND: "unknown archive",
    HTTPStatus.BAD_REQUEST: "this link is incomplete or damaged: copy the whole link from the "
                            "backup email",
    HTTPStatus.FORBIDDEN: "this link is invalid or has expired: ask for a new backup email",
}


class RangeNotSatisfiable(ValueError):
    """A well-formed single byte range that starts at or beyond the end of the file (416)."""


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
    """None when the link is good, else the status to answer with.

    Only what `signed_link` writes is parsed: ASCII digits of bounded length (int() also takes
    '²'-like digits and refuses 5000 of them), and the signature compared as ASCII
    (compare_digest raises on other text), so no link can crash the server.
    """
    if not (name.isascii() and layout.ARCHIVE_NAME.fullmatch(name)):
        return HTTPStatus.NOT_FOUND
    if not _EXPIRES.fullmatch(expires) or not sig:
        return HTTPStatus.BAD_REQUEST
    if not (sig.isascii() and hmac.compare_digest(signature(secret, name, int(expires)), sig)):
        return HTTPStatus.FORBIDDEN
    if int(expires) < (now or time.time()):
        return HTTPStatus.FORBIDDEN
    return None


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes a Range header asks for, or None for the whole file.

    Only one `bytes=` range is served: several ranges, another unit or an invalid range (last
    before first) are ignored, as RFC 9110 section 14.2 allows, so the client still gets the
    file. Raises RangeNotSatisfiable only for a valid range that lies past the end (416).
    """
    found = _SINGLE_RANGE.fullmatch(header.strip()) if header else None
    if not found or found.groups() == ("", ""):
        return None
    first, last = (_position(text) if text else None for text in found.groups())
    if first is None:
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(f"no byte of the {size}-byte archive is in that range")
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(f"the range starts past the end of the {size}-byte archive")
    return first, size - 1 if last is None else min(last, size - 1)


def _position(digits: str) -> int:
    """A byte position; one too long for int() (over 4300 digits) is simply past the end."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 19 else _BEYOND_ANY_FILE


def _open_archive(path: Path) -> BinaryIO | None:
    """The archive opened for reading, or None when it is gone, a symlink or not a file.

    Opened without following symlinks and checked on the open handle, so neither a link planted
    in BACKUP_DIR nor a file swapped between a check and the open can serve another file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        if path.is_symlink():
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


class _HeadReader(io.RawIOBase):
    """Socket reads that stop at a deadline, not only after an idle gap.

    A per-read timeout alone never fires for a client that sends its headers one byte a second
    (slowloris): this one bounds the whole request line and headers.
    """

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        super().__init__()
        self._sock, self._deadline, self._timeout = sock, deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request line and headers did not arrive in time")
        self._sock.settimeout(min(left, self._timeout))
        return self._sock.recv_into(buffer)


def make_handler(backup_dir: Path, secret: str, timeout: float = DEFAULT_TIMEOUT_SECONDS
                 ) -> type[BaseHTTPRequestHandler]:
    class DownloadHandler(BaseHTTPRequestHandler):
        server_version = "backup-pipeline-downloads"

        def setup(self) -> None:
            self.timeout = timeout
            super().setup()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self.rfile.close()
            self.rfile = io.BufferedReader(
                _HeadReader(self.connection, time.monotonic() + timeout, timeout))

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def log_message(self, format: str, *args) -> None:
            # The query string holds the signature; the request line may hold anything.
            message = _SIGNATURE_IN_LOG.sub("sig=<hidden>", format % args)[:_LOG_LIMIT]
            print(f"{self.address_string()} {message.translate(_CONTROL_CHARS)}", flush=True)

        def _refuse(self, status: HTTPStatus, why: str,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
            body = f"{status.value} {status.phrase}: {why}\n".encode()
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _target(self) -> tuple[str, dict[str, list[str]]] | None:
            """The archive name the path asks for (percent-decoded) and the query, if any."""
            try:
                parts = urlsplit(self.path)
            except ValueError:  # "GET http://[/..." names an invalid IPv6 host
                return None
            match = re.fullmatch(r"/download/([^/]+)", parts.path)
            if not match:
                return None
            return unquote(match.group(1), errors="replace"), parse_qs(parts.query)

        def _serve(self, send_body: bool) -> None:
            self.connection.settimeout(timeout)  # the head is in: no deadline, only idle gaps
            target = self._target()
            if target is None:
                return self._refuse(HTTPStatus.NOT_FOUND, "no such download")
            name, query = target
            status = check_link(secret, name, query.get("expires", [""])[0],
                                query.get("sig", [""])[0])
            if status is not None:
                return self._refuse(status, _WHY[status])
            try:
                handle = _open_archive(backup_dir / name)
            except OSError as error:
                self.log_error("cannot open %s: %s", name, error)
                return self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR,
                                    "the archive cannot be read on the server: see its log")
            if handle is None:
                return self._refuse(HTTPStatus.NOT_FOUND, "this archive no longer exists")
            with handle:
                self._send_archive(name, handle, send_body)
            return None

        def _send_archive(self, name: str, handle: BinaryIO, send_body: bool) -> None:
            size = os.fstat(handle.fileno()).st_size
            ranges = self.headers.get_all("Range") or []
            try:
                wanted = byte_range(ranges[0] if len(ranges) == 1 else None, size)
            except RangeNotSatisfiable as error:
                return self._refuse(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                    f"{error}: it is already complete, or start again",
                                    (("Content-Range", f"bytes */{size}"),))
            start, end = wanted or (0, size - 1)
            if wanted:
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Disposition", f'attachment; filename="{name}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if send_body:
                handle.seek(start)
                self._stream(handle, end - start + 1)
            return None

        def _stream(self, handle: BinaryIO, length: int) -> None:
            """Send `length` bytes with send(), not sendall(): sendall's timeout bounds the
            whole call, send's only one wait, so a slow reader that keeps reading is served."""
            sent = 0
            try:
                while sent < length:
                    block = memoryview(handle.read(min(BLOCK_SIZE, length - sent)))
                    if not block:
                        break
                    while block:
                        done = self.connection.send(block)
                        block, sent = block[done:], sent + done
            except (BrokenPipeError, ConnectionResetError):
                self.log_message("client left after %d of %d bytes", sent, length)
                self.close_connection = True

    return DownloadHandler


class DownloadServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them: the rest get 503 at once,
    answered from the accepting thread without waiting for their request."""

    request_queue_size = 128  # the default 5 makes a burst of clients wait for SYN retries

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            _answer_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _answer_busy(sock: socket.socket) -> None:
    """Say 503 without ever blocking the accepting thread; read what the client already sent,
    so closing does not reset the connection before it reads the answer."""
    sock.setblocking(False)
    try:
        sock.send(_BUSY)
        sock.recv(65536)
    except OSError:
        pass


def make_server(backup_dir: Path, secret: str, host: str, port: int, *,
                timeout: float = DEFAULT_TIMEOUT_SECONDS,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> DownloadServer:
    if not secret:
        raise ValueError("BACKUP_DOWNLOAD_SECRET is not set: links cannot be checked. Set it to "
                         "a long random value (e.g. openssl rand -hex 32), the same for the "
                         "pipeline and this server.")
    if not 0 < timeout <= 3600 or max_connections < 1:
        raise ValueError(f"timeout={timeout!r}, max_connections={max_connections!r}: the "
                         "download server needs a timeout above 0 and at most 3600 seconds, "
                         "and at least 1 connection.")
    return DownloadServer((host, port), make_handler(Path(backup_dir), secret, timeout),
                          max_connections)
