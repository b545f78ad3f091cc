#!/usr/bin/env python3
"""Exports scikit-learn's bundled toy datasets as the CSV files `flotilla train` reads.

    pip install scikit-learn numpy
    python3 scripts/export_datasets.py

Writes, with a header row of snake_case feature names and the target as the last column:
- data/diabetes.csv       regression, target `target`
- data/iris.csv           3 classes, target `species` (setosa, versicolor, virginica)
- data/wine.csv           3 classes, target `class` (class_0, class_1, class_2)
- data/breast_cancer.csv  2 classes, target `diagnosis` (malignant, benign)

These datasets ship inside scikit-learn, so nothing is downloaded. Numbers are written with
`repr`, which round-trips every float exactly, so Rust and Python read identical values.
"""

import csv
import re
from pathlib import Path

from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def snake_case(name):
    """'mean radius' -> 'mean_radius', 'sepal length (cm)' -> 'sepal_length_cm',
    'od280/od315_of_diluted_wines' -> 'od280_od315_of_diluted_wines'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write(name, bunch, target_column, target_text):
    path = DATA_DIR / f"{name}.csv"
    header = [snake_case(f) for f in bunch.feature_names]
    assert len(set(header)) == len(header), f"{name}: feature names collide: {header}"
    assert target_column not in header, f"{name}: {target_column} is also a feature"
    with path.open("w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header + [target_column])
        for row, target in zip(bunch.data, bunch.target):
            out.writerow([repr(float(v)) for v in row] + [target_text(target)])
    print(f"wrote {path.relative_to(DATA_DIR.parent)}: {len(bunch.data)} rows, "
          f"{len(header)} features, target {target_column!r}")


def main():
    DATA_DIR.mkdir(exist_ok=True)
    # The diabetes target is a disease-progression score (an integer-valued float).
    write("diabetes", load_diabetes(), "target", lambda t: repr(float(t)))
    for name, loader, column in [
        ("iris", load_iris, "species"),
        ("wine", load_wine, "class"),
        ("breast_cancer", load_breast_cancer, "diagnosis"),
    ]:
        bunch = loader()
        write(name, bunch, column, lambda t, names=bunch.target_names: str(names[t]))


if __name__ == "__main__":
    main()
