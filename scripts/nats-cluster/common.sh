# Shared settings of the NATS cluster scripts; sourced, not run.
set -euo pipefail
NATS_DIR=${NATS_DIR:-/var/tmp/gasworks-nats}
NATS_BASE_PORT=${NATS_BASE_PORT:-4300}   # node N: client 4300+N, routes 6300+N, MQTT 1880+N, monitor 8300+N
NATS_NODES=3
client_port() { echo $(( NATS_BASE_PORT + $1 )); }
route_port() { echo $(( NATS_BASE_PORT + 2000 + $1 )); }
mqtt_port() { local p=$(( 1880 + $1 )); [ "$p" = 1883 ] && p=1884; echo "$p"; }
monitor_port() { echo $(( NATS_BASE_PORT + 4000 + $1 )); }
node_pid() { cat "$NATS_DIR/n$1/pid" 2>/dev/null || true; }
start_node() {
  local n=$1
  setsid nats-server -c "$NATS_DIR/n$n/nats.conf" >>"$NATS_DIR/n$n/nats.log" 2>&1 < /dev/null &
  echo $! > "$NATS_DIR/n$n/pid"
}
urls() { # the URLs gasworks and the meters connect with
  local nats="" mqtt=""
  for n in $(seq 1 $NATS_NODES); do nats+="nats://127.0.0.1:$(client_port "$n"),"; mqtt+="127.0.0.1:$(mqtt_port "$n"),"; done
  echo "GASWORKS_UPLINK_QUEUE_URLS=${nats%,}"
  echo "GASWORKS_MQTT_URL=mqtt://${mqtt%,}"
}
