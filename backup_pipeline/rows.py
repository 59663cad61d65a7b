"""Counting the rows of COPY output as it streams, in large blocks at C speed.

The export counts every table's rows while writing it and compares the count with the server's
own ("COPY n"); verification counts them again in the archive. Both read blocks of a megabyte, so
the counting is a few string methods per block, never a Python step per row.
"""

from __future__ import annotations

import codecs
import csv
import io


class TextRows:
    """COPY text format: newlines inside values are escaped, so every row is exactly one line."""

    def __init__(self) -> None:
        self.newlines = 0
        self._last = b""

    def feed(self, block: bytes) -> None:
        self.newlines += block.count(b"\n")
        if block:
            self._last = block[-1:]

    @property
    def rows(self) -> int:
        return self.newlines

    def problem(self) -> str | None:
        if self._last not in (b"", b"\n"):
            return "its last row has no newline: truncated"
        return None


class CsvRows:
    """PostgreSQL's CSV with a header: UTF-8, every quoted field closed, rows after the header.

    A quote opens or closes a quoted field (a doubled quote inside one toggles twice), and only a
    newline outside quotes ends a row: splitting a block on quotes and counting the newlines in
    the quoted parts gives the row ends without looking at a row at a time.
    """

    def __init__(self) -> None:
        self.newlines = 0
        self._in_quotes = False
        self._head = b""
        self._last = b""
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
        if self.newlines == 0:
            self._head += block
        self._last = block[-1:]
        if not self._in_quotes and b'"' not in block:
            self.newlines += block.count(b"\n")
            return
        parts = block.split(b'"')
        quoted = b"".join(parts[0 if self._in_quotes else 1::2])
        self.newlines += block.count(b"\n") - quoted.count(b"\n")
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
        if self._in_quotes or self._last != b"\n":
            return "its last row is cut off (an unclosed quote or no final newline): truncated"
        if columns is not None and self.header != columns:
            return f"its header {self.header} differs from the table's columns {columns}"
        return None
