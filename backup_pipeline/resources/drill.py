"""Where the weekly restore drill restores to: a scratch database, never the production one."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field

from backup_pipeline.resources.postgres import PostgresResource
from backup_pipeline.restore import drop_database
from backup_pipeline.sealing import Identity, load_identities


class RestoreDrillTarget(dg.ConfigurableResource):
    """BACKUP_DRILL_DSN: a libpq connection string of a database the drill may drop."""

    dsn: str | None = Field(default=None, description="BACKUP_DRILL_DSN, read at run time")
    identity_file: str | None = Field(default=None, description="BACKUP_AGE_IDENTITY_FILE")

    def identities(self, archive_name: str) -> tuple[Identity, ...]:
        """The private key a sealed archive is drilled with. The drill is the one step that
        needs one: without it, a sealed archive cannot be drilled, and the error says so (the
        restore proof already restored it, in clear, before it was sealed)."""
        if not self.identity_file:
            raise RuntimeError(
                f"{archive_name} is sealed with age and BACKUP_AGE_IDENTITY_FILE is not set: the "
                f"drill needs a private key to open it. Set it where the drill runs, or rely on "
                f"the restore proof of every backup, which restored it before it was sealed.")
        return tuple(load_identities(Path(self.identity_file)))

    def checked_dsn(self, production: PostgresResource) -> str:
        if not self.dsn:
            raise RuntimeError(
                "BACKUP_DRILL_DSN is not set: the restore drill needs a scratch database it may "
                "drop and recreate, e.g. host=localhost dbname=smart_ai_hub_drill user=postgres."
            )
        parts = conninfo_to_dict(self.dsn)
        # The database's name decides, whatever the host: a socket path, hostaddr or a host list
        # can hide that two spellings reach the same server, and the drill drops its target.
        if not parts.get("dbname") or parts["dbname"] == production.database:
            raise RuntimeError(
                "BACKUP_DRILL_DSN names the production database (or no database at all): the "
                "drill drops its target, so point it at a scratch database such as "
                f"{production.database}_drill."
            )
        return self.dsn

    @staticmethod
    def drop(dsn: str) -> None:
        """Drop the scratch database: the restore creates it again, with the archive's own
        encoding and collation."""
        drop_database(dsn)
