"""Invalid settings fail before any work, naming the variable and what is allowed."""

from __future__ import annotations

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
