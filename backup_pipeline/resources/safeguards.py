"""The archive's safeguards as resources: age encryption (BACKUP_AGE_RECIPIENTS) and the manifest's
signature (BACKUP_SIGNING_KEY_FILE). Both hold only what the backup host may hold: public keys
to seal to, and the path of the signing key, read when a run needs it.

A configured safeguard never silently degrades: a recipient or a key that cannot be read at run
time fails the run before any archive is written, rather than writing one without it.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from backup_pipeline.sealing import EncryptionError, Recipient, RecipientsError, load_recipients
from backup_pipeline.signing import SigningError, SigningKey


class ArchiveEncryption(dg.ConfigurableResource):
    """The age public keys archives are sealed to; none: archives are kept in clear."""

    recipients_text: str | None = Field(default=None, description="BACKUP_AGE_RECIPIENTS")
    recipients_file: str | None = Field(default=None, description="BACKUP_AGE_RECIPIENTS_FILE")

    @property
    def configured(self) -> bool:
        return bool(self.recipients_text or self.recipients_file)

    def recipients(self) -> tuple[Recipient, ...]:
        """The public keys, read now; () when encryption is off."""
        if not self.configured:
            return ()
        try:
            keys = load_recipients(self.recipients_text,
                                   Path(self.recipients_file) if self.recipients_file else None)
        except RecipientsError as error:
            raise EncryptionError(f"{error}. The run stopped before writing an archive: none is "
                                  f"kept unencrypted while encryption is configured.") from None
        if not keys:
            raise EncryptionError("BACKUP_AGE_RECIPIENTS lists no public key: set it to the "
                                  "administrators' age public keys (age1...), or unset it")
        return keys


class SigningFailure(RuntimeError):
    """The signing key configured cannot be used: no unsigned archive is written instead."""


class ManifestSigning(dg.ConfigurableResource):
    """The private key the manifest is signed with; none: archives are unsigned."""

    key_file: str | None = Field(default=None, description="BACKUP_SIGNING_KEY_FILE")

    def key(self) -> SigningKey | None:
        if not self.key_file:
            return None
        try:
            return SigningKey.from_file(Path(self.key_file))
        except SigningError as error:
            raise SigningFailure(f"{error}. The run stopped before writing an archive: none is "
                                 f"written unsigned while signing is configured.") from None
