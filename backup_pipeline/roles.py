"""The database roles a restored schema needs, so that it comes back usable on a new server.

The schema is dumped with its owners and privileges (`ALTER ... OWNER TO app`, `GRANT ... TO
reader`, `CREATE POLICY ... TO app`). On the night the whole server is gone, the new one has
none of those roles, and every such statement would fail. So the archive also lists the roles
the schema names (owners, grantees, policy roles, the backup role itself, and the groups they
are members of), like `pg_dumpall --roles-only --no-role-passwords` but only those, and the
restore creates each one that is missing: NOLOGIN and without a password (passwords are never in
an archive), members of the same groups, with a notice saying how to give it back its login.
Roles that exist on the target are left exactly as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

# Roles named by anything in this database, and the groups they are members of (recursively).
# Predefined roles (pg_*) exist on every server and are never created.
_NEEDED_ROLES_QUERY = r"""
WITH RECURSIVE owners(oid) AS (
    SELECT refobjid FROM pg_shdepend
    WHERE refclassid = 'pg_authid'::regclass AND deptype = 'o'
      AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION SELECT n.nspowner FROM pg_namespace n
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION SELECT p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION SELECT t.typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
), named(oid) AS (
    SELECT oid FROM owners
    UNION SELECT refobjid FROM pg_shdepend
    WHERE refclassid = 'pg_authid'::regclass
      AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION SELECT (aclexplode(c.relacl)).grantee FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relacl IS NOT NULL AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
    UNION SELECT oid FROM pg_roles WHERE rolname = current_user
), needed(oid) AS (
    SELECT oid FROM named
    UNION SELECT m.roleid FROM pg_auth_members m JOIN needed ON m.member = needed.oid
)
SELECT r.rolname, r.rolcanlogin, r.rolinherit,
       array_remove(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END,
                          CASE WHEN r.rolcreatedb THEN 'CREATEDB' END,
                          CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
                          CASE WHEN r.rolreplication THEN 'REPLICATION' END,
                          CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END], NULL),
       array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY g.rolname),
       r.oid IN (SELECT oid FROM owners)
FROM pg_roles r
WHERE r.oid IN (SELECT oid FROM needed) AND r.rolname !~ '^pg_'
ORDER BY r.rolname
"""

_DO_TAG = "$backup_pipeline_role$"


class RoleNameError(ValueError):
    """A role name the roles script could not carry safely."""


@dataclass(frozen=True)
class Role:
    """A role as the source had it, without its password (never in an archive)."""

    name: str
    login: bool
    inherit: bool
    attributes: tuple[str, ...]
    member_of: tuple[str, ...]
    owner: bool = False  # owns objects of the database (the restore hands them back to it)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Role:
        return cls(str(data["name"]), bool(data["login"]), bool(data["inherit"]),
                   tuple(str(a) for a in data["attributes"]),
                   tuple(str(m) for m in data["member_of"]), bool(data.get("owner")))

    @property
    def source_attributes(self) -> str:
        """What the role had on the source, as ALTER ROLE options."""
        return " ".join(["LOGIN" if self.login else "NOLOGIN", *self.attributes])

    @property
    def restore_advice(self) -> str:
        """What a restore that creates this role says about it."""
        if not (self.login or self.attributes):
            return "NOLOGIN, no password, as on the source"
        options = " ".join([*(["LOGIN"] if self.login else []), *self.attributes])
        return (f"NOLOGIN, no password (on the source: {self.source_attributes}); give that "
                f"back with ALTER ROLE {self.name} {options}"
                + (" PASSWORD '...'" if self.login else ""))


def needed_roles(conn: psycopg.Connection) -> list[Role]:
    """The roles the database's schema names, groups before their members."""
    roles = {row[0]: Role(row[0], row[1], row[2], tuple(row[3]), tuple(row[4]), row[5])
             for row in conn.execute(_NEEDED_ROLES_QUERY)}
    ordered: list[Role] = []

    def visit(role: Role) -> None:
        if role in ordered:
            return
        for group in role.member_of:
            if group in roles:
                visit(roles[group])
        ordered.append(role)

    for role in roles.values():
        visit(role)
    return ordered


def database_locale(conn: psycopg.Connection) -> dict[str, str | None]:
    """The source database's encoding and collation: a restored database created with them
    sorts, partitions by text and checks constraints the way the source does."""
    row = conn.execute(
        "SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
        "to_jsonb(d) ->> 'datlocprovider', "
        "coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') "
        "FROM pg_database d WHERE d.datname = current_database()").fetchone()
    return dict(zip(("encoding", "collate", "ctype", "provider", "locale"), row, strict=True))


def _literal(text: str) -> str:
    if _DO_TAG in text or "\x00" in text:
        raise RoleNameError(f"role name {text!r} cannot be written into the roles script")
    return "'" + text.replace("'", "''") + "'"


def create_missing_roles_sql(roles: list[Role]) -> str:
    """SQL that creates each role the target lacks (NOLOGIN, no password, in its groups) and
    says so; existing roles are not touched. It runs inside the restore's transaction."""
    blocks = ["-- backup_pipeline: the roles this schema names, created only where missing\n"
              "SET standard_conforming_strings = on;\n"]
    for role in roles:
        name = _literal(role.name)
        grants = "".join(
            f"    EXECUTE format('GRANT %I TO %I', {_literal(group)}, {name});\n"
            for group in role.member_of)
        hint = f"created role %: {role.restore_advice.replace('%', '%%')}"
        quoted = f"quote_ident({name})"
        blocks.append(
            f"DO {_DO_TAG}\nBEGIN\n"
            f"  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {name}) THEN\n"
            f"    EXECUTE format('CREATE ROLE %I NOLOGIN {'' if role.inherit else 'NO'}INHERIT', "
            f"{name});\n{grants}"
            f"    RAISE NOTICE {_literal(hint)}, {quoted};\n"
            f"  END IF;\nEND\n{_DO_TAG};\n")
    return "\n".join(blocks)
