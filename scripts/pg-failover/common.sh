# Shared settings of the pg_auto_failover scripts; sourced, not run.
set -euo pipefail
PGAF_DIR=${PGAF_DIR:-/var/tmp/gasworks-pgaf}
PGAF_MONITOR_PORT=${PGAF_MONITOR_PORT:-6000}
PGAF_NODE_PORTS=(${PGAF_NODE_PORTS:-6001 6002})
PGAF_DBNAME=${PGAF_DBNAME:-gasworks}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -n 1)/bin}
MONITOR_URI="postgres://autoctl_node@127.0.0.1:${PGAF_MONITOR_PORT}/pg_auto_failover?sslmode=disable"

as_postgres() { runuser -u postgres -- env PATH="$PG_BIN:$PATH" XDG_CONFIG_HOME="$PGAF_DIR/config" XDG_DATA_HOME="$PGAF_DIR/data" "$@"; }
node_dir() { echo "$PGAF_DIR/node$1"; }
# The formation's state as the monitor sees it: "node_1 6001 primary" lines.
node_states() {
  as_postgres psql -X -At -h 127.0.0.1 -p "$PGAF_MONITOR_PORT" -d pg_auto_failover -U autoctl_node \
    -c "select nodename, nodeport, reportedstate from pgautofailover.node order by nodeid" 2>/dev/null | tr '|' ' '
}
primary_port() { node_states | awk '$3 == "primary" || $3 == "wait_primary" || $3 == "single" {print $2; exit}'; }
multi_host_url() {
  local hosts=""; for port in "${PGAF_NODE_PORTS[@]}"; do hosts+="127.0.0.1:${port},"; done
  echo "postgres://postgres@${hosts%,}/${PGAF_DBNAME}?target_session_attrs=read-write&connect_timeout=2"
}
# Start one node's pg_autoctl (and through it, its postgres) in a session of its own, so that
# kill-primary can SIGKILL the whole process group as a dead machine would lose it.
start_node() {
  local n=$1 port=${PGAF_NODE_PORTS[$(( $1 - 1 ))]} dir; dir=$(node_dir "$1")
  if [ -f "$dir/pgdata/PG_VERSION" ]; then
    as_postgres setsid pg_autoctl run --pgdata "$dir/pgdata" >>"$dir/pg_autoctl.log" 2>&1 < /dev/null &
  else
    as_postgres setsid pg_autoctl create postgres --pgdata "$dir/pgdata" --pgport "$port" --pgctl "$PG_BIN/pg_ctl" \
      --hostname 127.0.0.1 --name "node_$n" --auth trust --no-ssl --dbname "$PGAF_DBNAME" \
      --monitor "$MONITOR_URI" --run >>"$dir/pg_autoctl.log" 2>&1 < /dev/null &
  fi
}
# The process group of the pg_autoctl that runs a data directory (its session leader, made by setsid).
group_of() { pgrep -o -f "^pg_autoctl (create [a-z]+|run) .*--pgdata $1/pgdata" || true; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 "$seconds"); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 1; done
  echo "gave up after ${seconds}s waiting for: $what" >&2; return 1
}
