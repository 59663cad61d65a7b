#!/bin/sh
# Run once by the postgres image on a new data directory: the Dagster instance's own database.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${DAGSTER_PG_DB:-dagster}\""
