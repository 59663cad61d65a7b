"""The export plan's queries on a schema made for the cases the sample data does not have."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from backup_pipeline.export_plan import build_plan
from backup_pipeline.settings import Settings, TransactionTable
from backup_pipeline_tests.conftest import drop_database, new_database


@pytest.fixture
def empty_db(server):
    name = new_database(server)
    yield name
    drop_database(server, name)

SCHEMA = """
CREATE TABLE parent (id bigint PRIMARY KEY, code text NOT NULL UNIQUE,
                     created_at timestamptz NOT NULL);
CREATE TABLE child (id bigint PRIMARY KEY, parent_id bigint REFERENCES parent (id),
                    parent_code text REFERENCES parent (code), created_at timestamptz NOT NULL);
INSERT INTO parent VALUES (1, 'a', now() - interval '1 year'), (2, 'b', now() - interval '1 year'),
                          (3, 'c', now() - interval '1 year'), (4, 'd', now());
INSERT INTO child VALUES
    (10, 1, 'a', now()),                          -- one old parent, by both of its keys
    (11, NULL, 'b', now()),                       -- an old parent by its code only
    (12, 3, NULL, now() - interval '1 year'),     -- old child: its parent is not needed
    (13, 4, 'd', now());                          -- a parent in the window
"""


def test_keys_into_two_unique_columns_keep_each_row_once(server, empty_db):
    """Two foreign keys into different unique columns of one table: every referenced older row
    is backed up exactly once, and older rows nobody backed up references are not."""
    with psycopg.connect(server.dsn(empty_db), autocommit=True) as conn:
        conn.execute(SCHEMA)
        settings = Settings(critical_tables=(), transaction_tables=(
            TransactionTable("parent"), TransactionTable("child")))
        plan = build_plan(conn, settings, datetime.now(UTC) - timedelta(days=90))
        parent, child = plan.windowed
        parents = sorted(row[0] for row in conn.execute(plan.window_query(parent)))
        children = sorted(row[0] for row in conn.execute(plan.window_query(child)))
    assert parents == [1, 2, 4]
    assert children == [10, 11, 13]


def test_self_references_follow_the_chain_in_key_order(server, empty_db):
    """A refund of a refund of an old purchase: the whole chain, each row once."""
    with psycopg.connect(server.dsn(empty_db), autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE purchase (id bigint PRIMARY KEY, refund_of bigint REFERENCES purchase,
                                   created_at timestamptz NOT NULL);
            INSERT INTO purchase VALUES (1, NULL, now() - interval '2 years'),
                (2, 1, now() - interval '1 year'), (3, 2, now()),
                (4, NULL, now() - interval '1 year'), (5, 2, now());
        """)
        settings = Settings(critical_tables=(), transaction_tables=(TransactionTable("purchase"),))
        plan = build_plan(conn, settings, datetime.now(UTC) - timedelta(days=90))
        [purchase] = plan.windowed
        rows = [row[0] for row in conn.execute(plan.window_query(purchase))]
    assert sorted(rows) == [1, 2, 3, 5]


def test_keys_of_two_columns_and_keys_of_another_type(server, empty_db):
    """A foreign key of two columns (looked up key by key) and an integer key into a bigint
    (looked up through an array of the other type): every referenced older row, once."""
    with psycopg.connect(server.dsn(empty_db), autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE account (tenant int, id int, created_at timestamptz NOT NULL,
                                  PRIMARY KEY (tenant, id));
            CREATE TABLE plan (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);
            CREATE TABLE entry (id bigint PRIMARY KEY, tenant int, account_id int,
                                plan_id int REFERENCES plan, created_at timestamptz NOT NULL,
                                FOREIGN KEY (tenant, account_id) REFERENCES account);
            INSERT INTO account VALUES (1, 1, now() - interval '1 year'),
                (1, 2, now() - interval '1 year'), (2, 1, now() - interval '1 year'),
                (2, 2, now());
            INSERT INTO plan VALUES (7, now() - interval '1 year'), (8, now() - interval '1 year'),
                                    (9, now());
            INSERT INTO entry VALUES (10, 1, 1, 7, now()), (11, 2, 1, 7, now()),
                (12, 1, 1, NULL, now()), (13, 1, 2, 8, now() - interval '1 year'),
                (14, 2, 2, 9, now());
        """)
        settings = Settings(critical_tables=(), transaction_tables=(
            TransactionTable("account"), TransactionTable("plan"), TransactionTable("entry")))
        plan = build_plan(conn, settings, datetime.now(UTC) - timedelta(days=90))
        account, plans, entry = plan.windowed
        accounts = sorted(row[:2] for row in conn.execute(plan.window_query(account)))
        plan_ids = sorted(row[0] for row in conn.execute(plan.window_query(plans)))
        entries = sorted(row[0] for row in conn.execute(plan.window_query(entry)))
    assert accounts == [(1, 1), (2, 1), (2, 2)]
    assert plan_ids == [7, 9]
    assert entries == [10, 11, 12, 14]
