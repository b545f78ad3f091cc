#!/usr/bin/env bash
# A CPU profile of one worker under load, taken from outside as in ../shared/measurements: a
# throwaway nats-server on a free loopback port, the independent load generator natsprobe
# (../shared/tools/natsprobe) sending PAYLOAD at CONCURRENCY, and `perf record -g` on the worker
# for the middle SECONDS of the load. Writes OUT.txt (self time by symbol, top 60) and OUT.svg
# (a flame graph; needs inferno: `cargo install inferno`).
#
#   scripts/profile_worker.sh NATSPROBE FLOTILLA PAYLOAD CONCURRENCY SECONDS OUT [MODEL]
#
# e.g. scripts/profile_worker.sh /tmp/np/release/natsprobe target/release/flotilla /tmp/one.json 64 6 docs/profiles/worker-1row-json
# MODEL defaults to models/linear.json; requests go to flotilla.predict.lin.
set -euo pipefail
probe=$1 flotilla=$2 payload=$3 conc=$4 secs=$5 out=$6
source "$(dirname "$0")/bench_lib.sh"
model=${7:-$root/models/linear.json}
"$flotilla" worker --nats "$url" --metrics-addr "" --model "lin=$model" >/dev/null 2>&1 &
wpid=$!
pids+=($wpid)
wait_for_answer flotilla.predict.lin "$payload"
total=$(python3 -c "print($secs * 2)")
"$probe" --url "$url" load --subject flotilla.predict.lin --payload "$payload" --concurrency "$conc" --seconds "$total" >"$dir/load.json" &
lpid=$!
sleep "$(python3 -c "print($secs / 2)")"
perf record -F 999 -g -p "$wpid" -o "$dir/perf.data" -- sleep "$secs" 2>/dev/null
wait "$lpid"
echo "load during the profile: $(cat "$dir/load.json")"
mkdir -p "$(dirname "$out")"
{
  echo "# perf record -F 999 -g on the worker for ${secs}s; load: $(cat "$dir/load.json")"
  perf report -i "$dir/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | sed -e 's/ *-  *- *$//' -n -e '1,60p'
} >"$out.txt"
perf script -i "$dir/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
  --title "flotilla worker: $(basename "$payload"), concurrency $conc" >"$out.svg"
echo "wrote $out.txt and $out.svg"
