"""How the backup's steps hand each other what they made: typed values, in memory.

The steps of one backup run in one process (the in-process executor), one after the other, so
the export's record, the configuration's, the archive that was built and the proof's result
pass as Python values from step to step: no side file in the staging folder, no search of the
event log for what an earlier step materialized. They last as long as the run: a backup cannot
be resumed from a failed step (its staged files are gone too); a retry redoes all of it.
"""

from __future__ import annotations

import dagster as dg

VALUES_IO_MANAGER = "backup_values"


def output_name(key: dg.AssetKey) -> str:
    """The name of the step output that materializes `key` (a Python identifier)."""
    return key.to_python_identifier()
