#!/usr/bin/env bash
# The worker against the broker's ceiling, measured from outside: a throwaway nats-server on a
# free loopback port, an independent load generator (natsprobe, ../shared/tools/natsprobe) and
# its bare echo responder, and one or more `flotilla worker` binaries serving models/linear.json
# (10 features). Rounds alternate echo and each worker binary, so drifting background load hits
# all alike; every run prints natsprobe's JSON line, prefixed with what it measured and followed
# by the responder's CPU time per answered request (user + system, from /proc; the echo
# responder's for echo rounds, the worker's for worker rounds): a figure that moves far less
# with other tenants' load than throughput does.
#
#   scripts/bench_echo.sh NATSPROBE ROUNDS CONCURRENCY SECONDS PAYLOAD FLOTILLA [FLOTILLA...]
#
# e.g. scripts/bench_echo.sh /tmp/np/release/natsprobe 5 64 5 one.json target/release/flotilla
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
probe=$1 rounds=$2 conc=$3 secs=$4 payload=$5
shift 5
binaries=("$@")
source "$(dirname "$0")/bench_lib.sh"
"$probe" --url "$url" echo --subject bench.echo &
echo_pid=$!
pids+=($echo_pid)

# One load run against SUBJECT, answered by PID: natsprobe's line, then " cpu_us_per_req N".
measure() {
  local pid=$1 subject=$2 before line
  before=$(ticks "$pid")
  line=$("$probe" --url "$url" load --subject "$subject" --payload "$payload" --concurrency "$conc" --seconds "$secs")
  python3 -c "import json,os,sys; d=json.loads(sys.argv[1]); t=(int(sys.argv[3])-int(sys.argv[2]))/os.sysconf('SC_CLK_TCK'); print(sys.argv[1], 'cpu_us_per_req %.2f' % (t*1e6/max(d['ok']+d['error_replies'],1)))" "$line" "$before" "$(ticks "$pid")"
}

for round in $(seq "$rounds"); do
  echo "# round $round" >&2
  printf 'echo '
  measure "$echo_pid" bench.echo
  for i in "${!binaries[@]}"; do
    bin=${binaries[$i]}
    "$bin" worker --nats "$url" --metrics-addr "" --model "lin=$root/models/linear.json" >/dev/null 2>&1 &
    wpid=$!
    wait_for_answer flotilla.predict.lin "$payload"
    printf 'worker%s ' "$i"
    measure "$wpid" flotilla.predict.lin
    kill -TERM "$wpid"; wait "$wpid" 2>/dev/null || true
  done
done
