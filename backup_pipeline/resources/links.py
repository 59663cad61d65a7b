"""Signed download links for archives too large to attach (BACKUP_DOWNLOAD_*)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from backup_pipeline.downloads import signed_link
from backup_pipeline.settings import DEFAULTS


class DownloadLinks(dg.ConfigurableResource):
    base_url: str | None = Field(default=None, description="BACKUP_DOWNLOAD_BASE_URL")
    secret: str | None = Field(default=None, description="BACKUP_DOWNLOAD_SECRET, at run time")
    ttl_hours: float = Field(default=DEFAULTS.link_ttl_hours,
                             description="BACKUP_LINK_TTL_HOURS")

    def link_for(self, name: str) -> tuple[str, int] | None:
        """(url, expiry) when links are configured, else None (the email names the path)."""
        if not self.base_url or not self.secret:
            return None
        return signed_link(self.base_url, self.secret, name, self.ttl_hours)
