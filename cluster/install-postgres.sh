#!/usr/bin/env bash
# Install the PostgreSQL server that `yunkai bench --peer postgres` compares yunkai with.
# Idempotent: does nothing when a server is already there. Debian/Ubuntu (apt-get); run as
# root or with sudo. The bench runs its own throwaway cluster (initdb + pg_ctl in a temporary
# directory, on a loopback port), so the package's own cluster is not needed or used.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" > /dev/null; then
  echo "PostgreSQL is installed: $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install-postgres.sh: no apt-get here; install the PostgreSQL server (initdb, pg_ctl) yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends postgresql
echo "PostgreSQL is installed: $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
