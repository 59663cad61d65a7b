"""Where the weekly restore drill restores to: a scratch database, never the production one."""

from __future__ import annotations

import socket

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field

from backup_pipeline.resources.postgres import PostgresResource


def _addresses(host: str) -> set[str]:
    """Every address `host` names (a socket folder stands for itself), loopbacks as one."""
    if host.startswith("/"):
        return {host}
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        found = {host}
    return {"loopback" if a.startswith("127.") or a == "::1" else a for a in found}


class RestoreDrillTarget(dg.ConfigurableResource):
    """BACKUP_DRILL_DSN: a libpq connection string of a database the drill may drop."""

    dsn: str | None = Field(default=None, description="BACKUP_DRILL_DSN, read at run time")

    def checked_dsn(self, production: PostgresResource) -> str:
        if not self.dsn:
            raise RuntimeError(
                "BACKUP_DRILL_DSN is not set: the restore drill needs a scratch database it may "
                "drop and recreate, e.g. host=localhost dbname=smart_ai_hub_drill user=postgres."
            )
        parts = conninfo_to_dict(self.dsn)
        same_server = (_addresses(str(parts.get("host", "localhost")))
                       & _addresses(production.host)
                       and int(parts.get("port", 5432)) == production.port)
        if not parts.get("dbname") or (same_server and parts["dbname"] == production.database):
            raise RuntimeError(
                "BACKUP_DRILL_DSN names the production database (or no database at all): the "
                "drill drops its target, so point it at a scratch database such as "
                f"{production.database}_drill."
            )
        return self.dsn

    @staticmethod
    def recreate(dsn: str) -> None:
        """Drop and create the scratch database, from the server's maintenance database."""
        name = conninfo_to_dict(dsn)["dbname"]
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
