#!/usr/bin/env bash
# Served GFLOP/s of a dense 64-256-256-10 MLP (43.25 MFLOP per 256-row request) over NATS,
# and where every CPU-microsecond of a request goes. A throwaway nats-server on a free
# loopback port, natsprobe (../shared/tools/natsprobe) sending the 256-row binary f32 tensor
# request of scripts/make_bench_mlp.py, one `flotilla worker` serving the MLP. Alternating
# with each worker round, natsprobe's echo responder answers the same body, which measures
# what the broker and the client cost with no model at all. Each line gives throughput,
# latency, GFLOP/s (worker rounds) and the cores used by responder, broker and client.
#
#   scripts/bench_served_mlp.sh NATSPROBE FLOTILLA ROUNDS SECONDS CONCURRENCY [CONCURRENCY...]
#
# e.g. scripts/bench_served_mlp.sh /tmp/np/release/natsprobe target/release/flotilla 3 6 1 4 16
set -euo pipefail
probe=$1 flotilla=$2 rounds=$3 secs=$4
shift 4
source "$(dirname "$0")/bench_lib.sh"
python3 "$root/scripts/make_bench_mlp.py" "$dir"
body="$dir/mlp-256rows.msgpack"
"$probe" --url "$url" echo --subject bench.echo &
epid=$!
pids+=($epid)
"$flotilla" worker --nats "$url" --metrics-addr "" --model "mlp=$dir/mlp-64-256-256-10.json" >/dev/null 2>&1 &
wpid=$!
pids+=($wpid)
wait_for_answer flotilla.predict.mlp "$body"

# run LABEL SUBJECT RESPONDER_PID CONCURRENCY
run() {
  local label=$1 subject=$2 rpid=$3 conc=$4
  "$probe" --url "$url" load --subject "$subject" --payload "$body" --header Content-Type:application/msgpack \
    --concurrency "$conc" --seconds "$secs" >"$dir/load.json" &
  local lpid=$!
  sleep 0.3
  local r0 n0 l0 t0 r1 n1 l1 t1
  r0=$(ticks "$rpid") n0=$(ticks "$npid") l0=$(ticks "$lpid") t0=$(date +%s.%N)
  sleep "$(python3 -c "print($secs - 0.8)")"
  r1=$(ticks "$rpid") n1=$(ticks "$npid") l1=$(ticks "$lpid") t1=$(date +%s.%N)
  wait "$lpid"
  python3 - "$label" "$conc" "$(cat "$dir/load.json")" "$r0" "$r1" "$n0" "$n1" "$l0" "$l1" "$t0" "$t1" <<'PY'
import json, os, sys
label, conc, line = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r0, r1, n0, n1, l0, l1 = (int(x) for x in sys.argv[4:10])
span = float(sys.argv[11]) - float(sys.argv[10])
hz = os.sysconf("SC_CLK_TCK")
cores = lambda a, b: (b - a) / hz / span
rps = line["rps"]
us = lambda a, b: cores(a, b) * 1e6 / rps
gflops = rps * 43.25e6 / 1e9 if label == "worker" else 0
print(f"{label:6} conc {conc:>3}: {rps:7.0f} req/s  p50 {line['p50_us']:>6} us  p99 {line['p99_us']:>6} us  "
      f"{gflops:5.1f} GFLOP/s  errors {line['error_replies'] + line['transport_errors']}  |  "
      f"cores: responder {cores(r0, r1):.2f} broker {cores(n0, n1):.2f} client {cores(l0, l1):.2f}  |  "
      f"CPU us/req: responder {us(r0, r1):.0f} broker {us(n0, n1):.0f} client {us(l0, l1):.0f}")
PY
}

for round in $(seq "$rounds"); do
  echo "# round $round" >&2
  for conc in "$@"; do
    run echo bench.echo "$epid" "$conc"
    run worker flotilla.predict.mlp "$wpid" "$conc"
  done
done
