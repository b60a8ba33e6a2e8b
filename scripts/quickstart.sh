#!/usr/bin/env bash
# quickstart.sh: everything pipewatch does, on this machine, in one command.
#
# Builds pipewatch, starts a local Kafka-compatible broker (Tansu, installed if missing, on
# 127.0.0.1:$PORT), creates the topics, starts `pipewatch run` and the simulator producing
# realistic events (two days of history with one fault of each kind, at $RATE events/s,
# then fault-free live events in real time), and prints alerts as they arrive. The dashboard,
# metrics, health checks and the API are on http://127.0.0.1:$HTTP_PORT. Where Debian's
# python3-aiosmtpd is installed, a local SMTP catcher receives the alert email too. Ctrl-C
# stops everything it started. Files (config, logs, alerts, mail, fault labels) are kept in the directory it prints.
#
#   PORT=19092 HTTP_PORT=9898 ./scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-19092}
RATE=${RATE:-10000}
HTTP_PORT=${HTTP_PORT:-9898}
SMTP_PORT=${SMTP_PORT:-2525}
work=$(mktemp -d -t pipewatch-quickstart.XXXXXX)
pids=()

cleanup() {
  trap - EXIT
  # A second Ctrl-C, or timeout(1) (which signals the script, then its whole group), must
  # not cut the stop short and leave what it started running: the stop is bounded anyway
  # (pipewatch gives up its last commit after kafka.shutdown_timeout at the latest).
  trap '' INT TERM
  echo
  echo "== stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/broker.sh stop "$PORT" || true
  echo "files kept in $work"
}
trap cleanup EXIT INT TERM

echo "== building pipewatch (release; the first build takes a few minutes)"
cargo build --release --quiet
pw=target/release/pipewatch

echo "== starting the broker"
scripts/broker.sh start "$PORT"
scripts/broker.sh topic "$PORT" pipeline-events 4
scripts/broker.sh topic "$PORT" pipeline-alerts 1
scripts/broker.sh topic "$PORT" pipeline-events-dlq 1

email_config=""
mkdir -p "$work/mail"
if /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "== starting an SMTP catcher on 127.0.0.1:$SMTP_PORT (mail lands in $work/mail)"
  /usr/bin/python3 -B tests/smtp_sink.py "$SMTP_PORT" "$work/mail" >/dev/null 2>"$work/smtp.log" &
  pids+=($!)
  email_config="[email]
enabled = true
smtp_port = $SMTP_PORT
to = [\"oncall@example.com\"]"
fi

cat >"$work/pipewatch.toml" <<TOML
[http]
listen = "127.0.0.1:$HTTP_PORT"

[alerts]
dashboard_url = "http://127.0.0.1:$HTTP_PORT"

$email_config

[kafka]
brokers = "127.0.0.1:$PORT"
group_id = "pipewatch-quickstart"
# Ctrl-C stops the broker too, so the last commit may get no answer: pipewatch waits at
# most two thirds of this for it. A local broker answers in milliseconds.
shutdown_timeout = "6s"

[kafka.properties]
# Tansu delays a group join by half the session timeout: keep it short locally.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
TOML

echo "== starting pipewatch (log: $work/pipewatch.log)"
"$pw" --config "$work/pipewatch.toml" run --alerts-out "$work/alerts.ndjson" \
  >/dev/null 2>"$work/pipewatch.log" &
pids+=($!)

echo "== starting the simulator: 4 pipelines, 16 stages"
echo "   two days of history with one fault of each kind, at $RATE events/s (faults listed in"
echo "   $work/faults.ndjson), then fault-free live events, in real time"
# One simulation, so that live events carry on the very runs the history leaves in flight:
# two (history, then live from `now`) would leave a seam where every stage's throughput
# seems to fall and runs cut in half look stuck, a burst of false alerts.
"$pw" --config "$work/pipewatch.toml" simulate --kafka --start now-2d --duration 3d \
  --faults-within 2d --rate "$RATE" --realtime --labels "$work/faults.ndjson" \
  2>"$work/simulate.log" &
pids+=($!)

cat <<INFO

Alerts appear below as pipewatch sends them to the topic pipeline-alerts; invalid events go
to pipeline-events-dlq. Also look at:
  http://127.0.0.1:$HTTP_PORT/                   the dashboard: stages, alerts, charts, live
  http://127.0.0.1:$HTTP_PORT/api/v1/stages      every stage and its health (JSON)
  http://127.0.0.1:$HTTP_PORT/api/v1/alerts      alerts firing now (?state=recent: latest)
  http://127.0.0.1:$HTTP_PORT/metrics            Prometheus metrics, per-stage gauges included
  http://127.0.0.1:$HTTP_PORT/readyz             ready once connected with partitions assigned
  $work/alerts.ndjson    every alert, as JSON (the alert topic's content)
  $work/mail/            alert email received by the local SMTP catcher (when aiosmtpd is there)
  $work/pipewatch.log    what pipewatch is doing (partitions, warm-up, commits)
Press Ctrl-C to stop.

INFO
touch "$work/alerts.ndjson"
tail -n +1 -F "$work/alerts.ndjson" 2>/dev/null | python3 -u -c '
import json, sys
for line in sys.stdin:
    try:
        a = json.loads(line)
    except ValueError:
        continue
    mark = "FIRING  " if a["status"] == "firing" else "resolved"
    when, severity, kind, summary = a["bucket_end"], a["severity"], a["kind"], a["summary"]
    print(f"{when}  {mark} {severity:<8} {kind:<16} {summary}", flush=True)
' &
pids+=($!)
wait "${pids[0]}"
