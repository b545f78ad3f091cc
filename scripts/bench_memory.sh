#!/usr/bin/env bash
# A worker's memory: its RSS idle with the example models loaded, then after SECONDS of
# closed-loop load from natsprobe (../shared/tools/natsprobe) at CONCURRENCY, for each
# flotilla binary in turn. The load alternates 1-row JSON requests to the linear model and
# 256-row binary requests to the 64-256-256-10 MLP (each for a tenth of SECONDS), so both
# the small-message path and the large-batch path have run. Prints one line per binary.
#
#   scripts/bench_memory.sh NATSPROBE SECONDS CONCURRENCY FLOTILLA [FLOTILLA...]
#
# e.g. scripts/bench_memory.sh /tmp/np/release/natsprobe 60 64 target/release/flotilla
set -euo pipefail
probe=$1 secs=$2 conc=$3
shift 3
source "$(dirname "$0")/bench_lib.sh"
echo '{"x": [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0]}' >"$dir/one.json"
python3 "$root/scripts/make_bench_mlp.py" "$dir"
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
for bin in "$@"; do
  "$bin" worker --nats "$url" --metrics-addr "" --model "lin=$root/models/linear.json" \
    --model "mlp=$dir/mlp-64-256-256-10.json" --model "iris=$root/models/iris.json" >/dev/null 2>&1 &
  wpid=$!
  wait_for_answer flotilla.predict.lin "$dir/one.json"
  sleep 2
  idle=$(kb "$wpid" VmRSS)
  slice=$(python3 -c "print($secs / 10)")
  ok=0
  for i in $(seq 5); do
    a=$("$probe" --url "$url" load --subject flotilla.predict.lin --payload "$dir/one.json" --concurrency "$conc" --seconds "$slice")
    b=$("$probe" --url "$url" load --subject flotilla.predict.mlp --payload "$dir/mlp-256rows.msgpack" --header Content-Type:application/msgpack --concurrency "$conc" --seconds "$slice")
    ok=$((ok + $(python3 -c "import json,sys; print(sum(json.loads(l)['ok'] for l in sys.argv[1:]))" "$a" "$b")))
  done
  sleep 1
  echo "$bin: idle VmRSS ${idle} kB; after ${secs}s of load (${ok} replies): VmRSS $(kb "$wpid" VmRSS) kB, VmHWM $(kb "$wpid" VmHWM) kB"
  kill -TERM "$wpid"
  wait "$wpid" 2>/dev/null || true
done
