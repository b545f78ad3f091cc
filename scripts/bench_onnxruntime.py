#!/usr/bin/env python3
"""Times onnxruntime on models/onnx/mlp.onnx and models/onnx/cnn.onnx, as the baseline for the
tract backend.

    pip install -r scripts/requirements-onnx.txt
    python3 scripts/export_onnx_examples.py      # if models/onnx/ is missing
    python3 scripts/bench_onnxruntime.py [--batches 1,256] [--models mlp,cnn]
                                         [--warmup 50] [--min-iters 200] [--min-seconds 2]

The session runs on the CPU provider with intra_op_num_threads=2, inter_op_num_threads=1,
sequential execution and all graph optimisations. For each (model, batch) it runs `--warmup`
untimed calls, then timed calls until both `--min-iters` calls and `--min-seconds` seconds are
done, timing each `session.run` alone (input arrays are made once, beforehand, from a fixed
seed). It prints one JSON line per (model, batch) on stdout:

    {"runtime": "onnxruntime", "version": "...", "model": "mlp", "batch": 256, "iters": ...,
     "median_us": ..., "p10_us": ..., "p90_us": ..., "median_us_per_row": ...,
     "intra_op_threads": 2, "inter_op_threads": 1}

Times are microseconds per batch (one run call). The machine's other load shows up directly in
these numbers: compare runs made under the same conditions.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS_DIR = Path(__file__).resolve().parent.parent / "models" / "onnx"
TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def make_inputs(sess, batch, rng):
    feeds = {}
    for arg in sess.get_inputs():
        # The leading symbolic dim ("N") is the batch; every other dim is fixed in these models.
        shape = [batch] + [int(d) for d in arg.shape[1:]]
        feeds[arg.name] = rng.standard_normal(shape).astype(TYPES[arg.type])
    return feeds


def bench(name, batch, args):
    sess = session(MODELS_DIR / f"{name}.onnx")
    feeds = make_inputs(sess, batch, np.random.default_rng(0))
    for _ in range(args.warmup):
        sess.run(None, feeds)
    times = []
    start = time.perf_counter()
    while len(times) < args.min_iters or time.perf_counter() - start < args.min_seconds:
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {
        "runtime": "onnxruntime", "version": ort.__version__, "model": name, "batch": batch,
        "iters": len(times), "median_us": round(median, 1), "p10_us": round(p10, 1),
        "p90_us": round(p90, 1), "median_us_per_row": round(median / batch, 2),
        "intra_op_threads": 2, "inter_op_threads": 1,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated, from models/onnx/")
    parser.add_argument("--batches", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls first")
    parser.add_argument("--min-iters", type=int, default=200, help="at least this many timed calls")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="and at least this long")
    args = parser.parse_args()
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            print(json.dumps(bench(name, batch, args)), flush=True)


if __name__ == "__main__":
    main()
