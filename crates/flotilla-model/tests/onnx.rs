//! The ONNX backend against onnxruntime: every example in `models/onnx/` computes what
//! onnxruntime computed for the fixed inputs in `tests/fixtures/onnx/` (abs 1e-4 for floats,
//! exactly for labels), and every broken file is refused with a message naming the problem.

use std::path::PathBuf;

use flotilla_model::{DType, Data, Kind, Label, Model, ModelError, Tensor};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let path = root().join(format!("tests/fixtures/onnx/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(name: &str) -> Model {
    Model::load(&root().join(format!("models/onnx/{name}.onnx")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The fixture's inputs as tensors, in the model's input order.
fn inputs(model: &Model, fx: &Value) -> Vec<Tensor> {
    model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let t = &fx["inputs"][&spec.name];
            let shape: Vec<usize> = numbers(&t["shape"]).iter().map(|&d| d as usize).collect();
            let values = numbers(&t["data"]);
            let data = match spec.dtype {
                DType::F32 => Data::F32(values.iter().map(|&v| v as f32).collect()),
                DType::F64 => Data::F64(values),
                DType::I64 => Data::I64(values.iter().map(|&v| v as i64).collect()),
                DType::String => unreachable!(),
            };
            Tensor::new(shape[0], shape[1..].to_vec(), data)
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4, "{what}[{i}]: got {g}, want {w}");
    }
}

/// Runs the fixture through the model and checks `outputs` against `output` and, for
/// classifiers, the labels against the fixture's `label`.
fn check(name: &str, output: &str) -> Model {
    let model = load(name);
    assert_eq!(model.kind(), Kind::Onnx);
    let fx = fixture(name);
    let computed = model.compute(inputs(&model, &fx)).unwrap();
    let want = &fx["outputs"][output];
    let shape: Vec<usize> = numbers(&want["shape"])
        .iter()
        .map(|&d| d as usize)
        .collect();
    assert_eq!(computed.outputs.shape(), shape, "{name}: output shape");
    assert_eq!(
        model.signature().output.shape,
        shape[1..],
        "{name}: signature"
    );
    let got = computed.outputs.data.to_f64().unwrap();
    assert_close(&got, &numbers(&want["data"]), name);
    match fx["outputs"].get("label") {
        None => assert!(computed.labels.is_none(), "{name}: no labels expected"),
        Some(label) => {
            let want: Vec<Label> = serde_json::from_value(label["data"].clone()).unwrap();
            assert_eq!(
                computed.labels.as_deref(),
                Some(&want[..]),
                "{name}: labels"
            );
        }
    }
    model
}

#[test]
fn a_scaler_and_logistic_regression_pipeline_matches_onnxruntime() {
    let m = check("pipeline_logreg", "probabilities");
    assert!(m.is_classifier());
    assert_eq!(m.signature().labels.as_ref().unwrap().dtype, DType::I64);
}

#[test]
fn a_random_forest_matches_onnxruntime() {
    check("forest", "probabilities");
}

/// tract's own `label` output is always the first class for two-class tree ensembles; the
/// labels come from the probabilities instead.
#[test]
fn a_two_class_forest_gets_its_labels_from_the_probabilities() {
    check("forest_binary", "probabilities");
}

#[test]
fn string_labels_stay_strings() {
    for name in ["string_labels_mapped", "string_labels"] {
        let m = check(name, "probabilities");
        assert_eq!(m.signature().labels.as_ref().unwrap().dtype, DType::String);
    }
}

#[test]
fn a_cnn_keeps_its_per_row_shapes() {
    let m = check("cnn", "probs");
    assert_eq!(m.signature().inputs[0].shape, [1, 8, 8]);
    assert_eq!(m.signature().inputs[0].dtype, DType::F32);
}

#[test]
fn two_named_inputs_are_fed_by_name() {
    let m = check("two_inputs", "y");
    let names: Vec<&str> = m
        .signature()
        .inputs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn integer_inputs_and_the_mlp_match_onnxruntime() {
    let m = check("int_input", "y");
    assert_eq!(m.signature().inputs[0].dtype, DType::I64);
    check("mlp", "logits");
}

#[test]
fn a_gradient_boosting_regressor_matches_onnxruntime() {
    let m = check("gbr", "variable");
    assert!(!m.is_classifier());
}

/// Large batches are split by rows over the rayon pool; the split must not change a value.
#[test]
fn split_batches_equal_one_piece() {
    let m = load("mlp");
    let rows = 300;
    let values: Vec<f32> = (0..rows * 64)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let input = || vec![Tensor::new(rows, vec![64], Data::F32(values.clone()))];
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let four = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let whole = one.install(|| m.compute(input()).unwrap());
    let split = four.install(|| m.compute(input()).unwrap());
    assert_eq!(whole.outputs, split.outputs);
    assert_eq!(whole.outputs.rows, rows);
}

fn refusal(path: PathBuf) -> String {
    let err = Model::load(&path).expect_err("must be refused");
    err.to_string()
}

#[test]
fn broken_files_are_refused_naming_the_problem() {
    let corrupt = refusal(root().join("tests/fixtures/onnx/corrupt.onnx"));
    assert!(corrupt.contains("not a readable ONNX file"), "{corrupt}");
    let unsupported = refusal(root().join("tests/fixtures/onnx/unsupported_op.onnx"));
    assert!(
        unsupported.contains("unsupported operator \"Frobnicate\"")
            && unsupported.contains("ai.custom"),
        "{unsupported}"
    );
    let err = Model::from_kind_bytes(Kind::Onnx, b"").unwrap_err();
    assert!(
        matches!(err, ModelError::Corrupt(_) | ModelError::Invalid { .. }),
        "{err}"
    );
}

#[test]
fn the_kind_comes_from_the_path() {
    use std::path::Path;
    assert_eq!(Kind::of_path(Path::new("a/b.onnx")), Some(Kind::Onnx));
    assert_eq!(Kind::of_path(Path::new("iris.json")), Some(Kind::Dense));
    assert_eq!(Kind::of_path(Path::new("iris.msgpack")), Some(Kind::Dense));
    assert_eq!(Kind::of_path(Path::new("dir")), None);
}

/// Single rows run through a second plan fixed to one row; it must agree with the batch plan.
#[test]
fn one_row_at_a_time_equals_the_batch() {
    for (name, output) in [
        ("cnn", "probs"),
        ("forest", "probabilities"),
        ("two_inputs", "y"),
    ] {
        let m = load(name);
        let fx = fixture(name);
        let batch = inputs(&m, &fx);
        let whole = m.compute(batch.clone()).unwrap();
        let whole = whole.outputs.data.to_f64().unwrap();
        let rows = batch[0].rows;
        let per_row = whole.len() / rows;
        for r in 0..rows {
            let one: Vec<Tensor> = batch
                .iter()
                .map(|t| {
                    let n = t.row_len();
                    let Data::F32(v) = &t.data else {
                        unreachable!()
                    };
                    Tensor::new(
                        1,
                        t.row_shape.clone(),
                        Data::F32(v[r * n..(r + 1) * n].to_vec()),
                    )
                })
                .collect();
            let got = m.compute(one).unwrap().outputs.data.to_f64().unwrap();
            assert_close(
                &got,
                &whole[r * per_row..(r + 1) * per_row],
                &format!("{name} {output} row {r}"),
            );
        }
    }
}
