"""The backup: one graph-backed multi-asset that Dagster never runs in part.

Its steps are the export, the configuration snapshot, the archive, the archive's checks, the
restore proof, the sealing (BACKUP_AGE_RECIPIENTS), the status and the off-site copy
(BACKUP_S3_BUCKET); its assets are the schema, every table, the configuration, the archive, the
proof, the sealed archive, the status and the off-site copy. Each step needs what the one before
it made in the same run (the export's files are packed by the archive, which the checks verify
and the proof restores, and only then is the status written), so a partial backup could only
redo work and throw it away, or find nothing to pack. Hence `can_subset=False`: in the UI,
"Materialize" on any of its assets (one table, the archive, the status) asks to confirm all of
them and runs the whole backup, and a launch that selects only some of them (GraphQL, `dg launch
--assets`) is refused by Dagster before any step runs, with the reason. The archive's checks are
part of it, so their results are always those of the archive the same run built.

One asset per table, not one opaque "backup" asset: the UI shows each table's rows and checksum
and the lineage from every table to the archive. A graph of steps, not one step: the run's
timeline shows which part failed or took the time, and the alert names it.
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline.assets.archive import ARCHIVE_OUTPUT, ARCHIVE_SPEC, build_backup_archive
from backup_pipeline.assets.checks import CHECK_SPECS, archive_checks
from backup_pipeline.assets.config_snapshot import (
    CONFIG_OUTPUT,
    build_config_snapshot,
    config_spec,
)
from backup_pipeline.assets.database import build_database_export, export_specs
from backup_pipeline.assets.offsite import OFFSITE_OUTPUT, OFFSITE_SPEC, offsite_copy
from backup_pipeline.assets.restore_proof import PROOF_OUTPUT, PROOF_SPEC, restore_proof
from backup_pipeline.assets.sealing import SEALED_OUTPUT, build_sealed_archive, sealed_spec
from backup_pipeline.assets.status import STATUS_OUTPUT, build_backup_status, status_spec
from backup_pipeline.assets.values import output_name
from backup_pipeline.settings import Settings

BACKUP_NAME = "backup"


def backup_specs(settings: Settings) -> list[dg.AssetSpec]:
    """Every asset one backup makes, in the order its steps make them."""
    archive = ARCHIVE_SPEC.replace_attributes(
        deps=[spec.key for spec in export_specs(settings)] + [config_spec(settings).key])
    proof = [PROOF_SPEC] if settings.restore_proof else []
    sealed = [sealed_spec(settings.restore_proof)] if settings.encrypted else []
    offsite = [OFFSITE_SPEC] if settings.offsite else []
    return [*export_specs(settings), config_spec(settings), archive, *proof, *sealed,
            status_spec(settings.restore_proof, settings.encrypted), *offsite]


def build_backup(settings: Settings, success_email: dg.HookDefinition,
                 failure_alert: dg.HookDefinition) -> dg.AssetsDefinition:
    """The backup's assets and checks; the failure alert hangs on every step, the success
    email on the last one (a step's hook fires for that step only): the off-site copy when
    there is one, so that its link is in the email, else the status."""
    specs = backup_specs(settings)
    export_outputs = [output_name(spec.key) for spec in export_specs(settings)]
    export_op, config_op = build_database_export(settings), build_config_snapshot(settings)
    archive_op = build_backup_archive(settings)
    proof_op = restore_proof if settings.restore_proof else None
    seal_op = build_sealed_archive(settings.restore_proof) if settings.encrypted else None
    status_op = build_backup_status(settings.restore_proof, settings.encrypted)
    offsite_op = offsite_copy.with_hooks({success_email}) if settings.offsite else None
    if offsite_op is None:
        status_op = status_op.with_hooks({success_email})
    check_outputs = [spec.get_python_identifier() for spec in CHECK_SPECS]

    @dg.graph(name=BACKUP_NAME,
              out={name: dg.GraphOut() for name in
                   [output_name(spec.key) for spec in specs] + check_outputs})
    def backup():
        exported = export_op()
        configured = config_op()
        archive = archive_op(export=exported.export, config_record=configured.config_record)
        checks = archive_checks(built=archive.built)
        proven = proof_op(checked=checks.checked) if proof_op else None
        kept = proven.proven if proven else checks.checked
        sealed = seal_op(proven=kept) if seal_op else None
        status = status_op(proven=sealed.sealed if sealed else kept)
        outputs = {name: getattr(exported, name) for name in export_outputs}
        outputs[CONFIG_OUTPUT] = getattr(configured, CONFIG_OUTPUT)
        outputs[ARCHIVE_OUTPUT] = getattr(archive, ARCHIVE_OUTPUT)
        outputs.update({name: getattr(checks, name) for name in check_outputs})
        if proven:
            outputs[PROOF_OUTPUT] = getattr(proven, PROOF_OUTPUT)
        if sealed:
            outputs[SEALED_OUTPUT] = getattr(sealed, SEALED_OUTPUT)
        outputs[STATUS_OUTPUT] = status
        if offsite_op:
            outputs[OFFSITE_OUTPUT] = offsite_op(recorded=status)
        return outputs

    return dg.AssetsDefinition.from_graph(
        backup,
        keys_by_output_name={output_name(spec.key): spec.key for spec in specs},
        internal_asset_deps={output_name(spec.key): {dep.asset_key for dep in spec.deps}
                             for spec in specs},
        group_names_by_output_name={output_name(spec.key): spec.group_name for spec in specs},
        descriptions_by_output_name={output_name(spec.key): spec.description for spec in specs
                                     if spec.description},
        metadata_by_output_name={output_name(spec.key): spec.metadata for spec in specs},
        tags_by_output_name={output_name(spec.key): spec.tags for spec in specs},
        can_subset=False,
        check_specs=CHECK_SPECS,
        hook_defs={failure_alert},
    )
