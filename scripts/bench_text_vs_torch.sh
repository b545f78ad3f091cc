#!/usr/bin/env bash
# flotilla's text encoder and sentence-transformers (PyTorch CPU) side by side on this machine:
# alternating rounds (flotilla, torch, flotilla, torch, ...) of the same scenarios, then the
# median of each and the ratio flotilla / torch. The machine is shared and noisy: only ratios
# within one run mean much.
#
#   scripts/fetch_minilm.sh
#   scripts/bench_text_vs_torch.sh [ROUNDS]          # default 3 rounds
#
# Environment: SCENARIOS (default single,batch32), SECONDS_PER_SCENARIO (default 10),
# THREADS (default 2, both engines), TORCH_PYTHON (default /work/venvs/st/bin/python, a venv
# made from scripts/requirements-bench.txt), MODEL (default models/minilm), OUT (the JSON lines,
# default a temporary file). Needs a release build of the example, which this script makes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-3}"
SCENARIOS="${SCENARIOS:-single,batch32}"
SECS="${SECONDS_PER_SCENARIO:-10}"
THREADS="${THREADS:-2}"
TORCH_PYTHON="${TORCH_PYTHON:-/work/venvs/st/bin/python}"
MODEL="${MODEL:-$ROOT/models/minilm}"
OUT="${OUT:-$(mktemp -t text-vs-torch.XXXXXX.jsonl)}"

cd "$ROOT"
cargo build --release -q -p flotilla-model --example text_bench
BENCH="$ROOT/target/release/examples/text_bench"
[[ -x "$TORCH_PYTHON" ]] || { echo "no $TORCH_PYTHON (see scripts/requirements-bench.txt)" >&2; exit 1; }

for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r/$ROUNDS: flotilla" >&2
  "$BENCH" --model "$MODEL" --threads "$THREADS" --seconds "$SECS" --scenarios "$SCENARIOS" |
    sed "s/^{/{\"engine\":\"flotilla\",\"round\":$r,/" >>"$OUT"
  echo "round $r/$ROUNDS: torch" >&2
  HF_HUB_OFFLINE=1 "$TORCH_PYTHON" scripts/bench_embeddings.py --model "$MODEL" \
    --threads "$THREADS" --seconds "$SECS" --scenarios "$SCENARIOS" |
    sed "s/^{/{\"engine\":\"torch\",\"round\":$r,/" >>"$OUT"
done

echo "JSON lines: $OUT" >&2
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
print(f"| scenario | engine | rounds | texts/s (each round) | median texts/s | median p50 ms | median p99 ms |")
print("|---|---|---|---|---|---|---|")
med = {}
for s in scenarios:
    for e in ("flotilla", "torch"):
        rs = [r for r in rows if r["scenario"] == s and r["engine"] == e]
        if not rs:
            continue
        tps = [r["texts_per_s"] for r in rs]
        m = (statistics.median(tps), statistics.median(r["p50_ms"] for r in rs),
             statistics.median(r["p99_ms"] for r in rs))
        med[s, e] = m
        print(f"| {s} | {e} | {len(rs)} | {', '.join(f'{t:.1f}' for t in tps)} | {m[0]:.1f} | {m[1]:.2f} | {m[2]:.2f} |")
for s in scenarios:
    if (s, "flotilla") in med and (s, "torch") in med:
        f, t = med[s, "flotilla"], med[s, "torch"]
        # Each round's flotilla run and the torch run right after it share the machine's state.
        pairs = [(a, b) for a in rows for b in rows
                 if a["scenario"] == b["scenario"] == s and a["round"] == b["round"]
                 and a["engine"] == "flotilla" and b["engine"] == "torch"]
        per_round = [a["texts_per_s"] / b["texts_per_s"] for a, b in pairs]
        print(f"{s}: median throughput ratio flotilla/torch {f[0] / t[0]:.2f}x "
              f"(per round: {', '.join(f'{x:.2f}' for x in per_round)}), "
              f"median p50 latency flotilla/torch {f[1] / t[1]:.2f}")
PY
