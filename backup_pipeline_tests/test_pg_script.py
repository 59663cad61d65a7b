"""The pg_dump script lexer: each quoting rule alone, then real pg_dump output restored by psql."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from backup_pipeline.pg import find_pg_binary
from backup_pipeline.pg_script import (
    Statement,
    is_ownership_or_privilege,
    statements,
    without_ownership,
)
from backup_pipeline_tests.conftest import Server, drop_database, new_database


def texts(script: str) -> list[str]:
    return [s.text for s in statements(script)]


def sql(text: str) -> Statement:
    [statement] = statements(text)
    return statement


def gaps(script: str) -> list[str]:
    """What `statements` skipped, checking on the way that each text is its span of the script."""
    found, pos = [], 0
    for statement in statements(script):
        assert statement.text == script[statement.start : statement.end]
        found.append(script[pos : statement.start])
        pos = statement.end
    return [*found, script[pos:]]


def reassembled(script: str) -> str:
    parts = gaps(script)
    return "".join(g + s.text for g, s in zip(parts, statements(script), strict=False)) + parts[-1]


def test_nested_block_comments_hide_semicolons_between_and_inside_statements() -> None:
    script = "/* a /* b; */ c; */ SELECT /* x; /* y; */ z; */ 1;\n/* unterminated; SELECT 2;"
    assert texts(script) == ["SELECT /* x; /* y; */ z; */ 1;"]
    assert reassembled(script) == script


def test_line_comments_are_skipped_between_statements_and_kept_inside() -> None:
    script = "-- SELECT 0;\nSELECT 1 -- one; still one\n;\n-- end;\n"
    assert texts(script) == ["SELECT 1 -- one; still one\n;"]


def test_single_quotes_double_to_escape_and_backslash_is_literal() -> None:
    script = "SELECT 'it''s; fine';SELECT 'C:\\';SELECT 2;"
    assert texts(script) == ["SELECT 'it''s; fine';", "SELECT 'C:\\';", "SELECT 2;"]


def test_e_strings_escape_the_next_character_with_a_backslash() -> None:
    script = "SELECT E'it\\'s; \\\\', e'a''\\';\\n';SELECT 2;"
    assert texts(script) == ["SELECT E'it\\'s; \\\\', e'a''\\';\\n';", "SELECT 2;"]


def test_dollar_quotes_end_only_at_their_own_tag() -> None:
    script = "SELECT $body$ a; $$ b; $$ $bod$ ; $body$, $$x;$$, $_1$;$_1$;SELECT 2;"
    assert texts(script) == ["SELECT $body$ a; $$ b; $$ $bod$ ; $body$, $$x;$$, $_1$;$_1$;",
                             "SELECT 2;"]


def test_dollar_digit_is_a_parameter_not_a_quote() -> None:
    script = "PREPARE q(int) AS SELECT $1$2;EXECUTE q(1);-- $1$\n"
    assert texts(script) == ["PREPARE q(int) AS SELECT $1$2;", "EXECUTE q(1);"]


def test_dollar_inside_an_identifier_starts_no_quote() -> None:
    assert texts("SELECT a$b$c;SELECT x$$;SELECT $b$;$b$;") == [
        "SELECT a$b$c;", "SELECT x$$;", "SELECT $b$;$b$;"]


def test_quoted_identifiers_may_hold_semicolons_dollars_and_dashes() -> None:
    script = 'CREATE TABLE "a;b$c--d""e" ("$$" int, "/*" int);SELECT 2;'
    assert texts(script) == ['CREATE TABLE "a;b$c--d""e" ("$$" int, "/*" int);', "SELECT 2;"]


def test_parentheses_and_sql_standard_bodies_hold_semicolons_as_psql_does() -> None:
    rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); NOTIFY t);"
    body = ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
            " SELECT 1;\n SELECT CASE WHEN true THEN 2 END;\nEND;")
    named = "CREATE FUNCTION g(begin int) RETURNS int LANGUAGE sql RETURN $1;"
    assert texts(f"{rule}\n{body}\n{named}BEGIN;\nEND;") == [rule, body, named, "BEGIN;", "END;"]


def test_meta_commands_run_to_the_end_of_their_line() -> None:
    script = "\\restrict abc\n  -- c\n\\connect -reuse-previous=on \"dbname='x;y'\"\r\n" \
             "SELECT '\\x';\n\\unrestrict abc"
    found = statements(script)
    assert [(s.kind, s.text) for s in found] == [
        ("meta", "\\restrict abc"),
        ("meta", "\\connect -reuse-previous=on \"dbname='x;y'\"\r"),
        ("sql", "SELECT '\\x';"),
        ("meta", "\\unrestrict abc"),
    ]
    assert [s.line for s in found] == [1, 3, 4, 5]


def test_statements_know_their_line_and_offsets() -> None:
    script = "\n\n-- header\nSELECT 1;  SELECT\n2\n;\n\n/* a\nb */\n\\restrict k\n"
    found = statements(script)
    assert [(s.line, s.start, s.end) for s in found] == [(4, 12, 21), (4, 23, 33), (10, 45, 56)]


def test_trailing_text_without_a_semicolon_is_a_statement_not_lost() -> None:
    assert texts("SELECT 1;\n-- only a comment after it\n") == ["SELECT 1;"]
    assert texts("SELECT 1; SELECT 'open\n") == ["SELECT 1;", "SELECT 'open\n"]
    assert texts("SELECT 1; SELECT 2 -- no semicolon\n") == ["SELECT 1;", "SELECT 2"]


@pytest.mark.parametrize("text", [
    "ALTER TABLE public.t OWNER TO alice;",
    'alter materialized view v owner to "Bob Smith";',
    "ALTER FUNCTION public.f(integer, text) OWNER TO CURRENT_USER;",
    "ALTER TEXT SEARCH CONFIGURATION public.c OWNER TO r /* comment */ ;",
    "ALTER LARGE OBJECT 16385 OWNER TO r;",
    "ALTER OPERATOR public.=== (integer, integer) OWNER TO r;",
    "GRANT SELECT,INSERT ON TABLE public.t TO reader;",
    "grant r1 to r2;",
    "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
    "ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA public GRANT SELECT ON TABLES TO r;",
])
def test_ownership_and_privilege_statements_are_recognized(text: str) -> None:
    assert is_ownership_or_privilege(sql(text))


@pytest.mark.parametrize("text", [
    'ALTER TABLE "x OWNER TO y" ADD COLUMN c int;',
    "ALTER TABLE t ADD COLUMN owner text; ",
    "ALTER TABLE t ALTER COLUMN c SET DEFAULT 'OWNER TO r';",
    "ALTER TABLE t /* OWNER TO r */ ADD COLUMN c int;",
    "ALTER TABLE t RENAME TO owner_to;",
    "COMMENT ON TABLE t IS 'GRANT x';",
    "SELECT 1 -- GRANT x\n;",
    '"grant" x;',
    "ALTER ROLE r SET search_path TO owner;",
    "\\grant x",
])
def test_lookalikes_are_not_ownership_nor_privilege(text: str) -> None:
    assert not is_ownership_or_privilege(sql(text))


def test_only_sql_statements_can_be_ownership() -> None:
    assert not is_ownership_or_privilege(Statement("GRANT r TO s;", "meta", 1, 0, 13))


FUNCTION = """CREATE FUNCTION public.f() RETURNS void
    LANGUAGE plpgsql
    AS $_$
BEGIN
GRANT SELECT ON t TO r;
ALTER TABLE t OWNER TO r;
END
$_$;"""


def test_without_ownership_keeps_function_bodies_and_every_other_byte() -> None:
    script = (f"\\restrict abc\n\n{FUNCTION}\n\n--\n-- Name: f; Owner: r\n--\n\n"
              "ALTER FUNCTION public.f() OWNER TO r;\n\nGRANT SELECT ON t TO r;\n"
              "REVOKE ALL ON t FROM PUBLIC; COMMENT ON TABLE t IS 'GRANT';\n\n\\unrestrict abc\n")
    assert without_ownership(script) == (
        f"\\restrict abc\n\n{FUNCTION}\n\n--\n-- Name: f; Owner: r\n--\n\n"
        "\n\n\n COMMENT ON TABLE t IS 'GRANT';\n\n\\unrestrict abc\n")


def run_client(program: str, server: Server, dbname: str, *args: str) -> str:
    """pg_dump or psql on `dbname`; the password goes through the environment, never argv."""
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port),
           "PGUSER": server.user, "PGPASSWORD": server.password, "PGDATABASE": dbname}
    done = subprocess.run([str(find_pg_binary(program)), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


BODY = """
BEGIN
GRANT SELECT ON public.notes TO {reader};
ALTER TABLE public.notes OWNER TO {reader};
END
"""

SCHEMA = """
CREATE TABLE public.notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                           author text NOT NULL DEFAULT current_user, body text);
CREATE TABLE public.audit (note_id int);
ALTER TABLE public.notes OWNER TO {owner};
GRANT SELECT, INSERT (body) ON public.notes TO {reader};
REVOKE USAGE ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader};
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY notes_by_author ON public.notes USING (author = current_user);
CREATE INDEX notes_author ON public.notes (author);
CREATE RULE notes_audit AS ON INSERT TO public.notes
    DO ALSO (INSERT INTO public.audit VALUES (new.id); INSERT INTO public.audit VALUES (-new.id));
COMMENT ON TABLE public.notes IS 'GRANT nothing; REVOKE nothing;';
CREATE FUNCTION public.share_notes() RETURNS void LANGUAGE plpgsql AS $body${body}$body$;
ALTER FUNCTION public.share_notes() OWNER TO {owner};
REVOKE EXECUTE ON FUNCTION public.share_notes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.share_notes() TO {reader};
CREATE FUNCTION public.note_count() RETURNS bigint LANGUAGE sql
BEGIN ATOMIC
    SELECT count(*) FROM public.notes;
END;
"""

# Owner of the table, its ACL, default ACLs, the function body and the policy, once restored.
CATALOG = """
SELECT pg_get_userbyid(relowner), relacl::text, (SELECT count(*) FROM pg_default_acl),
       (SELECT prosrc FROM pg_proc WHERE proname = 'share_notes'),
       (SELECT count(*) FROM pg_policies WHERE tablename = 'notes')
FROM pg_class WHERE oid = 'public.notes'::regclass
"""

# What pg_dump writes for ownership and privileges, one line each: a line-based check, right
# here only because the one function body holding such lines is cut out first.
PRIVILEGE_LINE = re.compile(
    r"^(?:GRANT |REVOKE |ALTER DEFAULT PRIVILEGES |ALTER .* OWNER TO ).*$", re.MULTILINE)


def check_split(script: str, body: str) -> None:
    """`script` splits as psql reads it, and loses exactly its ownership and privileges."""
    assert reassembled(script) == script
    assert all(line.startswith("--") for gap in gaps(script)
               for line in gap.splitlines() if line.strip())
    found = statements(script)
    assert [s.line for s in found] == [script.count("\n", 0, s.start) + 1 for s in found]
    assert [s.text for s in found if s.kind == "meta"] == [
        line for line in script.splitlines() if line.startswith("\\")]
    removed = [s.text for s in found if is_ownership_or_privilege(s)]
    assert removed == PRIVILEGE_LINE.findall(script.replace(body, "", 1))
    filtered = without_ownership(script)
    assert not [s for s in statements(filtered) if is_ownership_or_privilege(s)]
    assert not PRIVILEGE_LINE.search(filtered.replace(body, "", 1))
    assert filtered.count(body) == script.count(body)


def catalog(dsn: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(CATALOG).fetchone()
        assert row is not None
        return row


def test_real_pg_dump_scripts_restore_with_and_without_ownership(
        server: Server, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    owner, reader = f"bp_owner_{suffix}", f"bp_reader_{suffix}"
    body = BODY.format(reader=reader)
    databases: list[str] = []

    def restore(scripts: dict[str, str]) -> str:
        """Each section in its own transaction, stopping at the first error, as a restore does."""
        databases.append(new_database(server))
        for section, script in scripts.items():
            path = tmp_path / f"{databases[-1]}-{section}.sql"
            path.write_text(script)
            run_client("psql", server, databases[-1], "-X", "-q", "-v", "ON_ERROR_STOP=1",
                       "--single-transaction", "-f", str(path))
        return server.dsn(databases[-1])

    def drop_all() -> None:
        for database in databases:
            drop_database(server, database)
        with server.admin() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {owner}")
            conn.execute(f"DROP ROLE IF EXISTS {reader}")

    with server.admin() as conn:
        conn.execute(f"CREATE ROLE {owner} NOLOGIN")
        conn.execute(f"CREATE ROLE {reader} NOLOGIN")
    try:
        source = restore({"schema": SCHEMA.format(owner=owner, reader=reader, body=body)})
        dumps = {section: run_client("pg_dump", server, databases[0], f"--section={section}")
                 for section in ("pre-data", "post-data")}
        pre, post = dumps["pre-data"], dumps["post-data"]
        assert f"AS $$\nBEGIN\nGRANT SELECT ON public.notes TO {reader};" in pre
        assert f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner}" in post
        for script in (pre, post):
            check_split(script, body)
        assert any(s.text.startswith("CREATE FUNCTION public.note_count()")
                   and s.text.endswith("\nEND;") for s in statements(pre))
        assert any(s.text.startswith("CREATE RULE notes_audit") and s.text.endswith("\n);")
                   for s in statements(post))
        assert catalog(source)[:3] == catalog(restore(dumps))[:3]
        assert catalog(source)[0] == owner

        drop_all()
        filtered = restore({section: without_ownership(s) for section, s in dumps.items()})
        assert catalog(filtered) == (server.user, None, 0, body, 1)
        with psycopg.connect(filtered) as conn:
            conn.execute("INSERT INTO public.notes (body) VALUES ('hello')")
            assert conn.execute("SELECT public.note_count(), count(*) FROM public.audit"
                                ).fetchone() == (1, 2)
    finally:
        drop_all()
