#!/usr/bin/env bash
# HTTP through `flotilla gateway` vs the same request over NATS directly, and the gateway's
# classic /predict vs the Flask seed (scripts/seed_flask.py), all at one concurrency, in
# alternating rounds on one machine. Prints one line per measurement and the medians.
#
#   cargo build --release
#   (cd ../shared/tools/natsprobe && cargo build --release)   # or NATSPROBE=path/to/natsprobe
#   bash scripts/venv.sh
#   bash scripts/bench_gateway.sh            # ROUNDS=3 SECONDS_PER_RUN=10 CONCURRENCY=64
#
# Everything listens on 127.0.0.1 only: its own nats-server (scripts/bench_lib.sh: a port it
# picks), one worker serving models/linear.json, one gateway (8099) and the Flask app (5099).
# Needs nats-server and wrk.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${ROUNDS:-3}"
seconds="${SECONDS_PER_RUN:-10}"
concurrency="${CONCURRENCY:-64}"
wrk_threads="${WRK_THREADS:-2}"
flotilla="${FLOTILLA:-target/release/flotilla}"
natsprobe="${NATSPROBE:-natsprobe}"
python="${FLOTILLA_VENV:-.venv}/bin/python"
gateway="http://127.0.0.1:8099"
flask="http://127.0.0.1:5099"

for tool in nats-server wrk curl "$flotilla" "$natsprobe" "$python"; do
    command -v "$tool" >/dev/null || { echo "bench_gateway.sh: $tool not found" >&2; exit 1; }
done

source scripts/bench_lib.sh
"$flotilla" worker --nats "$url" --model linear=models/linear.json --metrics-addr "" \
    >"$dir/worker.log" 2>&1 & pids+=($!)
"$flotilla" gateway --nats "$url" --http 127.0.0.1:8099 --default-model linear --metrics-addr "" \
    >"$dir/gateway.log" 2>&1 & pids+=($!)
"$python" scripts/seed_flask.py --model models/linear.json --port 5099 >"$dir/flask.log" 2>&1 & pids+=($!)

row="[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]"
printf '{"inputs": [%s]}' "$row" >"$dir/inputs.json"
printf '{"x": %s}' "$row" >"$dir/x.json"

wait_for() { # URL BODY
    for _ in $(seq 200); do
        if curl -sf -X POST -H 'Content-Type: application/json' --data-binary "@$2" "$1" >/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench_gateway.sh: $1 never answered" >&2; exit 1
}
wait_for "$gateway/models/linear/predict" "$dir/inputs.json"
wait_for "$gateway/predict" "$dir/x.json"
wait_for "$flask/predict" "$dir/x.json"

# One measurement: prints "<req/s> <p99 ms> <errors>".
nats_run() {
    # The headers the gateway sends with this request, so both paths carry the same message.
    "$natsprobe" --url "$url" load --subject flotilla.predict.linear --payload "$dir/inputs.json" \
        --header Content-Type:application/json --header Flotilla-Timeout-Ms:5000 \
        --concurrency "$concurrency" --seconds "$seconds" |
        "$python" -c 'import json,sys; r=json.loads(sys.stdin.readline()); print(round(r["rps"]), round(r["p99_us"]/1000, 2), r["error_replies"]+r["transport_errors"])'
}
http_run() { # URL BODY
    WRK_BODY="$2" wrk -t"$wrk_threads" -c"$concurrency" -d"${seconds}s" --latency -s scripts/wrk_post.lua "$1" |
        awk '
            /Requests\/sec/ { rps = $2 }
            /^ +99%/ { v = $2; if (v ~ /us$/) p = v / 1000; else if (v ~ /ms$/) p = v + 0; else p = v * 1000 }
            /Non-2xx/ { bad += $NF } /Socket errors/ { bad += 1 }
            END { printf "%d %.2f %d\n", rps, p, bad }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "round kind req/s p99_ms errors"
for round in $(seq "$rounds"); do
    echo "$round nats $(nats_run)" | tee -a "$dir/results"
    echo "$round http $(http_run "$gateway/models/linear/predict" "$dir/inputs.json")" | tee -a "$dir/results"
    echo "$round gateway_predict $(http_run "$gateway/predict" "$dir/x.json")" | tee -a "$dir/results"
    echo "$round flask $(http_run "$flask/predict" "$dir/x.json")" | tee -a "$dir/results"
done
for kind in nats http gateway_predict flask; do
    rps="$(awk -v k="$kind" '$2 == k { print $3 }' "$dir/results" | median)"
    p99="$(awk -v k="$kind" '$2 == k { print $4 }' "$dir/results" | median)"
    echo "median $kind $rps req/s, p99 $p99 ms"
    eval "median_$kind=$rps"
done
awk -v h="$median_http" -v n="$median_nats" -v g="$median_gateway_predict" -v f="$median_flask" 'BEGIN {
    printf "ratio HTTP via gateway / NATS direct: %.2f\n", h / n
    printf "ratio gateway /predict / Flask /predict: %.1f\n", g / f }'
