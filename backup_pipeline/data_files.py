"""The text around a critical table's rows in its data file, defined once: the export writes it,
verify checks it, and the restore proof writes it again around the rows it reads back from the
restored database, which must give the bytes whose SHA-256 the manifest holds.
"""

from __future__ import annotations

from psycopg import sql

from backup_pipeline import layout


def quote_identifier(*parts: str) -> str:
    """A (schema-qualified) SQL identifier as text, always double-quoted: psycopg's
    sql.Identifier, the project's one quoting, for text that leaves psycopg (data files, psql
    meta-commands, a regclass parameter)."""
    return sql.Identifier(*parts).as_string(None)


def sql_data_header(schema: str, name: str, columns: list[str] | tuple[str, ...]) -> str:
    """What precedes the COPY rows of a per-table SQL data file (pg_dump's data section)."""
    column_text = ", ".join(quote_identifier(c) for c in columns)
    return (
        f"--\n-- backup_pipeline: data of table {schema}.{name}\n--\n\n"
        "SET client_encoding = 'UTF8';\n"
        "SET standard_conforming_strings = on;\n\n"
        f"COPY {quote_identifier(schema, name)} ({column_text}) "
        "FROM stdin;\n"
    )


def sql_data_trailer(rows: int) -> str:
    """What follows the rows: the end of COPY data, then the row count (truncation shows)."""
    return f"\\.\n\n{layout.END_OF_DATA}{rows} rows\n"


_END_MARKER_LINES = (b"\n\\.\n", b"\n\\.\r\n")


class EndMarkerScan:
    r"""Passes CSV blocks on to `writer`, noting whether one of its lines is exactly `\.`.

    COPY writes a value that is `\.` quoted, but a multi-line quoted value may hold such a
    line, and psql before version 18 ends a `\copy` there: the plain-shell procedure could not
    load that file. The export then also writes the table in COPY's text format (where a
    newline in a value is `\n`), which psql loads whatever the values hold.
    """

    def __init__(self, writer, *, at_line_start: bool) -> None:
        self._writer = writer
        self._tail = b"\n" if at_line_start else b""
        self.found = False

    def write(self, data: bytes) -> None:
        if not self.found:
            edge = self._tail + data[:4]
            self.found = any(m in edge or m in data for m in _END_MARKER_LINES)
            self._tail = (self._tail + data[-4:])[-4:]
        self._writer.write(data)
