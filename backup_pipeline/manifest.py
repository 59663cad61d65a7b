"""manifest.json, typed: the one place that knows its keys.

The archive writer builds a `Manifest` and writes `to_json()`; verify, restore, the restore
proof, salvage, the checks and the emails read `Manifest.from_json()` and use attributes. An
archive is untrusted input when it is restored (it may come from anywhere), so `from_json`
checks every field's type and says which one is wrong (`ManifestError`): a restore never
fails later on a KeyError or runs on a value of the wrong kind. Keys that older archives of
the same or the first format lack (the application's name, the roles, the NOT VALID
constraints, the database locale, the configuration's skipped files; a table's total order and
whether it is partitioned) have the defaults those archives meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from backup_pipeline.export_plan import OrderColumn
from backup_pipeline.roles import Role
from backup_pipeline.settings import DEFAULT_APP_NAME

CRITICAL = "critical"
TRANSACTIONS = "transactions"


class ManifestError(ValueError):
    """The manifest is not one this project wrote: a field is missing, of the wrong kind, or
    names something the archive's layout does not allow."""


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
           default: Any = ...) -> Any:
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where} is not an object")
    if key not in data:
        if default is ...:
            raise ManifestError(f"{where} has no {key!r}")
        return default
    value = data[key]
    # JSON has no int/bool distinction Python keeps: a bool is never a count.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise ManifestError(f"{where}.{key} is {type(value).__name__}, not "
                            f"{' or '.join(k.__name__ for k in _kinds(kind))}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _strings(data: Mapping[str, Any], key: str, where: str, default: Any = ...) -> tuple[str, ...]:
    values = _field(data, key, list, where, default)
    if any(not isinstance(v, str) for v in values):
        raise ManifestError(f"{where}.{key} holds something other than text")
    return tuple(values)


def _objects(data: Mapping[str, Any], key: str, where: str, default: Any = ...) -> list[dict]:
    values = _field(data, key, list, where, default)
    if any(not isinstance(v, dict) for v in values):
        raise ManifestError(f"{where}.{key} holds something other than objects")
    return values


@dataclass(frozen=True)
class FileEntry:
    """A file of the archive as the writer made it: its path inside, size and SHA-256."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "a file") -> FileEntry:
        return cls(_field(data, "path", str, where), _field(data, "size", int, where),
                   _field(data, "sha256", str, where))


@dataclass(frozen=True)
class TableEntry:
    """A backed-up table: whole (critical) or its recent window (transactions)."""

    table: str  # schema.name
    kind: str  # CRITICAL or TRANSACTIONS
    path: str
    rows: int
    columns: tuple[str, ...]
    partitioned: bool
    # The total order the restore proof reads rows back in; None in archives of format 1,
    # which are restored and counted but not compared byte for byte.
    order: tuple[OrderColumn, ...] | None
    rows_in_window: int | None = None
    rows_referenced_before_window: int | None = None
    timestamp_column: str | None = None
    # A window whose CSV psql before 18 cannot \copy: also written as SQL data, for psql.
    psql_data_path: str | None = None

    @property
    def schema(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.table.split(".", 1)[1]

    @property
    def windowed(self) -> bool:
        return self.kind == TRANSACTIONS

    def to_json(self) -> dict:
        data: dict[str, Any] = {"table": self.table, "kind": self.kind, "path": self.path,
                                "rows": self.rows}
        if self.windowed:
            data.update(rows_in_window=self.rows_in_window,
                        rows_referenced_before_window=self.rows_referenced_before_window,
                        timestamp_column=self.timestamp_column)
        data.update(columns=list(self.columns), partitioned=self.partitioned)
        if self.order is not None:
            data["order"] = [{"column": c.name, "collatable": c.collatable} for c in self.order]
        if self.psql_data_path:
            data["psql_data_path"] = self.psql_data_path
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "a table") -> TableEntry:
        table = _field(data, "table", str, where)
        where = f"table {table!r}"
        if table.count(".") < 1:
            raise ManifestError(f"{where} is not schema-qualified")
        kind = _field(data, "kind", str, where)
        if kind not in (CRITICAL, TRANSACTIONS):
            raise ManifestError(f"{where} has kind {kind!r}, not {CRITICAL} or {TRANSACTIONS}")
        windowed = kind == TRANSACTIONS
        order = None if "order" not in data else tuple(
            OrderColumn(_field(c, "column", str, f"{where}.order"),
                        _field(c, "collatable", bool, f"{where}.order"))
            for c in _objects(data, "order", where))
        return cls(
            table=table, kind=kind, path=_field(data, "path", str, where),
            rows=_field(data, "rows", int, where),
            columns=_strings(data, "columns", where),
            partitioned=_field(data, "partitioned", bool, where, False),
            order=order,
            rows_in_window=_field(data, "rows_in_window", int, where) if windowed else None,
            rows_referenced_before_window=(
                _field(data, "rows_referenced_before_window", int, where) if windowed else None),
            timestamp_column=_field(data, "timestamp_column", str, where) if windowed else None,
            psql_data_path=_field(data, "psql_data_path", (str, type(None)), where, None),
        )


@dataclass(frozen=True)
class SkippedFile:
    """A configuration entry that was not copied, and why."""

    path: str
    reason: str

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class ConfigEntry:
    """What of BACKUP_CONFIG_DIR the archive holds, lacks and did not copy."""

    config_dir: str
    included: tuple[str, ...]
    missing: tuple[str, ...]
    skipped: tuple[SkippedFile, ...] = ()

    def to_json(self) -> dict:
        return {"config_dir": self.config_dir, "included": list(self.included),
                "missing": list(self.missing),
                "skipped": [s.to_json() for s in self.skipped]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConfigEntry:
        where = "config"
        skipped = tuple(SkippedFile(_field(s, "path", str, "config.skipped"),
                                    _field(s, "reason", str, "config.skipped"))
                        for s in _objects(data, "skipped", where, []))
        return cls(_field(data, "config_dir", str, where), _strings(data, "included", where),
                   _strings(data, "missing", where), skipped)


@dataclass(frozen=True)
class DatabaseRef:
    """The database the archive was made from (no password: never in an archive)."""

    host: str
    port: int
    name: str
    user: str

    def to_json(self) -> dict:
        return {"host": self.host, "port": self.port, "name": self.name, "user": self.user}


@dataclass(frozen=True)
class Window:
    """The transaction window: its length in months, and where it began."""

    months: int
    cutoff: str  # ISO 8601, by the snapshot's clock

    def to_json(self) -> dict:
        return {"months": self.months, "cutoff": self.cutoff}


@dataclass(frozen=True)
class Manifest:
    """Everything an archive says about itself."""

    format: int
    archive_name: str
    created_at: str
    database: DatabaseRef
    server_version: str
    pg_dump_version: str
    snapshot_id: str
    snapshot_taken_at: str
    window: Window
    tables: tuple[TableEntry, ...]
    config: ConfigEntry
    versions: dict[str, str]
    files: tuple[FileEntry, ...]
    application: str = DEFAULT_APP_NAME
    roles: tuple[Role, ...] = ()
    database_locale: dict[str, str | None] | None = None
    not_valid_constraints: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def data_bytes(self) -> int:
        """The files' size, uncompressed: what an extraction writes."""
        return sum(f.size for f in self.files)

    @cached_property
    def tables_by_path(self) -> dict[str, TableEntry]:
        """Each table by the path of its data file, and of its psql copy if it has one."""
        found = {t.path: t for t in self.tables}
        found.update({t.psql_data_path: t for t in self.tables if t.psql_data_path})
        return found

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "application": self.application,
            "archive_name": self.archive_name,
            "created_at": self.created_at,
            "database": self.database.to_json(),
            "server_version": self.server_version,
            "pg_dump_version": self.pg_dump_version,
            "snapshot_id": self.snapshot_id,
            "snapshot_taken_at": self.snapshot_taken_at,
            "window": self.window.to_json(),
            "tables": [t.to_json() for t in self.tables],
            "roles": [r.to_json() for r in self.roles],
            "database_locale": self.database_locale,
            "not_valid_constraints": list(self.not_valid_constraints),
            "config": self.config.to_json(),
            "versions": dict(self.versions),
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """The manifest `data` (parsed JSON) describes, or ManifestError naming what is wrong."""
        where = "the manifest"
        if not isinstance(data, dict):
            raise ManifestError(f"{where} is not a JSON object")
        database = _field(data, "database", dict, where)
        window = _field(data, "window", dict, where)
        locale = _field(data, "database_locale", (dict, type(None)), where, None)
        if locale is not None:
            for key in ("encoding", "collate", "ctype"):
                _field(locale, key, str, "database_locale")
            for key in ("provider", "locale"):
                _field(locale, key, (str, type(None)), "database_locale", None)
        try:
            roles = tuple(Role.from_json(r) for r in _objects(data, "roles", where, []))
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"{where}.roles holds a role it cannot read ({error})") from None
        versions = _field(data, "versions", dict, where, {})
        return cls(
            format=_field(data, "format", int, where),
            archive_name=_field(data, "archive_name", str, where),
            created_at=_field(data, "created_at", str, where),
            database=DatabaseRef(_field(database, "host", str, "database"),
                                 _field(database, "port", int, "database"),
                                 _field(database, "name", str, "database"),
                                 _field(database, "user", str, "database")),
            server_version=_field(data, "server_version", str, where),
            pg_dump_version=_field(data, "pg_dump_version", str, where),
            snapshot_id=_field(data, "snapshot_id", str, where),
            snapshot_taken_at=_field(data, "snapshot_taken_at", str, where),
            window=Window(_field(window, "months", int, "window"),
                          _field(window, "cutoff", str, "window")),
            tables=tuple(TableEntry.from_json(t) for t in _objects(data, "tables", where)),
            config=ConfigEntry.from_json(_field(data, "config", dict, where)),
            versions={str(k): str(v) for k, v in versions.items()},
            files=tuple(FileEntry.from_json(f) for f in _objects(data, "files", where)),
            application=_field(data, "application", str, where, DEFAULT_APP_NAME),
            roles=roles,
            database_locale=locale,
            not_valid_constraints=_strings(data, "not_valid_constraints", where, []),
        )
