#!/usr/bin/env bash
# README step 2: install what is needed, lint, then run the whole test suite against a real
# PostgreSQL the suite starts itself (or BACKUP_TEST_DSN), on BACKUP_TEST_WORKERS (2) workers,
# each with its own server and temporary folder; as root, also Chromium for the UI test. Arguments
# go to pytest (`-n 0`: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# The UI test looks at the Dagster UI in headless Chromium; without it, that test is skipped.
if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing chromium for the UI test (apt-get install chromium)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "test.sh: chromium could not be installed: the UI test will be skipped" >&2
fi
.venv/bin/ruff check backup_pipeline backup_pipeline_tests
exec .venv/bin/pytest -n "${BACKUP_TEST_WORKERS:-2}" "$@"
