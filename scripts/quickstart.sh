#!/usr/bin/env bash
# README step 1: install what is needed, then run a real backup end to end on a throwaway
# sample PostgreSQL. Arguments go to `backup-pipeline quickstart` (--scale, --dir, --keep-server).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec .venv/bin/backup-pipeline quickstart "$@"
