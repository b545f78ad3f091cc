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
