#!/usr/bin/env python3
"""Writes the 64-256-256-10 MLP of issue 9's benchmarks and a 256-row request for it.

    python3 scripts/make_bench_mlp.py OUT_DIR

OUT_DIR/mlp-64-256-256-10.json: a flotilla dense model (relu, relu, softmax, with a scaler),
weights drawn from a fixed seed, so every run serves the same model.
OUT_DIR/mlp-256rows.msgpack: one MessagePack request whose `inputs` is a binary f32 tensor
of shape [256, 64] (PROTOCOL.md v1.1), the body natsprobe sends.
OUT_DIR/mlp-256rows.json: the same 256 rows as JSON `{"x": [[...], ...]}`.
Standard library only: the MessagePack body is written by hand.
"""
import json
import random
import struct
import sys
from pathlib import Path

SIZES = [64, 256, 256, 10]
ROWS = 256


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(9)
    layers = []
    for (n_in, n_out), act in zip(zip(SIZES, SIZES[1:]), ["relu", "relu", "softmax"]):
        scale = (2.0 / n_in) ** 0.5
        layers.append({
            "weights": [[round(rng.gauss(0, scale), 6) for _ in range(n_out)] for _ in range(n_in)],
            "bias": [round(rng.gauss(0, 0.01), 6) for _ in range(n_out)],
            "activation": act,
        })
    model = {
        "format": "flotilla.model.v1",
        "inputs": SIZES[0],
        "outputs": SIZES[-1],
        "scaler": {"mean": [0.0] * SIZES[0], "std": [1.0] * SIZES[0]},
        "labels": [f"class_{i}" for i in range(SIZES[-1])],
        "layers": layers,
        "metadata": {"description": "issue 9 benchmark MLP, random weights (scripts/make_bench_mlp.py)"},
    }
    (out / "mlp-64-256-256-10.json").write_text(json.dumps(model))

    rows = [[round(rng.uniform(-1, 1), 4) for _ in range(SIZES[0])] for _ in range(ROWS)]
    (out / "mlp-256rows.json").write_text(json.dumps({"x": rows}))
    data = b"".join(struct.pack("<f", v) for row in rows for v in row)

    def s(text: str) -> bytes:  # fixstr
        return bytes([0xA0 | len(text)]) + text.encode()

    body = (
        b"\x81" + s("inputs")
        + b"\x83"
        + s("shape") + b"\x92" + b"\xcd" + struct.pack(">H", ROWS) + bytes([SIZES[0]])
        + s("dtype") + s("f32")
        + s("data") + b"\xc6" + struct.pack(">I", len(data)) + data
    )
    (out / "mlp-256rows.msgpack").write_bytes(body)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
