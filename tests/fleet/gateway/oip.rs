//! The Open Inference Protocol routes: health, server and model metadata, readiness from the
//! fleet's discovery answers, infer with JSON and binary tensor data, FP32/FP64/BYTES.

use serde_json::{json, Value};

use super::*;

const IRIS_ROWS: [[f64; 4]; 2] = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];

async fn fleet(server: &NatsServer) -> Worker {
    Worker::start(
        config(server),
        vec![
            ("iris", example_model("iris")),
            ("linear", example_model("linear")),
        ],
    )
    .await
}

fn tensor(datatype: &str, rows: &[[f64; 4]]) -> Value {
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    json!({"name": "input", "shape": [rows.len(), 4], "datatype": datatype, "data": data})
}

/// The binary tensor data form of an infer request: JSON header, then the blobs.
fn binary_request(header: &Value, blobs: &[u8]) -> (Vec<u8>, String) {
    let mut body = serde_json::to_vec(header).unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(blobs);
    (body, length)
}

/// Splits a binary infer response into its JSON header and the blobs after it.
fn split_binary(answer: &Answer) -> (Value, &[u8]) {
    let n: usize = answer
        .header("Inference-Header-Content-Length")
        .expect("binary responses carry Inference-Header-Content-Length")
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&answer.body[..n]).unwrap(),
        &answer.body[n..],
    )
}

#[tokio::test]
async fn health_server_metadata_and_model_metadata() {
    let server = server();
    let _worker = fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;

    let live = get(&gateway.at("/v2/health/live")).await;
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    let ready = get(&gateway.at("/v2/health/ready")).await;
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));
    let meta = get(&gateway.at("/v2")).await.json();
    assert_eq!(meta["name"], "flotilla");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let iris = get(&gateway.at("/v2/models/iris")).await;
    assert_eq!(iris.status, 200, "{:?}", iris.body);
    let iris = iris.json();
    assert_eq!(iris["name"], "iris");
    assert_eq!(iris["versions"], json!(["1"]));
    assert_eq!(
        iris["inputs"],
        json!([{"name": "input", "datatype": "FP64", "shape": [-1, 4]}])
    );
    assert_eq!(
        iris["outputs"][0],
        json!({"name": "output", "datatype": "FP64", "shape": [-1, 3]})
    );
    let linear = get(&gateway.at("/v2/models/linear/versions/1"))
        .await
        .json();
    assert_eq!(linear["inputs"][0]["shape"], json!([-1, 10]));
    assert_eq!(linear["outputs"][0]["shape"], json!([-1, 1]));
    assert_eq!(
        linear["outputs"].as_array().unwrap().len(),
        1,
        "not a classifier"
    );

    let unknown = get(&gateway.at("/v2/models/nope")).await;
    assert!(unknown
        .oip_error(404)
        .contains("no model named \"nope\" is"));
    let version = get(&gateway.at("/v2/models/iris/versions/7")).await;
    assert!(version.oip_error(404).contains("no version 7"));
    let version = get(&gateway.at("/v2/models/iris/versions/latest")).await;
    assert!(version.oip_error(404).contains("\"latest\""));
    let route = get(&gateway.at("/v3/anything")).await;
    route.oip_error(404);
}

#[tokio::test]
async fn model_ready_is_200_only_while_a_worker_serves_it() {
    let server = server();
    let worker = Worker::start(config(&server), vec![("linear", example_model("linear"))]).await;
    let gateway = Gateway::start(gateway_config(&server)).await;

    let ready = get(&gateway.at("/v2/models/linear/ready")).await;
    assert_eq!(
        (ready.status, ready.json()),
        (200, json!({"name": "linear", "ready": true}))
    );
    assert_eq!(
        get(&gateway.at("/v2/models/linear/versions/1/ready"))
            .await
            .status,
        200
    );
    get(&gateway.at("/v2/models/linear/versions/2/ready"))
        .await
        .oip_error(404);
    get(&gateway.at("/v2/models/iris/ready"))
        .await
        .oip_error(404);

    worker.stop().await.unwrap();
    let url = gateway.at("/v2/models/linear/ready");
    eventually("the model is no longer ready", || async {
        get(&url).await.status != 200
    })
    .await;
    assert!(get(&url).await.oip_error(503).contains("no worker"));
    get(&gateway.at("/v2/models/linear")).await.oip_error(503);
    let infer = json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": vec![0.0; 10]}]});
    post_json(&gateway.at("/v2/models/linear/infer"), &infer)
        .await
        .oip_error(503);

    let _again = Worker::start(config(&server), vec![("linear", example_model("linear"))]).await;
    eventually("the model is ready again", || async {
        get(&url).await.status == 200
    })
    .await;
}

#[tokio::test]
async fn infer_with_json_tensors_fp32_and_fp64() {
    let server = server();
    let _worker = fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let artifact = example_json("iris");

    for datatype in ["FP32", "FP64"] {
        let request = json!({"id": "r1", "inputs": [tensor(datatype, &IRIS_ROWS)]});
        let answer = post_json(&gateway.at("/v2/models/iris/infer"), &request).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let body = answer.json();
        assert_eq!(
            (
                body["model_name"].clone(),
                body["model_version"].clone(),
                body["id"].clone()
            ),
            (json!("iris"), json!("1"), json!("r1"))
        );
        let output = &body["outputs"][0];
        assert_eq!(
            (output["name"].as_str(), output["datatype"].as_str()),
            (Some("output"), Some(datatype))
        );
        assert_eq!(output["shape"], json!([2, 3]));
        let got: Vec<f64> = output["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (r, row) in IRIS_ROWS.iter().enumerate() {
            let want = reference_forward(&artifact, row);
            for (g, w) in got[r * 3..r * 3 + 3].iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{datatype}: got {got:?}, want {want:?}"
                );
            }
        }
        let label = &body["outputs"][1];
        assert_eq!(
            label,
            &json!({"name": "label", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]})
        );
    }

    // Nested data, a pinned version, only the label asked for.
    let request = json!({
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": IRIS_ROWS}],
        "outputs": [{"name": "label"}],
    });
    let answer = post_json(&gateway.at("/v2/models/iris/versions/1/infer"), &request).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let outputs = answer.json()["outputs"].clone();
    assert_eq!(outputs.as_array().unwrap().len(), 1);
    assert_eq!(outputs[0]["data"], json!(["setosa", "virginica"]));

    // Regression: one output, no label.
    let x: Vec<f64> = (0..10).map(|i| i as f64 / 7.0).collect();
    let request =
        json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": x}]});
    let body = post_json(&gateway.at("/v2/models/linear/infer"), &request)
        .await
        .json();
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["shape"], json!([1, 1]));
    let want = reference_forward(&example_json("linear"), &x);
    assert_close(
        &[body["outputs"][0]["data"][0].as_f64().unwrap()],
        &want,
        "linear",
    );
}

#[tokio::test]
async fn infer_errors_map_to_oip_statuses() {
    let server = server();
    let _worker = fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let url = gateway.at("/v2/models/iris/infer");

    // The fleet's 400 (three features for a four-feature model), its message kept.
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert!(post_json(&url, &bad)
        .await
        .oip_error(400)
        .contains("expects 4"));
    // The fleet's 409 is an unknown version to an OIP client.
    let good = json!({"inputs": [tensor("FP32", &IRIS_ROWS)]});
    let pinned = post_json(&gateway.at("/v2/models/iris/versions/3/infer"), &good).await;
    assert!(pinned.oip_error(404).contains('3'));
    // Outputs the model does not have.
    let wrong =
        json!({"inputs": [tensor("FP32", &IRIS_ROWS)], "outputs": [{"name": "probabilities"}]});
    assert!(post_json(&url, &wrong)
        .await
        .oip_error(400)
        .contains("\"probabilities\""));
    let label = json!({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": vec![0.0; 10]}], "outputs": [{"name": "label"}]});
    assert!(post_json(&gateway.at("/v2/models/linear/infer"), &label)
        .await
        .oip_error(400)
        .contains("not a classifier"));
    let int8 = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 4]}]});
    assert!(post_json(&url, &int8).await.oip_error(400).contains("INT8"));
    post_json(&gateway.at("/v2/models/nope/infer"), &good)
        .await
        .oip_error(404);
}

#[tokio::test]
async fn binary_tensor_data_both_ways() {
    let server = server();
    let _worker = fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let artifact = example_json("iris");
    let url = gateway.at("/v2/models/iris/infer");
    let blob: Vec<u8> = IRIS_ROWS
        .iter()
        .flatten()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();

    // Binary in, every output binary (binary_data_output).
    let header = json!({
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": blob.len()}}],
        "parameters": {"binary_data_output": true},
    });
    let (body, length) = binary_request(&header, &blob);
    let answer = post(&url, &[("Inference-Header-Content-Length", &length)], body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let (head, blobs) = split_binary(&answer);
    let outputs = head["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 24);
    assert!(outputs[0].get("data").is_none());
    let probabilities: Vec<f32> = blobs[..24]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (r, row) in IRIS_ROWS.iter().enumerate() {
        let want = reference_forward(&artifact, row);
        for (g, w) in probabilities[r * 3..r * 3 + 3].iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5);
        }
    }
    // BYTES elements: a 4-byte little-endian length, then the bytes.
    let mut labels = Vec::new();
    let mut rest = &blobs[24..];
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        labels.push(String::from_utf8(rest[4..4 + n].to_vec()).unwrap());
        rest = &rest[4 + n..];
    }
    assert_eq!(labels, ["setosa", "virginica"]);
    assert_eq!(
        outputs[1]["parameters"]["binary_data_size"],
        blobs.len() - 24
    );

    // JSON in, one output binary and one as JSON.
    let request = json!({
        "inputs": [tensor("FP64", &IRIS_ROWS)],
        "outputs": [{"name": "output", "parameters": {"binary_data": true}}, {"name": "label", "parameters": {"binary_data": false}}],
    });
    let answer = post_json(&url, &request).await;
    let (head, blobs) = split_binary(&answer);
    assert_eq!(head["outputs"][0]["datatype"], "FP64");
    assert_eq!(blobs.len(), 2 * 3 * 8);
    assert_eq!(head["outputs"][1]["data"], json!(["setosa", "virginica"]));

    // A header length past the body is a 400.
    let answer = post(&url, &[("Inference-Header-Content-Length", "99999")], "{}").await;
    assert!(answer.oip_error(400).contains("99999"));
}

#[tokio::test]
async fn bytes_tensors_reach_the_fleet_as_text_rows() {
    let server = server();
    let nats = connect(&server).await;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _text_model = fake_worker(&nats, "embed", move |m| {
        tx.send(rmp_serde::from_slice::<Value>(&m.payload).unwrap()).unwrap();
        msgpack(&json!({"outputs": [[0.6, 0.8], [1.0, 0.0]], "model": "embed", "version": 2, "tokens": [3, 1]}))
    })
    .await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let texts = ["a small text", ""];

    let request =
        json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": texts}]});
    let answer = post_json(&gateway.at("/v2/models/embed/infer"), &request).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(seen.recv().await.unwrap(), json!({"inputs": texts}));
    let body = answer.json();
    assert_eq!(body["model_version"], "2");
    assert_eq!(
        body["outputs"][0],
        json!({"name": "output", "datatype": "FP32", "shape": [2, 2], "data": [0.6, 0.8, 1.0, 0.0]})
    );

    let mut blob = Vec::new();
    for t in texts {
        blob.extend_from_slice(&(t.len() as u32).to_le_bytes());
        blob.extend_from_slice(t.as_bytes());
    }
    let header = json!({"inputs": [{"name": "input", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": blob.len()}}]});
    let (body, length) = binary_request(&header, &blob);
    let answer = post(
        &gateway.at("/v2/models/embed/infer"),
        &[("Inference-Header-Content-Length", &length)],
        body,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(seen.recv().await.unwrap(), json!({"inputs": texts}));
}
