//! ONNX models end to end through a real nats-server: every request form (flat and nested
//! rows, binary tensors, named inputs, integer inputs) against onnxruntime's outputs, the
//! discovery metadata, clear 400s for requests that do not fit, a batch where one request
//! fails in the model and the others do not, and the command line.

use std::time::Duration;

use flotilla_model::{
    Backend, ComputeError, Computed, DType, Data, Kind, Model, Signature, Tensor, TensorSpec,
};
use serde_json::{json, Value};

use crate::support::*;

pub fn onnx_path(name: &str) -> String {
    repo_path(&format!("models/onnx/{name}.onnx"))
        .display()
        .to_string()
}

pub fn onnx_model(name: &str) -> Model {
    Model::load(&repo_path(&format!("models/onnx/{name}.onnx"))).unwrap()
}

pub fn fixture(name: &str) -> Value {
    let path = repo_path(&format!("tests/fixtures/onnx/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A fixture input as flat rows.
fn flat_rows(t: &Value) -> Vec<Vec<f64>> {
    let shape = numbers(&t["shape"]);
    let per_row = (shape[1..].iter().product::<f64>()) as usize;
    numbers(&t["data"])
        .chunks(per_row)
        .map(<[f64]>::to_vec)
        .collect()
}

/// Every number of a JSON value, depth first.
fn flatten(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

fn assert_outputs(got: &[f64], want: &Value, what: &str) {
    let want = numbers(&want["data"]);
    assert_eq!(got.len(), want.len(), "{what}: {got:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4, "{what}[{i}]: got {g}, want {w}");
    }
}

/// The reply's binary `outputs`: shape and values.
fn binary_outputs(reply: &Reply) -> (Vec<usize>, Vec<f32>) {
    #[derive(serde::Deserialize)]
    struct T {
        shape: Vec<usize>,
        dtype: String,
        data: serde_bytes_compat::Bytes,
    }
    #[derive(serde::Deserialize)]
    struct R {
        outputs: T,
        id: String,
    }
    let r: R = rmp_serde::from_slice(&reply.body).unwrap();
    assert_eq!(r.outputs.dtype, "f32");
    assert_eq!(r.id, "bin", "the id comes back");
    let values = r
        .outputs
        .data
        .0
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (r.outputs.shape, values)
}

mod serde_bytes_compat {
    /// A MessagePack bin, read without the serde_bytes crate.
    pub struct Bytes(pub Vec<u8>);
    impl<'de> serde::Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

fn binary_request(rows: usize, row_shape: &[usize], values: &[f32]) -> Vec<u8> {
    flotilla_proto::PredictRequest::encode_binary_f32(rows, row_shape, values, Some("bin")).to_vec()
}

#[tokio::test]
async fn onnx_models_answer_like_onnxruntime_in_every_request_form() {
    let server = server();
    let names = [
        "pipeline_logreg",
        "string_labels_mapped",
        "forest_binary",
        "cnn",
        "two_inputs",
        "int_input",
        "mlp",
        "gbr",
    ];
    let models = names.iter().map(|n| (*n, onnx_model(n))).collect();
    let _w = Worker::start(config(&server), models).await;
    let nats = connect(&server).await;

    // Classifiers: flat rows in JSON and MessagePack; labels keep their type.
    for name in ["pipeline_logreg", "string_labels_mapped", "forest_binary"] {
        let fx = fixture(name);
        let rows = flat_rows(&fx["inputs"]["input"]);
        for body in [
            json!({"inputs": rows}).to_string().into_bytes(),
            msgpack(&json!({"inputs": rows})),
        ] {
            let reply = request(&nats, name, &[], body).await;
            assert_eq!(reply.error_code(), None, "{name}: {:?}", reply.json());
            let v = reply.json();
            assert_outputs(
                &flatten(&v["outputs"]),
                &fx["outputs"]["probabilities"],
                name,
            );
            assert_eq!(v["labels"], fx["outputs"]["label"]["data"], "{name}");
        }
    }

    // The CNN: nested rows, flat rows and a binary f32 tensor, all the same answer.
    let fx = fixture("cnn");
    let input = &fx["inputs"]["x"];
    let flat = flat_rows(input);
    let nested: Vec<Value> = flat
        .iter()
        .map(|r| json!([r.chunks(8).collect::<Vec<_>>()]))
        .collect();
    for body in [json!({"inputs": nested}), json!({"inputs": flat})] {
        let reply = request(&nats, "cnn", &[], body.to_string()).await;
        assert_eq!(reply.error_code(), None, "{:?}", reply.json());
        let v = reply.json();
        assert_eq!(v["outputs"].as_array().unwrap().len(), flat.len());
        assert_outputs(&flatten(&v["outputs"]), &fx["outputs"]["probs"], "cnn");
    }
    let values: Vec<f32> = flat.concat().iter().map(|&v| v as f32).collect();
    let reply = request(
        &nats,
        "cnn",
        &[],
        binary_request(flat.len(), &[1, 8, 8], &values),
    )
    .await;
    assert_eq!(reply.error_code(), None, "{:?}", reply.body);
    let (shape, got) = binary_outputs(&reply);
    assert_eq!(shape, [flat.len(), 10]);
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    assert_outputs(&got, &fx["outputs"]["probs"], "cnn binary");

    // Named inputs, integer inputs, a regressor's per-row shape, y_pred for one row.
    let fx = fixture("two_inputs");
    let body =
        json!({"inputs": {"a": flat_rows(&fx["inputs"]["a"]), "b": flat_rows(&fx["inputs"]["b"])}});
    let v = request(&nats, "two_inputs", &[], msgpack(&body))
        .await
        .json();
    assert_outputs(&flatten(&v["outputs"]), &fx["outputs"]["y"], "two_inputs");
    let fx = fixture("int_input");
    let body = json!({"inputs": flat_rows(&fx["inputs"]["ids"])});
    let v = request(&nats, "int_input", &[], body.to_string())
        .await
        .json();
    assert_outputs(&flatten(&v["outputs"]), &fx["outputs"]["y"], "int_input");
    let fx = fixture("gbr");
    let rows = flat_rows(&fx["inputs"]["input"]);
    let v = request(&nats, "gbr", &[], json!({"inputs": rows}).to_string())
        .await
        .json();
    assert_eq!(v["outputs"][0].as_array().unwrap().len(), 1, "[N, 1]: {v}");
    assert_outputs(&flatten(&v["outputs"]), &fx["outputs"]["variable"], "gbr");
    let v = request(&nats, "gbr", &[], json!({"x": rows[0]}).to_string())
        .await
        .json();
    let want = numbers(&fx["outputs"]["variable"]["data"])[0];
    assert!((v["y_pred"].as_f64().unwrap() - want).abs() < 1e-4, "{v}");
    let fx = fixture("mlp");
    let body = json!({"inputs": flat_rows(&fx["inputs"]["x"])});
    let v = request(&nats, "mlp", &[], msgpack(&body)).await.json();
    assert_outputs(&flatten(&v["outputs"]), &fx["outputs"]["logits"], "mlp");
}

#[tokio::test]
async fn discovery_describes_onnx_models_by_shape_and_dtype() {
    let server = server();
    let models = vec![("cnn", onnx_model("cnn")), ("iris", example_model("iris"))];
    let _w = Worker::start(config(&server), models).await;
    let nats = connect(&server).await;
    let reply = tokio::time::timeout(WAIT, nats.request("$SRV.INFO.flotilla", "".into()))
        .await
        .unwrap()
        .unwrap();
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    let endpoints = info["endpoints"].as_array().unwrap();
    let meta =
        |name: &str| endpoints.iter().find(|e| e["name"] == name).unwrap()["metadata"].clone();
    let cnn = meta("cnn");
    assert!(
        cnn.as_object().unwrap().values().all(Value::is_string),
        "ADR-32 metadata values are strings: {cnn}"
    );
    assert_eq!(cnn["model"], "cnn");
    assert_eq!(cnn["kind"], "onnx");
    assert_eq!(cnn["version"], "1");
    assert_eq!(cnn["input_shape"], "[-1,1,8,8]");
    assert_eq!(cnn["output_shape"], "[-1,10]");
    assert_eq!(cnn["dtype"], "f32");
    let inputs: Value = serde_json::from_str(cnn["inputs"].as_str().unwrap()).unwrap();
    assert_eq!(
        inputs,
        json!([{"name": "x", "shape": [-1, 1, 8, 8], "dtype": "f32"}])
    );
    let iris = meta("iris");
    assert_eq!(
        (&iris["kind"], &iris["classifier"], &iris["input_shape"]),
        (&json!("dense"), &json!("true"), &json!("[-1,4]"))
    );
}

#[tokio::test]
async fn requests_that_do_not_fit_an_onnx_model_get_a_400_naming_what_it_expects() {
    let server = server();
    let models = vec![
        ("cnn", onnx_model("cnn")),
        ("two", onnx_model("two_inputs")),
        ("ids", onnx_model("int_input")),
    ];
    let _w = Worker::start(config(&server), models).await;
    let nats = connect(&server).await;
    let cases = [
        (
            "cnn",
            json!({"inputs": [vec![0.5; 63]]}),
            "expects rows of shape [1, 8, 8] (64 values)",
        ),
        (
            "cnn",
            json!({"inputs": [vec![vec![0.5; 8]; 8]]}),
            "rows have shape [8, 8]",
        ),
        (
            "cnn",
            json!({"inputs": ["a text"]}),
            "holds strings but model \"cnn\" takes numbers",
        ),
        (
            "two",
            json!({"inputs": [[1, 2, 3, 4, 5]]}),
            "send \"inputs\" as a map from input name",
        ),
        (
            "two",
            json!({"inputs": {"a": [[1, 2, 3]]}}),
            "has no input \"b\"",
        ),
        (
            "ids",
            json!({"inputs": [[1, 2, 3.5, 4]]}),
            "takes i64 (integers)",
        ),
    ];
    for (model, body, want) in cases {
        let reply = request(&nats, model, &[], body.to_string()).await;
        assert_eq!(reply.error_code(), Some(400), "{model} {body}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(want), "{model} {body}: {message}");
    }
}

/// A backend that fails on any batch holding a negative first value: what a model does when
/// one request's values break it.
#[derive(Debug)]
struct Fussy(Signature);

impl Backend for Fussy {
    fn kind(&self) -> Kind {
        Kind::Onnx
    }
    fn signature(&self) -> &Signature {
        &self.0
    }
    fn compute(&self, inputs: Vec<Tensor>) -> Result<Computed, ComputeError> {
        let Data::F32(v) = &inputs[0].data else {
            unreachable!()
        };
        if v.iter().step_by(2).any(|&x| x < 0.0) {
            return Err(ComputeError::Failed("a negative first value".into()));
        }
        let out = v.chunks(2).map(|r| r[0] + r[1]).collect();
        Ok(Computed {
            outputs: Tensor::new(inputs[0].rows, vec![], Data::F32(out)),
            labels: None,
            extras: Vec::new(),
        })
    }
}

#[tokio::test]
async fn a_request_that_fails_in_the_model_does_not_fail_its_batch() {
    let server = server();
    let mut cfg = config(&server);
    // Long enough that the requests below share one batch.
    cfg.max_batch_delay_us = 200_000;
    let fussy = Fussy(Signature {
        inputs: vec![TensorSpec::new("x", vec![2], DType::F32)],
        output: TensorSpec::new("sum", vec![], DType::F32),
        labels: None,
    });
    let worker = Worker::start(cfg, vec![("fussy", Model::new(Box::new(fussy), None))]).await;
    let nats = connect(&server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let nats = nats.clone();
        let first = if i == 3 { -1.0 } else { i as f64 };
        tasks.spawn(async move {
            let reply = request(&nats, "fussy", &[], json!({"x": [first, 10]}).to_string()).await;
            (first, reply.error_code(), reply.json())
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (first, code, body) = done.unwrap();
        if first < 0.0 {
            assert_eq!(code, Some(500), "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("a negative first value"), "{message}");
        } else {
            assert_eq!(code, None, "{body}");
            assert_eq!(body["y_pred"], first + 10.0, "{body}");
        }
    }
    let batches = worker.metric("flotilla_batch_rows_count{model=\"fussy\"}");
    assert!(
        batches < 6.0,
        "the requests never shared a batch ({batches} batches)"
    );
}

async fn flotilla(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_cli_serves_predicts_and_refuses_onnx_files() {
    let server = server();
    let url = server.url();
    let cnn = onnx_path("cnn");
    let spec = format!("cnn={cnn}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "worker",
            "--nats",
            &url,
            "--metrics-addr",
            "",
            "--model",
            &spec,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = flotilla_proto::Client::new(connect(&server).await);
    wait_answering(&client, "cnn", 64).await;
    let row = vec!["0.25"; 64].join(",");
    let out = flotilla(&["predict", "cnn", "--nats", &url, "--x", &row]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs = flatten(&v["y_pred"]);
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{v}");
    sigterm(&child);
    let _ = tokio::time::timeout(WAIT, child.wait()).await;

    // A worker refuses to start on a file tract cannot run, and says why.
    for (file, want) in [
        (
            "tests/fixtures/onnx/unsupported_op.onnx",
            "unsupported operator \"Frobnicate\"",
        ),
        (
            "tests/fixtures/onnx/corrupt.onnx",
            "not a readable ONNX file",
        ),
    ] {
        let spec = format!("bad={}", repo_path(file).display());
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            flotilla(&[
                "worker",
                "--nats",
                &url,
                "--metrics-addr",
                "",
                "--model",
                &spec,
            ]),
        )
        .await
        .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{file}: {stderr}");
    }
}
