#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the hyper-parameter search's storage test; prints its URL on stdout.
# Installs Debian's postgresql when missing (as root) and the psycopg2 driver into $PYTHON (default python3) when
# missing; everything else goes to stderr. The tests read the URL from SEGX_TEST_POSTGRES_URL:
#   SEGX_TEST_POSTGRES_URL="$(PYTHON=.venv/bin/python bash scripts/ci_postgres.sh)" && export SEGX_TEST_POSTGRES_URL
# SEGX_CI_STOP: a file to which the command stopping the server is appended (.ci/run runs it on exit).
set -euo pipefail
PYTHON=${PYTHON:-python3}

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bindir=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")
"$PYTHON" -c "import psycopg2" 2>/dev/null || "$PYTHON" -m pip install -q psycopg2-binary >&2

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
data=$(mktemp -d /tmp/segx-pg-XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$data"
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_postgres "$bindir/initdb" -D "$data/db" -U postgres --auth=trust >&2
as_postgres "$bindir/pg_ctl" -D "$data/db" -w -l "$data/server.log" -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >&2
as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres segx_search >&2
[ -z "${SEGX_CI_STOP:-}" ] || echo "$(declare -f as_postgres); as_postgres '$bindir/pg_ctl' -D '$data/db' -m fast stop >/dev/null" >>"$SEGX_CI_STOP"
echo "postgresql+psycopg2://postgres@127.0.0.1:$port/segx_search"
