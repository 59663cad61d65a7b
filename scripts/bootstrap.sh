#!/usr/bin/env bash
# Sourced by quickstart.sh and test.sh: makes a fresh machine ready, and is quick when it is.
#  - PostgreSQL server programs (initdb, pg_ctl) for the throwaway test/sample server, installed
#    with apt-get when running as root and they are missing (unless BACKUP_TEST_DSN is given);
#  - a virtualenv in .venv with this project and its test extras, reinstalled when
#    pyproject.toml changes.
set -euo pipefail

have_pg_server() {
  local bindir=""
  if command -v pg_config >/dev/null 2>&1; then bindir=$(pg_config --bindir 2>/dev/null || true); fi
  [[ -n "$bindir" && -x "$bindir/initdb" ]] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  command -v initdb >/dev/null 2>&1
}

if [[ -z "${BACKUP_TEST_DSN:-}" ]] && ! have_pg_server; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing the PostgreSQL server programs (apt-get install postgresql)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "bootstrap: PostgreSQL server programs (initdb, pg_ctl) are missing." >&2
    echo "  Install them (Debian: sudo apt-get install postgresql-15) or set BACKUP_TEST_DSN." >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))." >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.backup_pipeline_installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  echo "bootstrap: installing backup_pipeline and its dependencies into .venv"
  if ! .venv/bin/python -m pip install -e '.[test]' > .venv/install.log 2>&1; then
    tail -40 .venv/install.log >&2
    echo "bootstrap: pip install failed; the whole log is in .venv/install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
