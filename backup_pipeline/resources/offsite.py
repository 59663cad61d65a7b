"""The off-site bucket (BACKUP_S3_*) as a resource: where copies go, with credentials read at run
time (dg.EnvVar: never shown in the UI, never in a log, never in Settings).

Credentials left unset are boto3's to find (a profile, an instance role, a web identity).
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from backup_pipeline.offsite import S3Target
from backup_pipeline.settings import DEFAULTS, Settings


class OffsiteStorage(dg.ConfigurableResource):
    bucket: str | None = Field(default=None, description="BACKUP_S3_BUCKET")
    prefix: str = Field(default=DEFAULTS.s3_prefix, description="BACKUP_S3_PREFIX")
    endpoint_url: str | None = Field(default=None, description="BACKUP_S3_ENDPOINT_URL")
    region: str | None = Field(default=None, description="BACKUP_S3_REGION")
    checksums: str = Field(default=DEFAULTS.s3_checksums, description="BACKUP_S3_CHECKSUMS")
    access_key_id: str | None = Field(default=None, description="AWS_ACCESS_KEY_ID")
    secret_access_key: str | None = Field(default=None, description="AWS_SECRET_ACCESS_KEY")
    session_token: str | None = Field(default=None, description="AWS_SESSION_TOKEN")
    link_ttl_hours: float = Field(default=DEFAULTS.link_ttl_hours,
                                  description="BACKUP_LINK_TTL_HOURS")

    @classmethod
    def from_settings(cls, settings: Settings, **credentials: object) -> OffsiteStorage:
        """The bucket BACKUP_S3_* name; `credentials` (dg.EnvVar in the pipeline) are the
        AWS_* fields, left to boto3's own chain when not given (the command line)."""
        return cls(bucket=settings.s3_bucket, prefix=settings.s3_prefix,
                   endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   checksums=settings.s3_checksums, link_ttl_hours=settings.link_ttl_hours,
                   **credentials)

    @property
    def configured(self) -> bool:
        return self.bucket is not None

    def target(self) -> S3Target:
        assert self.bucket is not None, "the off-site step runs only with BACKUP_S3_BUCKET"
        return S3Target(bucket=self.bucket, prefix=self.prefix, endpoint_url=self.endpoint_url,
                        region=self.region, access_key_id=self.access_key_id,
                        secret_access_key=self.secret_access_key,
                        session_token=self.session_token,
                        legacy_checksums=self.checksums == "when_required")
