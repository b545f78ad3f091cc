#!/usr/bin/env python3
"""PyTorch CPU baseline for the text-embedding backend: sentence-transformers encoding short sentences.

    scripts/fetch_minilm.sh
    HF_HUB_OFFLINE=1 /work/venvs/st/bin/python scripts/bench_embeddings.py \\
        [--model models/minilm] [--threads 2] [--seconds 10] [--warmup 2] \\
        [--scenarios single,batch32,concurrent16,concurrent64]

The venv is made from scripts/requirements-bench.txt. Scenarios (each runs closed-loop for
--seconds after --warmup seconds of the same load, and prints one JSON line):

- single:       one thread, model.encode([text]) back to back: "concurrency 1".
- batch32:      one thread, model.encode(32 texts, batch_size=32) back to back; latency is per batch.
- concurrentN:  N threads, each calling model.encode([text]) back to back (closed loop, no think
                time), for comparison with a flotilla server driven at concurrency N (16 and 64
                are the figures to compare). Latency is per call, so it includes waiting for the
                two cores the threads share.
- batchBxN:     N threads, each calling model.encode(B texts) back to back (latency per call).

Any scenario name of the form batchB, concurrentN or batchBxN works (scripts/bench_served_text.sh
uses the same names for the flotilla side). torch.set_num_threads(--threads)
(default 2, the machine's cores) bounds PyTorch's intra-op threads. Texts are short English
sentences (7 to 11 tokens with [CLS]/[SEP], 8.9 on average), picked round-robin.

Each JSON line has: scenario, concurrency, batch, calls, texts, errors, seconds, texts_per_s,
calls_per_s, p50_ms, p99_ms, mean_ms, max_ms, cpu_cores (this process's CPU seconds per second),
and the model, torch and sentence-transformers
versions, torch threads, other_cpu_pct (the share of the machine's CPU time that other
processes used during the measurement, from /proc/stat less this process's own time) and the
1-minute load average at the end: the figures mean little if other work shared the cores.
"""

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome.",
    "I love pasta with tomato sauce.",
    "Do you like pizza?",
    "The weather is lovely today.",
    "He drove his car to the station.",
    "She is reading a book in the garden.",
    "Stock markets fell sharply this morning.",
    "A woman is slicing an onion.",
    "Two dogs are running through a field.",
    "The server answered every request in time.",
    "Please send me the report by Friday.",
    "Rust makes systems programming safer.",
    "The train was delayed by ten minutes.",
    "Children are playing in the park.",
]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def cpu_snapshot() -> tuple[float, float, float]:
    """(machine busy seconds, machine total seconds, this process's CPU seconds)."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    t = os.times()
    return (total - idle) / tick, total / tick, t.user + t.system


def run_scenario(model, concurrency: int, batch: int, seconds: float, warmup: float) -> dict:
    """`concurrency` threads call model.encode on `batch` texts back to back for warmup+seconds;
    calls that start after the warm-up count."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    counts = [0] * concurrency
    errors = [0] * concurrency
    first_error: list[str] = []
    start_barrier = threading.Barrier(concurrency + 1)
    times = {}

    def worker(i: int) -> None:
        j = i * 7
        start_barrier.wait()
        measure_from = times["measure_from"]
        stop_at = times["stop_at"]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            texts = [SENTENCES[(j + k) % len(SENTENCES)] for k in range(batch)]
            j += batch
            try:
                model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)
            except Exception as e:  # noqa: BLE001 - counted and reported, not hidden
                if t0 >= measure_from:
                    errors[i] += 1
                if not first_error:
                    first_error.append(f"{type(e).__name__}: {e}")
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies[i].append(t1 - t0)
                counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    times["measure_from"] = now + warmup
    times["stop_at"] = now + warmup + seconds
    start_barrier.wait()
    time.sleep(max(0.0, times["measure_from"] - time.perf_counter()))
    cpu0 = cpu_snapshot()
    for t in threads:
        t.join()
    cpu1 = cpu_snapshot()
    machine_total = cpu1[1] - cpu0[1]
    others_busy = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[2] - cpu0[2]))
    # Calls that started before stop_at may finish after it: measure up to the last finish.
    elapsed = max(seconds, time.perf_counter() - times["measure_from"])

    lat = sorted(x for per in latencies for x in per)
    calls = sum(counts)
    out = {
        "concurrency": concurrency,
        "batch": batch,
        "calls": calls,
        "texts": calls * batch,
        "errors": sum(errors),
        "seconds": round(elapsed, 3),
        "texts_per_s": round(calls * batch / elapsed, 1),
        "calls_per_s": round(calls / elapsed, 1),
        "p50_ms": round(percentile(lat, 0.50) * 1e3, 2),
        "p99_ms": round(percentile(lat, 0.99) * 1e3, 2),
        "mean_ms": round(sum(lat) / len(lat) * 1e3, 2) if lat else None,
        "max_ms": round(lat[-1] * 1e3, 2) if lat else None,
        "other_cpu_pct": round(100.0 * others_busy / machine_total, 1) if machine_total > 0 else None,
        # This process's CPU seconds per second (1.0 = one core), to compare work per CPU
        # second when other tenants leave each engine a different share of the machine.
        "cpu_cores": round((cpu1[2] - cpu0[2]) / elapsed, 2),
    }
    if first_error:
        out["first_error"] = first_error[0]
    return out


def parse_scenario(name: str) -> tuple[int, int]:
    """(concurrency, batch) of a scenario name."""
    if name == "single":
        return 1, 1
    if name.startswith("batch") and name[5:].isdigit():
        return 1, int(name[5:])
    if name.startswith("batch") and "x" in name:
        b, n = name[5:].split("x", 1)
        if b.isdigit() and n.isdigit():
            return int(n), int(b)
    if name.startswith("concurrent") and name[10:].isdigit():
        return int(name[10:]), 1
    raise SystemExit(f"bench_embeddings: unknown scenario {name!r} (single, batchB, concurrentN, batchBxN)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "minilm"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--scenarios", default="single,batch32,concurrent16,concurrent64")
    args = ap.parse_args()
    scenarios = [(s, *parse_scenario(s)) for s in args.scenarios.split(",") if s]

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    if not (Path(args.model) / "model.safetensors").is_file():
        print(f"bench_embeddings: {args.model} has no model.safetensors; run scripts/fetch_minilm.sh",
              file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    model.eval()
    model.encode(SENTENCES, show_progress_bar=False)  # load lazily-initialised kernels

    for name, concurrency, batch in scenarios:
        result = {"scenario": name, **run_scenario(model, concurrency, batch, args.seconds, args.warmup)}
        result.update({
            "model": Path(args.model).name,
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        })
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
