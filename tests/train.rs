//! `flotilla train` end to end on the datasets in data/ (exported from scikit-learn by
//! scripts/export_datasets.py): each model kind reaches its accuracy bar with the default
//! settings, the artifact it writes is served exactly as measured, and bad input is refused
//! with a message that says where. No NATS server is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_model::{Artifact, ArtifactEncoding, Label, Model};
use flotilla_train::{self as train, Dataset, ModelKind, TrainConfig, Trained};
use ndarray::Axis;

/// scikit-learn's LinearRegression on the same split, as printed by
/// `python3 scripts/sklearn_baseline.py` (scikit-learn 1.9.1).
const SKLEARN_DIABETES_R2: f64 = 0.4713;

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn fit(file: &str, target: &str, kind: ModelKind) -> (Dataset, Trained) {
    let dataset = train::load_csv(&repo_path(file), target).unwrap();
    let trained = train::fit(&dataset, kind, &TrainConfig::default(), &mut |_| {}).unwrap();
    (dataset, trained)
}

/// Serves the artifact as a worker would, from its encoded bytes, and returns the share of
/// validation rows whose predicted label is the row's own.
fn served_accuracy(dataset: &Dataset, trained: &Trained) -> f64 {
    let bytes = trained.artifact.to_bytes(ArtifactEncoding::MsgPack);
    let model = Model::from_bytes(&bytes).unwrap();
    let validation = &trained.split.validation;
    let outputs = model.forward(dataset.x.select(Axis(0), validation).view());
    let right = validation
        .iter()
        .zip(outputs.rows())
        .filter(|&(&row, out)| {
            model.label(out.as_slice().unwrap()) == Some(Label::Name(dataset.y[row].clone()))
        })
        .count();
    right as f64 / validation.len() as f64
}

fn assert_classifier(file: &str, target: &str, kind: ModelKind, bar: f64) -> Trained {
    let (dataset, trained) = fit(file, target, kind);
    let accuracy = trained.metrics["accuracy"];
    assert!(
        accuracy >= bar,
        "{file} {kind}: accuracy {accuracy} < {bar}"
    );
    assert_eq!(trained.primary_metric.name, "accuracy");
    assert_eq!(trained.primary_metric.value, accuracy);
    assert_eq!(
        served_accuracy(&dataset, &trained),
        accuracy,
        "{file} {kind}"
    );
    let meta = trained.artifact.metadata.as_ref().unwrap();
    assert_eq!(meta["trained_by"], "flotilla train");
    assert_eq!(meta["kind"], kind.name());
    assert_eq!(meta["target"], target);
    assert_eq!(
        meta["features"].as_array().unwrap().len(),
        dataset.features.len()
    );
    assert_eq!(meta["metrics"]["accuracy"], accuracy);
    assert_eq!(meta["validation"]["seed"], 42);
    assert_eq!(meta["epochs_run"], trained.history.len());
    trained
}

#[test]
fn linear_regression_on_diabetes_matches_scikit_learn() {
    let (dataset, trained) = fit("data/diabetes.csv", "target", ModelKind::Linear);
    let r2 = trained.metrics["r2"];
    assert!(
        (r2 - SKLEARN_DIABETES_R2).abs() <= 0.02,
        "r2 {r2} vs scikit-learn {SKLEARN_DIABETES_R2}"
    );
    assert_eq!(trained.primary_metric.name, "r2");
    for key in ["mse", "rmse", "mae"] {
        assert!(trained.metrics[key] > 0.0, "{key}");
    }
    // Predictions come out in the target's units (disease progression, about 25 to 346).
    let a = &trained.artifact;
    assert_eq!((a.inputs, a.outputs, a.layers.len()), (10, 1, 1));
    assert_eq!(a.layers[0].activation, "identity");
    assert!(a.labels.is_none());
    let model = Model::from_artifact(a.clone()).unwrap();
    let predicted = model.forward(dataset.x.view());
    let mean = predicted.mean().unwrap();
    assert!((100.0..200.0).contains(&mean), "mean prediction {mean}");
}

#[test]
fn softmax_regression_on_iris() {
    let trained = assert_classifier("data/iris.csv", "species", ModelKind::Softmax, 0.93);
    let labels = trained.artifact.labels.as_ref().unwrap();
    let names: Vec<String> = labels.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["setosa", "versicolor", "virginica"]);
    assert_eq!(trained.artifact.layers[0].activation, "softmax");
}

#[test]
fn softmax_regression_on_wine() {
    assert_classifier("data/wine.csv", "class", ModelKind::Softmax, 0.93);
}

#[test]
fn logistic_regression_on_breast_cancer() {
    let trained = assert_classifier(
        "data/breast_cancer.csv",
        "diagnosis",
        ModelKind::Logistic,
        0.95,
    );
    let a = &trained.artifact;
    assert_eq!(a.outputs, 1);
    assert_eq!(a.layers[0].activation, "sigmoid");
    assert_eq!(
        a.labels.as_ref().unwrap(),
        &[
            Label::Name("benign".into()),
            Label::Name("malignant".into())
        ]
    );
}

#[test]
fn mlp_on_iris() {
    let trained = assert_classifier("data/iris.csv", "species", ModelKind::Mlp, 0.93);
    let activations: Vec<&str> = trained
        .artifact
        .layers
        .iter()
        .map(|l| l.activation.as_str())
        .collect();
    assert_eq!(activations, ["relu", "relu", "softmax"]);
}

#[test]
fn artifacts_round_trip_through_both_encodings() {
    let (dataset, trained) = fit("data/iris.csv", "species", ModelKind::Softmax);
    let bytes = trained.artifact.to_bytes(ArtifactEncoding::MsgPack);
    assert_eq!(Artifact::from_bytes(&bytes).unwrap(), trained.artifact);
    // serde_json (without its `float_roundtrip` feature) may read a float back one ulp off,
    // so the JSON form is compared by what it predicts. A weight one f64 ulp off can round to
    // the neighbouring f32 in the served model, so the two agree to f32 precision, not exactly.
    let bytes = trained.artifact.to_bytes(ArtifactEncoding::Json);
    let from_json = Model::from_bytes(&bytes).unwrap();
    let exact = Model::from_artifact(trained.artifact.clone()).unwrap();
    let (a, b) = (
        from_json.forward(dataset.x.view()),
        exact.forward(dataset.x.view()),
    );
    assert!(a
        .iter()
        .zip(&b)
        .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs() + 1e-7));
}

/// Writes `text` as a CSV file and returns the error training on it gives.
fn error_for(text: &str, target: &str, kind: ModelKind) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, text).unwrap();
    let result = train::load_csv(&path, target).and_then(|dataset| {
        let config = TrainConfig {
            epochs: 2,
            ..TrainConfig::default()
        };
        train::fit(&dataset, kind, &config, &mut |_| {})
    });
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("bad.csv") || !err.contains(".csv"), "{err}");
    err
}

/// 40 rows: a and b vary, the label follows a.
fn rows(extra: impl Fn(usize) -> String) -> String {
    (0..40)
        .map(|i| format!("{},{},{}\n", i % 7, (i * 3) % 11, extra(i)))
        .collect()
}

#[test]
fn bad_input_is_refused_with_a_message_that_says_where() {
    let linear = ModelKind::Linear;

    let err = error_for("a,b,y\n1,2,3\n", "price", linear);
    assert!(
        err.contains("no column named \"price\"") && err.contains("a, b, y"),
        "{err}"
    );

    let text = format!("a,b,y\n{}1,oops,3\n", rows(|i| i.to_string()));
    let err = error_for(&text, "y", linear);
    assert!(
        err.contains("bad.csv: line 42, column `b`: \"oops\""),
        "{err}"
    );

    let err = error_for("", "y", linear);
    assert!(err.contains("empty"), "{err}");
    let err = error_for("a,b,y\n", "y", linear);
    assert!(err.contains("no data rows"), "{err}");

    let text = format!("a,b,y\n{}1,2\n", rows(|i| i.to_string()));
    let err = error_for(&text, "y", linear);
    assert!(
        err.contains("line 42 has 2 fields but the header has 3"),
        "{err}"
    );

    // Issue 8, item 18: a constant column is kept with scale 1 (as scikit-learn does), and a
    // cell too large to standardise is refused before training, by column.
    let text = format!(
        "a,flat,y\n{}",
        (0..40).map(|i| format!("{i},5,{i}\n")).collect::<String>()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.csv");
    std::fs::write(&path, &text).unwrap();
    let dataset = train::load_csv(&path, "y").unwrap();
    let config = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    let trained = train::fit(&dataset, linear, &config, &mut |_| {}).unwrap();
    assert_eq!(trained.artifact.scaler.as_ref().unwrap().std[1], 1.0);
    let text = format!(
        "a,huge,y\n{}",
        (0..40)
            .map(|i| format!("{i},{},{i}\n", if i == 7 { "1e308" } else { "-1e308" }))
            .collect::<String>()
    );
    let epochs = std::sync::atomic::AtomicUsize::new(0);
    let path = dir.path().join("huge.csv");
    std::fs::write(&path, &text).unwrap();
    let dataset = train::load_csv(&path, "y").unwrap();
    let err = train::fit(&dataset, linear, &TrainConfig::default(), &mut |_| {
        epochs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("feature `huge`"), "{err}");
    assert_eq!(epochs.into_inner(), 0, "refused before the first epoch");

    let text = format!("a,b,kind\n{}", rows(|i| ["x", "y", "z"][i % 3].to_owned()));
    let err = error_for(&text, "kind", ModelKind::Logistic);
    assert!(
        err.contains("3 classes (x, y, z)") && err.contains("--kind softmax"),
        "{err}"
    );
    let err = error_for(&text, "kind", linear);
    assert!(err.contains("line 2, target column `kind`: \"x\""), "{err}");
}

#[test]
fn the_cli_writes_the_model_and_the_plot_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let (out, plot) = (dir.path().join("iris.json"), dir.path().join("iris.png"));
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "train", "--target", "species", "--name", "iris", "--kind", "softmax",
        ])
        .arg("--data")
        .arg(repo_path("data/iris.csv"))
        .arg("--out")
        .arg(&out)
        .arg("--plot")
        .arg(&plot)
        .args(["--epochs", "50", "--json"])
        .env("FLOTILLA_TRAIN_OPTIMIZER", "sgd")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["model"], "iris");
    assert!(report["epochs_run"].as_u64().unwrap() <= 50);
    let model = Model::load(&out).unwrap();
    assert_eq!(model.metadata().unwrap()["optimizer"], "sgd");
    assert_eq!(model.metadata().unwrap()["metrics"], report["metrics"]);
    assert_eq!(&std::fs::read(&plot).unwrap()[1..4], b"PNG");

    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["train", "--data", "x.csv", "--target", "y", "--kind", "mlp"])
        .args(["--name", "no.dots"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--name") && stderr.contains("no.dots"),
        "{stderr}"
    );
}
