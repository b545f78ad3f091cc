#!/usr/bin/env python3
"""scikit-learn's scores on flotilla's validation split, the bar `flotilla train` is held to.

    pip install scikit-learn numpy
    python3 scripts/export_datasets.py    # writes data/*.csv
    python3 scripts/sklearn_baseline.py

Reads the CSV files in data/, reproduces `flotilla train`'s train/validation split exactly
(the rule below, seed 42, validation fraction 0.2), fits LinearRegression on diabetes and
StandardScaler + LogisticRegression on iris, wine and breast cancer (the scaler fitted on the
training split only, as flotilla does), and prints a markdown table of R2 / accuracy on the
validation split. tests/train.rs hard-codes the diabetes R2 printed here.
"""

import csv
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SEED = 42
VALIDATION_FRACTION = 0.2
MASK = (1 << 64) - 1


def splitmix64(x):
    """SplitMix64's output for state `x` (constants as in src/train/rng.rs)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def is_validation(i, seed=SEED, fraction=VALIDATION_FRACTION):
    """Row i (0-based, header excluded) is a validation row iff this holds."""
    return splitmix64((seed + i) & MASK) % 10_000 < int(fraction * 10_000.0)


def load(name, target):
    with (DATA_DIR / f"{name}.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    t = header.index(target)
    x = np.array([[float(v) for j, v in enumerate(r) if j != t] for r in rows])
    y = np.array([r[t] for r in rows])
    validation = np.array([is_validation(i) for i in range(len(rows))])
    return x[~validation], y[~validation], x[validation], y[validation]


def main():
    print(f"scikit-learn {sklearn.__version__}, split seed {SEED}, "
          f"validation fraction {VALIDATION_FRACTION}\n")
    print("| dataset | model | train rows | validation rows | metric | scikit-learn |")
    print("|---|---|---|---|---|---|")
    cases = [
        ("diabetes", "target", "LinearRegression", "r2"),
        ("iris", "species", "LogisticRegression", "accuracy"),
        ("wine", "class", "LogisticRegression", "accuracy"),
        ("breast_cancer", "diagnosis", "LogisticRegression", "accuracy"),
    ]
    for name, target, model_name, metric in cases:
        x_train, y_train, x_val, y_val = load(name, target)
        started = time.perf_counter()
        if metric == "r2":
            model = LinearRegression().fit(x_train, y_train.astype(float))
            score = r2_score(y_val.astype(float), model.predict(x_val))
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000))
            model.fit(x_train, y_train)
            score = accuracy_score(y_val, model.predict(x_val))
        seconds = time.perf_counter() - started
        print(f"| {name} | {model_name} | {len(y_train)} | {len(y_val)} | {metric} | "
              f"{score:.4f} |", flush=True)
        print(f"  {name}: {seconds * 1000:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
