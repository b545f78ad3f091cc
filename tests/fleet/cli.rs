//! The `flotilla` binary as a user runs it: `predict` prints the reply as JSON and exits
//! non-zero with the error message on an error reply.

use std::process::Output;

use serde_json::Value;

use crate::support::*;

async fn flotilla(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn predict_prints_json_and_fails_on_error_replies() {
    let server = server();
    let _w = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let url = server.url();

    let out = flotilla(&["predict", "iris", "--nats", &url, "--x", "5.5,3.5,1.3,0.2"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["labels"][0], "setosa");
    assert_eq!(v["y_pred"].as_array().unwrap().len(), 3);

    let body = r#"{"inputs": [[5.5, 3.5, 1.3, 0.2], [6.1, 2.6, 5.6, 1.4]], "id": "cli"}"#;
    let out = flotilla(&[
        "predict",
        "iris",
        "--nats",
        &url,
        "--json",
        body,
        "--msgpack",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "cli");
    assert_eq!(v["labels"], serde_json::json!(["setosa", "versicolor"]));

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "sl,sw,pl,pw\n5.5,3.5,1.3,0.2\n6.1,2.6,5.6,1.4\n").unwrap();
    let out = flotilla(&[
        "predict",
        "iris",
        "--nats",
        &url,
        "--csv",
        csv.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 2);

    let out = flotilla(&["predict", "iris", "--nats", &url, "--x", "1,2"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("expects 4"),
        "{stderr}"
    );

    let out = flotilla(&["predict", "iris", "--nats", &url, "--x", "1,two,3,4"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"two\""));
}

/// `predict --text`: one block per text, its vector's length, its token count and first values,
/// the same as the fleet's reply to the same texts.
#[tokio::test(flavor = "multi_thread")]
async fn predict_text_prints_each_vectors_length_tokens_and_first_values() {
    let server = server();
    let model = flotilla_model::Model::load(&repo_path("models/tiny-bert")).unwrap();
    let _w = Worker::start(config(&server), vec![("tiny", model)]).await;
    let url = server.url();
    let texts = ["a", "b", "a longer text, with punctuation"];
    let nats = connect(&server).await;
    let reply = request(
        &nats,
        "tiny",
        &[],
        serde_json::json!({"inputs": texts}).to_string(),
    )
    .await;
    let want = reply.json();
    assert_eq!(reply.error_code(), None, "{want}");

    let out = flotilla(&[
        "predict", "tiny", "--nats", &url, "--text", texts[0], "--text", texts[1], "--text",
        texts[2],
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * texts.len(), "{stdout}");
    assert_eq!(
        lines[0],
        format!("model tiny version {}", want["version"]),
        "{stdout}"
    );
    let mut token_counts = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let vector = want["outputs"][i].as_array().unwrap();
        assert_eq!(vector.len(), 32, "tiny-bert's hidden size");
        let tokens = want["tokens"][i].as_u64().unwrap();
        token_counts.push(tokens);
        assert_eq!(
            lines[1 + 2 * i],
            format!("{text:?}: 32 values, {tokens} tokens"),
            "{stdout}"
        );
        let first: Vec<String> = vector[..6]
            .iter()
            .map(|v| format!("{:.4}", v.as_f64().unwrap()))
            .collect();
        assert_eq!(
            lines[2 + 2 * i],
            format!("  [{}, ...]", first.join(", ")),
            "{stdout}"
        );
    }
    // [CLS] a [SEP]: the short texts cost 3 tokens, the long one more.
    assert_eq!(token_counts[..2], [3, 3], "{stdout}");
    assert!(token_counts[2] > 3, "{stdout}");
    assert_ne!(lines[2], lines[4], "a and b get different vectors");
}

#[tokio::test]
async fn worker_refuses_bad_flags_with_a_clear_message() {
    let out = flotilla(&["worker", "--model", "iris"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=PATH"));
    let out = flotilla(&["worker", "--model", "bad.name=models/iris.json"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.name"));
    let out = flotilla(&["worker", "--model", "iris=models/nope.json"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.json"));
}

#[tokio::test]
async fn demo_starts_a_fleet_and_prints_predictions() {
    let server = server();
    let out = tokio::time::timeout(
        WAIT * 3,
        flotilla(&["demo", "--once", "--nats", &server.url()]),
    )
    .await
    .expect("demo did not finish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Using the NATS server at {}", server.url())),
        "{stdout}"
    );
    assert!(
        stdout.contains("Two workers follow the registry"),
        "{stdout}"
    );
    assert!(stdout.contains("published demo-iris version 1"), "{stdout}");
    assert!(
        stdout.contains("published demo-iris version 2: promoted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("version 1 -> 2"),
        "no worker was seen switching:\n{stdout}"
    );
    assert!(stdout.contains("(version 2)"), "{stdout}");
    assert!(
        stdout.contains("setosa") && stdout.contains("virginica"),
        "{stdout}"
    );
    assert!(stdout.contains("/metrics"), "{stdout}");
}

#[tokio::test]
async fn demo_starts_its_own_nats_server_when_none_answers() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = tokio::time::timeout(WAIT * 3, flotilla(&["demo", "--once", "--nats", &url]))
        .await
        .expect("demo did not finish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("starting nats-server"), "{stdout}");
    assert!(stdout.contains("setosa"), "{stdout}");
}

#[tokio::test]
async fn worker_process_serves_metrics_health_and_readiness() {
    let server = server();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let extra = ["--metrics-addr", &addr, "--log-format", "json"];
    let mut child = worker_process(&server, "iris", "iris", &extra);
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).await.ok()?;
            Some(text)
        }
    };
    tokio::time::timeout(WAIT, async {
        while !get("/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("never ready");
    assert!(get("/healthz").await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(get("/nope").await.unwrap().starts_with("HTTP/1.1 404"));

    let nats = connect(&server).await;
    request(&nats, "iris", &[], r#"{"x": [5.5, 3.5, 1.3, 0.2]}"#).await;
    request(&nats, "iris", &[], r#"{"x": [5.5]}"#).await;
    let metrics = get("/metrics").await.unwrap();
    for needle in [
        "flotilla_requests_total{code=\"200\",model=\"iris\",version=\"1\"} 1",
        "flotilla_requests_total{code=\"400\",model=\"iris\",version=\"1\"} 1",
        "flotilla_request_duration_seconds_count{model=\"iris\"} 2",
        "flotilla_queue_duration_seconds_count{model=\"iris\"} 1",
        "flotilla_compute_duration_seconds_count{model=\"iris\"} 1",
        "flotilla_batch_rows_sum{model=\"iris\"} 1",
        "flotilla_queue_rows{model=\"iris\"} 0",
        "flotilla_model_version{model=\"iris\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    sigterm(&child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut logs = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        logs.contains("serving model") && logs.contains("SIGTERM"),
        "{logs}"
    );
    // One line per model load, connection change and shutdown step; none per request.
    assert!(logs.lines().count() < 20, "{logs}");
}

/// Issue 6: `flotilla bench --swaps 0` panicked; it is refused with a message naming the flag.
#[tokio::test]
async fn bench_refuses_zero_swaps() {
    let out = flotilla(&["bench", "--model", "m", "--swaps", "0"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--swaps"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 8, item 19: `flotilla predict ... | head` could panic on a broken pipe.
#[tokio::test]
async fn predict_into_a_closed_pipe_exits_quietly() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "predict",
            "iris",
            "--x",
            "5.1,3.5,1.4,0.2",
            "--nats",
            &server.url(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before anything is written, as `head -0` would.
    drop(child.stdout.take());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

/// Issue 8, item 14: connection errors said "is nats-server running?" whatever the cause, and a
/// missing CA file was not named.
#[tokio::test]
async fn connection_errors_say_what_went_wrong() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = flotilla(&["predict", "iris", "--x", "1", "--nats", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is nats-server running?"), "{stderr}");

    let server = server();
    let missing = "/nonexistent/flotilla-ca.pem";
    let out = flotilla(&[
        "predict",
        "iris",
        "--x",
        "1",
        "--nats",
        &server.url(),
        "--nats-tls-ca",
        missing,
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(missing), "{stderr}");
    assert!(!stderr.contains("is nats-server running?"), "{stderr}");
}

/// Issue 9: `flotilla bench` spreads its tasks over several connections and can send a payload
/// file as it is.
#[tokio::test]
async fn bench_runs_over_several_connections_with_a_payload_file() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("one.json");
    std::fs::write(
        &payload,
        r#"{"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}"#,
    )
    .unwrap();
    let out = flotilla(&[
        "bench",
        "--model",
        "iris",
        "--nats",
        &server.url(),
        "--duration",
        "0.3",
        "--concurrency",
        "8",
        "--connections",
        "2",
        "--payload",
        payload.to_str().unwrap(),
        "--json",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
}

/// `flotilla bench` without `--features` asks the fleet how many features the model takes; it
/// read only the first `$SRV.STATS` answer, so with workers serving different models it failed
/// whenever another model's worker answered first (about half the runs here).
#[tokio::test]
async fn bench_discovers_features_from_any_worker() {
    let server = server();
    let _iris = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let _mlp = Worker::start(config(&server), vec![("mlp", example_model("mlp"))]).await;
    for model in ["iris", "mlp", "iris", "mlp", "iris", "mlp"] {
        let out = flotilla(&[
            "bench",
            "--model",
            model,
            "--nats",
            &server.url(),
            "--duration",
            "0.1",
            "--json",
        ])
        .await;
        assert!(
            out.status.success(),
            "bench --model {model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
