"""What can still be used of a damaged archive, for the night every archive fails verification.

A gzip stream that breaks (a disk error, a copy cut short) loses only what follows the break:
every member before it still reads, and the manifest, the archive's first member, says what each
one must hold. `salvage_archive` extracts what reads into a new folder, keeps a file under its
name only when its size and SHA-256 are the manifest's, renames any other to `<name>.damaged`, and
lists what was never reached. Nothing is loaded anywhere: the runbook says how to use the intact
files with psql. Imports no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backup_pipeline.files import make_private_dirs
from backup_pipeline.verify import verify_archive

DAMAGED_SUFFIX = ".damaged"


@dataclass
class SalvageReport:
    archive: Path
    folder: Path
    # The manifest's files, by what became of each (archive paths).
    intact: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)
    # Files read but not in a manifest (there was none to check them against).
    unverified: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.damaged or self.unreached or self.unverified)


def salvage_archive(archive: Path, folder: Path) -> SalvageReport:
    """Extract what `archive` still holds into `folder` (new or empty) and sort it out."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty: give salvage a new folder, so that nothing "
                         f"there is taken for a salvaged file")
    make_private_dirs(folder)
    verification = verify_archive(Path(archive), extract_to=folder)
    report = SalvageReport(Path(archive), folder, problems=list(verification.problems))
    manifest = verification.manifest
    if manifest is None:
        report.unverified = sorted(verification.files)
        return report
    for entry in manifest.files:
        path = entry.path
        check = verification.files.get(path)
        target = folder / path
        if check is not None and (check.size, check.sha256) == (entry.size, entry.sha256):
            report.intact.append(path)
        elif target.exists():
            target.rename(target.with_name(target.name + DAMAGED_SUFFIX))
            report.damaged.append(path)
        else:
            report.unreached.append(path)
    return report
