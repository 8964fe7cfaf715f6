#!/usr/bin/env bash
# Installs (from Debian's packages), starts and prepares the PostgreSQL
# server the audit store's tests run against, then prints the line that
# points the tests at it:
#
#   eval "$(bash services/audit/ci/postgres.sh)"
#
# Idempotent: safe to run when PostgreSQL is already installed or running.
# Runs as root. Everything but the final export goes to stderr.
set -euo pipefail
exec 3>&1 1>&2

if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
	# Output to a file: a server the package may start must not hold ours.
	log=/tmp/ansflow-postgres-install.log
	if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } </dev/null >"$log" 2>&1 3>&-; then
		cat "$log"
		exit 1
	fi
fi
version=$(ls /etc/postgresql | sort -V | tail -n1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {found=1} END {exit !found}'; then
	pg_createcluster "$version" main
fi
# The server must not inherit this script's output: whoever reads it (CI's
# log, a command substitution) would wait for the server to exit.
pg_ctlcluster "$version" main start </dev/null >/dev/null 2>&1 3>&- || true # exits 2 when already running
for _ in $(seq 60); do
	pg_isready -q -h 127.0.0.1 -p 5432 && break
	sleep 0.5
done
pg_isready -h 127.0.0.1 -p 5432

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtA $*"; }
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = 'ansflow'\"")" != 1 ]; then
	psql_admin "-c \"CREATE ROLE ansflow LOGIN PASSWORD 'ansflow'\""
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = 'ansflow_test'\"")" != 1 ]; then
	psql_admin "-c \"CREATE DATABASE ansflow_test OWNER ansflow\""
fi

echo "export ANSFLOW_TEST_POSTGRES_DSN='postgres://ansflow:ansflow@127.0.0.1:5432/ansflow_test?sslmode=disable'" >&3
