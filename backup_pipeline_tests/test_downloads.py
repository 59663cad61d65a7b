"""The download server against malformed, hostile and slow clients, over real sockets.

Every test talks to a real `make_server` on 127.0.0.1 and ends by checking that a good signed
link still downloads: a request that crashes a handler or a client that holds a thread must not
take the server down for the administrator who needs the archive.
"""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup_pipeline.downloads import make_server, signature, signed_link

SECRET = "download-secret-for-tests"
NAME = "critical_backup_20240101_020000.tar.gz"
SIZE = 64 * 1024
WAIT = 5.0  # the most any test waits for something the server does within its timeout


@dataclass
class Server:
    port: int
    backup_dir: Path

    def link(self, name: str = NAME) -> str:
        """The path and query of a good link, as the email gives it."""
        url, _ = signed_link("", SECRET, name, 1)
        return url

    def connect(self, receive_buffer: int | None = None) -> socket.socket:
        """A client socket; a small `receive_buffer` (set before connecting, so the window
        stays small) makes a slow reader slow at once instead of after megabytes."""
        sock = socket.socket()
        sock.settimeout(WAIT)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect(("127.0.0.1", self.port))
        return sock


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    (tmp_path / NAME).write_bytes(os.urandom(SIZE))
    return tmp_path


@contextmanager
def serving(backup_dir: Path, **limits) -> Iterator[Server]:
    server = make_server(backup_dir, SECRET, "127.0.0.1", 0, **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield Server(server.server_address[1], backup_dir)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(backup_dir: Path) -> Iterator[Server]:
    with serving(backup_dir) as running:
        yield running


def get(server: Server, target: str, headers: dict[str, str] | None = None
        ) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    with closing(connection):
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()


def raw(server: Server, request: bytes) -> bytes:
    """Everything the server answers to `request` sent as is, up to its close."""
    with server.connect() as sock:
        sock.sendall(request)
        answer = b""
        while block := sock.recv(65536):
            answer += block
        return answer


def assert_still_serves(server: Server) -> None:
    status, _, body = get(server, server.link())
    assert status == 200
    assert body == (server.backup_dir / NAME).read_bytes()


def _with_query(query: str) -> str:
    return f"/download/{NAME}?{query}"


def _good_expiry() -> str:
    return str(int(time.time()) + 3600)


def _good_sig(expires: str) -> str:
    return signature(SECRET, NAME, int(expires))


@pytest.mark.parametrize(("query", "status"), [
    ("expires=%C2%B2&sig={sig}", 400),  # '²': str.isdigit() says yes, int() refuses
    ("expires=%D9%A3&sig={sig}", 400),  # an Arabic-Indic 3: int() takes it
    ("expires=" + "9" * 5000 + "&sig={sig}", 400),  # past int()'s 4300-digit limit
    ("expires=1e10&sig={sig}", 400),
    ("expires=-1&sig={sig}", 400),
    ("expires=%20{expires}&sig={sig}", 400),
    ("sig={sig}", 400),
    ("expires={expires}", 400),  # the link cut short in the email client
    ("expires={expires}&sig=", 400),
    ("expires={expires}&sig=%C3%A9", 403),  # non-ASCII: compare_digest raises TypeError
    ("expires={expires}&sig=%FF%FE", 403),  # not UTF-8 at all
    ("expires={expires}&sig={sig}%00", 403),
    ("expires={expires}&sig={cut_sig}", 403),  # the signature cut short
])
def test_a_malformed_link_gets_400_or_403_never_a_dropped_connection(server, query, status):
    expires = _good_expiry()
    sig = _good_sig(expires)
    got, _, body = get(server, _with_query(query.format(expires=expires, sig=sig,
                                                        cut_sig=sig[:40])))
    assert got == status
    assert body.startswith(f"{status} ".encode())
    assert_still_serves(server)


def test_a_repeated_parameter_counts_once_as_the_first(server):
    expires = _good_expiry()
    tail = f"expires={expires}&sig={_good_sig(expires)}"
    assert get(server, _with_query(f"{tail}&expires=1&sig=0"))[0] == 200
    assert get(server, _with_query(f"expires=1&sig=0&{tail}"))[0] == 403


@pytest.mark.parametrize(("request_bytes", "answer"), [
    (b"GET /download/" + NAME.encode() + b"?expires=1&sig=\xe9\xff HTTP/1.0\r\n\r\n", b" 403 "),
    (b"GET http://[/download/x HTTP/1.0\r\n\r\n", b" 404 "),  # urlsplit: "Invalid IPv6 URL"
    (b"GARBAGE\r\n\r\n", b"Error code: 400"),  # the stdlib's answer, logged without crashing
    (b"GET /x HTTP/9\r\n\r\n", b"Error code: 400"),
])
def test_request_lines_that_crashed_the_logger_or_parser_get_an_answer(server, request_bytes,
                                                                        answer):
    assert answer in raw(server, request_bytes)
    assert_still_serves(server)


def test_the_log_hides_signatures_and_escapes_control_characters(server, capsys):
    raw(server, b"GET /download/\x1b[2Jx?sig=0123abcd HTTP/1.0\r\n\r\n")
    link = server.link()
    assert get(server, link)[0] == 200
    log = capsys.readouterr().out
    assert "/download/\\x1b[2Jx" in log and "\x1b" not in log
    assert "0123abcd" not in log and link.split("sig=")[1] not in log
    assert log.count("sig=<hidden>") == 2


def test_no_name_reaches_outside_the_archives_even_with_a_valid_signature(server, tmp_path):
    """The names are signed as the server decodes them: only a leaked secret could forge these,
    and even then nothing but an archive file in BACKUP_DIR is served."""
    outside = tmp_path.parent / f"{tmp_path.name}_secret.txt"
    outside.write_text("not an archive")
    planted = "critical_backup_20240102_020000.tar.gz"
    (tmp_path / planted).symlink_to(outside)
    folder = "critical_backup_20240103_020000.tar.gz"
    (tmp_path / folder).mkdir()
    for name in ["../" + outside.name, f"{NAME}/../../{outside.name}", f"{NAME}\n", planted,
                 folder, ".last_backup.json"]:
        url, _ = signed_link("", SECRET, name, 1)
        status, _, body = get(server, url)
        assert status == 404, name
        assert b"not an archive" not in body
    assert_still_serves(server)


def test_a_percent_encoded_name_is_the_same_archive(server):
    expires = _good_expiry()
    encoded = NAME.replace("_", "%5F")
    status, _, body = get(server, f"/download/{encoded}?expires={expires}&sig="
                                  f"{_good_sig(expires)}")
    assert status == 200 and body == (server.backup_dir / NAME).read_bytes()


@pytest.mark.parametrize("header", [
    "bytes=0-1,5-6",  # several ranges: served whole rather than as multipart
    "bytes=0-1, 5-6",
    "bytes=5-2",  # last before first: invalid, RFC 9110 section 14.1.1
    "items=0-1",  # another unit
    "bytes=-",
    "bytes=abc-",
    "bytes=0x10-",
])
def test_a_range_the_server_does_not_serve_gets_the_whole_file(server, header):
    status, headers, body = get(server, server.link(), {"Range": header})
    assert status == 200
    assert body == (server.backup_dir / NAME).read_bytes()
    assert headers["Content-Range"] is None


@pytest.mark.parametrize(("header", "first", "last"), [
    ("bytes=10-19", 10, 19),
    ("bytes=10-", 10, SIZE - 1),
    ("bytes=-10", SIZE - 10, SIZE - 1),
    ("bytes=-99999999", 0, SIZE - 1),  # a suffix longer than the file is the whole file
    ("bytes=0-" + "9" * 5000, 0, SIZE - 1),  # an end past int()'s limit is just the end
    ("BYTES=0-0", 0, 0),  # range units are case-insensitive
])
def test_a_single_range_gets_206_with_exactly_those_bytes(server, header, first, last):
    status, headers, body = get(server, server.link(), {"Range": header})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert body == (server.backup_dir / NAME).read_bytes()[first:last + 1]


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}",
                                    "bytes=-0", "bytes=" + "9" * 5000 + "-"])
def test_a_valid_range_past_the_end_gets_416(server, header):
    status, headers, _ = get(server, server.link(), {"Range": header})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert_still_serves(server)


def test_two_range_headers_get_the_whole_file(server):
    request = (f"GET {server.link()} HTTP/1.0\r\nRange: bytes=0-9\r\nRange: bytes=10-19\r\n"
               f"\r\n").encode()
    answer = raw(server, request)
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert answer.endswith((server.backup_dir / NAME).read_bytes())


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_idle_and_trickling_clients_are_dropped_after_the_timeout(backup_dir):
    """A slowloris: 50 clients that say nothing and 50 that send a header byte every 50 ms.
    A per-read timeout alone would keep the trickling ones forever."""
    timeout = 0.5
    with serving(backup_dir, timeout=timeout, max_connections=128) as server:
        started = time.monotonic()
        idle = [server.connect() for _ in range(50)]
        trickling = [server.connect() for _ in range(50)]
        for sock in trickling:
            sock.sendall(f"GET {server.link()} HTTP/1.0\r\nX-Slow: ".encode())
        open_sockets = set(idle + trickling)
        closed_at = []
        with selectors.DefaultSelector() as selector:
            for sock in open_sockets:
                selector.register(sock, selectors.EVENT_READ)
            while open_sockets and time.monotonic() - started < WAIT:
                for sock in open_sockets & set(trickling):
                    with suppress(OSError):  # closed by the server: its read event follows
                        sock.send(b"a")
                for key, _ in selector.select(timeout=0.05):
                    if _closed_by_server(key.fileobj):
                        selector.unregister(key.fileobj)
                        open_sockets.discard(key.fileobj)
                        closed_at.append(time.monotonic() - started)
        for sock in idle + trickling:
            sock.close()
        assert not open_sockets, f"{len(open_sockets)} of 100 still open after {WAIT} s"
        assert min(closed_at) >= timeout - 0.01  # dropped by the timeout, not by accident
        assert_still_serves(server)


def _wait_until_served(server: Server) -> None:
    """Ask until a slot is free again: freeing one follows the close, it does not precede it."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            status, _, _ = get(server, server.link())
        except ConnectionError:
            status = 503  # refused and closed before our request arrived
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status == 200


def test_connections_beyond_the_limit_get_503_and_threads_stay_bounded(backup_dir):
    with serving(backup_dir, timeout=10, max_connections=4) as server:
        threads_before = threading.active_count()
        holders = [server.connect() for _ in range(4)]
        extra = [server.connect() for _ in range(40)]
        for sock in extra:
            answer = b""
            while block := sock.recv(65536):
                answer += block
            assert answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
            assert b"Retry-After: 60" in answer and b"try again" in answer
            sock.close()
        assert threading.active_count() <= threads_before + 4
        for sock in holders:
            sock.close()
        _wait_until_served(server)
        assert_still_serves(server)


def _read_response_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    return head


def test_a_slow_reader_that_keeps_reading_gets_the_whole_archive(tmp_path):
    """The timeout bounds each wait for the client, not the download: this one reads 64 KiB
    every 120 ms (0.5 MB/s) and takes more than three times the timeout. Sending 1 MiB blocks
    with sendall() would cut it off: sendall's timeout covers the whole block. (A pause of the
    reader longer than the timeout minus 120 ms, 0.88 s, would fail it: margin for a busy CI.)"""
    timeout, size, tick = 1.0, 2 * 1024 * 1024, 64 * 1024
    content = os.urandom(size)
    (tmp_path / NAME).write_bytes(content)
    with serving(tmp_path, timeout=timeout) as server, \
            server.connect(receive_buffer=tick) as sock:
        sock.sendall(f"GET {server.link()} HTTP/1.0\r\n\r\n".encode())
        started = time.monotonic()
        head = _read_response_head(sock)
        body = b""
        while True:
            chunk = b""
            while len(chunk) < tick and (block := sock.recv(tick - len(chunk))):
                chunk += block
            body += chunk
            if len(chunk) < tick:
                break
            time.sleep(0.12)
        assert head.startswith(b"HTTP/1.0 200 ")
        assert body == content
        assert time.monotonic() - started > 3 * timeout


def test_a_reader_that_stops_reading_is_dropped_and_frees_its_slot(tmp_path):
    timeout, size = 0.5, 3 * 1024 * 1024
    (tmp_path / NAME).write_bytes(os.urandom(size))
    with serving(tmp_path, timeout=timeout, max_connections=1) as server, \
            server.connect(receive_buffer=64 * 1024) as stalled:
        stalled.sendall(f"GET {server.link()} HTTP/1.0\r\n\r\n".encode())
        assert _read_response_head(stalled).startswith(b"HTTP/1.0 200 ")
        _wait_until_served(server)  # 503 while the stalled download holds the only slot
        received = 0
        while block := stalled.recv(65536):
            received += len(block)
        assert received < size
