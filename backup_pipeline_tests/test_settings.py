"""Invalid settings fail before any work, naming the variable and what is allowed."""

from __future__ import annotations

import re

import pytest

from backup_pipeline.settings import SettingsError, TransactionTable, load_settings


def test_defaults_are_the_seeds():
    settings = load_settings({})
    assert settings.postgres_db == "smart_ai_hub"
    assert str(settings.backup_dir) == "/backups"
    assert str(settings.config_dir) == "/config"
    assert settings.critical_tables[:3] == ("users", "user_roles", "organizations")
    assert len(settings.critical_tables) == 10
    assert [t.name for t in settings.transaction_tables] == [
        "credit_transactions", "point_transactions", "purchases"]
    assert settings.transaction_months == 3
    assert (settings.min_size_mb, settings.max_size_mb) == (1.0, 100.0)
    assert (settings.retention_days, settings.retention_min_count) == (30, 7)
    assert (settings.schedule, settings.timezone) == ("0 2 * * *", "UTC")


def test_a_long_window_and_the_restore_proof_parse():
    """A window of decades (Pagila's 2007 payments), and the proof on unless turned off."""
    assert load_settings({"BACKUP_TRANSACTION_MONTHS": "235"}).transaction_months == 235
    assert load_settings({}).restore_proof is True
    assert load_settings({"BACKUP_RESTORE_PROOF": "OFF"}).restore_proof is False
    assert load_settings({"BACKUP_RESTORE_PROOF": "always"}).restore_proof is True


def test_lists_and_timestamp_columns_parse():
    settings = load_settings({
        "BACKUP_TABLES": " users , billing.accounts ",
        "BACKUP_TRANSACTION_TABLES": "purchases,ledger:booked_at",
        "BACKUP_TRANSACTION_MONTHS": "6",
    })
    assert settings.critical_tables == ("users", "billing.accounts")
    assert settings.transaction_tables == (
        TransactionTable("purchases", "created_at"), TransactionTable("ledger", "booked_at"))
    assert settings.transaction_months == 6


@pytest.mark.parametrize(("env", "expected"), [
    ({"BACKUP_TRANSACTION_MONTHS": "three"},
     "BACKUP_TRANSACTION_MONTHS='three' is not valid: expected a whole number from 1 to 12000 ("),
    ({"BACKUP_TRANSACTION_MONTHS": "12001"}, "BACKUP_TRANSACTION_MONTHS='12001' is not valid"),
    ({"BACKUP_RESTORE_PROOF": "sometimes"},
     "BACKUP_RESTORE_PROOF='sometimes' is not valid: use always"),
    ({"BACKUP_TRANSACTION_MONTHS": "0"}, "BACKUP_TRANSACTION_MONTHS='0' is not valid"),
    ({"BACKUP_RETENTION_DAYS": "-1"}, "BACKUP_RETENTION_DAYS='-1' is not valid"),
    ({"POSTGRES_PORT": "70000"}, "POSTGRES_PORT='70000' is not valid: expected a whole number "
                                 "from 1 to 65535"),
    ({"BACKUP_MIN_SIZE_MB": "50", "BACKUP_MAX_SIZE_MB": "10"},
     "BACKUP_MAX_SIZE_MB=10 must be larger than BACKUP_MIN_SIZE_MB=50"),
    ({"BACKUP_SCHEDULE": "every night"}, "BACKUP_SCHEDULE='every night' is not a valid cron"),
    ({"BACKUP_TIMEZONE": "Mars/Olympus"}, "BACKUP_TIMEZONE='Mars/Olympus' is not a known time"),
    ({"BACKUP_DIR": "backups"}, "BACKUP_DIR='backups' must be an absolute path"),
    ({"BACKUP_TABLES": "users;drop table users"}, "BACKUP_TABLES lists 'users;drop table users'"),
    ({"BACKUP_TABLES": "users,users"}, "BACKUP_TABLES lists users more than once"),
    ({"BACKUP_TRANSACTION_TABLES": "purchases:created at"},
     "BACKUP_TRANSACTION_TABLES lists 'purchases:created at'"),
    ({"BACKUP_TABLES": "users,purchases"},
     "purchases is listed in both BACKUP_TABLES and BACKUP_TRANSACTION_TABLES"),
    ({"BACKUP_TABLES": "_sequences"}, "would collide with the archive's own file"),
    ({"BACKUP_CONFIG_FILES": "../etc/shadow"}, "BACKUP_CONFIG_FILES lists '../etc/shadow'"),
    ({"BACKUP_PG_BINDIR": "/nonexistent"}, "BACKUP_PG_BINDIR='/nonexistent' holds no pg_dump"),
])
def test_invalid_settings_name_the_variable(env, expected):
    with pytest.raises(SettingsError) as error:
        load_settings(env)
    assert expected in str(error.value)


# Every number setting, with a valid value to put next to a broken one.
DECIMAL_SETTINGS = ["BACKUP_MAX_AGE_HOURS", "BACKUP_MIN_SIZE_MB", "BACKUP_MAX_SIZE_MB",
                    "BACKUP_LINK_TTL_HOURS", "BACKUP_EMAIL_RETRY_BASE_SECONDS",
                    "BACKUP_DB_RETRY_BASE_SECONDS", "BACKUP_EMAIL_MAX_MB"]
WHOLE_NUMBER_SETTINGS = ["POSTGRES_PORT", "SMTP_PORT", "BACKUP_TRANSACTION_MONTHS",
                         "BACKUP_RETENTION_DAYS", "BACKUP_RETENTION_MIN_COUNT",
                         "BACKUP_DB_CONNECT_RETRIES", "BACKUP_DISK_RESERVE_MB",
                         "BACKUP_LOCK_TIMEOUT_SECONDS", "BACKUP_MIN_FREE_DISK_MB"]


@pytest.mark.parametrize("name", DECIMAL_SETTINGS + WHOLE_NUMBER_SETTINGS)
@pytest.mark.parametrize("value", [
    "nan", "NaN", "inf", "-inf", "Infinity",  # float() takes them all
    "1e999",  # float() makes it inf
    pytest.param("9" * 5000, id="5000 nines"),  # inf to float(), past int()'s 4300 digits
    "1_0",  # float() and int() read 10
    "\u0663", "\uff15",  # an Arabic-Indic 3 and a fullwidth 5: int() and float() read them
])
def test_a_number_setting_must_be_a_finite_plain_number(name, value):
    """BACKUP_MAX_AGE_HOURS=nan made a 100 h old backup "healthy": every comparison with NaN
    is false, so no bound ever refused it."""
    with pytest.raises(SettingsError) as error:
        load_settings({name: value})
    message = str(error.value)
    assert message.startswith(f"{name}={value!r} is not valid: expected ")
    assert re.search(r"a (whole )?number from [0-9.]+ to [0-9.]+ \(.*; default [0-9.]+\)\.$",
                     message), message


@pytest.mark.parametrize(("env", "expected"), [
    ({"BACKUP_MIN_SIZE_MB": "1000000001"},
     "BACKUP_MIN_SIZE_MB='1000000001' is not valid: expected a number from 0 to 1000000000 ("),
    ({"BACKUP_MAX_SIZE_MB": "1e10"},
     "BACKUP_MAX_SIZE_MB='1e10' is not valid: expected a number from 0 to 1000000000 ("),
    ({"BACKUP_EMAIL_MAX_MB": "1001"},
     "BACKUP_EMAIL_MAX_MB='1001' is not valid: expected a number from 0 to 1000 ("),
    ({"BACKUP_DISK_RESERVE_MB": "1000000001"},
     "BACKUP_DISK_RESERVE_MB='1000000001' is not valid: expected a whole number from 0 to "),
    ({"BACKUP_MIN_FREE_DISK_MB": "99999999999"},
     "BACKUP_MIN_FREE_DISK_MB='99999999999' is not valid: expected a whole number from 0 to "),
    ({"BACKUP_LINK_TTL_HOURS": "0"},
     "expected a number from 0.01 to 8760 (how long a download link works; default 72)."),
])
def test_every_number_setting_has_an_upper_bound(env, expected):
    with pytest.raises(SettingsError) as error:
        load_settings(env)
    assert expected in str(error.value)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("BACKUP_MAX_AGE_HOURS", "36.5", 36.5),
    ("BACKUP_LINK_TTL_HOURS", ".5", 0.5),
    ("BACKUP_EMAIL_MAX_MB", "0.05", 0.05),
    ("BACKUP_DB_RETRY_BASE_SECONDS", "1e-2", 0.01),
    ("BACKUP_MAX_SIZE_MB", "1000000000", 1_000_000_000),
    ("POSTGRES_PORT", "05432", 5432),
    ("BACKUP_DB_CONNECT_RETRIES", "0", 0),
])
def test_plain_numbers_still_parse(name, value, expected):
    field = {"POSTGRES_PORT": "postgres_port", "BACKUP_DB_CONNECT_RETRIES": "db_connect_retries",
             "BACKUP_MAX_AGE_HOURS": "max_age_hours", "BACKUP_LINK_TTL_HOURS": "link_ttl_hours",
             "BACKUP_EMAIL_MAX_MB": "email_max_mb", "BACKUP_MAX_SIZE_MB": "max_size_mb",
             "BACKUP_DB_RETRY_BASE_SECONDS": "db_retry_base_seconds"}[name]
    assert getattr(load_settings({name: value}), field) == expected


# Each one-line setting with a valid value; "{c}" is where the control character goes.
ONE_LINE_SETTINGS = {
    "SMTP_FROM": "backup@example.com{c}Bcc: someone@example.net",
    "ADMIN_EMAILS": "admin1@example.com,{c}admin2@example.com",
    "SMTP_HOST": "smtp{c}.example.com",
    "SMTP_USER": "backup{c}user",
    "DAGSTER_UI_URL": "https://dagster.example.com/{c}x",
    "BACKUP_DOWNLOAD_BASE_URL": "https://backups.example.com{c}x",
    "POSTGRES_HOST": "db{c}.example.com",
    "POSTGRES_DB": "smart{c}_ai_hub",
    "POSTGRES_USER": "post{c}gres",
    "BACKUP_DIR": "/backups{c}x",
    "BACKUP_CONFIG_DIR": "/config{c}x",
    "BACKUP_OUTBOX_DIR": "/backups/outbox{c}x",
    "BACKUP_MAIL_LOG": "/backups/mail{c}.log",
    "BACKUP_DRILL_DSN": "host=drill password=s3cret{c}dbname=drill",
    "BACKUP_TIMEZONE": "Asia/{c}Bangkok",
    "BACKUP_CONFIG_FILES": ".env.production,{c}ssl/",
}


@pytest.mark.parametrize("name", sorted(ONE_LINE_SETTINGS))
def test_a_line_break_inside_a_setting_is_refused(name):
    """A newline in SMTP_FROM made every email fail with "Header values may not contain
    linefeed"; in the others it splits a URL, a path, a log line or a header just as well."""
    value = ONE_LINE_SETTINGS[name].format(c="\n")
    with pytest.raises(SettingsError) as error:
        load_settings({name: value})
    message = str(error.value)
    assert message.startswith(f"{name} contains a line break or another control character "
                              f"('\\n' at character ")
    assert "one line of text" in message
    assert "s3cret" not in message  # the value is not echoed: a DSN holds a password


@pytest.mark.parametrize("char", ["\r", "\r\n", "\x00", "\t", "\x1b", "\x7f", "\x85", "\u2028"])
def test_smtp_from_refuses_every_control_character(char):
    with pytest.raises(SettingsError) as error:
        load_settings({"SMTP_FROM": f"Backups{char}<backup@example.com>"})
    assert str(error.value).startswith(f"SMTP_FROM contains a line break or another control "
                                       f"character ({char[0]!r} at character 8)")


def test_surrounding_whitespace_and_a_display_name_are_still_fine():
    """A value pasted with its line ending (or written by a Windows editor) is trimmed."""
    settings = load_settings({"SMTP_FROM": "Backups <backup@example.com>\r\n",
                              "ADMIN_EMAILS": " admin1@example.com , admin2@example.com\n"})
    assert settings.smtp_from == "Backups <backup@example.com>"
    assert settings.admin_emails == ("admin1@example.com", "admin2@example.com")


def test_dagster_ui_url_needs_a_scheme_like_the_download_url():
    with pytest.raises(SettingsError) as error:
        load_settings({"DAGSTER_UI_URL": "dagster.example.com"})
    assert str(error.value) == ("DAGSTER_UI_URL='dagster.example.com' must start with http:// "
                                "or https://, e.g. https://dagster.example.com.")
    assert load_settings({"DAGSTER_UI_URL": "https://d.example.com/"}).dagster_ui_url == \
        "https://d.example.com"
