#!/usr/bin/env python3
"""The classic Flask `/predict` app, serving a flotilla.model.v1 file with numpy.

This is the baseline the HTTP gateway is measured against (BENCHMARKS.md): the same call,
`POST /predict {"x": [...]}` -> `{"y_pred": ...}`, the same model, computed in-process with
numpy, served by Flask's own threaded server the way such apps usually start life.

    .venv/bin/python scripts/seed_flask.py --model models/linear.json --port 5000
    curl -s -X POST -H 'Content-Type: application/json' -d '{"x": [0,0,0,0,0,0,0,0,0,0]}' \
        http://127.0.0.1:5000/predict
"""

import argparse
import json
import logging

import numpy as np
from flask import Flask, jsonify, request

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softmax": lambda z: (lambda e: e / e.sum(axis=1, keepdims=True))(np.exp(z - z.max(axis=1, keepdims=True))),
}


class Model:
    def __init__(self, path):
        with open(path) as f:
            artifact = json.load(f)
        scaler = artifact.get("scaler")
        self.mean = np.asarray(scaler["mean"]) if scaler else None
        self.std = np.asarray(scaler["std"]) if scaler else None
        self.layers = [
            (np.asarray(l["weights"]), np.asarray(l["bias"]), ACTIVATIONS[l["activation"]])
            for l in artifact["layers"]
        ]
        self.inputs = artifact["inputs"]

    def predict(self, x):
        h = np.asarray(x, dtype=np.float64).reshape(1, -1)
        if self.mean is not None:
            h = (h - self.mean) / self.std
        for weights, bias, activation in self.layers:
            h = activation(h @ weights + bias)
        return h[0]


def create_app(model):
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or "x" not in body:
            return jsonify({"error": 'send {"x": [...]}'}), 400
        try:
            x = np.asarray(body["x"], dtype=np.float64)
        except (TypeError, ValueError):
            return jsonify({"error": "x must be a list of numbers"}), 400
        if x.ndim != 1 or x.shape[0] != model.inputs:
            return jsonify({"error": f"x must have {model.inputs} numbers"}), 400
        y = model.predict(x)
        return jsonify({"y_pred": float(y[0]) if y.shape[0] == 1 else y.tolist()})

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/linear.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    # One log line per request would measure the terminal, not the app.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    create_app(Model(args.model)).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
