"""Schemas on which an earlier version made an archive that did not restore, or a proof that
failed a good archive: each is backed up and must pass its restore proof, then restore with
`restore` and come back with the source's rows. Then the schemas an archive cannot carry (large
objects), which must fail the run before it exports anything."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from backup_pipeline.restore import restore_archive
from backup_pipeline_tests.conftest import drop_database, schema_env
from backup_pipeline_tests.helpers import archives, run_backup, scalar

# A small windowed table for the cases that only need whole tables.
TICKS = """
CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO ticks (at) SELECT now() - g * interval '1 day' FROM generate_series(1, 200) g;
"""

CASES = {
    # COPY into a partitioned table reuses free space on the partitions' earlier pages: the
    # rows come back in another order, so a partitioned table is written in its key's order.
    "partitioned_rows_of_many_sizes": ("", TICKS + """
        CREATE TABLE events (id bigint NOT NULL, kind text NOT NULL, body text,
                             PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
        CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('a');
        CREATE TABLE events_b PARTITION OF events FOR VALUES IN ('b');
        INSERT INTO events SELECT g, CASE WHEN g % 3 = 0 THEN 'a' ELSE 'b' END,
                                  repeat('x', (g * 7919) % 3000 + 20)
        FROM generate_series(1, 4000) g;
        UPDATE events SET body = body || 'y' WHERE id % 5 = 0;
        INSERT INTO events SELECT g, 'a', repeat('z', 20) FROM generate_series(4001, 5000) g;
    """, {"BACKUP_TABLES": "events", "BACKUP_TRANSACTION_TABLES": "ticks:at"}),
    # Partitions by text under an ICU collation: in the C collation 'Bob' sorts before 'a' and
    # fits no partition. The restored database gets the source's collation.
    "text_partitions_under_an_icu_collation": (
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'", TICKS + """
        CREATE TABLE names (name text PRIMARY KEY) PARTITION BY RANGE (name);
        CREATE TABLE names_am PARTITION OF names FOR VALUES FROM ('a') TO ('m');
        CREATE TABLE names_mz PARTITION OF names FOR VALUES FROM ('m') TO (MAXVALUE);
        INSERT INTO names VALUES ('Bob'), ('alice'), ('Zed'), ('mike');
    """, {"BACKUP_TABLES": "names", "BACKUP_TRANSACTION_TABLES": "ticks:at"}),
    # A database whose sessions print bytea in the escape format: the readers pin hex.
    "bytea_output_escape": ("", TICKS + """
        DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET bytea_output = %L',
                                   current_database(), 'escape'); END $$;
        CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
        INSERT INTO blobs VALUES (1, '\\x00ff10'::bytea), (2, 'plain'::bytea), (3, NULL);
    """, {"BACKUP_TABLES": "blobs", "BACKUP_TRANSACTION_TABLES": "ticks:at"}),
    # A serial column whose default was moved to a shared sequence: its own sequence feeds
    # nothing and may stay at 1.
    "serial_fed_by_a_shared_sequence": ("", TICKS + """
        CREATE SEQUENCE global_id_seq;
        CREATE TABLE items (id serial PRIMARY KEY, name text);
        ALTER TABLE items ALTER id SET DEFAULT nextval('global_id_seq');
        INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 50) g;
    """, {"BACKUP_TABLES": "items", "BACKUP_TRANSACTION_TABLES": "ticks:at"}),
    # A key declared on the partitioned parent, only one partition backed up: its copy on the
    # partition brings the older customers it references.
    "key_on_the_parent_of_the_one_partition_backed_up": ("", """
        CREATE TABLE customers (id int PRIMARY KEY, created_at timestamptz NOT NULL);
        INSERT INTO customers SELECT g, now() - interval '2 years' FROM generate_series(1, 20) g;
        CREATE TABLE orders (id int, region text, customer_id int REFERENCES customers,
                             PRIMARY KEY (id, region)) PARTITION BY LIST (region);
        CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
        CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
        INSERT INTO orders SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g % 20 + 1
        FROM generate_series(1, 100) g;
    """, {"BACKUP_TABLES": "orders_eu", "BACKUP_TRANSACTION_TABLES": "customers:created_at"}),
    # A key of two columns into one partition whose values also exist in an earlier partition:
    # the row of the referenced partition must be the one in the archive.
    "two_column_key_into_one_partition": ("", """
        CREATE TABLE entries (a int NOT NULL, b int NOT NULL, at timestamptz NOT NULL)
            PARTITION BY RANGE (at);
        CREATE TABLE entries_old PARTITION OF entries FOR VALUES FROM (MINVALUE)
            TO ('2020-01-01');
        CREATE TABLE entries_new PARTITION OF entries FOR VALUES FROM ('2020-01-01')
            TO (MAXVALUE);
        ALTER TABLE entries_new ADD UNIQUE (a, b);
        INSERT INTO entries VALUES (1, 1, '2019-06-01'), (1, 1, now() - interval '1 year'),
                                   (2, 2, now() - interval '1 year'), (3, 3, now());
        CREATE TABLE settlements (id int PRIMARY KEY, a int, b int, at timestamptz NOT NULL,
                                  FOREIGN KEY (a, b) REFERENCES entries_new (a, b));
        INSERT INTO settlements VALUES (1, 1, 1, now()), (2, 2, 2, now()), (3, 3, 3, now());
    """, {"BACKUP_TABLES": "settlements", "BACKUP_TRANSACTION_TABLES": "entries:at"}),
    # oid columns that hold no large object, while the database holds some elsewhere: one always
    # NULL (of the lo extension's domain and plain oid), one holding catalogue oids and a number.
    "oid_columns_without_large_objects": ("", TICKS + """
        CREATE EXTENSION lo;
        CREATE TABLE scans (id int PRIMARY KEY, content lo);
        INSERT INTO scans VALUES (1, lo_from_bytea(0, 'not backed up'));
        CREATE TABLE drafts (id int PRIMARY KEY, body text, content lo, attachment oid);
        INSERT INTO drafts SELECT g, 'draft ' || g, NULL, NULL FROM generate_series(1, 20) g;
        CREATE TABLE watched (id int PRIMARY KEY, rel oid NOT NULL, at timestamptz NOT NULL);
        INSERT INTO watched VALUES (1, 'pg_class'::regclass, now()), (2, 'drafts'::regclass, now()),
                                   (3, 4294967295, now());
    """, {"BACKUP_TABLES": "drafts", "BACKUP_TRANSACTION_TABLES": "ticks:at,watched:at"}),
}


def same_rows(dsn: str, table: str) -> list[str]:
    """Every row as text, sorted, printed the same way whatever the database's own settings
    (`ALTER DATABASE ... SET` is not part of a backup)."""
    with psycopg.connect(dsn, options="-c bytea_output=hex") as conn:
        return [r[0] for r in conn.execute(
            f'SELECT t::text FROM {table} t ORDER BY t::text COLLATE "C"')]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_archive_is_proven_and_restores(case, server, instance, tmp_path, monkeypatch):
    create, schema, tables = CASES[case]
    name, scratch, restored = (f"bp_edge_{uuid.uuid4().hex[:10]}" for _ in range(3))
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" {create}')
    try:
        with psycopg.connect(server.dsn(name), autocommit=True) as conn:
            conn.execute(schema)
        env = schema_env(server, name, tmp_path, monkeypatch, **tables,
                         BACKUP_DRILL_DSN=server.dsn(scratch))
        result = run_backup(env, instance)
        failures = [e.event_specific_data.error.to_string()[:3000]
                    for e in result.all_events if e.is_step_failure]
        assert result.success, failures
        [archive] = archives(env["BACKUP_DIR"])
        report = restore_archive(archive, server.dsn(restored), progress=lambda _: None)
        assert report.ok, report.problems
        for table in tables["BACKUP_TABLES"].split(","):
            assert same_rows(server.dsn(restored), table) == same_rows(server.dsn(name), table)
        # Large objects are not carried, so none comes back, not even an empty one.
        assert scalar(server.dsn(restored), "SELECT count(*) FROM pg_largeobject_metadata") == 0
    finally:
        for database in (name, scratch, restored):
            drop_database(server, database)


# Large objects live in pg_largeobject, not in the rows that hold their oids: an archive of the
# rows alone would restore every oid and none of the contents. `documents` holds them through the
# lo extension's domain and is backed up whole; `uploads` through a plain oid column, by window.
LARGE_OBJECTS = TICKS + """
    CREATE EXTENSION lo;
    CREATE TABLE documents (id int PRIMARY KEY, title text, content lo);
    INSERT INTO documents SELECT g, 'page ' || g, lo_from_bytea(0, convert_to('text ' || g, 'UTF8'))
    FROM generate_series(1, 3) g;
    INSERT INTO documents VALUES (4, 'no content yet', NULL);
    CREATE TABLE uploads (id int PRIMARY KEY, at timestamptz NOT NULL, blob oid);
    INSERT INTO uploads VALUES (1, now(), lo_create(0)), (2, now(), NULL);
"""

# BACKUP_TABLES, BACKUP_TRANSACTION_TABLES, the table and column the refusal names, and the list
# its fix names.
REFUSED = {
    "lo_column_of_a_table_backed_up_whole": ("documents", "ticks:at", "documents", "content",
                                             "BACKUP_TABLES"),
    "oid_column_of_a_transaction_window": ("ticks", "uploads:at", "uploads", "blob",
                                           "BACKUP_TRANSACTION_TABLES"),
}


@pytest.fixture
def table_reader(server):
    """A LOGIN role that may read the tables and sequences and nothing more: it cannot read
    pg_largeobject (pg_read_all_data could), only pg_largeobject_metadata, as every role can."""
    role = f"bp_reader_{uuid.uuid4().hex[:8]}"
    with server.admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader_pw'")
    yield role
    with server.admin() as conn:
        conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_large_objects_fail_the_export_before_it_writes(case, server, instance, table_reader,
                                                        tmp_path, monkeypatch):
    """A backed-up column referencing large objects fails database_export up front, naming the
    column, its first large object, how many more, and the fix: an archive without the contents
    would restore, and its proof pass, with every document empty."""
    critical, windows, table, column, variable = REFUSED[case]
    name = f"bp_edge_{uuid.uuid4().hex[:10]}"
    with server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(server.dsn(name), autocommit=True) as conn:
            conn.execute(LARGE_OBJECTS)
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {table_reader}; "
                         f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {table_reader}")
            first, count = conn.execute(
                f"SELECT min({column})::bigint, count({column}) FROM {table}").fetchone()
        env = schema_env(server, name, tmp_path, monkeypatch, BACKUP_TABLES=critical,
                         BACKUP_TRANSACTION_TABLES=windows, POSTGRES_USER=table_reader,
                         POSTGRES_PASSWORD="reader_pw")
        result = run_backup(env, instance)
        failures = [e for e in result.all_events if e.is_step_failure]
        assert [e.step_key for e in failures] == ["backup.database_export"]
        [failure] = failures
        cause = failure.event_specific_data.error.cause
        assert cause.cls_name == "ExportPlanError", cause.to_string()
        more = f" and {count - 1} more" if count > 1 else ""
        assert cause.message.strip() == (
            f"backup_pipeline.export_plan.ExportPlanError: public.{table}.{column} holds large "
            f"objects (oid {first}{more}), which this backup does not carry: a restore would have "
            f"the rows but not their contents. Store the contents in a bytea column, or stop "
            f"backing up public.{table} ({variable}).")
        # The plan is made before the export reads or writes anything.
        assert any("in build_plan" in frame for frame in cause.stack)
        assert archives(env["BACKUP_DIR"]) == []
    finally:
        drop_database(server, name)
