#!/usr/bin/env bash
# README step 2: install what is needed, lint, then run the whole test suite against a real
# PostgreSQL the suite starts itself (or BACKUP_TEST_DSN), on BACKUP_TEST_WORKERS (2) workers,
# each with its own server and temporary folder; as root, also Chromium for the UI test, and age
# and ssh-keygen for the encryption and signing tests. Arguments go to pytest (`-n 0`: one
# process).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# The UI test looks at the Dagster UI in headless Chromium; the encryption tests open archives
# with the Debian `age` program and sign with `ssh-keygen`. Without them, those tests are skipped.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v age >/dev/null 2>&1 || missing+=(age)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
if (( ${#missing[@]} )) && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing ${missing[*]} for the UI and encryption tests (apt-get install)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || echo "test.sh: ${missing[*]} could not be installed: the tests needing them are skipped" >&2
fi
.venv/bin/ruff check backup_pipeline backup_pipeline_tests
exec .venv/bin/pytest -n "${BACKUP_TEST_WORKERS:-2}" "$@"
