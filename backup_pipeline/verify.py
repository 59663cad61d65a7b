"""Verification of an archive, usable without Dagster: what an administrator needs to trust it.

One streaming pass over the archive checks the gzip stream (to its CRC), the tar structure, that no
member could escape the folder it is extracted into, every file against the manifest's size and
SHA-256, that nothing unexpected is inside, and that every dump is readable: SQL dumps are
complete and hold as many rows as the manifest says, CSV files parse with the expected header and
row count. Memory stays flat: files are hashed and parsed as they stream, and the one member
read whole, the manifest, is refused unread when it is larger than its cap (layout.py). The
members others read whole (BACKUP_INFO.txt, and the schema files the restore loads) are held to
their caps too, as they stream.

An archive that breaks (cut short, or corrupt) is checked up to the break, and the report says
where it breaks: in which member, at which byte. The files before it are checked as usual; the
ones from it on are "cut off" or "not reached", never "missing": nothing says they were not
written.

A sealed archive (age) is decrypted as it streams; a signed one (manifest.json.sig, an SSH
signature of manifest.json's bytes) has its signature checked against BACKUP_SIGNING_PUBLIC_KEY:
as manifest.json holds every other file's SHA-256, a good signature vouches for all of them, and a
crafted archive whose checksums were recomputed is refused.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import queue
import tarfile
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from isal import igzip_lib

from backup_pipeline import layout, signing
from backup_pipeline.files import BLOCK_SIZE, HashingReader, make_private_dirs, open_private
from backup_pipeline.manifest import Manifest, ManifestError, TableEntry
from backup_pipeline.pg import PG_DUMP_COMPLETE
from backup_pipeline.sealing import DecryptionError, KeyMismatch, NoIdentity
from backup_pipeline.sources import ArchiveSource, as_source

# What parsing keeps of a dump's or a CSV's start to find its first line: the COPY line or the
# header of a table of 1,600 columns of 63-byte names is about 200 kB.
FIRST_LINE_MAX = BLOCK_SIZE
# The members something reads whole (this module, people, the restore), and the name of their cap
# in layout.py.
_CAPS = {
    layout.MANIFEST: (layout.MANIFEST_MAX_BYTES, "MANIFEST_MAX_BYTES"),
    layout.BACKUP_INFO: (layout.BACKUP_INFO_MAX_BYTES, "BACKUP_INFO_MAX_BYTES"),
    **{path: (layout.SCHEMA_MAX_BYTES, "SCHEMA_MAX_BYTES")
       for path in (layout.SCHEMA_PRE_DATA, layout.SEQUENCES, layout.SCHEMA_POST_DATA)},
}


@dataclass
class FileCheck:
    path: str
    size: int
    sha256: str
    problem: str | None = None


INTEGRITY = "integrity"  # gzip, tar, and members that could escape the extraction folder
CHECKSUMS = "checksums"  # files against the manifest: missing, different, unexpected
READABILITY = "readability"  # dumps and CSVs parse, with the manifest's row counts
SIGNATURE = "signature"  # manifest.json.sig against BACKUP_SIGNING_PUBLIC_KEY
# An SSH signature is some 300 bytes; a larger manifest.json.sig was not made by this pipeline.
_SIGNATURE_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class ArchiveBreak:
    """Where the archive stops being readable (cut short, or corrupt). Every member before it was
    read and checked, so only the files from `member` on are unaccounted for: they are reported
    as cut off or not reached, never as missing from the archive."""

    at: str  # e.g. "at byte 71,787, where the file ends"
    member: str | None  # the member whose data it cuts
    after: str | None = None  # else the member it follows (None: it breaks before the first)

    @property
    def where(self) -> str:
        if self.member:
            return f"{self.at}, inside {self.member}"
        return f"{self.at}, " + (f"after {self.after}" if self.after else
                                 "before its first member")


@dataclass
class VerificationReport:
    archive: ArchiveSource
    size_bytes: int
    manifest: Manifest | None = None
    files: dict[str, FileCheck] = field(default_factory=dict)
    found: list[tuple[str, str]] = field(default_factory=list)
    broken: ArchiveBreak | None = None
    # Whose signature the manifest carries, as `verify` prints it.
    signature: str = "unsigned"
    # manifest.json's and manifest.json.sig's bytes, until the signature is checked.
    manifest_data: bytes | None = field(default=None, repr=False)
    signature_data: bytes | None = field(default=None, repr=False)

    def add(self, kind: str, problem: str) -> None:
        self.found.append((kind, problem))

    def problems_of(self, kind: str) -> list[str]:
        return [text for found_kind, text in self.found if found_kind == kind]

    @property
    def problems(self) -> list[str]:
        return [text for _, text in self.found]

    @property
    def ok(self) -> bool:
        return not self.found

    @property
    def size_mb(self) -> float:
        return self.size_bytes / (1024 * 1024)

    def summary(self) -> str:
        if self.ok:
            return f"{self.archive.name}: {len(self.files)} files verified"
        return f"{self.archive.name}: " + "; ".join(self.problems)


class GzipBreak(Exception):
    """The series of gzip members stops being valid: cut short, or corrupt. Every decompressed
    byte before `tar_offset` was delivered, intact (its CRC aside, when that is what broke)."""

    def __init__(self, what: str, at: str, tar_offset: int) -> None:
        super().__init__(f"{what}, {at}")
        self.what = what
        self.at = at
        self.tar_offset = tar_offset


def _inflated(raw: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of the gzip members in `raw`, block by block, then GzipBreak where
    they stop being valid. A gzip reader drops the block it was decompressing when the stream
    breaks (up to a megabyte: the manifest of a small archive); here every good byte comes out
    first, and the break says at which bytes of the file it happened."""
    inflater = None
    start = fed = produced = 0  # the file's bytes given to ISA-L: the last chunk starts at start
    pending = b""
    members = 0
    while True:
        if inflater is None or inflater.needs_input:
            if not pending and not (pending := raw.read(BLOCK_SIZE)):
                break
            if inflater is None:
                if members:  # zero bytes after a member are padding, which gzip skips too
                    kept = pending.lstrip(b"\0")
                    fed, pending = fed + len(pending) - len(kept), kept
                    if not pending:
                        continue
                if len(pending) < 4:
                    pending += raw.read(4)
                if len(pending) >= 4 and pending[3] & 0xE0:
                    # Reserved flag bits: gzip (and so `tar -xzf`) refuses such a member.
                    raise GzipBreak("the gzip stream is corrupt (reserved flag bits set in a "
                                    "member header: gzip and tar -xzf refuse it)",
                                    f"at byte {fed:,} of the file", produced)
                inflater = igzip_lib.IgzipDecompressor(igzip_lib.DECOMP_GZIP)
                members += 1
            start, data, pending = fed, pending, b""
            fed += len(data)
        else:
            data = b""  # ISA-L still holds input: the output was capped at BLOCK_SIZE
        try:
            block = inflater.decompress(data, BLOCK_SIZE)
        except igzip_lib.IsalError as error:
            raise GzipBreak(f"the gzip stream is corrupt ({error})",
                            f"between bytes {start:,} and {fed:,} of the file", produced) from None
        produced += len(block)
        if block:
            yield block
        if inflater.eof:
            pending = inflater.unused_data
            fed -= len(pending)
            inflater = None
    if inflater is not None:
        raise GzipBreak("the archive is truncated: the gzip stream ends early",
                        f"at byte {fed:,}, where the file ends", produced)


class _GzipStream(io.RawIOBase):
    """The decompressed archive, inflated by ISA-L in a thread of its own while the caller
    hashes and parses (as fast as isal's igzip_threaded, which loses the data before a break):
    the blocks of _inflated, then its GzipBreak (or the OSError of reading the file), in order."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._blocks: queue.Queue[bytes | Exception] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._block = memoryview(b"")
        self._end: Exception | None = None
        self._ended = False
        self._worker = threading.Thread(target=self._inflate, args=(raw,), daemon=True)
        self._worker.start()

    def _inflate(self, raw: BinaryIO) -> None:
        try:
            for block in _inflated(raw):
                if not self._put(block):
                    return
            self._put(b"")
        except Exception as error:  # raised again in the reading thread, in order
            self._put(error)

    def _put(self, item: bytes | Exception) -> bool:
        """Hand `item` to the reader; False once the reader closed the stream."""
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    @property
    def ended_cleanly(self) -> bool:
        """Every gzip member was whole and nothing followed: the caller read to the end."""
        return self._ended and self._end is None and not self._block

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._block:
            if self._ended:
                if self._end is not None:
                    raise self._end
                return 0
            item = self._blocks.get()
            if isinstance(item, Exception) or not item:
                self._ended, self._end = True, item or None
                continue
            self._block = memoryview(item)
        count = min(len(buffer), len(self._block))
        buffer[:count] = self._block[:count]
        self._block = self._block[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._worker.join()
        super().close()


class _ForwardReader:
    """The decompressed stream as a file tarfile can read in its random-access mode: it only
    ever seeks forward (over data nobody read), and that mode hands each member's reads straight
    to the stream, where the streaming mode copies every block through its own buffer (a third
    of the verification's time). It keeps its last read: tarfile ends its iteration silently at
    a header it cannot read, and only that block tells the end of the archive from a cut."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream
        self._position = 0
        self.last_read = b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._position += len(data)
        self.last_read = data
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset < self._position:
            raise tarfile.ReadError("the archive is read front to back: a member points back")
        while self._position < offset and self.read(min(BLOCK_SIZE, offset - self._position)):
            pass
        return self._position


class MemberTooLarge(ValueError):
    """A member is larger than its cap: whatever it holds, it is not one this pipeline wrote."""


def _too_large(name: str, size: str, cap: int, cap_name: str) -> str:
    cap_text = f"{cap // layout.MB} MB" if cap % layout.MB == 0 else f"{cap:,} bytes"
    return (f"{name} is {size}, more than the {cap_text} cap of {cap_name} in "
            f"backup_pipeline/layout.py: refusing the archive. A backup this pipeline made stays "
            f"far below it: this archive is damaged or was not made by it; use another one (a "
            f"database that really needs more must raise the cap).")


def read_capped(member: tarfile.TarInfo, stream: io.RawIOBase | io.BufferedIOBase, cap: int,
                cap_name: str) -> bytes:
    """All of a member that is parsed in memory, or MemberTooLarge. Its header's size is checked
    before anything is read, and the read stops one byte past the cap, should the data run
    longer than the header said. It reads in blocks: one read(cap + 1) would allocate the whole
    cap up front, for a manifest of a few kB."""
    if member.size > cap:
        raise MemberTooLarge(_too_large(member.name, f"{member.size:,} bytes", cap, cap_name))
    blocks, size = [], 0
    while size <= cap and (block := stream.read(min(BLOCK_SIZE, cap + 1 - size))):
        blocks.append(block)
        size += len(block)
    if size > cap:
        raise MemberTooLarge(_too_large(member.name, f"more than {cap:,} bytes", cap,
                                        cap_name))
    return b"".join(blocks)


def _parse_manifest(data: bytes) -> Manifest:
    """The manifest, or ValueError saying why not: not JSON (also nesting too deep for the
    parser: a few hundred kB of '[' would otherwise crash the verification instead of failing
    it), or JSON that is not a manifest this project writes."""
    try:
        parsed = json.loads(data)
    except RecursionError as error:
        raise ValueError(f"{layout.MANIFEST} is not valid JSON: it nests deeper than "
                         f"{layout.MANIFEST} ever does ({error})") from None
    except ValueError as error:
        raise ValueError(f"{layout.MANIFEST} is not valid JSON: {error}") from None
    try:
        return Manifest.from_json(parsed)
    except ManifestError as error:
        raise ValueError(f"{layout.MANIFEST} is not a manifest this project writes: "
                         f"{error}") from None


def unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting `member` would be unsafe, or None: only plain files and folders inside."""
    path = PurePosixPath(member.name)
    if path.is_absolute():
        return "has an absolute path"
    if ".." in path.parts:
        return "contains '..'"
    if member.issym() or member.islnk():
        return f"is a link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "is a device, fifo or other special file"
    return None


def _check_sql_data(stream: io.BufferedReader, rows: int | None) -> str | None:
    """A per-table data file: one COPY block whose row count matches the trailer and manifest.

    Text-format COPY escapes newlines inside values, so each row is exactly one line: counting
    newlines in large blocks is enough, and far faster than reading line by line.
    """
    head = b""
    while b"FROM stdin;\n" not in head:
        if len(head) >= FIRST_LINE_MAX:
            return (f"it has no COPY ... FROM stdin; line in its first {FIRST_LINE_MAX:,} "
                    f"bytes: it is not a table's data file")
        block = stream.read(BLOCK_SIZE)
        if not block:
            return "it has no COPY ... FROM stdin; line: the dump is truncated"
        head += block
    start = head.index(b"FROM stdin;\n") + len(b"FROM stdin;\n")
    newlines, tail = head[start:].count(b"\n"), head[start:][-512:]
    for block in iter(lambda: stream.read(BLOCK_SIZE), b""):
        newlines += block.count(b"\n")
        tail = (tail + block[-512:])[-512:]
    marker = b"\\.\n\n" + layout.END_OF_DATA.encode()
    if marker not in tail or not tail.endswith(b" rows\n"):
        return "its COPY data does not end with '\\.' and the end-of-data trailer: truncated"
    trailer = int(tail[tail.rindex(layout.END_OF_DATA.encode()) + len(layout.END_OF_DATA):]
                  .split()[0])
    counted = newlines - 3  # the '\.' line, the empty line and the trailer
    if counted != trailer or (rows is not None and counted != rows):
        return f"it holds {counted} rows, the trailer says {trailer}, the manifest says {rows}"
    return None


def _check_pg_dump(stream: io.BufferedReader) -> str | None:
    tail = b""
    for block in iter(lambda: stream.read(BLOCK_SIZE), b""):
        tail = (tail + block[-256:])[-256:]
    if PG_DUMP_COMPLETE.encode() not in tail:
        return f"it does not end with {PG_DUMP_COMPLETE!r}: the schema dump is truncated"
    return None


# Every byte but the quote and the newline: deleting them leaves each line's quotes side by side.
_NOT_QUOTE_OR_NEWLINE = bytes(b for b in range(256) if b not in b'"\n')


class CsvRows:
    """PostgreSQL's CSV with a header: UTF-8, every quoted field closed, rows after the header.

    A quote opens or closes a quoted field (a doubled quote inside one toggles twice), and only a
    newline outside quotes ends a row. Blocks are cut at their last newline. When every line of
    a block has an even number of quotes, no newline is inside quotes and every one ends a row:
    deleting all other bytes and then every pair of quotes leaves no quote. Otherwise the block
    is split on quotes and the newlines in the quoted parts are not counted. Both are a few
    string methods per megabyte, never a step per row. Both also hold for a block cut anywhere,
    which is how a block without a newline is counted: a row longer than a block (a large text
    value) is never gathered in memory, and only the first FIRST_LINE_MAX bytes are kept, for
    the header.
    """

    def __init__(self) -> None:
        self.newlines = 0
        self._in_quotes = False
        self._head = b""
        self._carry = b""
        self._ends_with_newline = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._utf8_error: str | None = None

    def feed(self, block: bytes) -> None:
        if not block:
            return
        if self._utf8_error is None:
            try:
                self._decoder.decode(block)
            except UnicodeDecodeError as error:
                self._utf8_error = str(error)
        if len(self._head) < FIRST_LINE_MAX:
            self._head += block[:FIRST_LINE_MAX - len(self._head)]
        data = self._carry + block
        cut = data.rfind(b"\n") + 1 or len(data)
        self._carry = data[cut:]
        self._count(data[:cut])
        self._ends_with_newline = block.endswith(b"\n")

    def _count(self, lines: bytes) -> None:
        if not self._in_quotes:
            marks = lines.translate(None, _NOT_QUOTE_OR_NEWLINE)
            if b'"' not in marks.replace(b'""', b""):
                self.newlines += len(marks) - marks.count(b'"')
                return
        parts = lines.split(b'"')
        quoted = b"".join(parts[0 if self._in_quotes else 1::2])
        self.newlines += lines.count(b"\n") - quoted.count(b"\n")
        self._in_quotes ^= len(parts) % 2 == 0

    @property
    def header(self) -> list[str]:
        text = self._head.decode("utf-8", "replace")
        return next(csv.reader(io.StringIO(text, newline="")), [])

    @property
    def rows(self) -> int:
        """Data rows: the header line is not one."""
        return max(0, self.newlines - 1)

    def problem(self, columns: list[str] | None = None) -> str | None:
        if self._utf8_error is None:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError as error:
                self._utf8_error = str(error)
        if self._utf8_error:
            return f"it is not valid UTF-8: {self._utf8_error}"
        if not self._head:
            return "it is empty: not even a header"
        if len(self._head) == FIRST_LINE_MAX and b"\n" not in self._head:
            return (f"its header line is longer than {FIRST_LINE_MAX:,} bytes: it is not a "
                    f"table's CSV")
        if self._in_quotes or not self._ends_with_newline:
            return "its last row is cut off (an unclosed quote or no final newline): truncated"
        if columns is not None and self.header != columns:
            return f"its header {self.header} differs from the table's columns {columns}"
        return None


def _check_csv(stream: io.BufferedReader, columns: list[str] | None, rows: int | None
               ) -> str | None:
    counter = CsvRows()
    for block in iter(lambda: stream.read(BLOCK_SIZE), b""):
        counter.feed(block)
    problem = counter.problem(columns)
    if problem is None and rows is not None and counter.rows != rows:
        problem = f"it holds {counter.rows} rows, the manifest says {rows}"
    return problem


def _readability_problem(path: str, stream: io.BufferedReader,
                         tables: Mapping[str, TableEntry]) -> str | None:
    if path in (layout.SCHEMA_PRE_DATA, layout.SCHEMA_POST_DATA):
        return _check_pg_dump(stream)
    table = tables.get(path)
    if path.endswith(".csv"):
        return _check_csv(stream, list(table.columns) if table else None,
                          table.rows if table else None)
    if path.endswith(".sql") and path.startswith(f"{layout.DATABASE_DIR}/") and table:
        return _check_sql_data(stream, table.rows)
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, report: VerificationReport,
                 tables: Mapping[str, TableEntry], extract_to: Path | None) -> None:
    """Check one member as it streams by (and extract it, with `extract_to`)."""
    reason = unsafe_member_reason(member)
    if reason:
        report.add(INTEGRITY, f"{member.name} {reason}: refusing the archive")
        return
    if not member.isfile():
        return
    if member.name in report.files or (
            member.name == layout.MANIFEST and report.manifest_data is not None) or (
            member.name == signing.SIGNATURE_MEMBER and report.signature_data is not None):
        report.add(INTEGRITY, f"{member.name} appears twice: refusing the archive")
        return
    source = tar.extractfile(member)
    assert source is not None
    hashing = HashingReader(source)
    buffered = io.BufferedReader(hashing, BLOCK_SIZE)
    if member.name == layout.MANIFEST:
        _load_manifest(member, buffered, report)
        return
    if member.name == signing.SIGNATURE_MEMBER:
        try:
            report.signature_data = read_capped(member, buffered, _SIGNATURE_MAX_BYTES,
                                                "verify._SIGNATURE_MAX_BYTES")
        except MemberTooLarge as error:
            report.add(SIGNATURE, str(error))
        return
    if extract_to is None:
        problem = _readability_problem(member.name, buffered, tables)
        while buffered.read(BLOCK_SIZE):
            pass
    else:
        problem = None
        _write_member(extract_to, member.name, buffered)
    report.files[member.name] = FileCheck(member.name, hashing.size, hashing.hash.hexdigest(),
                                          problem)
    if member.name in _CAPS and hashing.size > _CAPS[member.name][0]:
        report.add(CHECKSUMS, _too_large(member.name, f"{hashing.size:,} bytes",
                                         *_CAPS[member.name]))


def _end_problem(last_header: bytes) -> str | None:
    """Why the block tarfile stopped at is not the end-of-archive marker (a block of zeros), or
    None. tarfile ends its iteration silently at a header it cannot read."""
    if last_header == tarfile.NUL * tarfile.BLOCKSIZE:
        return None
    if len(last_header) < tarfile.BLOCKSIZE:
        return ("the archive is truncated: the tar stream ends without its end-of-archive "
                "marker")
    return "the tar structure is corrupt: a member's header is not a valid tar header"


def _record_break(report: VerificationReport, what: str, at: str,
                  members: list[tarfile.TarInfo], tar_offset: int) -> None:
    """The break as one integrity problem, and in `report.broken` for the files it leaves
    unread: the member whose data it cuts, or the one it follows."""
    last = members[-1] if members else None
    if last is not None and tar_offset < last.offset_data + last.size:
        report.broken = ArchiveBreak(at, member=last.name)
    else:
        report.broken = ArchiveBreak(at, member=None, after=last.name if last else None)
    report.add(INTEGRITY, f"{what}, {report.broken.where}: everything before that was read "
                          f"and checked")


def _read_members(archive: ArchiveSource, report: VerificationReport,
                  tables: Mapping[str, TableEntry], extract_to: Path | None) -> None:
    """One pass over the archive, every member checked as it streams by. Where the gzip or
    tar stream (or the age encryption around them) breaks, `report.broken` says where, and what
    was read before it stands. A missing or wrong private key is raised: nothing was read."""
    members: list[tarfile.TarInfo] = []
    with archive.open() as raw, _GzipStream(raw) as stream, \
            io.BufferedReader(stream, BLOCK_SIZE) as gz:
        forward = _ForwardReader(gz)
        try:
            with tarfile.open(fileobj=forward, mode="r:") as tar:
                members = tar.members
                for member in tar:
                    _read_member(tar, member, report, tables, extract_to)
                problem = _end_problem(forward.last_read)
                if problem:
                    _record_break(report, problem, _tar_position(report, stream, tar.offset),
                                  members, tar.offset)
                    return
            # The tar reader stops at the end-of-archive blocks; read to the end of the gzip
            # stream so its CRC and length are checked too.
            while gz.read(BLOCK_SIZE):
                pass
        except GzipBreak as error:
            _record_break(report, error.what, error.at, members, error.tar_offset)
        except (KeyMismatch, NoIdentity):
            raise
        except DecryptionError as error:
            _record_break(report, str(error), f"{forward.tell():,} bytes into the tar stream",
                          members, forward.tell())
        except tarfile.TarError as error:
            what = ("the archive is truncated: the tar stream stops early, where the gzip data "
                    "ends" if stream.ended_cleanly else
                    f"the tar structure is corrupt ({error})")
            _record_break(report, what, _tar_position(report, stream, forward.tell()), members,
                          forward.tell())


def _tar_position(report: VerificationReport, stream: _GzipStream, tar_offset: int) -> str:
    """Where in the file a tar-level break is: its end, when the gzip members were whole and
    it was read to the end (the series was cut at a member's end); else only the offset in the
    decompressed tar stream is known."""
    if stream.ended_cleanly:
        return f"at byte {report.size_bytes:,}, where the file ends"
    return f"{tar_offset:,} bytes into the tar stream"


def _load_manifest(member: tarfile.TarInfo, stream: io.BufferedReader,
                   report: VerificationReport) -> None:
    """The manifest into `report`, or the reason it is refused: too large, or not JSON."""
    try:
        data = read_capped(member, stream, *_CAPS[layout.MANIFEST])
    except MemberTooLarge as error:
        report.add(CHECKSUMS, str(error))
        return
    report.manifest_data = data
    try:
        report.manifest = _parse_manifest(data)
    except ValueError as error:
        report.add(CHECKSUMS, str(error))


def _write_member(folder: Path, name: str, stream: io.BufferedReader) -> None:
    """Extract one (already checked safe) member as a private file under `folder`."""
    target = folder / name
    make_private_dirs(target.parent)
    with open_private(target, exclusive=True) as handle:
        for block in iter(lambda: stream.read(BLOCK_SIZE), b""):
            handle.write(block)


def read_manifest(archive: ArchiveSource | Path) -> Manifest | None:
    """manifest.json, which this pipeline writes as the archive's first member: reading it
    decompresses only the archive's first blocks. None when it is not there or not readable,
    or larger than its cap (then it is not read at all: verify_archive says why)."""
    try:
        with as_source(archive).open() as raw, \
                tarfile.open(fileobj=raw, mode="r|gz") as tar:
            member = tar.next()
            if member is None or member.name != layout.MANIFEST or not member.isfile():
                return None
            source = tar.extractfile(member)
            if source is None:
                return None
            return _parse_manifest(read_capped(member, source, *_CAPS[layout.MANIFEST]))
    except (OSError, EOFError, tarfile.TarError, zlib.error, ValueError):
        return None


def _manifest_tables(archive: ArchiveSource) -> Mapping[str, TableEntry]:
    """The manifest's tables by path, to guide the full pass (which checks it again)."""
    manifest = read_manifest(archive)
    return manifest.tables_by_path if manifest else {}


def verify_archive(archive: ArchiveSource | Path, extract_to: Path | None = None, *,
                   signer: signing.PublicKey | None = None,
                   allow_unsigned: bool = False) -> VerificationReport:
    """Check `archive` completely; `report.ok` only when every check holds.

    With `extract_to` (an empty folder) the files are extracted in the same pass, for a restore
    that must not read the archive twice; the dumps are then not parsed here (psql loads them,
    and the restore compares row counts), everything else is checked. Whatever was extracted
    must be discarded when the report is not ok.

    With `signer` (BACKUP_SIGNING_PUBLIC_KEY), an archive whose manifest it did not sign is
    refused, unless `allow_unsigned`: then the report says why it was let through.
    """
    source = as_source(archive)
    report = VerificationReport(archive=source, size_bytes=source.stored_size())
    tables = _manifest_tables(source) if extract_to is None else {}
    _read_members(source, report, tables, extract_to)
    _check_signature(report, signer, allow_unsigned)
    if report.manifest is None:
        if report.broken:
            report.add(CHECKSUMS, f"{layout.MANIFEST} was not read whole (the archive breaks "
                                  f"{report.broken.where}): no file could be checked against it")
        elif not report.problems_of(CHECKSUMS):
            report.add(CHECKSUMS, f"{layout.MANIFEST} is missing")
        return report
    listed = {entry.path: entry for entry in report.manifest.files}
    for path, entry in listed.items():
        found = report.files.get(path)
        if found is None:
            report.add(CHECKSUMS, _absent(path, report.broken))
        elif found.size != entry.size or found.sha256 != entry.sha256:
            report.add(
                CHECKSUMS,
                f"{path} does not match the manifest (size {found.size} vs {entry.size}, "
                f"sha256 {found.sha256[:12]} vs {entry.sha256[:12]})"
            )
    for path, found in report.files.items():
        if path not in listed:
            report.add(CHECKSUMS, f"{path} is not in the manifest: unexpected file")
        if found.problem:
            report.add(READABILITY, f"{path} is not readable: {found.problem}")
    return report


def _check_signature(report: VerificationReport, signer: signing.PublicKey | None,
                     allow_unsigned: bool) -> None:
    """`report.signature`, and a SIGNATURE problem when `signer` must have signed it and did
    not (unless `allow_unsigned`, which the status then names)."""
    data, signature = report.manifest_data, report.signature_data
    report.manifest_data = report.signature_data = None
    if signer is None:
        report.signature = ("signed; the signature was NOT checked (BACKUP_SIGNING_PUBLIC_KEY "
                            "is not set)" if signature else "unsigned")
        return
    if data is None:
        return  # no manifest: already refused, for that
    problem = None
    if signature is None:
        problem = (f"{signing.SIGNATURE_MEMBER} is missing: the archive is unsigned, and "
                   f"BACKUP_SIGNING_PUBLIC_KEY ({signer.fingerprint}) says archives are signed. "
                   f"Use a signed archive, or --allow-unsigned if you know where this one "
                   f"comes from (an archive made before signing was turned on)")
    else:
        try:
            signer.verify(data, signature)
        except signing.SignatureMismatch as error:
            problem = f"{error}: refusing the archive (--allow-unsigned overrides, knowingly)"
    if problem is None:
        report.signature = f"signed by {signer.fingerprint} (BACKUP_SIGNING_PUBLIC_KEY): good"
    elif allow_unsigned:
        report.signature = f"NOT VERIFIED, accepted because of --allow-unsigned: {problem}"
    else:
        report.signature = "REFUSED"
        report.add(SIGNATURE, problem)


def _absent(path: str, broken: ArchiveBreak | None) -> str:
    """Why a file the manifest lists was not checked: in an archive that breaks, the file was
    cut off or never reached, which says nothing about whether it was written."""
    if broken is None:
        return f"{path} is listed in the manifest but missing"
    if broken.member == path:
        return f"{path} is cut off: the archive breaks inside it, {broken.at}"
    return f"{path} was not reached (the archive breaks {broken.where})"
