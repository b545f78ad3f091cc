//! Bearer tokens, TLS, shutdown with requests in flight, the metrics, and the `flotilla
//! gateway` process answering SIGTERM.

use tokio::io::AsyncBufReadExt;

use serde_json::{json, Value};

use super::*;

const IRIS_ROW: [f64; 4] = [5.1, 3.5, 1.4, 0.2];

#[tokio::test]
async fn bearer_tokens_guard_every_route_but_health() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# gateway callers\nfirst-token\n\n  second-token  \n",
    )
    .unwrap();
    let mut cfg = gateway_config(&server);
    cfg.auth_tokens_file = Some(tokens);
    let gateway = Gateway::start(cfg).await;
    let nats = connect(&server).await;
    let mut tap = Tap::start(&nats).await;
    let body = serde_json::to_vec(&json!({"inputs": [IRIS_ROW]})).unwrap();
    let url = gateway.at("/models/iris/predict");

    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Basic Zmlyc3QtdG9rZW4=")],
    ] {
        let answer = post(&url, &headers, body.clone()).await;
        assert_eq!(answer.status, 401, "{headers:?}");
        assert!(answer
            .header("WWW-Authenticate")
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(answer.json()["error"]["kind"], "unauthorized");
    }
    let oip = Answer::from(
        http()
            .get(gateway.at("/v2/models/iris"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    oip.oip_error(401);
    assert_eq!(
        get(&gateway.at("/v2/health/ready")).await.status,
        200,
        "probes need no token"
    );

    for token in ["first-token", "second-token"] {
        let answer = post(
            &url,
            &[("Authorization", &format!("Bearer {token}"))],
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, 200, "{token}");
    }
    let first = tap.next().await;
    assert!(
        first.payload.starts_with(b"{\"inputs\""),
        "only authorised requests reached NATS"
    );
    assert!(
        gateway.metric(
            r#"flotilla_gateway_requests_total{route="/models/{model}/predict",status="401"}"#
        ) >= 3.0
    );
}

#[tokio::test]
async fn tls_serves_https_with_the_configured_certificate() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut cfg = gateway_config(&server);
    cfg.tls_cert = Some(cert_path);
    cfg.tls_key = Some(key_path);
    let gateway = Gateway::start(cfg).await;
    assert!(gateway.url.starts_with("https://localhost:"));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap();
    let ready = client
        .get(gateway.at("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let answer = client
        .post(gateway.at("/models/iris/predict"))
        .body(serde_json::to_vec(&json!({"x": IRIS_ROW})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body = Answer::from(answer).await.json();
    assert_eq!(body["labels"], json!(["setosa"]));

    // Plain HTTP to the TLS port gets no HTTP answer; an untrusting client refuses the cert.
    let plain = gateway.url.replace("https://", "http://");
    assert!(http()
        .get(format!("{plain}/v2/health/live"))
        .send()
        .await
        .is_err());
    assert!(http()
        .get(gateway.at("/v2/health/live"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn shutdown_answers_every_request_in_flight() {
    let server = server();
    let nats = connect(&server).await;
    // A worker that holds every request until the test lets go.
    let mut held = nats.subscribe("flotilla.predict.hold").await.unwrap();
    nats.flush().await.unwrap();
    let gateway = Gateway::start(gateway_config(&server)).await;
    const N: usize = 24;
    let url = gateway.at("/models/hold/predict");
    let requests: Vec<_> = (0..N)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &[], format!(r#"{{"x": [{i}]}}"#)).await })
        })
        .collect();
    let mut messages = Vec::new();
    while messages.len() < N {
        messages.push(
            tokio::time::timeout(WAIT, held.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(gateway.metric("flotilla_gateway_in_flight"), N as f64);

    gateway.shutdown.cancel();
    // Stopped accepting: a new connection is refused or gets no answer.
    let closed = gateway.at("/v2/health/live");
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    eventually("the gateway stops accepting", || {
        let (closed, impatient) = (closed.clone(), impatient.clone());
        async move { impatient.get(&closed).send().await.is_err() }
    })
    .await;
    for m in &messages {
        let x = serde_json::from_slice::<Value>(&m.payload).unwrap()["x"][0].clone();
        let reply = json!({"outputs": [[1]], "model": "hold", "version": 1, "y_pred": x});
        let reply = serde_json::to_vec(&reply).unwrap();
        nats.publish(m.reply.clone().unwrap(), reply.into())
            .await
            .unwrap();
    }
    for (i, request) in requests.into_iter().enumerate() {
        let answer = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "request {i}: {:?}", answer.body);
        assert_eq!(
            answer.json()["y_pred"],
            json!(i),
            "request {i} got another's reply"
        );
    }
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_by_route_template_and_status() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let gateway = Gateway::start(gateway_config(&server)).await;
    let body = json!({"inputs": [IRIS_ROW]});
    for _ in 0..2 {
        assert_eq!(
            post_json(&gateway.at("/models/iris/predict"), &body)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        post_json(&gateway.at("/models/nope/predict"), &body)
            .await
            .status,
        404
    );
    assert_eq!(get(&gateway.at("/no/such/route")).await.status, 404);

    let series = |route: &str, status: u16| {
        format!(r#"flotilla_gateway_requests_total{{route="{route}",status="{status}"}}"#)
    };
    assert_eq!(gateway.metric(&series("/models/{model}/predict", 200)), 2.0);
    assert_eq!(gateway.metric(&series("/models/{model}/predict", 404)), 1.0);
    assert_eq!(gateway.metric(&series("unmatched", 404)), 1.0);
    assert_eq!(
        gateway.metric(
            r#"flotilla_gateway_request_duration_seconds_count{route="/models/{model}/predict"}"#
        ),
        3.0
    );
    assert_eq!(gateway.metric("flotilla_gateway_in_flight"), 0.0);

    // And over HTTP, on the metrics address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(flotilla_gateway::metrics::serve(
        listener,
        gateway.metrics.clone(),
        stop.clone(),
    ));
    let text = get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert_eq!(text.status, 200);
    assert!(String::from_utf8_lossy(&text.body).contains("flotilla_gateway_in_flight"));
    stop.cancel();
}

/// The real binary: SIGTERM while a request is in flight, the request is answered, exit 0.
#[tokio::test]
async fn the_gateway_process_drains_on_sigterm_and_exits_0() {
    let server = server();
    let nats = connect(&server).await;
    let mut held = nats.subscribe("flotilla.predict.hold").await.unwrap();
    nats.flush().await.unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "gateway",
            "--nats",
            &server.url(),
            "--http",
            "127.0.0.1:0",
            "--metrics-addr",
            "",
            "--log-format",
            "json",
        ])
        .env("FLOTILLA_GATEWAY_DEFAULT_MODEL", "hold")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Kept open to the end: the gateway logs while it drains.
    let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = log.next_line().await.unwrap() {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "gateway listening" {
                return event["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("the gateway exited without listening");
    })
    .await
    .expect("the gateway did not start listening");

    let request =
        tokio::spawn(
            async move { post(&format!("http://{addr}/predict"), &[], r#"{"x": [1]}"#).await },
        );
    let message = tokio::time::timeout(WAIT, held.next())
        .await
        .unwrap()
        .unwrap();
    sigterm(&child);
    nats.publish(
        message.reply.unwrap(),
        r#"{"outputs": [[2]], "model": "hold", "version": 1, "y_pred": 2}"#.into(),
    )
    .await
    .unwrap();
    let answer = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!((answer.status, answer.json()), (200, json!({"y_pred": 2})));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
