#!/usr/bin/env bash
# Served text embeddings against PyTorch on this machine, in one run: a flotilla worker (release
# build) serving all-MiniLM-L6-v2 over a throwaway local nats-server, driven by
# `flotilla bench --payload`, alternating round by round with sentence-transformers on PyTorch
# CPU (scripts/bench_embeddings.py) in the same scenarios. Prints, per scenario, texts/s and
# p50/p99 (medians over rounds) and the ratios flotilla/torch; then the worker's memory
# (VmRSS/VmHWM from /proc) after loading, idle after the rounds, and after SOAK_SECONDS of load.
#
#   scripts/fetch_minilm.sh
#   scripts/bench_served_text.sh [ROUNDS]          # default 3 rounds
#
# Scenarios, the same names on both sides (each closed loop, SECONDS_PER_SCENARIO seconds):
#   single        concurrency 1, one short sentence per request / encode([text])
#   batchB        concurrency 1, B texts per request / encode(B texts)
#   concurrentN   N requests in flight, one sentence each / N threads each encode([text])
#   batchBxN      N requests in flight, B texts each / N threads each encode(B texts)
# texts/s = requests/s x texts per request; latency is per request (per call for torch).
# Flotilla's single-text requests are {"x": "I love pasta with tomato sauce."} (9 tokens with
# [CLS]/[SEP]); batches are {"inputs": [...]} of the 16 sentences torch cycles through (8.9
# tokens on average), so both sides encode the same texts.
#
# For every flotilla run the script also reads the worker's /metrics before and after it
# (flotilla_batch_rows, flotilla_queue_duration_seconds, flotilla_compute_duration_seconds: mean
# rows per batch, mean queue wait, mean compute per batch) and /proc (CPU seconds of the worker,
# of nats-server and of the load generator per wall second; other_cpu_pct, the machine's CPU
# that none of them used, as bench_embeddings.py reports it for torch).
#
# Environment: SCENARIOS (default single,batch32,concurrent16,concurrent64,batch32x4),
# SECONDS_PER_SCENARIO (default 10), THREADS (torch threads and the worker's compute_threads,
# default 2), SOAK_SECONDS (default 60; 0 skips the soak), TORCH_PYTHON (default
# /work/venvs/st/bin/python, a venv from scripts/requirements-bench.txt), MODEL (default
# models/minilm), FLOTILLA (default target/release/flotilla, built with
# `cargo build --release --locked` if missing), OUT (the JSON lines, default a temporary file).
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-3}"
SCENARIOS="${SCENARIOS:-single,batch32,concurrent16,concurrent64,batch32x4}"
SECS="${SECONDS_PER_SCENARIO:-10}"
THREADS="${THREADS:-2}"
SOAK="${SOAK_SECONDS:-60}"
TORCH_PYTHON="${TORCH_PYTHON:-/work/venvs/st/bin/python}"
MODEL="${MODEL:-$ROOT/models/minilm}"
FLOTILLA="${FLOTILLA:-$ROOT/target/release/flotilla}"
OUT="${OUT:-$(mktemp -t served-text.XXXXXX.jsonl)}"

cd "$ROOT"
[[ -x "$TORCH_PYTHON" ]] || { echo "no $TORCH_PYTHON (see scripts/requirements-bench.txt)" >&2; exit 1; }
[[ -s "$MODEL/model.safetensors" ]] || { echo "no $MODEL/model.safetensors; run scripts/fetch_minilm.sh" >&2; exit 1; }
[[ -x "$FLOTILLA" ]] || cargo build --release --locked -q
command -v nats-server >/dev/null || { echo "nats-server is not on PATH" >&2; exit 1; }

source "$ROOT/scripts/bench_lib.sh"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mport=$(free_port)
metrics="http://127.0.0.1:$mport"
FLOTILLA_COMPUTE_THREADS="$THREADS" "$FLOTILLA" worker --nats "$url" --metrics-addr "127.0.0.1:$mport" \
  --model "minilm=$MODEL" >"$dir/worker.log" 2>&1 &
worker_pid=$!
pids+=("$worker_pid")
for _ in $(seq 600); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "$metrics/readyz" || true)" == 200 ]] && break
  kill -0 "$worker_pid" 2>/dev/null || { cat "$dir/worker.log" >&2; exit 1; }
  sleep 0.1
done

# VmRSS and VmHWM of the worker, in MB, as a JSON line tagged with when it was read.
memory() {
  awk -v when="$1" '/^VmRSS|^VmHWM/ { kb[$1] = $2 }
    END { printf "{\"engine\":\"flotilla\",\"memory\":\"%s\",\"rss_mb\":%.1f,\"hwm_mb\":%.1f}\n",
          when, kb["VmRSS:"] / 1024, kb["VmHWM:"] / 1024 }' "/proc/$worker_pid/status" >>"$OUT"
}
memory loaded

# One flotilla run: bench --json on a payload, plus the worker's metrics and CPU around it.
flotilla_run() { # SCENARIO ROUND SECONDS
  python3 - "$1" "$2" "$3" "$FLOTILLA" "$url" "$metrics" "$worker_pid" "$npid" "$dir" "$THREADS" >>"$OUT" <<'PY'
import json, os, re, subprocess, sys, urllib.request
scenario, rnd, secs, flotilla, url, metrics, worker, nats, tmp, threads = sys.argv[1:]
SENTENCES = [  # scripts/bench_embeddings.py's, in its order
    "The cat sits outside.", "A man is playing guitar.", "The new movie is awesome.",
    "I love pasta with tomato sauce.", "Do you like pizza?", "The weather is lovely today.",
    "He drove his car to the station.", "She is reading a book in the garden.",
    "Stock markets fell sharply this morning.", "A woman is slicing an onion.",
    "Two dogs are running through a field.", "The server answered every request in time.",
    "Please send me the report by Friday.", "Rust makes systems programming safer.",
    "The train was delayed by ten minutes.", "Children are playing in the park.",
]
m = re.fullmatch(r"single|batch(\d+)|concurrent(\d+)|batch(\d+)x(\d+)", scenario)
if not m:
    sys.exit(f"bench_served_text: unknown scenario {scenario!r}")
batch = int(m[1] or m[3] or 1)
conc = int(m[2] or m[4] or 1)
body = ({"x": SENTENCES[3]} if batch == 1
        else {"inputs": [SENTENCES[k % len(SENTENCES)] for k in range(batch)]})
payload = os.path.join(tmp, f"{scenario}.json")
with open(payload, "w") as f:
    json.dump(body, f)

def scrape():
    text = urllib.request.urlopen(metrics + "/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("flotilla_batch_rows_bucket{") and 'model="minilm"' in line:
            out["bucket", line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        for name in ("batch_rows", "queue_duration_seconds", "compute_duration_seconds"):
            for part in ("sum", "count"):
                if line.startswith(f"flotilla_{name}_{part}{{") and 'model="minilm"' in line:
                    out[name, part] = float(line.rsplit(" ", 1)[1])
    return out

def cpu_of(pid):  # utime + stime of a process, seconds
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def machine():  # (busy, total) seconds of the whole machine
    fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / tick, sum(fields[:8]) / tick

before = scrape()
w0, n0, (b0, t0) = cpu_of(worker), cpu_of(nats), machine()
c0 = os.times().children_user + os.times().children_system
run = subprocess.run(
    [flotilla, "bench", "--nats", url, "--model", "minilm", "--payload", payload,
     "--concurrency", str(conc), "--duration", secs, "--json"],
    capture_output=True, text=True)
c1 = os.times().children_user + os.times().children_system
w1, n1, (b1, t1) = cpu_of(worker), cpu_of(nats), machine()
after = scrape()
if run.returncode != 0 and not run.stdout.strip():
    sys.exit(f"flotilla bench failed: {run.stderr}")
r = json.loads(run.stdout.strip().splitlines()[-1])
wall = t1 - t0  # machine CPU seconds over the run (2 cores: twice the wall time)
cores = os.cpu_count()
delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
batches = delta.get(("batch_rows", "count"), 0)
mean = lambda name: delta.get((name, "sum"), 0) / max(1, delta.get((name, "count"), 0))
ours = (w1 - w0) + (n1 - n0) + (c1 - c0)
# Batches by rows (Prometheus buckets are cumulative: undo that), e.g. {"<=8": 3, "<=16": 40}.
les = sorted((k[1] for k in delta if k[0] == "bucket" and k[1] != "+Inf"), key=float)
hist, below = {}, 0
for le in les:
    n = delta["bucket", le] - below
    below = delta["bucket", le]
    if n:
        hist[f"<={le}"] = int(n)
print(json.dumps({
    "engine": "flotilla", "round": int(rnd), "scenario": scenario, "concurrency": conc,
    "batch": batch, "requests": r["ok"], "errors": r["errors"], "seconds": round(r["seconds"], 3),
    "texts_per_s": round(r["requests_per_sec"] * batch, 1),
    "calls_per_s": round(r["requests_per_sec"], 1),
    "p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2),
    # Over the run and its 0.5 s warm-up, from the worker's /metrics.
    "batches": int(batches),
    "batch_rows_hist": hist,
    "mean_batch_rows": round(mean("batch_rows"), 1),
    "mean_queue_ms": round(mean("queue_duration_seconds") * 1e3, 2),
    "mean_compute_ms": round(mean("compute_duration_seconds") * 1e3, 2),
    # CPU seconds per wall second (1.0 = one core busy), over the run and its warm-up.
    "worker_cores": round((w1 - w0) / wall * cores, 2),
    "nats_cores": round((n1 - n0) / wall * cores, 2),
    "bench_cores": round((c1 - c0) / wall * cores, 2),
    "other_cpu_pct": round(100 * max(0.0, (b1 - b0) - ours) / wall, 1),
    "compute_threads": int(threads),
    "loadavg_1m": round(os.getloadavg()[0], 2),
}), flush=True)
PY
}

echo "worker $worker_pid on $url, metrics $metrics; JSON lines: $OUT" >&2
for ((r = 1; r <= ROUNDS; r++)); do
  for s in ${SCENARIOS//,/ }; do
    echo "round $r/$ROUNDS: flotilla $s" >&2
    flotilla_run "$s" "$r" "$SECS"
  done
  echo "round $r/$ROUNDS: torch $SCENARIOS" >&2
  HF_HUB_OFFLINE=1 "$TORCH_PYTHON" scripts/bench_embeddings.py --model "$MODEL" \
    --threads "$THREADS" --seconds "$SECS" --scenarios "$SCENARIOS" |
    sed "s/^{/{\"engine\":\"torch\",\"round\":$r,/" >>"$OUT"
done
memory idle_after_rounds
if ((SOAK > 0)); then
  echo "soak: concurrency 64, one sentence per request, $SOAK s" >&2
  flotilla_run concurrent64 0 "$SOAK"
  memory after_soak
fi

echo "JSON lines: $OUT" >&2
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = [r for r in rows if "scenario" in r and r["round"] > 0]
med = lambda xs: statistics.median(xs) if xs else float("nan")
scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
print("| scenario | engine | texts/s per round | median texts/s | median p50 ms | median p99 ms "
      "| median cores used | texts per CPU-second | load 1m |")
print("|---|---|---|---|---|---|---|---|---|")
summary = {}
for s in scenarios:
    for e in ("flotilla", "torch"):
        rs = [r for r in runs if r["scenario"] == s and r["engine"] == e]
        if not rs:
            continue
        m = (med([r["texts_per_s"] for r in rs]), med([r["p50_ms"] for r in rs]),
             med([r["p99_ms"] for r in rs]))
        summary[s, e] = m
        loads = [r["loadavg_1m"] for r in rs]
                # Texts per CPU second of the engine itself (the worker's process; torch's).
        cores = [r.get("worker_cores", r.get("cpu_cores")) for r in rs]
        per_cpu = med([r["texts_per_s"] / c for r, c in zip(rs, cores) if c])
        print(f"| {s} | {e} | {', '.join(str(r['texts_per_s']) for r in rs)} | {m[0]:.1f} "
              f"| {m[1]:.2f} | {m[2]:.2f} | {med([c for c in cores if c is not None]):.2f} "
              f"| {per_cpu:.0f} | {min(loads):.1f}-{max(loads):.1f} |")
print()
print("| scenario | texts/s flotilla/torch (median; per round) | p50 flotilla/torch | p99 flotilla/torch |")
print("|---|---|---|---|")
for s in scenarios:
    if (s, "flotilla") in summary and (s, "torch") in summary:
        f, t = summary[s, "flotilla"], summary[s, "torch"]
        per = []
        for r in sorted({x["round"] for x in runs}):
            a = [x for x in runs if x["round"] == r and x["scenario"] == s and x["engine"] == "flotilla"]
            b = [x for x in runs if x["round"] == r and x["scenario"] == s and x["engine"] == "torch"]
            if a and b and b[0]["texts_per_s"]:
                per.append(a[0]["texts_per_s"] / b[0]["texts_per_s"])
        print(f"| {s} | **{f[0] / t[0]:.2f}x** ({', '.join(f'{x:.2f}' for x in per)}) "
              f"| {f[1] / t[1]:.2f} | {f[2] / t[2]:.2f} |")
print()
print("| flotilla run | round | mean batch rows | batches by rows | mean queue ms | mean compute ms | worker cores | nats cores | bench cores | other CPU % | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in (x for x in rows if x.get("engine") == "flotilla" and "scenario" in x):
    hist = " ".join(f"{k}:{v}" for k, v in r.get("batch_rows_hist", {}).items())
    print(f"| {r['scenario']}{' (soak)' if r['round'] == 0 else ''} | {r['round']} | {r['mean_batch_rows']} | {hist} "
          f"| {r['mean_queue_ms']} | {r['mean_compute_ms']} | {r['worker_cores']} | {r['nats_cores']} "
          f"| {r['bench_cores']} | {r['other_cpu_pct']} | {r['errors'] or ''} |")
torch_other = [r["other_cpu_pct"] for r in runs if r["engine"] == "torch"]
if torch_other:
    print(f"\ntorch rounds: other_cpu_pct {min(torch_other)}-{max(torch_other)}")
print()
for r in (x for x in rows if "memory" in x):
    print(f"worker memory {r['memory']}: VmRSS {r['rss_mb']} MB, VmHWM {r['hwm_mb']} MB")
PY
