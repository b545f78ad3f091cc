#!/usr/bin/env python3
"""Regenerates the example `flotilla.model.v1` artifacts in models/.

    pip install scikit-learn numpy
    python3 scripts/make_example_models.py

Writes models/linear.json, models/iris.json and models/mlp.json. Everything is deterministic
(random_state=0 everywhere). Each artifact is verified after writing: the forward pass is
re-implemented in numpy from the JSON file as written (numbers rounded to 6 significant
digits) and compared with scikit-learn's own predictions on every validation row.
"""

import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import sklearn
from sklearn.datasets import load_iris, make_regression
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FORMAT = "flotilla.model.v1"
SIG_DIGITS = 6
TOLERANCE = 1e-4
IRIS_LABELS = ["setosa", "versicolor", "virginica"]
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TRAINED_BY = f"scripts/make_example_models.py (scikit-learn {sklearn.__version__})"


# ---------------------------------------------------------------------------------------------
# JSON output


def sig(x):
    """Rounds a number to SIG_DIGITS significant digits; refuses anything non-finite."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"non-finite number {x!r} in an artifact")
    r = float(f"{x:.{SIG_DIGITS}g}")
    return 0.0 if r == 0 else r  # no "-0.0"


def rounded(value):
    """Rounds every float in a JSON-like value (numpy arrays become lists)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return sig(value)


def dumps(value, indent=0):
    """JSON with objects indented and lists of scalars kept on one line, so a weight matrix
    reads one row per line and the files stay small."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {dumps(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}  {dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def write_artifact(name, artifact):
    path = MODELS_DIR / name
    path.write_text(dumps(rounded(artifact)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Verification: the forward pass of the format, from the file as written


def softmax(h):
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


ACTIVATIONS = {
    "identity": lambda h: h,
    "relu": lambda h: np.maximum(h, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda h: 1.0 / (1.0 + np.exp(-h)),
    "softmax": softmax,
}


def load_and_check(path):
    """Reads an artifact back and checks its shapes and numbers like the Rust loader does."""
    art = json.loads(path.read_text())
    assert art["format"] == FORMAT, path
    n_in, n_out = art["inputs"], art["outputs"]
    if "scaler" in art:
        mean, std = np.array(art["scaler"]["mean"]), np.array(art["scaler"]["std"])
        assert mean.shape == (n_in,) and std.shape == (n_in,), path
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std)), path
        assert np.all(std > 0), f"{path}: scaler.std must be > 0"
    width = n_in
    for i, layer in enumerate(art["layers"]):
        w, b = np.array(layer["weights"], dtype=float), np.array(layer["bias"], dtype=float)
        assert w.shape == (width, b.shape[0]), f"{path}: layers[{i}] has shape {w.shape}"
        assert np.all(np.isfinite(w)) and np.all(np.isfinite(b)), path
        assert layer["activation"] in ACTIVATIONS, path
        width = b.shape[0]
    assert width == n_out, path
    if "labels" in art:
        assert art["layers"][-1]["activation"] in ("sigmoid", "softmax"), path
        assert len(art["labels"]) == (2 if n_out == 1 else n_out), path
    return art


def forward(art, x):
    h = np.asarray(x, dtype=float)
    if "scaler" in art:
        h = (h - np.array(art["scaler"]["mean"])) / np.array(art["scaler"]["std"])
    for layer in art["layers"]:
        h = h @ np.array(layer["weights"]) + np.array(layer["bias"])
        h = ACTIVATIONS[layer["activation"]](h)
    return h


def verify_regressor(path, model, x_val):
    art = load_and_check(path)
    ours = forward(art, x_val)[:, 0]
    theirs = model.predict(x_val)
    # Relative error, measured against 1 for outputs smaller than 1 in magnitude.
    err = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1.0)
    assert err.max() <= TOLERANCE, f"{path}: max relative error {err.max():.3g}"
    return err.max()


def verify_classifier(path, model, x_val):
    art = load_and_check(path)
    ours = forward(art, x_val)
    proba = model.predict_proba(x_val)
    err = np.abs(ours - proba).max()
    assert err <= TOLERANCE, f"{path}: max probability error {err:.3g}"
    # sklearn predicts class indices 0..2, which are the positions in `labels`.
    assert np.array_equal(ours.argmax(axis=1), model.predict(x_val)), path
    return err


# ---------------------------------------------------------------------------------------------
# The three models


def scaler_of(pipeline):
    sc = pipeline[0]
    return {"mean": sc.mean_, "std": sc.scale_}


def make_linear():
    x, y = make_regression(n_samples=500, n_features=10, noise=5, random_state=0)
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.2, random_state=0)
    model = make_pipeline(StandardScaler(), LinearRegression()).fit(x_tr, y_tr)
    lr = model[-1]
    r2 = r2_score(y_val, model.predict(x_val))
    path = write_artifact("linear.json", {
        "format": FORMAT,
        "inputs": 10,
        "outputs": 1,
        "scaler": scaler_of(model),
        "layers": [{
            "weights": lr.coef_.reshape(10, 1),
            "bias": [lr.intercept_],
            "activation": "identity",
        }],
        "metadata": {
            "trained_by": TRAINED_BY,
            "metrics": {"r2": r2},
            "description": "Linear regression on a synthetic 10-feature dataset "
                           "(make_regression, 500 samples, noise 5, random_state 0).",
        },
    })
    err = verify_regressor(path, model, x_val)
    sample = x_val[:1]
    return path, {"r2": r2}, err, sample, model.predict(sample)


def iris_split():
    iris = load_iris()
    assert list(iris.target_names) == IRIS_LABELS
    return train_test_split(iris.data, iris.target, test_size=0.2, stratify=iris.target,
                            random_state=0)


def multinomial_logistic_regression():
    kwargs = {"max_iter": 1000, "random_state": 0}
    # `multi_class` was deprecated in scikit-learn 1.5 and removed later; multinomial is the
    # default for lbfgs on more than two classes either way.
    if "multi_class" in inspect.signature(LogisticRegression).parameters:
        kwargs["multi_class"] = "multinomial"
    return LogisticRegression(**kwargs)


def make_iris():
    x_tr, x_val, y_tr, y_val = iris_split()
    model = make_pipeline(StandardScaler(), multinomial_logistic_regression()).fit(x_tr, y_tr)
    lr = model[-1]
    assert lr.coef_.shape == (3, 4)
    acc = accuracy_score(y_val, model.predict(x_val))
    path = write_artifact("iris.json", {
        "format": FORMAT,
        "inputs": 4,
        "outputs": 3,
        "scaler": scaler_of(model),
        "labels": IRIS_LABELS,
        "layers": [{"weights": lr.coef_.T, "bias": lr.intercept_, "activation": "softmax"}],
        "metadata": {
            "trained_by": TRAINED_BY,
            "metrics": {"accuracy": acc},
            "description": "Multinomial logistic (softmax) regression on the iris dataset "
                           "(sepal length, sepal width, petal length, petal width in cm).",
        },
    })
    err = verify_classifier(path, model, x_val)
    sample = x_val[:1]
    return path, {"accuracy": acc}, err, sample, model.predict_proba(sample)


def make_mlp():
    x_tr, x_val, y_tr, y_val = iris_split()
    mlp = MLPClassifier(hidden_layer_sizes=(16,), activation="relu", max_iter=2000,
                        random_state=0)
    model = make_pipeline(StandardScaler(), mlp).fit(x_tr, y_tr)
    assert mlp.out_activation_ == "softmax"
    assert mlp.coefs_[0].shape == (4, 16) and mlp.coefs_[1].shape == (16, 3)
    acc = accuracy_score(y_val, model.predict(x_val))
    path = write_artifact("mlp.json", {
        "format": FORMAT,
        "inputs": 4,
        "outputs": 3,
        "scaler": scaler_of(model),
        "labels": IRIS_LABELS,
        "layers": [
            {"weights": mlp.coefs_[0], "bias": mlp.intercepts_[0], "activation": "relu"},
            {"weights": mlp.coefs_[1], "bias": mlp.intercepts_[1], "activation": "softmax"},
        ],
        "metadata": {
            "trained_by": TRAINED_BY,
            "metrics": {"accuracy": acc},
            "description": "Multi-layer perceptron (4-16-3, relu hidden layer, softmax output) "
                           "on the iris dataset (sepal/petal length and width in cm).",
        },
    })
    err = verify_classifier(path, model, x_val)
    sample = x_val[:1]
    return path, {"accuracy": acc}, err, sample, model.predict_proba(sample)


def main():
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    for make in (make_linear, make_iris, make_mlp):
        path, metrics, err, sample, expected = make()
        shown = ", ".join(f"{k}={v:.6g}" for k, v in metrics.items())
        print(f"{path.relative_to(MODELS_DIR.parent)}: {shown}; "
              f"verified, max error {err:.2g}; {path.stat().st_size} bytes")
        print(f"  sample input:    {json.dumps(sample[0].tolist())}")
        print(f"  sklearn output:  {json.dumps(np.atleast_1d(expected[0]).tolist())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
