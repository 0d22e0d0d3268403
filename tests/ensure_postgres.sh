#!/usr/bin/env bash
# The store tests start their own throwaway PostgreSQL server (tests/pg.py);
# they need the server binaries. Installs Debian's postgresql when missing.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "postgres: installing Debian's postgresql (server binaries for the store tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  exit 0
fi
echo "postgres: the store tests need PostgreSQL server binaries (initdb, pg_ctl); install postgresql" >&2
exit 1
