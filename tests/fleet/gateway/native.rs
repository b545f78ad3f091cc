//! The native routes: the classic `POST /predict`, `POST /models/<m>/predict` carrying the
//! NATS body and reply, header pass-through, and every error mapping.

use serde_json::{json, Value};

use super::*;

const IRIS_ROW: [f64; 4] = [5.1, 3.5, 1.4, 0.2];

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

#[tokio::test]
async fn classic_predict_answers_y_pred_from_the_default_model() {
    let server = server();
    let _worker = fleet(&server).await;
    let mut cfg = gateway_config(&server);
    cfg.default_model = Some("linear".into());
    let gateway = Gateway::start(cfg).await;
    let x: Vec<f64> = (0..10).map(|i| i as f64 / 10.0).collect();

    let answer = post_json(&gateway.at("/predict"), &json!({ "x": x })).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body.as_object().unwrap().len(), 1, "only y_pred: {body}");
    let want = reference_forward(&example_json("linear"), &x);
    assert_close(&[body["y_pred"].as_f64().unwrap()], &want, "y_pred");
    assert_eq!(answer.header("Flotilla-Version"), Some("1"));

    // The classic call takes one row; anything else is refused before NATS.
    let answer = post_json(&gateway.at("/predict"), &json!({"inputs": [x]})).await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/models/<model>/predict"));
}

#[tokio::test]
async fn classic_predict_without_a_default_model_is_404_saying_how_to_set_one() {
    let server = server();
    let gateway = Gateway::start(gateway_config(&server)).await;
    let answer = post_json(&gateway.at("/predict"), &json!({"x": IRIS_ROW})).await;
    assert_eq!(answer.status, 404);
    let body = answer.json();
    assert_eq!(body["error"]["kind"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--default-model"),
        "{body}"
    );
}

#[tokio::test]
async fn model_predict_carries_the_nats_body_and_reply_unchanged() {
    let server = server();
    let _worker = fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let nats = connect(&server).await;
    let body = json!({"inputs": [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]], "id": "a"});

    let answer = post_json(&gateway.at("/models/iris/predict"), &body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("Flotilla-Version"), Some("1"));
    assert!(answer
        .header("Flotilla-Worker")
        .is_some_and(|w| !w.is_empty()));
    let direct = request(&nats, "iris", &[], serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(answer.json(), direct.json(), "HTTP and NATS replies differ");
    assert_eq!(answer.json()["labels"], json!(["setosa", "virginica"]));

    // MessagePack in, MessagePack out, as on NATS. (Compared with a MessagePack reply: its
    // outputs are f32 values, where JSON prints their shortest decimal, read back as f64.)
    let msgpack_ct = [("Content-Type", "application/msgpack")];
    let answer = post(
        &gateway.at("/models/iris/predict"),
        &msgpack_ct,
        msgpack(&body),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/msgpack"));
    let decoded: Value = rmp_serde::from_slice(&answer.body).unwrap();
    let direct = request(&nats, "iris", &msgpack_ct, msgpack(&body)).await;
    assert_eq!(decoded, direct.json());
}

#[tokio::test]
async fn version_and_timeout_headers_pass_through() {
    let server = server();
    let nats = connect(&server).await;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _fake = fake_worker(&nats, "echo", move |m| {
        let h = m.headers.clone().unwrap_or_default();
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
        tx.send((
            get("Flotilla-Version"),
            get("Flotilla-Timeout-Ms"),
            get("Content-Type"),
        ))
        .unwrap();
        br#"{"outputs": [[1]], "model": "echo", "version": 4}"#.to_vec()
    })
    .await;
    let mut cfg = gateway_config(&server);
    cfg.request_timeout_ms = 1234;
    let gateway = Gateway::start(cfg).await;
    let url = gateway.at("/models/echo/predict");
    let body = r#"{"inputs": [[1]]}"#;

    assert_eq!(post(&url, &[], body).await.status, 200);
    let default = seen.recv().await.unwrap();
    assert_eq!(
        default,
        (None, Some("1234".into()), Some("application/json".into()))
    );

    let headers = [("Flotilla-Version", "4"), ("Flotilla-Timeout-Ms", "250")];
    assert_eq!(post(&url, &headers, body).await.status, 200);
    assert_eq!(
        seen.recv().await.unwrap(),
        (
            Some("4".into()),
            Some("250".into()),
            Some("application/json".into())
        )
    );

    let answer = post(&url, &[("Flotilla-Timeout-Ms", "soon")], body).await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Flotilla-Timeout-Ms"));
}

#[tokio::test]
async fn fleet_errors_keep_their_code_and_body() {
    let server = server();
    let _worker = fleet(&server).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let nats = connect(&server).await;

    // The fleet's 400: wrong feature count.
    let body = json!({"inputs": [[1.0, 2.0, 3.0]]});
    let answer = post_json(&gateway.at("/models/iris/predict"), &body).await;
    assert_eq!(answer.status, 400);
    let direct = request(&nats, "iris", &[], serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(
        answer.body, direct.body,
        "the fleet's error body, byte for byte"
    );
    assert_eq!(answer.json()["error"]["kind"], "bad_request");

    // The fleet's 409: a version no worker holds.
    let answer = post(
        &gateway.at("/models/iris/predict"),
        &[("Flotilla-Version", "9")],
        serde_json::to_vec(&json!({"inputs": [IRIS_ROW]})).unwrap(),
    )
    .await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.json()["error"]["kind"], "version_unavailable");
}

#[tokio::test]
async fn malformed_bodies_are_400_and_never_reach_nats() {
    let server = server();
    let _worker = fleet(&server).await;
    let mut cfg = gateway_config(&server);
    cfg.default_model = Some("iris".into());
    let gateway = Gateway::start(cfg).await;
    let nats = connect(&server).await;
    let mut tap = Tap::start(&nats).await;

    for (path, body) in [
        ("/models/iris/predict", "{\"inputs\": [[1, 2, 3, 4]"),
        ("/models/iris/predict", "[[1, 2, 3, 4]]"),
        ("/models/iris/predict", ""),
        ("/predict", "{\"x\": [1, 2, 3, 4]"),
        ("/predict", "x=1"),
        (
            "/v2/models/iris/infer",
            "{\"inputs\": [{\"name\": \"input\"}]}",
        ),
        ("/v2/models/iris/infer", "not json"),
    ] {
        let answer = post(
            &gateway.at(path),
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
        assert_eq!(answer.status, 400, "{path} {body:?}: {:?}", answer.body);
    }
    let answer = post(
        &gateway.at("/models/iris/predict"),
        &[("Content-Type", "application/msgpack")],
        vec![0x81, 0xa6],
    )
    .await;
    assert_eq!(answer.status, 400);

    let probe = json!({"inputs": [IRIS_ROW], "id": PROBE});
    tap.assert_nothing_before(post_json(&gateway.at("/models/iris/predict"), &probe))
        .await;
}

#[tokio::test]
async fn unknown_models_are_404_and_known_ones_without_a_worker_503() {
    let server = server();
    let worker = Worker::start(config(&server), vec![("linear", example_model("linear"))]).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let body = json!({"inputs": [vec![0.0; 10]]});

    let answer = post_json(&gateway.at("/models/nope/predict"), &body).await;
    assert_eq!(answer.status, 404);
    assert!(answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no model named \"nope\" is"));
    let answer = post_json(&gateway.at("/models/a.%3E/predict"), &body).await;
    assert_eq!(
        answer.status, 404,
        "a name that breaks the rules is no model"
    );

    assert_eq!(
        post_json(&gateway.at("/models/linear/predict"), &body)
            .await
            .status,
        200
    );
    worker.stop().await.unwrap();
    let answer = post_json(&gateway.at("/models/linear/predict"), &body).await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body["error"]["kind"], "no_worker");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"linear\""));
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_never_reaches_nats() {
    let server = server();
    let _worker = fleet(&server).await;
    let mut cfg = gateway_config(&server);
    cfg.max_body_bytes = 1000;
    let gateway = Gateway::start(cfg).await;
    let nats = connect(&server).await;
    let mut tap = Tap::start(&nats).await;
    let big = json!({"inputs": vec![IRIS_ROW; 60]});
    assert!(serde_json::to_vec(&big).unwrap().len() > 1000);

    let answer = post_json(&gateway.at("/models/iris/predict"), &big).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"]["kind"], "too_large");
    let tensor = json!({"inputs": [{"name": "input", "shape": [60, 4], "datatype": "FP64", "data": vec![IRIS_ROW; 60]}]});
    let answer = post_json(&gateway.at("/v2/models/iris/infer"), &tensor).await;
    assert!(answer.oip_error(413).contains("1000 bytes"));

    let probe = json!({"inputs": [IRIS_ROW], "id": PROBE});
    tap.assert_nothing_before(post_json(&gateway.at("/models/iris/predict"), &probe))
        .await;
}

#[tokio::test]
async fn no_answer_within_the_budget_is_504() {
    let server = server();
    let nats = connect(&server).await;
    // A "worker" that takes every request and never answers.
    let mut silent = nats.subscribe("flotilla.predict.sleepy").await.unwrap();
    nats.flush().await.unwrap();
    let mut cfg = gateway_config(&server);
    cfg.request_timeout_ms = 100;
    let gateway = Gateway::start(cfg).await;

    let answer = post(&gateway.at("/models/sleepy/predict"), &[], r#"{"x": [1]}"#).await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["error"]["kind"], "deadline_exceeded");
    let tensor =
        json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [1]}]});
    let answer = post(
        &gateway.at("/v2/models/sleepy/infer"),
        &[("Flotilla-Timeout-Ms", "30")],
        serde_json::to_vec(&tensor).unwrap(),
    )
    .await;
    assert!(answer.oip_error(504).contains("30 ms"));
    let received = silent.next().await.unwrap();
    assert_eq!(
        received
            .headers
            .unwrap()
            .get("Flotilla-Timeout-Ms")
            .unwrap()
            .as_str(),
        "100"
    );
}

#[tokio::test]
async fn replies_come_back_on_the_configured_inbox_prefix() {
    let server = server();
    let nats = connect(&server).await;
    let (tx, mut inboxes) = tokio::sync::mpsc::unbounded_channel();
    let _fake = fake_worker(&nats, "echo", move |m| {
        tx.send(m.reply.as_ref().map(|r| r.to_string())).unwrap();
        br#"{"outputs": [[1]], "model": "echo", "version": 1}"#.to_vec()
    })
    .await;
    let mut cfg = gateway_config(&server);
    cfg.nats.inbox_prefix = Some("_INBOX_gw".into());
    let gateway = Gateway::start(cfg).await;
    let answer = post(&gateway.at("/models/echo/predict"), &[], r#"{"x": [1]}"#).await;
    assert_eq!(answer.status, 200);
    let inbox = inboxes.recv().await.unwrap().unwrap();
    assert!(inbox.starts_with("_INBOX_gw."), "{inbox}");
}

#[tokio::test]
async fn a_request_larger_than_nats_carries_is_413() {
    let server = server();
    let _worker = fleet(&server).await;
    let mut cfg = gateway_config(&server);
    cfg.max_body_bytes = 4 << 20;
    let gateway = Gateway::start(cfg).await;
    // Over nats-server's default max_payload (1 MiB), under the gateway's own limit.
    let big = json!({"inputs": vec![IRIS_ROW; 70_000]});
    let answer = post_json(&gateway.at("/models/iris/predict"), &big).await;
    assert_eq!(answer.status, 413, "{:?}", answer.body);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("carries at most"), "{message}");
}
