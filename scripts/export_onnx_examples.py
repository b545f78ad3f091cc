#!/usr/bin/env python3
"""Writes the example ONNX models in models/onnx/ and their fixtures in tests/fixtures/onnx/.

    python3 -m venv /tmp/onnx-venv && . /tmp/onnx-venv/bin/activate
    pip install -r scripts/requirements-onnx.txt
    python3 scripts/export_onnx_examples.py

For every model it writes `models/onnx/<name>.onnx` and `tests/fixtures/onnx/<name>.json`:

    {"model": "<name>.onnx",
     "inputs":  {"<input name>":  {"shape": [...], "dtype": "float32"|"float64"|"int64", "data": [...]}},
     "outputs": {"<output name>": {"shape": [...], "dtype": "...", "data": [...]}}}

`data` is flat and row-major; float32 values are written in their shortest round-trip decimal form
(parse them straight into f32), strings stay strings. The outputs are onnxruntime's for those
inputs. It also writes two broken files for error tests: tests/fixtures/onnx/corrupt.onnx (the
first 100 bytes of cnn.onnx) and tests/fixtures/onnx/unsupported_op.onnx (valid protobuf, one node
`Frobnicate` in the made-up domain `ai.custom`).

Everything is deterministic (fixed seeds, random_state=0, single-threaded fitting): running it
twice gives byte-identical files. Each model is also checked before it is written: the
scikit-learn ones against scikit-learn's own predictions, the hand-built ones against a numpy
forward pass.

Opsets are kept conservative because tract-onnx loads these files: ai.onnx opset <= 15,
ai.onnx.ml opset <= 3, ir_version 8. skl2onnx picks the lowest opset each converter needs.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models" / "onnx"
FIXTURES_DIR = ROOT / "tests" / "fixtures" / "onnx"

OPSET = 15  # ai.onnx: the hand-built graphs use exactly this; skl2onnx may pick lower.
ML_OPSET = 3  # ai.onnx.ml: an upper bound for skl2onnx.
IR_VERSION = 8
BATCH = "N"  # name of the symbolic batch dimension on every input and output
IRIS_ROWS = [0, 1, 2, 50, 51, 52, 100, 101, 102, 149]  # real rows, all three classes
IRIS_LABELS = np.array(["setosa", "versicolor", "virginica"])

DTYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT64: "int64",
    TensorProto.STRING: "string",
}


# ---------------------------------------------------------------------------------------------
# Helpers


def name_batch_dims(model):
    """Gives every unnamed, unsized leading dimension of the graph's inputs and outputs the name
    N, so the batch axis is one symbol everywhere (skl2onnx leaves it blank)."""
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and not dims[0].dim_param:
            dims[0].dim_param = BATCH
    return model


def finish(name, model):
    model.ir_version = IR_VERSION
    model.graph.name = name  # skl2onnx names the graph with a random uuid
    # skl2onnx 1.20 lists the default domain twice when a graph has only ai.onnx.ml nodes: keep one.
    versions = {}
    for imp in model.opset_import:
        versions[imp.domain] = max(imp.version, versions.get(imp.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    for imp in model.opset_import:
        limit = ML_OPSET if imp.domain == "ai.onnx.ml" else OPSET
        assert imp.domain in ("", "ai.onnx", "ai.onnx.ml"), imp.domain
        assert imp.version <= limit, (imp.domain, imp.version)
    onnx.checker.check_model(model, full_check=True)
    return model


def rand(rng, shape, scale=1.0):
    """Float32 random values rounded to 4 decimals, so the fixtures stay short."""
    return np.round(rng.standard_normal(shape) * scale, 4).astype(np.float32)


def tensor_json(array):
    array = np.asarray(array)
    if array.dtype == np.float32:
        assert np.all(np.isfinite(array))
        dtype, data = "float32", [float(str(v)) for v in array.ravel()]  # shortest f32 repr
    elif array.dtype == np.float64:
        assert np.all(np.isfinite(array))
        dtype, data = "float64", [float(v) for v in array.ravel()]
    elif array.dtype == np.int64:
        dtype, data = "int64", [int(v) for v in array.ravel()]
    elif array.dtype == object or array.dtype.kind == "U":
        dtype, data = "string", [str(v) for v in array.ravel()]
    else:
        raise TypeError(f"unsupported dtype {array.dtype}")
    return {"shape": list(array.shape), "dtype": dtype, "data": data}


def dump_fixture(fixture):
    """JSON with one tensor per line: readable and short."""
    lines = ["{", f'  "model": {json.dumps(fixture["model"])},']
    for section in ("inputs", "outputs"):
        lines.append(f'  "{section}": {{')
        items = list(fixture[section].items())
        for i, (name, t) in enumerate(items):
            comma = "," if i + 1 < len(items) else ""
            lines.append(f"    {json.dumps(name)}: {json.dumps(t)}{comma}")
        lines.append("  }," if section == "inputs" else "  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def describe(value):
    t = value.type.tensor_type
    dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return value.name, dims, DTYPES.get(t.elem_type, TensorProto.DataType.Name(t.elem_type))


def export(name, model, inputs, check):
    """Saves the model, runs onnxruntime on `inputs`, checks the outputs and writes the fixture."""
    finish(name, model)
    data = model.SerializeToString()
    path = MODELS_DIR / f"{name}.onnx"
    path.write_bytes(data)

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in model.graph.input]
    assert sorted(graph_inputs) == sorted(inputs), (graph_inputs, list(inputs))
    output_names = [o.name for o in model.graph.output]
    outputs = dict(zip(output_names, session.run(output_names, inputs)))
    check(outputs)

    fixture = {
        "model": path.name,
        "inputs": {k: tensor_json(inputs[k]) for k in graph_inputs},
        "outputs": {k: tensor_json(outputs[k]) for k in output_names},
    }
    (FIXTURES_DIR / f"{name}.json").write_text(dump_fixture(fixture))

    opsets = ", ".join(f"{imp.domain or 'ai.onnx'} {imp.version}" for imp in model.opset_import)
    print(f"{path.name}: {len(data)} bytes, ir_version {model.ir_version}, opsets: {opsets}")
    print(f"  ops: {', '.join(sorted({n.op_type for n in model.graph.node}))}")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            vname, dims, dtype = describe(value)
            print(f"  {kind:6} {vname}: {dims} {dtype}")


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# scikit-learn models


def iris():
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def pipeline_logreg():
    X, y = iris()
    scaler, clf = StandardScaler(), LogisticRegression(max_iter=1000)
    pipe = make_pipeline(scaler, clf).fit(X, y)
    # div="div": plain Sub/Div instead of ai.onnx.ml Scaler, which tract-onnx does not implement.
    model = convert_sklearn(
        pipe, initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}, id(scaler): {"div": "div"}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    rows = X[IRIS_ROWS]

    def check(out):
        assert (out["label"] == pipe.predict(rows)).all()
        close(out["probabilities"], pipe.predict_proba(rows))
    export("pipeline_logreg", name_batch_dims(model), {"input": rows}, check)


def random_forest(name, X, y, rows=8):
    X = X.astype(np.float32)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    clf = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0, n_jobs=1)
    clf.fit(X_train, y_train)
    model = convert_sklearn(
        clf, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    rows = X_test[:rows]

    def check(out):
        assert (out["label"] == clf.predict(rows)).all()
        close(out["probabilities"], clf.predict_proba(rows))
    export(name, name_batch_dims(model), {"input": rows}, check)


def forest():
    random_forest("forest", *load_wine(return_X_y=True))  # 13 features, 3 classes


def forest_binary():
    # 30 features, 2 classes. TreeEnsembleClassifier uses its two-class layout here (one score per
    # row, expanded to [N,2]); tract-onnx 0.23.9 gets `label` wrong in that layout.
    random_forest("forest_binary", *load_breast_cancer(return_X_y=True))


def gbr():
    X, y = load_diabetes(return_X_y=True)  # 10 features
    X = X.astype(np.float32)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0)
    reg = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0)
    reg.fit(X_train, y_train)
    model = convert_sklearn(
        reg, initial_types=[("input", FloatTensorType([None, 10]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    rows = X_test[:8]

    def check(out):
        assert out["variable"].shape == (len(rows), 1)
        close(out["variable"][:, 0], reg.predict(rows), tol=1e-3)
    export("gbr", name_batch_dims(model), {"input": rows}, check)


def string_labels():
    """skl2onnx's own graph for string classes: LinearClassifier with classlabels_strings."""
    X, y = iris()
    clf = LogisticRegression(max_iter=1000).fit(X, IRIS_LABELS[y])
    model = convert_sklearn(
        clf, initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    rows = X[IRIS_ROWS]

    def check(out):
        assert list(out["label"]) == list(clf.predict(rows))
        close(out["probabilities"], clf.predict_proba(rows))
    export("string_labels", name_batch_dims(model), {"input": rows}, check)


def string_labels_mapped():
    """The same string output, built so tract-onnx 0.23.9 can load it: the classifier keeps
    integer classes and a CategoryMapper turns the int64 label into its string. (tract cannot
    build a LinearClassifier or TreeEnsembleClassifier whose labels are strings.)"""
    X, y = iris()
    clf = LogisticRegression(max_iter=1000).fit(X, y)
    model = convert_sklearn(
        clf, initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["label_index" if o == "label" else o for o in node.output]
    graph.node.append(helper.make_node(
        "CategoryMapper", ["label_index"], ["label"], domain="ai.onnx.ml",
        cats_int64s=list(range(len(IRIS_LABELS))), cats_strings=list(IRIS_LABELS),
        default_string="unknown"))
    for value in graph.output:
        if value.name == "label":
            value.type.tensor_type.elem_type = TensorProto.STRING
    rows = X[IRIS_ROWS]

    def check(out):
        assert list(out["label"]) == list(IRIS_LABELS[clf.predict(rows)])
        close(out["probabilities"], clf.predict_proba(rows))
    export("string_labels_mapped", name_batch_dims(model), {"input": rows}, check)


# ---------------------------------------------------------------------------------------------
# Hand-built graphs


def f32_input(name, *dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, *dims])


def build(graph_name, nodes, inputs, outputs, weights):
    initializers = [numpy_helper.from_array(v, name=k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="flotilla/scripts/export_onnx_examples.py",
                              ir_version=IR_VERSION)
    return model


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cnn():
    rng = np.random.default_rng(1)
    w = {
        "conv_w": rand(rng, (4, 1, 3, 3), 0.5),
        "conv_b": rand(rng, (4,), 0.1),
        "fc_w": rand(rng, (64, 10), 0.2),
        "fc_b": rand(rng, (10,), 0.1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    model = build("cnn", nodes, [f32_input("x", 1, 8, 8)], [f32_input("probs", 10)], w)
    x = rand(rng, (5, 1, 8, 8))

    def reference(x):
        n = x.shape[0]
        padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
        conv = np.zeros((n, 4, 8, 8))
        for i in range(8):
            for j in range(8):
                patch = padded[:, i:i + 3, j:j + 3]  # [n, 3, 3]
                conv[:, :, i, j] = np.einsum("nab,cab->nc", patch, w["conv_w"][:, 0])
        conv = np.maximum(conv + w["conv_b"][None, :, None, None], 0)
        pool = conv.reshape(n, 4, 4, 2, 4, 2).max(axis=(3, 5))
        return softmax(pool.reshape(n, 64) @ w["fc_w"] + w["fc_b"])

    export("cnn", model, {"x": x}, lambda out: close(out["probs"], reference(x), 1e-5))


def two_inputs():
    rng = np.random.default_rng(2)
    w = {"w": rand(rng, (5, 2)), "bias": rand(rng, (2,))}
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("MatMul", ["ab", "w"], ["ab_w"]),
        helper.make_node("Add", ["ab_w", "bias"], ["y"]),
    ]
    model = build("two_inputs", nodes, [f32_input("a", 3), f32_input("b", 2)], [f32_input("y", 2)],
                  w)
    a, b = rand(rng, (6, 3)), rand(rng, (6, 2))
    ref = np.concatenate([a, b], axis=1).astype(np.float64) @ w["w"] + w["bias"]
    export("two_inputs", model, {"a": a, "b": b}, lambda out: close(out["y"], ref, 1e-5))


def mlp():
    rng = np.random.default_rng(3)
    sizes = [64, 256, 256, 10]
    w, nodes, prev = {}, [], "x"
    for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        w[f"w{k}"] = rand(rng, (fan_in, fan_out), np.sqrt(2.0 / fan_in))
        w[f"b{k}"] = rand(rng, (fan_out,), 0.05)
        last = k == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"w{k}"], [f"mm{k}"]))
        nodes.append(helper.make_node("Add", [f"mm{k}", f"b{k}"], ["logits" if last else f"z{k}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{k}"], [f"h{k}"]))
            prev = f"h{k}"
    model = build("mlp", nodes, [f32_input("x", 64)], [f32_input("logits", 10)], w)
    x = rand(rng, (5, 64))

    h = x.astype(np.float64)
    for k in range(3):
        h = h @ w[f"w{k}"] + w[f"b{k}"]
        h = np.maximum(h, 0) if k < 2 else h
    export("mlp", model, {"x": x}, lambda out: close(out["logits"], h, 1e-4))


def int_input():
    rng = np.random.default_rng(4)
    w = {"w": rand(rng, (4, 3)), "bias": rand(rng, (3,))}
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["ids_f", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["y"]),
    ]
    ids_info = helper.make_tensor_value_info("ids", TensorProto.INT64, [BATCH, 4])
    model = build("int_input", nodes, [ids_info], [f32_input("y", 3)], w)
    ids = rng.integers(-5, 10, size=(6, 4)).astype(np.int64)
    ref = ids.astype(np.float64) @ w["w"] + w["bias"]
    export("int_input", model, {"ids": ids}, lambda out: close(out["y"], ref, 1e-5))


# ---------------------------------------------------------------------------------------------
# Broken files for error tests


def error_fixtures():
    truncated = (MODELS_DIR / "cnn.onnx").read_bytes()[:100]
    (FIXTURES_DIR / "corrupt.onnx").write_bytes(truncated)
    try:
        onnx.load_from_string(truncated)
    except Exception as e:  # protobuf DecodeError
        print(f"corrupt.onnx: {len(truncated)} bytes, onnx.load fails as intended: "
              f"{type(e).__name__}")
    else:
        sys.exit("corrupt.onnx unexpectedly parses")

    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="ai.custom", intensity=3)
    graph = helper.make_graph([node], "unsupported_op", [f32_input("x", 4)], [f32_input("y", 4)])
    model = helper.make_model(graph, ir_version=IR_VERSION, opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid("ai.custom", 1)],
        producer_name="flotilla/scripts/export_onnx_examples.py")
    onnx.checker.check_model(model)  # unknown domains are not schema-checked
    data = model.SerializeToString()
    (FIXTURES_DIR / "unsupported_op.onnx").write_bytes(data)
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as e:
        print(f"unsupported_op.onnx: {len(data)} bytes, valid protobuf; onnxruntime refuses it: "
              f"{str(e).splitlines()[0][:120]}")
    else:
        sys.exit("unsupported_op.onnx unexpectedly loads in onnxruntime")


def main():
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    for make in (pipeline_logreg, forest, forest_binary, gbr, string_labels, string_labels_mapped,
                 cnn, two_inputs, mlp, int_input):
        make()
    error_fixtures()


if __name__ == "__main__":
    main()
