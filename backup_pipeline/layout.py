"""The archive's name and the layout inside it, defined once.

Users rely on these: the seeds' monitoring globs `critical_backup_*.tar.gz`, the user guide's
restore steps read `database/<table>.csv` and `config/...`, and `BACKUP_INFO.txt` sits at the top.
With BACKUP_AGE_RECIPIENTS set, the archive kept is that same file sealed with age, under the same
name and `.age` (`critical_backup_YYYYMMDD_HHMMSS.tar.gz.age`): `age -d` gives back the .tar.gz.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

ARCHIVE_PREFIX = "critical_backup_"
ARCHIVE_SUFFIX = ".tar.gz"
ARCHIVE_TIME_FORMAT = "%Y%m%d_%H%M%S"
# An age-encrypted archive (BACKUP_AGE_RECIPIENTS) carries the suffix age's own tools use.
AGE_SUFFIX = ".age"
ARCHIVE_NAME = re.compile(r"^critical_backup_(\d{8}_\d{6})\.tar\.gz(\.age)?$")
ARCHIVE_GLOB = f"{ARCHIVE_PREFIX}*{ARCHIVE_SUFFIX}"
PARTIAL_SUFFIX = ".partial"

BACKUP_INFO = "BACKUP_INFO.txt"
MANIFEST = "manifest.json"
DATABASE_DIR = "database"
CONFIG_DIR = "config"

# Files in database/ besides the per-table ones. They start with an underscore so that no table
# name (validated as an identifier that may start with one, but these exact names are refused)
# can collide, and they sort first in a listing.
SCHEMA_PRE_DATA = f"{DATABASE_DIR}/_schema_pre_data.sql"
SCHEMA_POST_DATA = f"{DATABASE_DIR}/_schema_post_data.sql"
SEQUENCES = f"{DATABASE_DIR}/_sequences.sql"
ROLES = f"{DATABASE_DIR}/_roles.sql"
RESTORE_SCRIPT = f"{DATABASE_DIR}/_restore.psql"
RESERVED_TABLE_FILES = frozenset(
    {"_schema_pre_data", "_schema_post_data", "_sequences", "_restore", "_roles"}
)

# Status files the seeds' monitoring reads, in BACKUP_DIR.
LAST_SUCCESS_FILE = ".last_backup_success"
LAST_SIZE_FILE = ".last_backup_size_mb"
LAST_BACKUP_FILE = ".last_backup.json"
LAST_DRILL_FILE = ".last_restore_drill.json"
LAST_EMAIL_FILE = ".last_email.json"
LAST_OFFSITE_FILE = ".last_offsite_copy.json"
LOCK_FILE = ".backup.lock"
STAGING_DIR = ".staging"

# 2: the schema keeps owners and privileges, database/_roles.sql, tables say whether they are
# partitioned and the order of a window's older rows (the restore proof reads them back in it).
MANIFEST_FORMAT = 2
# ISA-L's strongest level: a standard .tar.gz (gzip -t, tar -xzf) about 7 % larger than
# `tar -czf` (gzip -6) makes of the same files, in a seventh of gzip's CPU time (measured on
# the sample data: benchmarks/run.py and the README's performance section).
GZIP_LEVEL = 3
MB = 1024 * 1024

# The largest manifest.json and BACKUP_INFO.txt verification accepts. It parses the manifest in
# memory, and 2 MB of gzip can hold 2 GB of whitespace: a larger manifest is refused unread.
# Measured on the sample: about 600 bytes per table and its file, plus 42 per 30-character column,
# so 64 MB holds 50,000 tables of 20 columns (10,000 of 150), where a database of a few thousand
# tables needs a few MB. BACKUP_INFO.txt is only hashed, as it streams, but people read it whole
# and it takes less than half a manifest's bytes per table (a listing line and a term of the count
# query): one larger than half the manifest's cap was not made by this pipeline.
MANIFEST_MAX_BYTES = 64 * MB
BACKUP_INFO_MAX_BYTES = 32 * MB
# The largest schema or sequence file: the restore reads each whole (restore_load.py), so it is
# checked when the archive is verified, not found too large on restore night. The sample's
# pre-data schema takes about 900 bytes per table: 256 MB holds some 250,000 tables.
SCHEMA_MAX_BYTES = 256 * MB
# The last line of a per-table data file, with its row count: a truncated dump lacks it.
END_OF_DATA = "-- end of data: "


def archive_name(moment: datetime, timezone: str) -> str:
    """`critical_backup_YYYYMMDD_HHMMSS.tar.gz`, in the administrators' time zone."""
    local = moment.astimezone(ZoneInfo(timezone))
    return f"{ARCHIVE_PREFIX}{local.strftime(ARCHIVE_TIME_FORMAT)}{ARCHIVE_SUFFIX}"


def archive_time(name: str, timezone: str) -> datetime | None:
    """The time encoded in an archive's name, or None for a file this pipeline did not make."""
    match = ARCHIVE_NAME.match(name)
    if not match:
        return None
    try:
        naive = datetime.strptime(match.group(1), ARCHIVE_TIME_FORMAT)
    except ValueError:
        return None
    return naive.replace(tzinfo=ZoneInfo(timezone))


def is_sealed(name: str) -> bool:
    """Whether an archive's name says it is age-encrypted."""
    return name.endswith(AGE_SUFFIX)


def table_file_stem(table: str) -> str:
    """`public.users` and `users` both become `users`; other schemas keep theirs: `crm.leads`."""
    schema, _, name = table.rpartition(".")
    return name if schema in ("", "public") else f"{schema}.{name}"


def dump_path(table: str) -> str:
    return f"{DATABASE_DIR}/{table_file_stem(table)}.sql"


def csv_path(table: str) -> str:
    return f"{DATABASE_DIR}/{table_file_stem(table)}.csv"


def size_text(size_bytes: int) -> str:
    """An archive's size as every output shows it (email, UI, status, quickstart): one unit
    (MB = 2**20 bytes), one rounding."""
    return f"{size_bytes / MB:.2f} MB"
