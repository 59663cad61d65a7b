"""Sample Smart AI Hub data at a chosen scale, generated inside PostgreSQL.

The rows are made by `generate_series` on the server, so scale 100 costs no Python memory. The
data carries what breaks naive backups: commas, quotes, backslashes and newlines in text, NUL and
backslash bytes in bytea, NULLs, jsonb, arrays, non-ASCII text, timestamps spread over two years,
recent transactions that reference old purchases, refunds that reference older purchases.

Scale 1 is about 50,000 rows; transactions spread over the last 12 months, so about a quarter of
them fall in the default 3-month window.
"""

from __future__ import annotations

from importlib import resources

import psycopg

BASE_COUNTS = {
    "organizations": 20,
    "agencies": 60,
    "users": 2000,
    "purchases": 6000,
    "credit_transactions": 12000,
    "point_transactions": 12000,
    "sessions": 1000,
    "audit_logs": 10000,
    "app_logs": 5000,
}


def schema_sql() -> str:
    return resources.files("backup_pipeline.sample_data").joinpath("schema.sql").read_text()


def _run(conn: psycopg.Connection, query: str, params: dict | None = None) -> None:
    """Execute with named parameters; `%` stays the modulo operator in the SQL text."""
    if params is None:
        conn.execute(query)
    else:
        conn.execute(query.replace("%", "%%").replace("%%(", "%("), params)


def _counts(scale: float) -> dict[str, int]:
    return {name: max(1, int(count * scale)) for name, count in BASE_COUNTS.items()}


def create_schema(conn: psycopg.Connection) -> None:
    conn.execute(schema_sql())


def load_sample_data(conn: psycopg.Connection, scale: float = 1.0, seed: float = 0.42) -> dict:
    """Fill an empty sample schema; returns the row counts it aimed for."""
    n = _counts(scale)
    conn.execute("SELECT setseed(%s)", (seed,))
    _run(conn, """
        INSERT INTO roles (name, description) VALUES
            ('admin', 'Full access'), ('manager', 'Manages an organization'),
            ('agent', 'Agency staff, "field" role'), ('user', 'Regular user'),
            ('auditor, read-only', E'Reads everything\\nchanges nothing')
    """)
    _run(conn, """
        INSERT INTO permissions (code, description)
        SELECT 'perm.' || i, 'Permission #' || i || CASE WHEN i % 5 = 0 THEN ', legacy' ELSE '' END
        FROM generate_series(1, 24) i
    """)
    _run(conn, """
        INSERT INTO role_permissions (role_id, permission_id)
        SELECT r.id, p.id FROM roles r JOIN permissions p ON (p.id + r.id) % 3 = 0 OR r.id = 1
    """)
    _run(conn, """
        INSERT INTO organizations (name, slug, settings, created_at)
        SELECT 'Org "' || i || '", Ltd.', 'org-' || i,
               jsonb_build_object('plan', (ARRAY['free','pro','enterprise'])[1 + i % 3],
                                  'limits', jsonb_build_object('seats', i * 5),
                                  'note', E'line one\\nline "two"'),
               now() - (random() * interval '730 days')
        FROM generate_series(1, %(orgs)s) i
    """, {"orgs": n["organizations"]})
    _run(conn, """
        INSERT INTO agencies (organization_id, name, commission_rate, tags, created_at)
        SELECT 1 + (i % %(orgs)s), 'Agency ' || i, round((random() * 30)::numeric, 2),
               ARRAY['vip', 'region,north', 'quote"tag', NULL]::text[],
               now() - (random() * interval '700 days')
        FROM generate_series(1, %(agencies)s) i
    """, {"orgs": n["organizations"], "agencies": n["agencies"]})
    _run(conn, """
        INSERT INTO users (email, display_name, bio, organization_id, agency_id, credits, points,
                           avatar, preferences, last_login_at, created_at)
        SELECT 'user' || i || '@example.com',
               CASE WHEN i % 7 = 0 THEN 'ผู้ใช้ ' || i ELSE 'User ' || i END,
               CASE i % 4 WHEN 0 THEN NULL
                          WHEN 1 THEN E'Likes "quotes", commas, and\\nnewlines \\\\ backslashes'
                          WHEN 2 THEN ''
                          ELSE repeat(md5(i::text), 3) END,
               CASE WHEN i % 10 = 0 THEN NULL ELSE 1 + (i % %(orgs)s) END,
               CASE WHEN i % 3 = 0 THEN 1 + (i % %(agencies)s) END,
               (random() * 100000)::bigint, (random() * 5000)::bigint,
               CASE WHEN i % 5 = 0 THEN NULL
                    ELSE decode(md5(i::text), 'hex') || '\\x005c0a2c22'::bytea END,
               CASE WHEN i % 6 = 0 THEN NULL
                    ELSE jsonb_build_object('lang', (ARRAY['en','th','de'])[1 + i % 3],
                                            'tags', jsonb_build_array('a,b', 'c"d'),
                                            'n', i) END,
               CASE WHEN i % 9 = 0 THEN NULL ELSE now() - random() * interval '30 days' END,
               now() - (random() * interval '730 days')
        FROM generate_series(1, %(users)s) i
    """, {"orgs": n["organizations"], "agencies": n["agencies"], "users": n["users"]})
    _run(conn, """
        INSERT INTO user_roles (user_id, role_id)
        SELECT id, 4 FROM users
        UNION ALL SELECT id, 1 + (id % 3) FROM users WHERE id % 50 = 0
    """)
    _run(conn, """
        INSERT INTO referrals (referrer_id, referred_id, code, created_at)
        SELECT 1 + (id % 97), id, 'REF-' || id, created_at FROM users WHERE id > 100 AND id % 10 = 0
    """)
    _run(conn, """
        INSERT INTO exchange_rates (currency, rate, valid_from)
        SELECT c, round((random() * 40 + 0.5)::numeric, 8), current_date - d
        FROM unnest(ARRAY['USD','THB','EUR','JPY','SGD']) c, generate_series(0, 49) d
    """)
    _run(conn, """
        INSERT INTO system_settings (key, value)
        SELECT 'setting.' || i, jsonb_build_object('value', i, 'label', 'Setting, "' || i || '"')
        FROM generate_series(1, 30) i
    """)
    _run(conn, """
        INSERT INTO purchases (user_id, amount, currency, status, metadata, created_at)
        SELECT 1 + (i % %(users)s), round((random() * 500 + 1)::numeric, 2),
               (ARRAY['USD','THB','EUR'])[1 + i % 3],
               (ARRAY['paid','paid','paid','pending','failed'])[1 + i % 5]::purchase_status,
               CASE WHEN i % 4 = 0 THEN NULL
                    ELSE jsonb_build_object('sku', 'SKU-' || (i % 40), 'note', 'a,b "c"') END,
               now() - (random() * interval '365 days')
        FROM generate_series(1, %(purchases)s) i
    """, {"users": n["users"], "purchases": n["purchases"]})
    # Recent refunds of older purchases: a self-reference that reaches back before the window.
    _run(conn, """
        INSERT INTO purchases (user_id, amount, currency, status, refund_of, created_at)
        SELECT user_id, -amount, currency, 'refunded', id, now() - random() * interval '20 days'
        FROM purchases WHERE id % 50 = 0
    """)
    _run(conn, """
        INSERT INTO credit_transactions (user_id, purchase_id, amount, balance_after, description,
                                         created_at)
        SELECT 1 + (i % %(users)s),
               CASE WHEN i % 2 = 0 THEN 1 + (random() * (%(purchases)s - 1))::bigint END,
               (random() * 2000 - 500)::bigint, (random() * 100000)::bigint,
               CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN 'Top-up, card "visa"'
                          ELSE E'Usage:\\nchat, images' END,
               now() - (random() * interval '365 days')
        FROM generate_series(1, %(credits)s) i
    """, {"users": n["users"], "purchases": n["purchases"], "credits": n["credit_transactions"]})
    _run(conn, """
        INSERT INTO point_transactions (user_id, credit_transaction_id, amount, reason, created_at)
        SELECT 1 + (i % %(users)s),
               CASE WHEN i % 3 = 0 THEN 1 + (random() * (%(credits)s - 1))::bigint END,
               (random() * 200)::int,
               (ARRAY['daily login', 'referral, bonus', 'purchase'])[1 + i % 3],
               now() - (random() * interval '365 days')
        FROM generate_series(1, %(points)s) i
    """, {"users": n["users"], "credits": n["credit_transactions"],
          "points": n["point_transactions"]})
    add_excluded_data(conn, scale)
    conn.execute("ANALYZE")
    return n


def add_excluded_data(conn: psycopg.Connection, scale: float = 1.0) -> None:
    """Data the backup must not carry: sessions, logs, audit logs, transactions past the window.

    The old transactions are referenced by nothing newer, so they stay out of the archive; the
    benchmark adds them to show the backup's cost does not follow them.
    """
    n = _counts(scale)
    # Reference only users that exist, whatever scale the database was generated at.
    row = conn.execute("SELECT count(*) FROM users").fetchone()
    n["users"] = max(1, int(row[0])) if row else n["users"]
    _run(conn, """
        INSERT INTO sessions (user_id, token_hash, user_agent, expires_at, created_at)
        SELECT 1 + (i % %(users)s), decode(md5(random()::text), 'hex'), 'Mozilla/5.0 (X11)',
               now() + interval '1 day', now() - random() * interval '2 days'
        FROM generate_series(1, %(sessions)s) i
    """, {"users": n["users"], "sessions": n["sessions"]})
    _run(conn, """
        INSERT INTO audit_logs (user_id, action, details, created_at)
        SELECT 1 + (i % %(users)s), (ARRAY['login','update_profile','purchase'])[1 + i % 3],
               jsonb_build_object('ip', '10.0.' || (i % 255) || '.' || (i % 250), 'i', i),
               now() - random() * interval '400 days'
        FROM generate_series(1, %(audit)s) i
    """, {"users": n["users"], "audit": n["audit_logs"]})
    _run(conn, """
        INSERT INTO app_logs (level, message, created_at)
        SELECT (ARRAY['INFO','WARN','ERROR'])[1 + i % 3], 'request ' || md5(i::text),
               now() - random() * interval '90 days'
        FROM generate_series(1, %(logs)s) i
    """, {"logs": n["app_logs"]})
    old = "now() - interval '400 days' - random() * interval '300 days'"
    _run(conn, f"""
        INSERT INTO credit_transactions (user_id, amount, balance_after, description, created_at)
        SELECT 1 + (i % %(users)s), (random() * 1000)::bigint, 0, 'archived usage', {old}
        FROM generate_series(1, %(credits)s) i
    """, {"users": n["users"], "credits": n["credit_transactions"] // 4})
    _run(conn, f"""
        INSERT INTO point_transactions (user_id, amount, reason, created_at)
        SELECT 1 + (i % %(users)s), (random() * 100)::int, 'archived', {old}
        FROM generate_series(1, %(points)s) i
    """, {"users": n["users"], "points": n["point_transactions"] // 4})
