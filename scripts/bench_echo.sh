#!/usr/bin/env bash
# The worker against the broker's ceiling, measured from outside: a throwaway nats-server on a
# free loopback port, an independent load generator (natsprobe, ../shared/tools/natsprobe) and
# its bare echo responder, and one or more `flotilla worker` binaries serving models/linear.json
# (10 features). Rounds alternate echo and each worker binary, so drifting background load hits
# all alike; every run prints natsprobe's JSON line, prefixed with what it measured and followed
# by the CPU time per answered request (user + system) of the responder (the echo
# responder's for echo rounds, the worker's for worker rounds), the broker and the load
# generator: figures that move far less with other tenants' load than throughput does.
#
#   [CEILING=REPLY_CEILING] scripts/bench_echo.sh NATSPROBE ROUNDS CONCURRENCY SECONDS PAYLOAD FLOTILLA [FLOTILLA...]
#
# With CEILING set to the `reply_ceiling` example (`cargo build --release --example
# reply_ceiling`), each round also measures it: it answers with the first worker's reply to
# PAYLOAD, headers included, and computes nothing: the ceiling for flotilla's reply rather
# than for a bare echo.
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

# One load run against SUBJECT, answered by PID: natsprobe's line, then the CPU time per
# answered request of the responder, the broker and natsprobe itself (bash's `times` in the
# subshell that ran it: its children's user and system time).
measure() {
  local pid=$1 subject=$2 before nbefore
  before=$(ticks "$pid") nbefore=$(ticks "$npid")
  (
    "$probe" --url "$url" load --subject "$subject" --payload "$payload" --concurrency "$conc" --seconds "$secs" >"$dir/line"
    times >"$dir/times"
  )
  python3 - "$(cat "$dir/line")" "$before" "$(ticks "$pid")" "$nbefore" "$(ticks "$npid")" "$(tail -1 "$dir/times")" <<'PY'
import json, os, re, sys
line, b0, b1, n0, n1, client = sys.argv[1:]
d = json.loads(line)
n = max(d["ok"] + d["error_replies"], 1)
hz = os.sysconf("SC_CLK_TCK")
secs = sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", client))
print(line, "cpu_us_per_req %.2f broker_us_per_req %.2f client_us_per_req %.2f" % (
    (int(b1) - int(b0)) / hz * 1e6 / n, (int(n1) - int(n0)) / hz * 1e6 / n, secs * 1e6 / n))
PY
}

if [ -n "${CEILING:-}" ]; then
  "${binaries[0]}" worker --nats "$url" --metrics-addr "" --model "lin=$root/models/linear.json" >/dev/null 2>&1 &
  wpid=$!
  wait_for_answer flotilla.predict.lin "$payload"
  "$CEILING" --nats "$url" --subject bench.ceiling --learn flotilla.predict.lin --request "$payload" &
  ceiling_pid=$!
  pids+=($ceiling_pid)
  wait_for_answer bench.ceiling "$payload"
  kill -TERM "$wpid"; wait "$wpid" 2>/dev/null || true
fi

for round in $(seq "$rounds"); do
  echo "# round $round" >&2
  printf 'echo '
  measure "$echo_pid" bench.echo
  if [ -n "${CEILING:-}" ]; then
    printf 'ceiling '
    measure "$ceiling_pid" bench.ceiling
  fi
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
