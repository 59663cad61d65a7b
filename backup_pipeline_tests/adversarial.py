"""An adversarial schema to back up, restore and compare: one the pipeline was never tuned for.

`load_adversarial(dsn)` runs schemas/adversarial.sql with the real psql into an empty database
(as a superuser: it creates cluster-wide roles when missing). `ADVERSARIAL_ENV` is the pipeline's
table list for it; `EXPECTED` says what a correct backup of it holds.

Tables (whole = BACKUP_TABLES, windowed = BACKUP_TRANSACTION_TABLES with its window column):
    public."Accounts"       whole: quoted mixed-case table and columns, GENERATED ALWAYS
                            identity, a domain with a CHECK over citext (UNIQUE email), a STORED
                            generated column, jsonb, text[], bytea, nasty text and NULLs, a
                            BEFORE UPDATE trigger on updated_at
    public.products         whole: two-column primary key (sku, variant)
    public.contacts         whole: inheritance parent (its own rows only), ids from
                            public.contact_ids, a sequence no column owns (setval 500)
    public.vendor_contacts  whole: INHERITS (public.contacts), FK to ledger.vendors on the child
    public.orders           windowed on placed_at (timestamptz): monthly range partitions and a
                            DEFAULT one, FKs declared on the parent, a STORED generated column
    public.payments         windowed on paid_at (timestamp without time zone): quarterly range
                            partitions and a DEFAULT one, FKs declared on each partition only
    public.secrets          whole: ENABLE + FORCE ROW LEVEL SECURITY, 1,500 rows, 0 of them
                            visible to adv_owner, all to adv_readonly (BYPASSRLS)
    public.sessions         not backed up: has rows, nothing references it, restores empty
    ledger.vendors          whole: DEFERRABLE INITIALLY DEFERRED FK to public.vendor_contacts
    ledger.fx_rates         whole: no primary key, two exact duplicate rows
    ledger.entries          windowed on posted_on (date): partitions entries_archive (with a
                            UNIQUE (entry_id) of its own), monthly ones, DEFAULT (future rows)
    "Sales"."Invoices"      windowed on "issuedAt" (timestamptz, NULL for two drafts):
                            self-reference chains, FKs into orders and into entries_archive
    "Sales"."Leads"         whole: citext FK into a UNIQUE column, a NOT VALID FK with one
                            violating row, FK into old orders

Foreign-key shapes and where they are:
    1  on a partitioned parent: public.orders, ledger.entries
    2  on each partition only: public.payments -> "Accounts", -> orders
    3  on an inheritance child: public.vendor_contacts -> ledger.vendors
    4  into a partitioned table, recent rows -> rows older than the window:
       "Sales"."Invoices" -> orders, payments -> orders, ledger.entries -> payments
    5  into one partition: "Sales"."Invoices".settles_entry_id -> ledger.entries_archive
    6  multi-column into a multi-column primary key: public.orders -> public.products
    7  into a UNIQUE citext column: "Sales"."Leads", "Sales"."Invoices" -> "Accounts".email
    8  across schemas: ledger -> public, public -> ledger, "Sales" -> ledger, "Sales" -> public
    9  DEFERRABLE INITIALLY DEFERRED: ledger.vendors.primary_contact_id
    10 self-reference with chains of four: "Sales"."Invoices".corrects_invoice_id
    11 NOT VALID, violated by one row: "Sales"."Leads".vendor_id (lead 150 -> vendor 9999)

Roles (cluster-wide, kept between loads): adv_owner (LOGIN, password adv_owner_pw, owns every
object), adv_app (NOLOGIN, named in the RLS policy), adv_readonly (LOGIN, password
adv_readonly_pw, BYPASSRLS, member of pg_read_all_data), adv_group (NOLOGIN; adv_app's only
access to ledger.fx_rates).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipeline.pg import find_pg_binary

SCHEMA_SQL = Path(__file__).parent / "schemas" / "adversarial.sql"

_WHOLE = (
    "public.Accounts",
    "public.products",
    "public.contacts",
    "public.vendor_contacts",
    "public.secrets",
    "ledger.vendors",
    "ledger.fx_rates",
    "Sales.Leads",
)
_WINDOWED = {
    "public.orders": "placed_at",
    "public.payments": "paid_at",
    "ledger.entries": "posted_on",
    "Sales.Invoices": "issuedAt",
}

ADVERSARIAL_ENV: dict[str, str] = {
    "BACKUP_TABLES": ",".join(_WHOLE),
    "BACKUP_TRANSACTION_TABLES": ",".join(f"{t}:{c}" for t, c in _WINDOWED.items()),
    "BACKUP_TRANSACTION_MONTHS": "3",
}

# What a correct backup holds. `window` conditions select a windowed table's in-window rows the
# way the pipeline does (`column >= cutoff` in a UTC session) in any session time zone: fill
# {cutoff} with a SQL literal of the cutoff timestamptz, e.g.
# `sql.SQL(cond).format(cutoff=sql.Literal(cutoff))`; rows where it is not true (also the two
# draft invoices, whose "issuedAt" is NULL) are before the window. Counts are exact for a backup
# taken within hours of the load. `rows` counts what the pipeline reads of each table: a
# partitioned table with all its partitions (FROM ONLY on one gives 0), the inheritance parent
# public.contacts without its child (FROM ONLY; 140 rows with it).
EXPECTED: dict[str, Any] = {
    "window": {
        "public.orders": "placed_at >= {cutoff}",
        "public.payments": "paid_at >= (({cutoff})::timestamptz AT TIME ZONE 'UTC')",
        "ledger.entries": "posted_on >= (({cutoff})::timestamptz AT TIME ZONE 'UTC')",
        "Sales.Invoices": "\"issuedAt\" >= {cutoff}",
    },
    "in_window": {
        "public.orders": 300,
        "public.payments": 300,
        "ledger.entries": 240,
        "Sales.Invoices": 100,
    },
    "rows": {
        "public.Accounts": 200,
        "public.products": 60,
        "public.contacts": 100,
        "public.vendor_contacts": 40,
        "public.secrets": 1500,
        "ledger.vendors": 20,
        "ledger.fx_rates": 122,
        "Sales.Leads": 150,
        "public.orders": 1200,
        "public.payments": 900,
        "ledger.entries": 800,
        "Sales.Invoices": 402,
        "public.sessions": 300,
    },
    "not_backed_up": ("public.sessions",),
    # The names above as SQL, quoted where PostgreSQL needs it.
    "sql_names": {
        "public.Accounts": 'public."Accounts"',
        "Sales.Leads": '"Sales"."Leads"',
        "Sales.Invoices": '"Sales"."Invoices"',
    },
}


def load_adversarial(dsn: str) -> None:
    """Create the adversarial schema and data in the empty database `dsn` names.

    Runs the script with psql itself, as an administrator would, so the test loads what a real
    psql makes of it; the password reaches psql through PGPASSWORD, never argv.
    """
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    psql = find_pg_binary("psql")
    result = subprocess.run(
        [str(psql), "-X", "-v", "ON_ERROR_STOP=1", "-q", "-d", make_conninfo(**params),
         "-f", str(SCHEMA_SQL)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        where = ", ".join(f"{k} {params[k]}" for k in ("host", "port", "dbname", "user")
                          if k in params)
        raise RuntimeError(
            f"loading {SCHEMA_SQL.name} into {where or 'the default database'} failed with "
            f"psql exit code {result.returncode}: {result.stderr.strip() or result.stdout}. "
            f"The database must be empty and the user a superuser."
        )
