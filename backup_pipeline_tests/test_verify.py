"""Verification catches damaged, tampered and malicious archives, and names what is wrong."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from backup_pipeline import layout
from backup_pipeline.assets.checks import check_results
from backup_pipeline.verify import (
    CsvRows,
    MemberTooLarge,
    read_capped,
    read_manifest,
    verify_archive,
)
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    manifest_json,
    rewrite_archive,
    table_json,
)


def test_archive_verifies(archive):
    report = verify_archive(archive)
    assert report.ok, report.problems
    assert "database/users.sql" in report.files


def test_truncated_archive_fails(archive, tmp_path):
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    report = verify_archive(truncated)
    assert not report.ok
    assert any("truncated" in p or "corrupt" in p for p in report.problems)


def test_flipped_byte_fails_the_gzip_check(archive, tmp_path):
    """A byte that matters: inside the first member's compressed data (after its 10-byte
    header, well before its end), and in the last member's CRC. (A byte in the middle of the
    file may land in a member header's MTIME, XFL or OS field, which carries no data: the content
    is intact there and verification rightly says OK.)"""
    original = archive.read_bytes()
    for offset in (20, len(original) - 8):
        data = bytearray(original)
        data[offset] ^= 0xFF
        damaged = tmp_path / f"damaged_{offset}.tar.gz"
        damaged.write_bytes(bytes(data))
        report = verify_archive(damaged)
        assert not report.ok, offset
        assert report.problems_of("integrity"), (offset, report.problems)


@pytest.mark.parametrize("change, ok", [
    (lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), False),  # the last member's ISIZE
    (lambda data: data + b"\x1f\x8b", False),                    # garbage after the last member
    (lambda data: data + b"junk", False),
    (lambda data: data[:3] + bytes([data[3] | 0x20]) + data[4:], False),  # a reserved flag bit
    (lambda data: data + b"\0" * 512, True),                      # padding, as gzip accepts
], ids=["isize", "gzip_magic_after", "junk_after", "reserved_flag", "zero_padding"])
def test_the_gzip_layer_is_checked_as_gzip_checks_it(archive, tmp_path, change, ok):
    """What `gzip -t` (and so `tar -xzf` in BACKUP_INFO's procedure) refuses, verify refuses."""
    damaged = tmp_path / "changed.tar.gz"
    damaged.write_bytes(change(archive.read_bytes()))
    gzip_ok = subprocess.run(["gzip", "-t", str(damaged)], capture_output=True).returncode == 0
    report = verify_archive(damaged)
    assert report.ok == ok == gzip_ok, report.problems


def test_tampered_file_fails_its_checksum(archive, tmp_path):
    def change(name, data):
        return data.replace(b"user1@example.com", b"evil1@example.com") \
            if name == "database/users.sql" else data

    report = verify_archive(rewrite_archive(archive, tmp_path / "t.tar.gz", change))
    assert any(p.startswith("database/users.sql does not match the manifest")
               for p in report.problems)


def test_csv_with_a_missing_row_is_unreadable(archive, tmp_path):
    def change(name, data):
        if name != "database/purchases.csv":
            return data
        lines = data.split(b"\n")
        return b"\n".join(lines[:1] + lines[2:])

    report = verify_archive(rewrite_archive(archive, tmp_path / "t.tar.gz", change))
    assert any("database/purchases.csv is not readable" in p and "the manifest says" in p
               for p in report.problems)


def test_truncated_sql_dump_is_unreadable(archive, tmp_path):
    def change(name, data):
        return data[: len(data) // 2] if name == "database/users.sql" else data

    report = verify_archive(rewrite_archive(archive, tmp_path / "t.tar.gz", change))
    assert any("database/users.sql is not readable" in p for p in report.problems)


@pytest.mark.parametrize(("kind", "expected"), [
    ("absolute", "has an absolute path"),
    ("dotdot", "contains '..'"),
    ("symlink", "is a link to"),
    ("device", "is a device"),
    ("unexpected", "not in the manifest: unexpected file"),
    ("duplicate", "appears twice"),
])
def test_malicious_or_unexpected_members_are_refused(archive, tmp_path, kind, expected):
    info = tarfile.TarInfo({"absolute": "/etc/cron.d/evil", "dotdot": "database/../../evil",
                            "symlink": "database/evil", "device": "database/dev",
                            "unexpected": "database/extra.sql",
                            "duplicate": "database/users.sql"}[kind])
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    else:
        info.size = 4
    report = verify_archive(rewrite_archive(archive, tmp_path / "m.tar.gz", extra=[info]))
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_asset_checks_fail_for_the_right_reason(archive, tmp_path):
    def change(name, data):
        return data + b"-- appended\n" if name == "config/nginx.prod.conf" else data

    tampered = rewrite_archive(archive, tmp_path / "t.tar.gz", change)
    results = {r.check_name: r.passed
               for r in check_results(verify_archive(tampered), 0, 100)}
    assert results == {"gzip_and_tar_integrity": True, "manifest_checksums": False,
                       "dumps_readable": True, "size_within_bounds": True}
    results = {r.check_name: r.passed
               for r in check_results(verify_archive(archive), 50, 100)}
    assert results["size_within_bounds"] is False


def test_cli_verify_exit_status(archive, tmp_path):
    ok = subprocess.run([BACKUP_PIPELINE, "verify", str(archive)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "database/users.sql" in ok.stdout and ok.stdout.strip().splitlines()[-1].startswith("OK")
    data = archive.read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(data[: len(data) - 100])
    failed = subprocess.run([BACKUP_PIPELINE, "verify", str(broken)],
                            capture_output=True, text=True)
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout

    def change(name, data):
        return data + b"\n" if name == "database/roles.sql" else data

    tampered = subprocess.run([BACKUP_PIPELINE, "verify",
                               str(rewrite_archive(archive, tmp_path / "t.tar.gz", change))],
                              capture_output=True, text=True)
    assert tampered.returncode == 1
    assert any(line.startswith("FAIL") and line.endswith("database/roles.sql")
               for line in tampered.stdout.splitlines())
    assert "database/roles.sql does not match the manifest" in tampered.stderr


def _csv_rows(data: bytes, block: int) -> CsvRows:
    counter = CsvRows()
    for start in range(0, len(data), block):
        counter.feed(data[start:start + block])
    return counter


SAMPLE_CSV = (
    'id,note,amount\n'
    '1,plain,10\n'
    '2,"with, comma",20\n'
    '3,"two\nlines",30\n'
    '4,"a ""quoted"" word\nand a newline",40\n'
    '5,"ünïcødé ✓",50\n'
    '6,,60\n'
).encode()


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_csv_rows_are_counted_outside_quotes_whatever_the_blocks(block):
    """Quotes, doubled quotes, newlines in values and multi-byte characters split anywhere."""
    counter = _csv_rows(SAMPLE_CSV, block)
    assert counter.problem(["id", "note", "amount"]) is None
    assert counter.rows == 6


@pytest.mark.parametrize(("data", "columns", "expected"), [
    (b"", None, "empty"),
    (SAMPLE_CSV[:-1], None, "cut off"),
    (SAMPLE_CSV[:SAMPLE_CSV.index(b"lines")], None, "cut off"),
    (SAMPLE_CSV.replace("ünïcødé".encode(), b"\xff\xfe"), None, "UTF-8"),
    (SAMPLE_CSV[:SAMPLE_CSV.index("✓".encode()) + 1], None, "UTF-8"),
    (SAMPLE_CSV, ["id", "amount"], "header"),
])
def test_broken_csv_is_named(data, columns, expected):
    assert expected in (_csv_rows(data, 5).problem(columns) or "")


def test_archive_is_a_standard_tar_gz(archive, tmp_path):
    """The tables arrive as gzip members compressed during the export, between members the
    archive step writes: gzip -t and GNU tar read the series as one .tar.gz, and every file
    they extract is byte for byte the one the manifest describes."""
    members, rest = 0, archive.read_bytes()
    while rest:
        inflate = zlib.decompressobj(31)
        inflate.decompress(rest)
        assert inflate.eof, "the archive ends inside a gzip member"
        members, rest = members + 1, inflate.unused_data
    assert members > 3  # the tables' own members, not one stream re-compressed
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    listed = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True,
                            check=True).stdout.split()
    with tarfile.open(archive, "r:gz") as tar:
        assert listed == [m.name + ("/" if m.isdir() else "") for m in tar.getmembers()]
    assert listed[0] == "manifest.json"
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(tmp_path)], check=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "database/users.sql" in {f["path"] for f in manifest["files"]}
    for entry in manifest["files"]:
        data = (tmp_path / entry["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])


class _Spaces(io.RawIOBase):
    """`size` spaces, made as they are read: a member far larger than a test may hold in memory,
    which gzip shrinks to a thousandth."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = b" " * count
        self.left -= count
        return count


def _crafted(path: Path, members: dict[str, bytes | int]) -> Path:
    """A tar.gz of `members`, in order: bytes as given, an int as that many spaces streamed
    through gzip (64 MB of them cost 64 kB on disk, and no test memory)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = content if isinstance(content, int) else len(content)
            tar.addfile(info, _Spaces(content) if isinstance(content, int)
                        else io.BytesIO(content))
    return path


def _peak_memory(action: Callable[[], object]) -> tuple[object, int]:
    """What `action` returns, and the most memory Python objects held meanwhile (all threads:
    the decompressing one too)."""
    tracemalloc.start()
    try:
        return action(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# What verification may hold at once, whatever the archive: ISA-L's 8 MB read buffer and its
# queue, and a few 1 MB blocks (about 17 MB, measured). Each member read whole would exceed it.
MEMORY_BOUND = 32 * layout.MB


def test_oversized_manifest_is_refused_unread(tmp_path):
    """1.5 GB of whitespace compress to 2 MB: a manifest over the cap is refused from its
    header, before a byte of it is read."""
    crafted = _crafted(tmp_path / "m.tar.gz", {layout.MANIFEST: layout.MANIFEST_MAX_BYTES + 1})
    report, peak = _peak_memory(lambda: verify_archive(crafted))
    assert report.problems_of("checksums") == [
        f"manifest.json is {layout.MANIFEST_MAX_BYTES + 1:,} bytes, more than the 64 MB cap of "
        f"MANIFEST_MAX_BYTES in backup_pipeline/layout.py: refusing the archive. A backup this "
        f"pipeline made stays far below it: this archive is damaged or was not made by it; use "
        f"another one (a database that really needs more must raise the cap)."]
    assert peak < MEMORY_BOUND
    assert read_manifest(crafted) is None


@pytest.mark.parametrize(("name", "cap", "cap_text"), [
    (layout.BACKUP_INFO, layout.BACKUP_INFO_MAX_BYTES, "32 MB cap of BACKUP_INFO_MAX_BYTES"),
    (layout.SCHEMA_PRE_DATA, layout.SCHEMA_MAX_BYTES, "256 MB cap of SCHEMA_MAX_BYTES"),
])
def test_members_read_whole_elsewhere_are_refused_over_their_cap(tmp_path, name, cap, cap_text):
    """People read BACKUP_INFO.txt whole, the restore each schema file: verification streams
    them, and holds them to their caps so the restore never meets one too large."""
    crafted = _crafted(tmp_path / "i.tar.gz", {layout.MANIFEST: manifest_json(), name: cap + 1})
    report, peak = _peak_memory(lambda: verify_archive(crafted))
    assert any(p.startswith(f"{name} is {cap + 1:,} bytes, more than the {cap_text}")
               for p in report.problems_of("checksums")), report.problems
    assert peak < MEMORY_BOUND


def test_a_member_read_whole_is_read_no_further_than_its_cap():
    """Whatever its header says: at most cap + 1 bytes are read, to know it is over."""
    header = tarfile.TarInfo(layout.MANIFEST)
    header.size = 10
    stream = io.BytesIO(b" " * 5000)
    with pytest.raises(MemberTooLarge, match=r"^manifest\.json is more than 1,000 bytes, more "
                                             r"than the 1,000 bytes cap of TEST_CAP in"):
        read_capped(header, stream, 1000, "TEST_CAP")
    assert stream.tell() == 1001
    header.size = 1001
    stream.seek(0)
    with pytest.raises(MemberTooLarge, match=r"^manifest\.json is 1,001 bytes, more than"):
        read_capped(header, stream, 1000, "TEST_CAP")
    assert stream.tell() == 0


@pytest.mark.parametrize(("path", "expected"), [
    ("database/t.csv", "its header line is longer than 1,048,576 bytes: it is not a table's CSV"),
    ("database/t.sql", "it has no COPY ... FROM stdin; line in its first 1,048,576 bytes: it is "
                       "not a table's data file"),
])
def test_data_members_stream_whatever_they_hold(tmp_path, path, expected):
    """A dump or CSV without a single line break is still read block by block, not gathered
    whole while looking for the end of its first line."""
    kind = "transactions" if path.endswith(".csv") else "critical"
    manifest = manifest_json([table_json("public.t", kind, path)])
    crafted = _crafted(tmp_path / "d.tar.gz", {layout.MANIFEST: manifest, path: 48 * layout.MB})
    report, peak = _peak_memory(lambda: verify_archive(crafted))
    assert report.problems_of("readability") == [f"{path} is not readable: {expected}"]
    assert peak < MEMORY_BOUND


def test_deeply_nested_manifest_is_named_not_a_crash(tmp_path):
    crafted = _crafted(tmp_path / "n.tar.gz", {layout.MANIFEST: b"[" * 100_000})
    report = verify_archive(crafted)
    assert [p.split(":")[0] for p in report.problems] == ["manifest.json is not valid JSON"]
    assert read_manifest(crafted) is None


def _gzip_member_ends(data: bytes) -> list[int]:
    """The byte offsets at which the archive's gzip members end."""
    ends, rest = [], data
    while rest:
        inflate = zlib.decompressobj(31)
        inflate.decompress(rest)
        rest = inflate.unused_data
        ends.append(len(data) - len(rest))
    return ends


def _prefix_holding(data: bytes, tar_bytes: int) -> int:
    """A cut of the archive just past the one that decompresses to `tar_bytes` bytes: 64 bytes
    past it, for ISA-L holds back the output of the last few bytes it was given."""
    inflate, produced = zlib.decompressobj(31), 0
    for cut in range(0, len(data), 16):
        produced += len(inflate.decompress(data[cut:cut + 16]))
        if produced >= tar_bytes:
            return cut + 16 + 64
    raise AssertionError(f"the first gzip member holds fewer than {tar_bytes} bytes")


def _cut(archive: Path, where: str) -> int:
    data = archive.read_bytes()
    with tarfile.open(archive, "r:gz") as tar:
        first = tar.next()
        manifest_end = first.offset_data + first.size
    return {"after_the_manifest": _prefix_holding(data, manifest_end),
            "in_the_middle": len(data) * 6 // 10,
            "at_a_gzip_member_end": _gzip_member_ends(data)[1],
            "near_the_end": len(data) - 100}[where]


@pytest.mark.parametrize("where", ["after_the_manifest", "in_the_middle",
                                   "at_a_gzip_member_end", "near_the_end"])
def test_a_truncated_archive_names_the_break_not_missing_files(archive, tmp_path, where):
    """Everything before the cut was read and is checked; the files from it on are cut off or
    not reached, never "missing", and the manifest that was read is not called missing."""
    cut = _cut(archive, where)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:cut])
    report = verify_archive(truncated)
    assert report.manifest is not None and report.broken is not None
    [integrity] = report.problems_of("integrity")
    assert integrity.startswith("the archive is truncated: ")
    assert f"at byte {cut:,}, where the file ends" in integrity
    assert integrity.endswith(f"{report.broken.where}: everything before that was read and "
                              f"checked")
    with tarfile.open(archive, "r:gz") as tar:
        order = [m.name for m in tar if m.isfile() and m.name != layout.MANIFEST]
    read, unread = order[:len(report.files)], order[len(report.files):]
    assert list(report.files) == read, "what was read is the archive's files up to the cut"
    cut_off = [f"{report.broken.member} is cut off: the archive breaks inside it, "
               f"{report.broken.at}"] if report.broken.member else []
    assert report.broken.member in (None, *unread[:1])
    assert report.problems_of("checksums") == cut_off + [
        f"{path} was not reached (the archive breaks {report.broken.where})"
        for path in unread if path != report.broken.member]
    assert not report.problems_of("readability")


def test_a_corrupt_archive_names_where_it_breaks(archive, tmp_path):
    """A byte flipped inside a table's compressed data: the files before it still verify."""
    data = bytearray(archive.read_bytes())
    start, end = _gzip_member_ends(bytes(data))[:2]
    data[(start + end) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(bytes(data))
    report = verify_archive(corrupt)
    [integrity] = report.problems_of("integrity")
    assert integrity.startswith("the gzip stream is corrupt (") and "between bytes " in integrity
    assert report.manifest is not None and layout.BACKUP_INFO in report.files
    assert not any("missing" in p for p in report.problems), report.problems
    assert any(p.endswith(f"was not reached (the archive breaks {report.broken.where})")
               for p in report.problems_of("checksums"))


def test_cli_verify_of_a_truncated_archive_says_where_it_breaks(archive, tmp_path):
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[:len(data) * 6 // 10])
    done = subprocess.run([BACKUP_PIPELINE, "verify", str(truncated)], capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert "FAIL  the archive is truncated: the gzip stream ends early, at byte " in done.stderr
    assert "was not reached (the archive breaks at byte" in done.stderr
    assert "missing" not in done.stdout + done.stderr
    assert any(line.startswith("ok  ") and line.endswith(layout.BACKUP_INFO)
               for line in done.stdout.splitlines())


def test_salvage_keeps_the_intact_files_and_names_the_rest(archive, tmp_path):
    """The night every archive fails verify: what precedes the break still reads, and each file
    is kept only if it is the manifest's, byte for byte."""
    data = archive.read_bytes()
    cut = tmp_path / archive.name
    cut.write_bytes(data[: len(data) * 6 // 10])
    expected = {f["path"]: f["sha256"] for f in json.loads(
        subprocess.run(["tar", "-xzOf", str(archive), "manifest.json"], capture_output=True,
                       check=True).stdout)["files"]}
    folder = tmp_path / "salvaged"
    done = subprocess.run([BACKUP_PIPELINE, "salvage", str(cut), "--to", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    intact = [line.split()[1] for line in lines if line.startswith("intact ")]
    damaged = [line.split()[1] for line in lines if line.startswith("DAMAGED ")]
    unreached = [line.split()[2] for line in lines if line.startswith("NOT REACHED ")]
    assert intact and unreached and len(damaged) <= 1
    assert sorted(intact + damaged + unreached) == sorted(expected)
    for path in intact:
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == expected[path]
    for path in damaged:
        assert not (folder / path).exists() and (folder / f"{path}.damaged").exists()
    for path in unreached:
        assert not (folder / path).exists()
    assert "the archive is truncated" in done.stderr

    whole = subprocess.run([BACKUP_PIPELINE, "salvage", str(archive), "--to",
                            str(tmp_path / "whole")], capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0 and f"{len(expected)} intact, 0 damaged" in whole.stdout
    again = subprocess.run([BACKUP_PIPELINE, "salvage", str(archive), "--to", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "is not empty" in again.stderr
