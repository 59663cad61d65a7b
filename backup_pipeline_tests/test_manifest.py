"""The typed manifest: what the pipeline writes reads back the same, and a manifest that is not
one it writes is refused by verify and restore naming the field, never half-used."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from backup_pipeline import layout
from backup_pipeline.manifest import Manifest, ManifestError
from backup_pipeline.verify import read_manifest, verify_archive
from backup_pipeline_tests.helpers import (
    BACKUP_PIPELINE,
    manifest,
    manifest_json,
    rewrite_archive,
    table_json,
)


def test_the_written_manifest_reads_back_field_for_field(archive):
    written = manifest(archive)
    read = read_manifest(archive)
    assert isinstance(read, Manifest)
    assert json.loads(json.dumps(read.to_json())) == written
    assert read.rows == sum(t["rows"] for t in written["tables"]) > 0
    assert read.data_bytes == sum(f["size"] for f in written["files"])
    users = read.tables_by_path["database/users.sql"]
    assert (users.schema, users.name, users.windowed) == ("public", "users", False)
    assert all(t.order for t in read.tables)


@pytest.mark.parametrize(("change", "named"), [
    (lambda m: m["tables"][0].update(rows="12"), "table 'public.t'.rows is str, not int"),
    (lambda m: m["tables"][0].update(rows=True), "table 'public.t'.rows is bool, not int"),
    (lambda m: m["tables"][0].pop("columns"), "table 'public.t' has no 'columns'"),
    (lambda m: m["tables"][0].update(kind="all"), "table 'public.t' has kind 'all'"),
    (lambda m: m["tables"][0].update(table="t"), "table 't' is not schema-qualified"),
    (lambda m: m["files"].append({"path": "x", "size": -1.5, "sha256": "0"}),
     "a file.size is float, not int"),
    (lambda m: m.update(tables={"public.t": 1}), "the manifest.tables is dict, not list"),
    (lambda m: m["database_locale"].pop("ctype"), "database_locale has no 'ctype'"),
    (lambda m: m.update(roles=[{"name": "app"}]), "the manifest.roles holds a role it cannot"),
])
def test_a_manifest_of_the_wrong_shape_is_named(change, named):
    data = json.loads(manifest_json([table_json("public.t", "critical", "database/t.sql")],
                                    database_locale={"encoding": "UTF8", "collate": "C",
                                                     "ctype": "C"}))
    Manifest.from_json(data)  # as given, it is one
    change(data)
    with pytest.raises(ManifestError) as refused:
        Manifest.from_json(data)
    assert str(refused.value).startswith(named), refused.value


def test_a_format_1_manifest_reads_with_the_defaults_it_meant():
    data = json.loads(manifest_json([{"table": "public.t", "kind": "critical",
                                      "path": "database/t.sql", "rows": 3,
                                      "columns": ["id"]}], format=1))
    read = Manifest.from_json(data)
    [table] = read.tables
    assert (table.order, table.partitioned, read.roles, read.not_valid_constraints,
            read.database_locale, read.application) == (None, False, (), (), None,
                                                         "Smart AI Hub")


def test_verify_and_restore_refuse_an_archive_whose_manifest_is_not_ours(archive, tmp_path):
    """A real archive with one field of the wrong kind (and checksums that still match):
    verify names the field; restore refuses it before it touches the target."""
    def wrong(name: str, data: bytes) -> bytes:
        if name != layout.MANIFEST:
            return data
        changed = json.loads(data)
        changed["tables"][0]["rows"] = str(changed["tables"][0]["rows"])
        return json.dumps(changed).encode()

    crafted = rewrite_archive(archive, tmp_path / "crafted.tar.gz", wrong)
    report = verify_archive(crafted)
    assert report.manifest is None and not report.ok
    [problem] = report.problems_of("checksums")
    assert problem.startswith("manifest.json is not a manifest this project writes: table ")
    assert ".rows is str, not int" in problem
    refused = subprocess.run([BACKUP_PIPELINE, "restore", str(crafted), "--target",
                              "host=127.0.0.1 port=1 dbname=never_reached"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "not a manifest this project writes" in refused.stderr
    assert "Nothing was changed" in refused.stderr
    assert not Path(tmp_path / "never_reached").exists()
