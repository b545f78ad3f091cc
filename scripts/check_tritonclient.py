#!/usr/bin/env python3
"""Drive a flotilla gateway with tritonclient.http, the client Triton and KServe users have.

Checks server liveness, readiness and metadata; model metadata and readiness (with and
without a version); and inference on the iris classifier and the linear regression with
FP32 and FP64 inputs, as JSON and as binary tensor data (`binary_data=True`), outputs asked
for by name or all of them, against a numpy forward pass of the same model files. Unknown
models, unknown versions and bad inputs must fail with the Open Inference Protocol status.

Exits 0 printing "all checks passed", or 1 listing every mismatch.

    flotilla worker --model iris=models/iris.json --model linear=models/linear.json &
    flotilla gateway --http 127.0.0.1:8080 &
    .venv/bin/python scripts/check_tritonclient.py --url 127.0.0.1:8080
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

FAILURES = []


def check(ok, what):
    if not ok:
        FAILURES.append(what)
        print(f"FAIL: {what}")
    return ok


def forward(artifact, x):
    """The flotilla.model.v1 forward pass, from the format's definition, in float64."""
    h = np.asarray(x, dtype=np.float64)
    scaler = artifact.get("scaler")
    if scaler:
        h = (h - np.asarray(scaler["mean"])) / np.asarray(scaler["std"])
    for layer in artifact["layers"]:
        z = h @ np.asarray(layer["weights"]) + np.asarray(layer["bias"])
        act = layer["activation"]
        if act == "identity":
            h = z
        elif act == "relu":
            h = np.maximum(z, 0)
        elif act == "tanh":
            h = np.tanh(z)
        elif act == "sigmoid":
            h = 1 / (1 + np.exp(-z))
        elif act == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
        else:
            raise ValueError(f"unknown activation {act}")
    return h


def labels_of(artifact, outputs):
    names = artifact.get("labels")
    if outputs.shape[1] == 1:
        index = (outputs[:, 0] >= 0.5).astype(int)
    else:
        index = outputs.argmax(axis=1)
    return [names[i] if names else str(i) for i in index]


def rows(n, features, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 7.5, size=(n, features))


def expect_status(status, call, what):
    try:
        call()
    except InferenceServerException as e:
        return check(str(e.status()) == str(status), f"{what}: status {e.status()} ({e.message()}), want {status}")
    return check(False, f"{what}: succeeded, want status {status}")


def check_server(client):
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    meta = client.get_server_metadata()
    check(meta.get("name") == "flotilla", f"server metadata name: {meta}")
    check("binary_tensor_data" in meta.get("extensions", []), f"server extensions: {meta}")


def check_model_metadata(client, name, artifact):
    check(client.is_model_ready(name), f"{name}: ready")
    check(client.is_model_ready(name, "1"), f"{name}: version 1 ready")
    check(not client.is_model_ready(name, "99"), f"{name}: version 99 not ready")
    meta = client.get_model_metadata(name)
    check(meta["name"] == name and "1" in meta["versions"], f"{name}: metadata {meta}")
    inputs, outputs = meta["inputs"], meta["outputs"]
    check(
        [(i["name"], i["shape"]) for i in inputs] == [("input", [-1, artifact["inputs"]])],
        f"{name}: metadata inputs {inputs}",
    )
    check(
        (outputs[0]["name"], outputs[0]["shape"]) == ("output", [-1, artifact["outputs"]]),
        f"{name}: metadata outputs {outputs}",
    )
    expected_label = [{"name": "label", "datatype": "BYTES", "shape": [-1]}] if artifact.get("labels") else []
    check(outputs[1:] == expected_label, f"{name}: label output in metadata {outputs}")
    version_meta = client.get_model_metadata(name, "1")
    check(version_meta["versions"] == ["1"], f"{name}: version 1 metadata {version_meta}")


def check_infer(client, name, artifact):
    classifier = bool(artifact.get("labels"))
    x = rows(5, artifact["inputs"], seed=len(name))
    want = forward(artifact, x)
    # Dense models compute their layers in f32 whatever the datatype (within 1e-5 relative of
    # f64); FP64 in still means FP64 out and inputs taken at full precision.
    for datatype, np_type, tolerance in [("FP32", np.float32, 1e-4), ("FP64", np.float64, 1e-5)]:
        sent = x.astype(np_type)
        want = forward(artifact, sent.astype(np.float64))
        for binary in (False, True):
            what = f"{name} {datatype} binary={binary}"
            tensor = httpclient.InferInput("input", list(sent.shape), datatype)
            tensor.set_data_from_numpy(sent, binary_data=binary)
            asked = [httpclient.InferRequestedOutput("output", binary_data=binary)]
            if classifier:
                asked.append(httpclient.InferRequestedOutput("label", binary_data=binary))
            result = client.infer(name, [tensor], outputs=asked, request_id="check-1")
            got = result.as_numpy("output")
            if not check(got is not None and got.shape == want.shape, f"{what}: output shape {None if got is None else got.shape}, want {want.shape}"):
                continue
            check(got.dtype == np_type, f"{what}: output dtype {got.dtype}, want {np.dtype(np_type)}")
            check(np.allclose(got, want, rtol=tolerance, atol=tolerance), f"{what}: outputs {got} != {want}")
            response = result.get_response()
            check(response.get("model_version") == "1" and response.get("id") == "check-1", f"{what}: response {response}")
            if classifier:
                labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label").reshape(-1)]
                check(labels == labels_of(artifact, want), f"{what}: labels {labels}")
    # No outputs named: tritonclient asks for every output as binary data.
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32), binary_data=True)
    result = client.infer(name, [tensor], model_version="1")
    check(result.as_numpy("output") is not None, f"{name}: every output, binary")
    check((result.as_numpy("label") is not None) == classifier, f"{name}: label output iff classifier")


def check_errors(client, artifact):
    features = artifact["inputs"]
    good = httpclient.InferInput("input", [1, features], "FP32")
    good.set_data_from_numpy(np.ones((1, features), dtype=np.float32))
    expect_status(404, lambda: client.infer("no-such-model", [good]), "unknown model")
    expect_status(404, lambda: client.infer("iris", [good], model_version="99"), "unknown version")
    expect_status(404, lambda: client.get_model_metadata("no-such-model"), "metadata of an unknown model")
    check(not client.is_model_ready("no-such-model"), "unknown model not ready")
    short = httpclient.InferInput("input", [1, features - 1], "FP32")
    short.set_data_from_numpy(np.ones((1, features - 1), dtype=np.float32))
    expect_status(400, lambda: client.infer("iris", [short]), "wrong feature count")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8080", help="gateway HOST:PORT")
    parser.add_argument("--models-dir", default=str(pathlib.Path(__file__).resolve().parent.parent / "models"))
    args = parser.parse_args()
    artifacts = {
        name: json.loads((pathlib.Path(args.models_dir) / f"{name}.json").read_text())
        for name in ("iris", "linear")
    }
    client = httpclient.InferenceServerClient(url=args.url, connection_timeout=10, network_timeout=10)
    check_server(client)
    for name, artifact in artifacts.items():
        check_model_metadata(client, name, artifact)
        check_infer(client, name, artifact)
    check_errors(client, artifacts["iris"])
    if FAILURES:
        print(f"{len(FAILURES)} checks failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
