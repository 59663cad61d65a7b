#!/usr/bin/env bash
# README step 2: install what is needed, lint, then run the whole test suite against a real
# PostgreSQL the suite starts itself (or BACKUP_TEST_DSN), on BACKUP_TEST_WORKERS (2) workers,
# each with its own server and temporary folder. Arguments go to pytest (`-n 0`: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
.venv/bin/ruff check backup_pipeline backup_pipeline_tests
exec .venv/bin/pytest -n "${BACKUP_TEST_WORKERS:-2}" "$@"
