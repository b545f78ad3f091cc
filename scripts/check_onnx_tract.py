#!/usr/bin/env python3
"""Runs every fixture in tests/fixtures/onnx/ through tract (the `tract` wheel from PyPI, the same
engine as the tract-onnx crate) and says, per model, whether it loads and matches onnxruntime.

    pip install -r scripts/requirements-onnx.txt
    python3 scripts/check_onnx_tract.py

It needs no Rust toolchain, so it shows what the Rust backend will meet before any cargo build.
One line per model: OK, MISMATCH (loads, but an output differs from the fixture) or FAIL (tract
refuses the model; its error and first cause). Floats match within 1e-4 absolute + relative. The
two broken files (corrupt.onnx, unsupported_op.onnx) must FAIL. Exit status 0 unless one of them
loads; the known gaps in tract 0.23.9 are listed in models/onnx/README.md.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tract

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models" / "onnx"
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "onnx"
TOL = 1e-4


def first_line(error):
    """tract's first error line, plus the first cause when there is one."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    causes = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "Caused by:"]
    return lines[0] + (f": {causes[0]}" if causes else "")


def strings_of(tensor):
    # The Python API cannot hand out String tensors; their Display is "Tensor(shape,String a, b)".
    text = str(tensor)
    body = text[text.index("String ") + len("String "):-1]
    return body.split(", ") if body else []


def compare(name, expected, tensor):
    if expected["dtype"] == "string":
        got = strings_of(tensor)
        return None if got == expected["data"] else f"{name}: {got} != {expected['data']}"
    got = tensor.to_numpy()
    want = np.array(expected["data"], dtype=expected["dtype"]).reshape(expected["shape"])
    if list(got.shape) != expected["shape"]:
        return f"{name}: shape {list(got.shape)} != {expected['shape']}"
    if expected["dtype"].startswith("float"):
        if not np.allclose(got, want, rtol=TOL, atol=TOL):
            return f"{name}: max abs diff {np.max(np.abs(got - want)):.3g}"
    elif not (got == want).all():
        return f"{name}: {got.ravel().tolist()} != {expected['data']}"
    return None


def check(fixture_path):
    fixture = json.loads(fixture_path.read_text())
    try:
        model = tract.onnx().load(str(MODELS_DIR / fixture["model"])).into_model()
        names = [model.input_name(i) for i in range(model.input_count())]
        runnable = model.into_runnable()  # consumes `model`
        inputs = [np.array(t["data"], dtype=t["dtype"]).reshape(t["shape"])
                  for t in (fixture["inputs"][n] for n in names)]
        outputs = runnable.run(inputs)
    except Exception as e:  # tract.TractError, mostly
        return "FAIL", first_line(e)
    problems = [p for p in (compare(n, t, o) for (n, t), o in
                            zip(fixture["outputs"].items(), outputs)) if p]
    return ("MISMATCH", "; ".join(problems)) if problems else ("OK", "")


def main():
    print(f"tract {tract.version()}")
    for path in sorted(FIXTURES_DIR.glob("*.json")):
        status, detail = check(path)
        print(f"{path.stem:22} {status:8} {detail}")
    ok = True
    for name in ("corrupt.onnx", "unsupported_op.onnx"):
        try:
            tract.onnx().load(str(FIXTURES_DIR / name)).into_model()
        except Exception as e:
            print(f"{name:22} {'FAIL':8} {first_line(e)} (as intended)")
        else:
            print(f"{name:22} LOADED   but must not")
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
