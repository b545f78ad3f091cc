//! Predictions round-trip in both encodings and match an independent forward pass.

use flotilla_proto::client::{Client, RequestSpec};
use flotilla_proto::{Encoding, Label};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn round_trips_in_json_and_msgpack_match_the_reference() {
    let server = server();
    let models = ["linear", "iris", "mlp"];
    let worker = Worker::start(
        config(&server),
        models.iter().map(|m| (*m, example_model(m))).collect(),
    )
    .await;
    let nats = connect(&server).await;
    for name in models {
        let artifact = example_json(name);
        let features = artifact["inputs"].as_u64().unwrap() as usize;
        let inputs = rows(5, features, name.len());
        let body = json!({"inputs": inputs, "id": format!("req-{name}")});
        for msgpack_body in [false, true] {
            let reply = if msgpack_body {
                request(&nats, name, &[], msgpack(&body)).await
            } else {
                request(&nats, name, &[], body.to_string()).await
            };
            assert_eq!(reply.error_code(), None, "{name}: {:?}", reply.json());
            assert_eq!(
                reply.is_msgpack(),
                msgpack_body,
                "reply encoding follows the request"
            );
            assert_eq!(reply.header("Flotilla-Version").as_deref(), Some("1"));
            let v = reply.json();
            assert_eq!(v["model"], name);
            assert_eq!(v["version"], 1);
            assert_eq!(v["id"], format!("req-{name}"));
            assert!(v.get("y_pred").is_none(), "y_pred is only for the x form");
            let outputs = v["outputs"].as_array().unwrap();
            assert_eq!(outputs.len(), inputs.len());
            for (row, out) in inputs.iter().zip(outputs) {
                let got: Vec<f64> = serde_json::from_value(out.clone()).unwrap();
                let want = reference_forward(&artifact, row);
                assert_close(&got, &want, name);
            }
            match artifact.get("labels") {
                None => assert!(v.get("labels").is_none()),
                Some(labels) => {
                    for (out, label) in outputs.iter().zip(v["labels"].as_array().unwrap()) {
                        let probs: Vec<f64> = serde_json::from_value(out.clone()).unwrap();
                        let best = (0..probs.len())
                            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                            .unwrap();
                        assert_eq!(label, &labels[best]);
                    }
                }
            }
        }
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_x_form_adds_y_pred_in_the_classic_shape() {
    let server = server();
    let _worker = Worker::start(
        config(&server),
        vec![
            ("linear", example_model("linear")),
            ("iris", example_model("iris")),
        ],
    )
    .await;
    let nats = connect(&server).await;

    let x: Vec<f64> = (0..10).map(|i| i as f64 / 3.0 - 1.0).collect();
    let v = request(&nats, "linear", &[], json!({"x": x}).to_string())
        .await
        .json();
    let want = reference_forward(&example_json("linear"), &x)[0];
    let y = v["y_pred"]
        .as_f64()
        .expect("one output: y_pred is a number");
    assert_close(&[y], &[want], "linear y_pred");
    assert_eq!(v["outputs"][0][0].as_f64().unwrap(), y);

    let x = [6.1, 2.6, 5.6, 1.4];
    let reply = request(
        &nats,
        "iris",
        &[("Content-Type", "application/msgpack")],
        msgpack(&json!({"x": x})),
    )
    .await;
    let v = reply.json();
    let y: Vec<f64> = serde_json::from_value(v["y_pred"].clone()).expect("y_pred is a list");
    assert_close(
        &y,
        &reference_forward(&example_json("iris"), &x),
        "iris y_pred",
    );
    assert_eq!(v["labels"], json!(["versicolor"]));
}

#[tokio::test]
async fn mixed_request_sizes_under_concurrency_each_get_their_own_rows() {
    // Batches of up to 64 rows of this small MLP are computed in the batch loop itself,
    // larger ones on the model's compute thread: both happen here.
    mixed_request_sizes(64).await;
}

#[tokio::test]
async fn mixed_request_sizes_each_get_their_own_rows_with_every_batch_on_the_compute_thread() {
    mixed_request_sizes(0).await;
}

async fn mixed_request_sizes(inline_compute_rows: usize) {
    let server = server();
    let mut cfg = config(&server);
    // A small wait for company makes batching certain even on an idle machine.
    cfg.max_batch_delay_us = 2000;
    cfg.inline_compute_rows = inline_compute_rows;
    let worker = Worker::start(cfg, vec![("mlp", example_model("mlp"))]).await;
    let artifact = example_json("mlp");
    let client = Client::new(connect(&server).await);
    let mut tasks = tokio::task::JoinSet::new();
    let requests = 60;
    for i in 0..requests {
        let (client, artifact) = (client.clone(), artifact.clone());
        tasks.spawn(async move {
            let inputs = rows(1 + i % 7, 4, i);
            let spec = RequestSpec {
                encoding: if i % 2 == 0 {
                    Encoding::Json
                } else {
                    Encoding::MsgPack
                },
                ..RequestSpec::default()
            };
            let p = client.predict_with("mlp", &inputs, spec).await.unwrap();
            assert_eq!(
                p.outputs.len(),
                inputs.len(),
                "request {i} got someone else's rows"
            );
            for (row, out) in inputs.iter().zip(&p.outputs) {
                assert_close(
                    out,
                    &reference_forward(&artifact, row),
                    &format!("request {i}"),
                );
            }
            let labels = p.labels.unwrap();
            assert!(labels.iter().all(|l| matches!(l, Label::Name(_))));
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let batches = worker.metric("flotilla_batch_rows_count{model=\"mlp\"}");
    let rows_total = worker.metric("flotilla_batch_rows_sum{model=\"mlp\"}");
    let want_rows: usize = (0..requests).map(|i| 1 + i % 7).sum();
    assert_eq!(rows_total as usize, want_rows);
    assert!(
        batches < requests as f64,
        "{batches} batches for {requests} requests: no batch held more than one request"
    );
    assert_eq!(
        worker.metric("flotilla_requests_total{code=\"200\",model=\"mlp\",version=\"1\"}"),
        requests as f64
    );
}

#[tokio::test]
async fn two_workers_share_the_queue_group_and_both_answer() {
    let server = server();
    let a = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let b = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let client = Client::new(connect(&server).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.spawn(async move { client.predict("iris", &rows(1, 4, i)).await.unwrap() });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
        answered += 1;
    }
    assert_eq!(answered, 200);
    let series = "flotilla_requests_total{code=\"200\",model=\"iris\",version=\"1\"}";
    let (na, nb) = (a.metric(series), b.metric(series));
    assert_eq!(
        na + nb,
        200.0,
        "each request answered by exactly one worker"
    );
    assert!(na > 0.0 && nb > 0.0, "both workers answer: {na} and {nb}");
}

#[tokio::test]
async fn no_worker_means_no_responders_at_once() {
    let server = server();
    let _w = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let client = Client::new(connect(&server).await);
    let started = std::time::Instant::now();
    let err = client
        .predict("nobody-serves-this", &[vec![1.0]])
        .await
        .unwrap_err();
    assert!(
        matches!(err, flotilla_proto::ClientError::NoResponders { .. }),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn reference_forward_agrees_with_scikit_learn_on_a_known_row() {
    // Expected probabilities printed by scripts/make_example_models.py from scikit-learn.
    let got = reference_forward(&example_json("iris"), &[5.5, 3.5, 1.3, 0.2]);
    let want = [
        0.9683824914732737,
        0.03161694701228868,
        5.615144377395301e-07,
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?}");
    }
    let v: Value = example_json("mlp");
    let got = reference_forward(&v, &[6.1, 2.6, 5.6, 1.4]);
    assert!(got[2] > got[1], "the MLP calls this row virginica: {got:?}");
}
