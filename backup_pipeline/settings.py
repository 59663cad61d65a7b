"""Every environment variable the backup pipeline reads, parsed and validated in one place.

The names are the ones the seeds' Bash service used, so an existing `.env.production` keeps
working. Validation happens when the code location loads, before any work: an administrator who
mistypes a value gets one message naming the variable, what it holds and what is allowed, instead
of a backup that fails half-way at 02:00.
"""

from __future__ import annotations

import os
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backup_pipeline import layout

DEFAULT_CRITICAL_TABLES = (
    "users",
    "user_roles",
    "organizations",
    "agencies",
    "referrals",
    "exchange_rates",
    "system_settings",
    "roles",
    "permissions",
    "role_permissions",
)
DEFAULT_TRANSACTION_TABLES = ("credit_transactions", "point_transactions", "purchases")
DEFAULT_TIMESTAMP_COLUMN = "created_at"
DEFAULT_CONFIG_FILES = (".env.production", "docker-compose.prod.yml", "nginx.prod.conf", "ssl/")

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]*"
_TABLE_NAME = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})?$")
_COLUMN_NAME = re.compile(rf"^{_IDENTIFIER}$")
# What a number setting may look like: ASCII decimals. float() alone also takes 'nan', 'inf',
# 'infinity', '1_000' and digits of other scripts; int() takes '١٢' and '1_000'.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
# Sizes in MB stop at a petabyte: more than any archive or disk (10**9 is how the tests say
# "more than the disk has"), and a bound, so that no size can be infinite.
_MAX_MB = 1_000_000_000


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and what is allowed."""


@dataclass(frozen=True)
class TransactionTable:
    """A table exported only for the recent window, selected on `timestamp_column`."""

    name: str
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN


DEFAULT_APP_NAME = "Smart AI Hub"


@dataclass(frozen=True)
class Settings:
    # The application whose data this backs up: email subjects, BACKUP_INFO.txt, the manifest.
    app_name: str = DEFAULT_APP_NAME
    postgres_host: str = "localhost"
    postgres_port: int = 5432
    postgres_db: str = "smart_ai_hub"
    postgres_user: str = "postgres"
    backup_dir: Path = Path("/backups")
    config_dir: Path = Path("/config")
    config_files: tuple[str, ...] = DEFAULT_CONFIG_FILES
    critical_tables: tuple[str, ...] = DEFAULT_CRITICAL_TABLES
    transaction_tables: tuple[TransactionTable, ...] = field(
        default_factory=lambda: tuple(TransactionTable(t) for t in DEFAULT_TRANSACTION_TABLES)
    )
    transaction_months: int = 3
    min_size_mb: float = 1.0
    max_size_mb: float = 100.0
    retention_days: int = 30
    retention_min_count: int = 7
    schedule: str = "0 2 * * *"
    timezone: str = "UTC"
    db_connect_retries: int = 3
    db_retry_base_seconds: float = 2.0
    disk_reserve_mb: int = 100
    lock_timeout_seconds: int = 60
    pg_bindir: Path | None = None
    max_age_hours: float = 25.0
    min_free_disk_mb: int = 500
    drill_dsn: str | None = None
    drill_schedule: str = "0 4 * * 0"
    restore_proof: bool = True
    admin_emails: tuple[str, ...] = ()
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_from: str = "backup@localhost"
    smtp_security: str = "starttls"
    smtp_ca_file: Path | None = None
    email_max_mb: float = 25.0
    email_retry_base_seconds: float = 5.0
    outbox_dir: Path = Path("/backups/outbox")
    mail_log: Path = Path("/backups/mail.log")
    download_base_url: str | None = None
    link_ttl_hours: float = 72.0
    dagster_ui_url: str = "http://localhost:3000"
    # age public keys the archive is sealed to (the text of BACKUP_AGE_RECIPIENTS, and a file).
    age_recipients: str | None = None
    age_recipients_file: Path | None = None
    # The private key `verify`, `restore` and the drill open sealed archives with.
    age_identity_file: Path | None = None
    signing_key_file: Path | None = None
    # The public key archives must be signed with (an OpenSSH key line, or a .pub file's path).
    signing_public_key: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_checksums: str = "when_supported"

    @property
    def encrypted(self) -> bool:
        """Whether archives are sealed with age (and kept only sealed)."""
        return bool(self.age_recipients or self.age_recipients_file)

    @property
    def offsite(self) -> bool:
        """Whether every good archive is also copied to the S3 bucket."""
        return self.s3_bucket is not None


# Each setting's default, written once (above): load_settings, the resources' fields and the
# tests read them from here.
DEFAULTS = Settings()


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    """The value of `name`, trimmed, or `default`: the one place every setting is read.

    Every setting is one line: each ends up in an email header (a newline in SMTP_FROM made
    every email fail with "Header values may not contain linefeed"), a URL, a path, a log line
    or a command line. The value is not echoed: BACKUP_DRILL_DSN may hold a password.
    """
    value = env.get(name, "").strip()
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise SettingsError(
                f"{name} contains a line break or another control character ({char!r} at "
                f"character {position}): a setting is one line of text. Remove it where {name} "
                f"is set (often a value pasted with its line break, or a quote left open in "
                f".env.production)."
            )
    return value or default


def _number(env: Mapping[str, str], name: str, default: float, *, kind: type, low: float,
            high: float, meaning: str) -> float:
    """A number within [low, high]: finite by construction, as every range is bounded."""
    raw = _text(env, name, "")
    if not raw:
        return default
    pattern = _WHOLE_NUMBER if kind is int else _DECIMAL_NUMBER
    value = kind(raw) if pattern.fullmatch(raw) else None
    if value is None or not low <= value <= high:  # written so that NaN fails too
        noun = "a whole number" if kind is int else "a number"
        raise SettingsError(
            f"{name}={raw!r} is not valid: expected {noun} from {_plain(low)} to {_plain(high)} "
            f"({meaning}; default {_plain(default)})."
        )
    return value


def _plain(number: float) -> str:
    """10000000 rather than :g's 1e+07, so the range reads as the value to type."""
    return f"{number:.0f}" if float(number).is_integer() else f"{number:g}"


def _names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _text(env, name, "")
    if not raw:
        return default
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    if not items:
        raise SettingsError(f"{name}={raw!r} is not valid: list at least one table.")
    for item in items:
        if not _TABLE_NAME.match(item):
            raise SettingsError(
                f"{name} lists {item!r}, which is not a table name: use plain names such as "
                f"'users' or 'schema.table', comma separated."
            )
    duplicates = sorted({i for i in items if items.count(i) > 1})
    if duplicates:
        raise SettingsError(f"{name} lists {', '.join(duplicates)} more than once.")
    return items


def _transaction_tables(env: Mapping[str, str]) -> tuple[TransactionTable, ...]:
    """Parse `table[:timestamp_column]` entries, e.g. `purchases,audit_trail:occurred_at`."""
    name = "BACKUP_TRANSACTION_TABLES"
    raw = _text(env, name, "")
    if not raw:
        return tuple(TransactionTable(t) for t in DEFAULT_TRANSACTION_TABLES)
    tables = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        table, _, column = item.partition(":")
        column = column or DEFAULT_TIMESTAMP_COLUMN
        if not _TABLE_NAME.match(table) or not _COLUMN_NAME.match(column):
            raise SettingsError(
                f"{name} lists {item!r}: expected 'table' or 'table:timestamp_column', "
                f"e.g. 'purchases' or 'purchases:created_at', comma separated."
            )
        tables.append(TransactionTable(table, column))
    names = [t.name for t in tables]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not tables or duplicates:
        raise SettingsError(f"{name}={raw!r} is not valid: list each table once, at least one.")
    return tuple(tables)


def _config_files(env: Mapping[str, str]) -> tuple[str, ...]:
    name = "BACKUP_CONFIG_FILES"
    raw = _text(env, name, "")
    if not raw:
        return DEFAULT_CONFIG_FILES
    items = tuple(i.strip() for i in raw.split(",") if i.strip())
    for item in items:
        parts = Path(item.rstrip("/")).parts
        if Path(item).is_absolute() or ".." in parts or not parts:
            raise SettingsError(
                f"{name} lists {item!r}: name files relative to BACKUP_CONFIG_DIR, without '..' "
                f"(a trailing '/' marks a folder, e.g. 'ssl/')."
            )
    return items


def _require_http(name: str, url: str | None, example: str) -> None:
    """The base of the links in emails: a link without a scheme is not clickable."""
    if url and not url.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={url!r} must start with http:// or https://, e.g. "
                            f"{example}.")


_EMAIL = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+$")
SMTP_SECURITY_CHOICES = ("starttls", "ssl", "none")


def _mail_settings(env: Mapping[str, str], backup_dir: Path) -> dict:
    """ADMIN_EMAILS, the seeds' SMTP_* variables, the outbox, the download link."""
    admins = tuple(a.strip() for a in _text(env, "ADMIN_EMAILS", "").split(",") if a.strip())
    for address in admins:
        if not _EMAIL.match(address):
            raise SettingsError(
                f"ADMIN_EMAILS lists {address!r}, which is not an email address: use "
                f"comma-separated addresses, e.g. admin1@example.com,admin2@example.com."
            )
    host = _text(env, "SMTP_HOST", "") or None
    if host and not admins:
        raise SettingsError(
            "SMTP_HOST is set but ADMIN_EMAILS is empty: nobody would receive backups or alerts. "
            "Set ADMIN_EMAILS to the administrators' addresses, comma separated."
        )
    port = int(_number(env, "SMTP_PORT", DEFAULTS.smtp_port, kind=int, low=1, high=65535,
                       meaning="the SMTP server's port: 587 STARTTLS, 465 implicit TLS"))
    security = _text(env, "SMTP_SECURITY",
                     "ssl" if port == 465 else DEFAULTS.smtp_security).lower()
    if security not in SMTP_SECURITY_CHOICES:
        raise SettingsError(
            f"SMTP_SECURITY={security!r} is not valid: use starttls (port 587), ssl (implicit "
            f"TLS, port 465) or, only on purpose for a trusted relay, none."
        )
    ca_text = _text(env, "SMTP_CA_FILE", "")
    if ca_text and not Path(ca_text).is_file():
        raise SettingsError(f"SMTP_CA_FILE={ca_text!r} does not exist: name the PEM file of the "
                            f"CA that signed the SMTP server's certificate, or leave it unset.")
    user = _text(env, "SMTP_USER", "") or None
    base_url = _text(env, "BACKUP_DOWNLOAD_BASE_URL", "").rstrip("/") or None
    _require_http("BACKUP_DOWNLOAD_BASE_URL", base_url, "https://backups.example.com")
    ui_url = _text(env, "DAGSTER_UI_URL", DEFAULTS.dagster_ui_url).rstrip("/")
    _require_http("DAGSTER_UI_URL", ui_url, "https://dagster.example.com")
    return {
        "admin_emails": admins,
        "smtp_host": host,
        "smtp_port": port,
        "smtp_user": user,
        "smtp_from": _text(env, "SMTP_FROM", user or DEFAULTS.smtp_from),
        "smtp_security": security,
        "smtp_ca_file": Path(ca_text) if ca_text else None,
        "email_max_mb": _number(
            env, "BACKUP_EMAIL_MAX_MB", DEFAULTS.email_max_mb, kind=float, low=0, high=1000,
            meaning="largest email, attachment encoded, in MB"),
        "email_retry_base_seconds": _number(
            env, "BACKUP_EMAIL_RETRY_BASE_SECONDS", DEFAULTS.email_retry_base_seconds,
            kind=float, low=0, high=600,
            meaning="first email retry delay, doubled each time"),
        "outbox_dir": Path(_text(env, "BACKUP_OUTBOX_DIR", str(backup_dir / "outbox"))),
        "mail_log": Path(_text(env, "BACKUP_MAIL_LOG", str(backup_dir / "mail.log"))),
        "download_base_url": base_url,
        "link_ttl_hours": _number(
            env, "BACKUP_LINK_TTL_HOURS", DEFAULTS.link_ttl_hours, kind=float, low=0.01,
            high=24 * 365, meaning="how long a download link works"),
        "dagster_ui_url": ui_url,
    }


def _file(env: Mapping[str, str], name: str, what: str) -> Path | None:
    """A setting naming a file that must exist (a key file): checked now, not at 02:00."""
    text = _text(env, name, "")
    if text and not Path(text).is_file():
        raise SettingsError(f"{name}={text!r} does not exist or is not a file: name {what}, or "
                            f"leave {name} unset.")
    return Path(text) if text else None


def _safeguard_settings(env: Mapping[str, str]) -> dict:
    """Encryption (age) and signing: keys are checked when the settings load, so a typo stops the
    code location with one line, instead of a backup that cannot keep its promise."""
    from backup_pipeline.sealing import RecipientsError, load_recipients
    from backup_pipeline.signing import PublicKey, SigningError

    recipients = _text(env, "BACKUP_AGE_RECIPIENTS", "") or None
    recipients_file = _file(env, "BACKUP_AGE_RECIPIENTS_FILE",
                            "a file of age public keys, one per line")
    try:
        load_recipients(recipients, recipients_file)
    except RecipientsError as error:
        raise SettingsError(str(error)) from None
    public_key = _text(env, "BACKUP_SIGNING_PUBLIC_KEY", "") or None
    if public_key:
        try:
            PublicKey.parse(public_key)
        except SigningError as error:
            raise SettingsError(str(error)) from None
    return {
        "age_recipients": recipients,
        "age_recipients_file": recipients_file,
        "age_identity_file": _file(env, "BACKUP_AGE_IDENTITY_FILE",
                                   "the age identity file (age-keygen's key.txt)"),
        "signing_key_file": _file(env, "BACKUP_SIGNING_KEY_FILE",
                                  "the Ed25519 private key (ssh-keygen -t ed25519)"),
        "signing_public_key": public_key,
    }


S3_CHECKSUM_CHOICES = ("when_supported", "when_required")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _offsite_settings(env: Mapping[str, str]) -> dict:
    """BACKUP_S3_*: where the off-site copy goes. Credentials are not settings: boto3 reads
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile, or an instance role) itself."""
    bucket = _text(env, "BACKUP_S3_BUCKET", "") or None
    if bucket and not _BUCKET.match(bucket):
        raise SettingsError(f"BACKUP_S3_BUCKET={bucket!r} is not a bucket name: 3 to 63 "
                            f"lower-case letters, digits, dots and hyphens (no s3:// and no "
                            f"folder: put a folder in BACKUP_S3_PREFIX).")
    endpoint = _text(env, "BACKUP_S3_ENDPOINT_URL", "").rstrip("/") or None
    _require_http("BACKUP_S3_ENDPOINT_URL", endpoint, "https://s3.eu-central-003.backblazeb2.com")
    checksums = _text(env, "BACKUP_S3_CHECKSUMS", "when_supported").lower()
    if checksums not in S3_CHECKSUM_CHOICES:
        raise SettingsError(
            f"BACKUP_S3_CHECKSUMS={checksums!r} is not valid: use when_supported (boto3's "
            f"default) or when_required, for providers that reject boto3's checksum headers "
            f"(errors such as 'Unsupported header x-amz-checksum-crc32' or "
            f"'XAmzContentSHA256Mismatch').")
    return {
        "s3_bucket": bucket,
        "s3_prefix": _text(env, "BACKUP_S3_PREFIX", "").strip("/"),
        "s3_endpoint_url": endpoint,
        "s3_region": _text(env, "BACKUP_S3_REGION", "") or None,
        "s3_checksums": checksums,
    }


RESTORE_PROOF_CHOICES = ("always", "off")


def _restore_proof(env: Mapping[str, str]) -> bool:
    value = _text(env, "BACKUP_RESTORE_PROOF", "always").lower()
    if value not in RESTORE_PROOF_CHOICES:
        raise SettingsError(
            f"BACKUP_RESTORE_PROOF={value!r} is not valid: use always (every archive is restored "
            f"and compared before it counts as good; the default) or off.")
    return value == "always"


def is_valid_cron_string(expression: str) -> bool:
    """Whether Dagster's scheduler accepts `expression`: asked of Dagster itself, imported here
    only, so that reading the settings (restore, verify, status) does not load Dagster."""
    from dagster._utils.schedules import is_valid_cron_string as dagster_accepts

    return dagster_accepts(expression)


DEFAULT_LOG_FILE = Path("/var/log/backup.log")


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret's value (POSTGRES_PASSWORD, SMTP_PASS, BACKUP_DOWNLOAD_SECRET), or None when
    unset. Never part of Settings, which may be logged and shown: the pipeline's resources take
    secrets as dg.EnvVar, read at run time; the CLI reads them here when it needs them."""
    env = os.environ if env is None else env
    return env.get(name) or None


def log_file(env: Mapping[str, str] | None = None) -> Path:
    """BACKUP_LOG_FILE, the plain run log. Read apart from load_settings: Dagster builds the log
    handler from dagster.yaml, where invalid backup settings must not stop the logging."""
    env = os.environ if env is None else env
    return Path(_text(env, "BACKUP_LOG_FILE", str(DEFAULT_LOG_FILE)))


def dagster_home(env: Mapping[str, str] | None = None) -> str | None:
    """DAGSTER_HOME, the Dagster instance `status` and `health-check` read run history from."""
    env = os.environ if env is None else env
    return _text(env, "DAGSTER_HOME", "") or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings from `env` (the process environment by default)."""
    env = os.environ if env is None else env
    critical = _names(env, "BACKUP_TABLES", DEFAULT_CRITICAL_TABLES)
    transactions = _transaction_tables(env)
    both = sorted(set(critical) & {t.name for t in transactions})
    if both:
        raise SettingsError(
            f"{', '.join(both)} is listed in both BACKUP_TABLES and BACKUP_TRANSACTION_TABLES: "
            f"a table is either backed up whole or by its recent window, not both."
        )
    min_size = _number(
        env, "BACKUP_MIN_SIZE_MB", DEFAULTS.min_size_mb, kind=float, low=0, high=_MAX_MB,
        meaning="smallest normal archive size in MB")
    max_size = _number(
        env, "BACKUP_MAX_SIZE_MB", DEFAULTS.max_size_mb, kind=float, low=0, high=_MAX_MB,
        meaning="largest normal archive size in MB")
    if max_size <= min_size:
        raise SettingsError(
            f"BACKUP_MAX_SIZE_MB={max_size:g} must be larger than BACKUP_MIN_SIZE_MB={min_size:g}."
        )
    schedule = _text(env, "BACKUP_SCHEDULE", DEFAULTS.schedule)
    if not is_valid_cron_string(schedule):
        raise SettingsError(
            f"BACKUP_SCHEDULE={schedule!r} is not a valid cron expression: use five fields, "
            f"e.g. '0 2 * * *' for 02:00 every day."
        )
    timezone = _text(env, "BACKUP_TIMEZONE", DEFAULTS.timezone)
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"BACKUP_TIMEZONE={timezone!r} is not a known time zone: use an IANA name such as "
            f"'UTC' or 'Asia/Bangkok'."
        ) from None
    backup_dir = Path(_text(env, "BACKUP_DIR", str(DEFAULTS.backup_dir)))
    config_dir = Path(_text(env, "BACKUP_CONFIG_DIR", str(DEFAULTS.config_dir)))
    for var, path in (("BACKUP_DIR", backup_dir), ("BACKUP_CONFIG_DIR", config_dir)):
        if not path.is_absolute():
            raise SettingsError(f"{var}={str(path)!r} must be an absolute path, e.g. /backups.")
    mail = _mail_settings(env, backup_dir)
    drill_schedule = _text(env, "BACKUP_DRILL_SCHEDULE", DEFAULTS.drill_schedule)
    if not is_valid_cron_string(drill_schedule):
        raise SettingsError(
            f"BACKUP_DRILL_SCHEDULE={drill_schedule!r} is not a valid cron expression: use five "
            f"fields, e.g. '0 4 * * 0' for Sundays at 04:00."
        )
    pg_bindir_text = _text(env, "BACKUP_PG_BINDIR", "")
    pg_bindir = Path(pg_bindir_text) if pg_bindir_text else None
    if pg_bindir is not None and not (pg_bindir / "pg_dump").is_file():
        raise SettingsError(
            f"BACKUP_PG_BINDIR={pg_bindir_text!r} holds no pg_dump: name the folder of the "
            f"PostgreSQL client programs (e.g. /usr/lib/postgresql/15/bin) or leave it unset."
        )
    for table in critical + tuple(t.name for t in transactions):
        if layout.table_file_stem(table) in layout.RESERVED_TABLE_FILES:
            raise SettingsError(
                f"table {table!r} would collide with the archive's own file "
                f"database/{layout.table_file_stem(table)}.sql: back it up from another schema "
                f"or rename it."
            )
    return Settings(
        app_name=_text(env, "BACKUP_APP_NAME", DEFAULTS.app_name),
        postgres_host=_text(env, "POSTGRES_HOST", DEFAULTS.postgres_host),
        postgres_port=int(_number(
            env, "POSTGRES_PORT", DEFAULTS.postgres_port, kind=int, low=1, high=65535,
            meaning="the PostgreSQL server's TCP port")),
        postgres_db=_text(env, "POSTGRES_DB", DEFAULTS.postgres_db),
        postgres_user=_text(env, "POSTGRES_USER", DEFAULTS.postgres_user),
        backup_dir=backup_dir,
        config_dir=config_dir,
        config_files=_config_files(env),
        critical_tables=critical,
        transaction_tables=transactions,
        transaction_months=int(_number(
            env, "BACKUP_TRANSACTION_MONTHS", DEFAULTS.transaction_months, kind=int, low=1,
            high=12000, meaning="months of transactions to keep")),
        min_size_mb=min_size,
        max_size_mb=max_size,
        retention_days=int(_number(
            env, "BACKUP_RETENTION_DAYS", DEFAULTS.retention_days, kind=int, low=1, high=3650,
            meaning="days to keep archives")),
        retention_min_count=int(_number(
            env, "BACKUP_RETENTION_MIN_COUNT", DEFAULTS.retention_min_count, kind=int, low=1,
            high=10000, meaning="newest archives always kept")),
        schedule=schedule,
        timezone=timezone,
        db_connect_retries=int(_number(
            env, "BACKUP_DB_CONNECT_RETRIES", DEFAULTS.db_connect_retries, kind=int, low=0, high=20,
            meaning="retries of a failed connection")),
        db_retry_base_seconds=_number(
            env, "BACKUP_DB_RETRY_BASE_SECONDS", DEFAULTS.db_retry_base_seconds, kind=float, low=0,
            high=300, meaning="first retry delay, doubled each time"),
        disk_reserve_mb=int(_number(
            env, "BACKUP_DISK_RESERVE_MB", DEFAULTS.disk_reserve_mb, kind=int, low=0, high=_MAX_MB,
            meaning="free space kept beyond the backup")),
        lock_timeout_seconds=int(_number(
            env, "BACKUP_LOCK_TIMEOUT_SECONDS", DEFAULTS.lock_timeout_seconds, kind=int, low=1,
            high=3600, meaning="wait for a table lock at most")),
        pg_bindir=pg_bindir,
        max_age_hours=_number(
            env, "BACKUP_MAX_AGE_HOURS", DEFAULTS.max_age_hours, kind=float, low=1, high=24 * 365,
            meaning="age after which the newest backup is overdue"),
        min_free_disk_mb=int(_number(
            env, "BACKUP_MIN_FREE_DISK_MB", DEFAULTS.min_free_disk_mb, kind=int, low=0,
            high=_MAX_MB, meaning="free space in BACKUP_DIR for health")),
        drill_dsn=_text(env, "BACKUP_DRILL_DSN", "") or None,
        drill_schedule=drill_schedule,
        restore_proof=_restore_proof(env),
        **mail,
        **_safeguard_settings(env),
        **_offsite_settings(env),
    )
