//! Every row of the error table, and bad input of every kind: a clear error naming what was
//! wrong, both service-error headers, the error body, and a worker that keeps serving.

use flotilla_model::Model;
use serde_json::{json, Value};

use crate::support::*;

/// Checks an error reply against the contract and returns its message.
fn expect_error(reply: &Reply, code: u16, kind: &str, msgpack_body: bool) -> String {
    assert_eq!(reply.error_code(), Some(code), "body: {:?}", reply.body);
    let header_message = reply
        .header("Nats-Service-Error")
        .expect("Nats-Service-Error header");
    assert!(!header_message.is_empty());
    assert_eq!(reply.is_msgpack(), msgpack_body, "error body encoding");
    let v = reply.json();
    assert_eq!(v["error"]["code"], code);
    assert_eq!(v["error"]["kind"], kind);
    let message = v["error"]["message"].as_str().unwrap().to_owned();
    assert_eq!(header_message, message.replace(['\n', '\r'], " "));
    message
}

/// MessagePack with raw floats, which JSON values cannot hold when they are NaN or infinite.
fn floats<T: serde::Serialize>(key: &str, value: T) -> Vec<u8> {
    rmp_serde::to_vec_named(&std::collections::HashMap::from([(key, value)])).unwrap()
}

const IRIS_ROW: &str = "[5.1, 3.5, 1.4, 0.2]";

#[tokio::test]
async fn bad_requests_get_400_naming_what_was_wrong() {
    let server = server();
    let mut cfg = config(&server);
    cfg.max_request_rows = 64;
    let _worker = Worker::start(cfg, vec![("iris", example_model("iris"))]).await;
    let nats = connect(&server).await;

    let json_cases: &[(&str, &str)] = &[
        ("", "empty body"),
        ("   ", "empty body"),
        ("{\"inputs\": [[1, 2, 3, 4]", "invalid JSON"),
        ("{\"inputs\": \"abc\"}", "inputs"),
        (
            "{\"inputs\": [[1, 2, 3, 4], [1, 2, 3]]}",
            "inputs[1] has 3 values",
        ),
        ("{\"inputs\": [[1, 2, 3]]}", "expects 4"),
        ("{\"x\": [1, 2]}", "x has 2 features"),
        (
            "{\"inputs\": [[1, \"NaN\", 3, 4]]}",
            "inputs[0][1] is the string \"NaN\"",
        ),
        ("{\"inputs\": [[1, 2, \"Infinity\", 4]]}", "inputs[0][2]"),
        ("{\"inputs\": [[1, 2, 3, NaN]]}", "invalid JSON"),
        ("{\"inputs\": [[1, 2, 3, Infinity]]}", "invalid JSON"),
        ("{\"inputs\": [[1, 2, 3, 1e999]]}", "invalid JSON"),
        ("{\"inputs\": [[1, true, 3, 4]]}", "inputs[0][1] is true"),
        ("{\"inputs\": [[1, null, 3, 4]]}", "inputs[0][1] is null"),
        ("{\"inputs\": [1, 2, 3, 4]}", "inputs[0]"),
        ("{\"inputs\": []}", "empty"),
        ("{\"inputs\": [[]]}", "empty"),
        ("{\"x\": []}", "empty"),
        ("{\"rows\": [[1, 2, 3, 4]]}", "neither"),
        ("{\"x\": [1, 2, 3, 4], \"inputs\": [[1, 2, 3, 4]]}", "both"),
        (
            "{\"x\": [1, 2, 3, 4], \"id\": 7}",
            "\"id\" must be a string",
        ),
        ("[[1, 2, 3, 4]]", "invalid"),
    ];
    for (body, needle) in json_cases {
        let headers: &[(&str, &str)] = if body.trim_start().starts_with('{') {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        let reply = request(&nats, "iris", headers, body.to_string()).await;
        let message = expect_error(&reply, 400, "bad_request", false);
        assert!(
            message.contains(needle),
            "{body:?}: {message:?} lacks {needle:?}"
        );
    }

    // MessagePack: well-formed but wrong gets a MessagePack error body; garbage gets JSON.
    let mp = [("Content-Type", "application/msgpack")];
    let msgpack_cases: Vec<(Vec<u8>, &str, bool)> = vec![
        (vec![0xc1], "invalid MessagePack", false),
        (vec![0x81, 0xa6], "invalid MessagePack", false),
        (
            msgpack(&json!({"inputs": [[1.0, 2.0, 3.0, 4.0]]}))[..5].to_vec(),
            "invalid MessagePack",
            false,
        ),
        (
            floats("inputs", vec![vec![1.0, 2.0, 3.0, f64::NAN]]),
            "inputs[0][3] is NaN",
            true,
        ),
        (
            floats("x", vec![1.0, f64::INFINITY, 3.0, 4.0]),
            "x[1] is inf",
            true,
        ),
        (
            msgpack(&json!({"inputs": [[1, 2, 3, 4], [1, 2]]})),
            "inputs[1] has 2 values",
            true,
        ),
        (
            msgpack(&json!({"inputs": [["a", 2, 3, 4]]})),
            "inputs[0][0] is the string \"a\"",
            true,
        ),
        (msgpack(&json!({"inputs": 5})), "inputs", true),
        (msgpack(&json!([[1, 2, 3, 4]])), "invalid MessagePack", true),
        (msgpack(&json!({"inputs": [[1, 2, 3]]})), "expects 4", true),
    ];
    for (body, needle, msgpack_reply) in msgpack_cases {
        let reply = request(&nats, "iris", &mp, body.clone()).await;
        let message = expect_error(&reply, 400, "bad_request", msgpack_reply);
        assert!(
            message.contains(needle),
            "{body:?}: {message:?} lacks {needle:?}"
        );
    }

    // Headers and content types.
    let body = format!("{{\"x\": {IRIS_ROW}}}");
    for (headers, needle) in [
        (vec![("Content-Type", "text/csv")], "Content-Type"),
        (vec![("Flotilla-Version", "latest")], "Flotilla-Version"),
        (vec![("Flotilla-Timeout-Ms", "-5")], "Flotilla-Timeout-Ms"),
    ] {
        let reply = request(&nats, "iris", &headers, body.clone()).await;
        let message = expect_error(&reply, 400, "bad_request", false);
        assert!(message.contains(needle), "{message}");
    }

    // A megabyte of rubbish is refused like any other bad body (and decoded off the read loop).
    let junk = vec![b'7'; 1_000_000];
    let reply = request(&nats, "iris", &[("Content-Type", "application/json")], junk).await;
    expect_error(&reply, 400, "bad_request", false);

    // After all that the worker still serves.
    let reply = request(&nats, "iris", &[], body).await;
    assert_eq!(reply.error_code(), None);
}

#[tokio::test]
async fn version_too_large_deadline_and_internal_errors() {
    let server = server();
    let mut cfg = config(&server);
    cfg.max_request_rows = 100;
    // A linear model whose output overflows f32 (the layers' float) to infinity for large
    // inputs: the 500 path.
    let overflow = Model::from_bytes(
        json!({"format": "flotilla.model.v1", "inputs": 1, "outputs": 1,
               "layers": [{"weights": [[1e37]], "bias": [0], "activation": "identity"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let _worker = Worker::start(
        cfg,
        vec![
            ("iris", example_model("iris")),
            ("overflow", overflow),
            ("slow", slow_model(4)),
        ],
    )
    .await;
    let nats = connect(&server).await;
    let body = format!("{{\"x\": {IRIS_ROW}}}");

    // 409: a version this worker does not hold; the held one is served.
    let reply = request(&nats, "iris", &[("Flotilla-Version", "7")], body.clone()).await;
    let message = expect_error(&reply, 409, "version_unavailable", false);
    assert!(
        message.contains("version 7") && message.contains("current 1"),
        "{message}"
    );
    let reply = request(&nats, "iris", &[("Flotilla-Version", "1")], body.clone()).await;
    assert_eq!(reply.error_code(), None);

    // 413: more rows than one request may carry, in both encodings. A ~1 MB body takes the
    // large-body path.
    let big: Vec<Vec<f64>> = rows(101, 4, 0);
    let reply = request(&nats, "iris", &[], json!({"inputs": big}).to_string()).await;
    let message = expect_error(&reply, 413, "too_large", false);
    assert!(
        message.contains("101 rows") && message.contains("at most 100"),
        "{message}"
    );
    let reply = request(&nats, "iris", &[], msgpack(&json!({"inputs": big}))).await;
    expect_error(&reply, 413, "too_large", true);
    let huge = json!({"inputs": rows(30_000, 4, 1)}).to_string();
    assert!(
        huge.len() > 500_000 && huge.len() < 1_000_000,
        "{}",
        huge.len()
    );
    let reply = request(&nats, "iris", &[], huge).await;
    expect_error(&reply, 413, "too_large", false);

    // A budget of u64::MAX ms is accepted (the deadline is computed without overflow).
    let huge = u64::MAX.to_string();
    let reply = request(
        &nats,
        "iris",
        &[("Flotilla-Timeout-Ms", &huge)],
        body.clone(),
    )
    .await;
    assert_eq!(reply.error_code(), None);
    let reply = request(&nats, "iris", &[], body.clone()).await;
    assert_eq!(reply.error_code(), None, "the worker still answers");

    // 504: no budget at all.
    let reply = request(&nats, "iris", &[("Flotilla-Timeout-Ms", "0")], body.clone()).await;
    expect_error(&reply, 504, "deadline_exceeded", false);

    // 504: the budget runs out while waiting behind long batches; the request is not computed.
    // 100-row requests keep the compute busy until a 1 ms budget has run out behind them:
    // how many that takes depends on the build's optimisation, so they keep coming until it
    // has happened (bounded), rather than a fixed number.
    let slow_rows = json!({"inputs": rows(100, 4, 3)}).to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let (nats, body, stop) = (nats.clone(), slow_rows.clone(), stop.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    codes.push(request(&nats, "slow", &[], body.clone()).await.error_code());
                }
                codes
            })
        })
        .collect();
    let short = format!("{{\"x\": {IRIS_ROW}}}");
    tokio::time::timeout(WAIT, async {
        loop {
            let reply = request(
                &nats,
                "slow",
                &[("Flotilla-Timeout-Ms", "1")],
                short.clone(),
            )
            .await;
            if reply.error_code() == Some(504) {
                let message = expect_error(&reply, 504, "deadline_exceeded", false);
                assert!(message.contains("not computed"), "{message}");
                break;
            }
        }
    })
    .await
    .expect("a 1 ms budget behind long batches should run out");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in busy {
        assert!(
            task.await.unwrap().iter().all(Option::is_none),
            "a busy request failed"
        );
    }

    // 500: the model itself fails on this input; the message says what and where.
    let reply = request(
        &nats,
        "overflow",
        &[],
        json!({"inputs": [[1.0], [1e10]]}).to_string(),
    )
    .await;
    let message = expect_error(&reply, 500, "internal", false);
    assert!(message.contains("non-finite output at row 1"), "{message}");
    let reply = request(&nats, "overflow", &[], json!({"x": [1e-300]}).to_string()).await;
    assert_eq!(reply.error_code(), None);
}

#[tokio::test]
async fn a_bad_request_never_fails_its_batch_mates() {
    let server = server();
    let mut cfg = config(&server);
    cfg.max_batch_delay_us = 3000;
    let worker = Worker::start(cfg, vec![("mlp", example_model("mlp"))]).await;
    let nats = connect(&server).await;
    let artifact = example_json("mlp");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40usize {
        let (nats, artifact) = (nats.clone(), artifact.clone());
        tasks.spawn(async move {
            if i % 4 == 0 {
                let reply = request(
                    &nats,
                    "mlp",
                    &[],
                    format!("{{\"inputs\": [[1, 2, 3, \"{i}\"]]}}"),
                )
                .await;
                assert_eq!(reply.error_code(), Some(400));
            } else {
                let inputs = rows(2, 4, i);
                let reply = request(&nats, "mlp", &[], json!({"inputs": inputs}).to_string()).await;
                assert_eq!(reply.error_code(), None);
                let v: Value = reply.json();
                for (row, out) in inputs.iter().zip(v["outputs"].as_array().unwrap()) {
                    let got: Vec<f64> = serde_json::from_value(out.clone()).unwrap();
                    assert_close(&got, &reference_forward(&artifact, row), "batch mate");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        worker.metric("flotilla_requests_total{code=\"200\",model=\"mlp\",version=\"1\"}"),
        30.0
    );
    assert_eq!(
        worker.metric("flotilla_requests_total{code=\"400\",model=\"mlp\",version=\"1\"}"),
        10.0
    );
}

/// Issue 6: isolation inside one batch, for a request that passes every check and only fails
/// when computed (its output overflows), batched with good requests.
#[tokio::test]
async fn a_request_failing_at_compute_fails_alone_in_its_batch() {
    let server = server();
    let mut cfg = config(&server);
    // Long enough that the requests below, sent together, form one batch.
    cfg.max_batch_delay_us = 200_000;
    // Finite up to |x| of about 34 in f32, the layers' float.
    let overflow = Model::from_bytes(
        json!({"format": "flotilla.model.v1", "inputs": 1, "outputs": 1,
               "layers": [{"weights": [[1e37]], "bias": [0], "activation": "identity"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let worker = Worker::start(cfg, vec![("overflow", overflow)]).await;
    let nats = connect(&server).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..9usize {
        let nats = nats.clone();
        tasks.spawn(async move {
            let x = if i == 4 { 1e10 } else { i as f64 };
            let reply = request(&nats, "overflow", &[], json!({"x": [x]}).to_string()).await;
            (i, x, reply)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, x, reply) = done.unwrap();
        if i == 4 {
            let message = expect_error(&reply, 500, "internal", false);
            assert!(message.contains("non-finite output"), "{message}");
        } else {
            assert_eq!(reply.error_code(), None, "request {i}: {:?}", reply.body);
            let y = reply.json()["y_pred"].as_f64().unwrap();
            assert_eq!(y as f32, x as f32 * 1e37f32, "request {i}");
        }
    }
    // All nine were computed in one forward pass.
    assert_eq!(
        worker.metric("flotilla_batch_rows_count{model=\"overflow\"}"),
        1.0
    );
    assert_eq!(
        worker.metric("flotilla_batch_rows_sum{model=\"overflow\"}"),
        9.0
    );
}
