"""Pagila (../shared/corpus/pagila, the PostgreSQL sample database): a schema nobody on this
project wrote, loaded as its README says and arranged so that a window holds part of its data.

Pagila's payments (2006-11 to 2007-10) are partitioned by month with their foreign keys declared
on each partition; rentals date from 2005-05 to 2006-02 and their `last_update` is one 2022
instant. For a window holding part of both, the loaded copy gets roles of its own (the tables
of the inventory belong to `pagila_app`, `pagila_reader` may read the films), rentals'
`last_update` is moved to their rental day shifted to 2007, and the window's length in months is
computed so that it starts in spring 2007: recent payments then reference rentals older than
the window, which the archive must carry.
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from backup_pipeline.pg import find_pg_binary

PAGILA = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "pagila"
WINDOW_START = datetime(2007, 4, 15, tzinfo=UTC)
WHOLE = ("actor", "address", "category", "city", "country", "customer", "film", "film_actor",
         "film_category", "inventory", "language", "staff", "store")
WINDOWED = {"payment": "payment_date", "rental": "last_update"}

_ROLES = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pagila_app') THEN
    CREATE ROLE pagila_app NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pagila_reader') THEN
    CREATE ROLE pagila_reader NOLOGIN; END IF;
END $$;
ALTER TABLE public.inventory OWNER TO pagila_app;
ALTER TABLE public.rental OWNER TO pagila_app;
GRANT SELECT ON public.film, public.film_actor TO pagila_reader;
GRANT USAGE ON SCHEMA public TO pagila_reader;
SET session_replication_role = replica;  -- rental's trigger would set last_update to now()
UPDATE public.rental SET last_update = lower(rental_period) + interval '1 year 8 months 14 days';
SET session_replication_role = DEFAULT;
"""


def pagila_schema_sql(server_major: int) -> str:
    """pagila-schema.sql as its README says to load it on this server: on PostgreSQL before 17,
    without `SET transaction_timeout` and without the view that uses JSON_TABLE."""
    text = (PAGILA / "pagila-schema.sql").read_text()
    if server_major >= 17:
        return text
    text = re.sub(r"^SET transaction_timeout = 0;\n", "", text, flags=re.MULTILINE)
    view = re.compile(r"^--\n-- Name: films_per_customer_rental; Type: VIEW;.*?(?=^--\n-- Name: )",
                      re.MULTILINE | re.DOTALL)
    return view.sub("", text)


def _psql(dsn: str, script: str) -> None:
    parts = conninfo_to_dict(dsn)
    env = {**os.environ, "PGHOST": str(parts["host"]), "PGPORT": str(parts["port"]),
           "PGUSER": str(parts["user"]), "PGPASSWORD": str(parts.get("password", "")),
           "PGDATABASE": str(parts["dbname"])}
    done = subprocess.run([str(find_pg_binary("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                           "-o", "/dev/null", "-f", "-"], input=script, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def load_pagila(dsn: str) -> None:
    """Pagila's schema and data with the real psql, then this project's arrangement."""
    if not PAGILA.is_dir():
        pytest.skip(f"the corpus is not beside this clone ({PAGILA})")
    with psycopg.connect(dsn) as conn:
        major = conn.info.server_version // 10000
    _psql(dsn, pagila_schema_sql(major))
    _psql(dsn, (PAGILA / "pagila-data.sql").read_text())
    _psql(dsn, _ROLES)


def window_months(now: datetime | None = None) -> int:
    """BACKUP_TRANSACTION_MONTHS that starts the window about WINDOW_START."""
    now = now or datetime.now(UTC)
    return (now.year - WINDOW_START.year) * 12 + now.month - WINDOW_START.month


def pagila_env() -> dict[str, str]:
    return {
        "BACKUP_TABLES": ",".join(WHOLE),
        "BACKUP_TRANSACTION_TABLES": ",".join(f"{t}:{c}" for t, c in WINDOWED.items()),
        "BACKUP_TRANSACTION_MONTHS": str(window_months()),
    }
