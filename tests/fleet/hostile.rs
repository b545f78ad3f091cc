//! Regression tests for issue 8 ("nothing a caller, a manifest or a lost node does can take a
//! worker down"), each against a real nats-server. A test's name says which finding it guards.

use crate::support::*;

const IRIS_ROW: &str = r#"{"x": [5.1, 3.5, 1.4, 0.2]}"#;

/// Issue 8, item 1: a 10-byte MessagePack body declaring a four-billion-element `inputs`
/// aborted the worker ("memory allocation of 274877906880 bytes failed").
#[tokio::test]
async fn issue8_1_a_declared_length_cannot_abort_the_worker() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let nats = connect(&server).await;
    let mut body = vec![0x81, 0xa6];
    body.extend_from_slice(b"inputs");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    for _ in 0..3 {
        let reply = request(&nats, "iris", &[], body.clone()).await;
        assert_eq!(reply.error_code(), Some(400), "{:?}", reply.body);
    }
    // The same worker still answers.
    let reply = request(&nats, "iris", &[], IRIS_ROW).await;
    assert_eq!(reply.error_code(), None, "{:?}", reply.body);
}

/// Issue 8, item 17: a 60,000-character `Flotilla-Version` came back whole in
/// `Nats-Service-Error`.
#[tokio::test]
async fn issue8_17_header_values_are_not_echoed_whole() {
    let server = server();
    let _worker = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let nats = connect(&server).await;
    let long = "9".repeat(60_000) + "x";
    let reply = request(&nats, "iris", &[("Flotilla-Version", &long)], IRIS_ROW).await;
    assert_eq!(reply.error_code(), Some(400));
    let message = reply.header("Nats-Service-Error").unwrap();
    assert!(message.contains("Flotilla-Version"), "{message}");
    assert!(message.len() < 300, "{} bytes echoed", message.len());
    let long_type = "a".repeat(10_000);
    let reply = request(&nats, "iris", &[("Content-Type", &long_type)], IRIS_ROW).await;
    assert_eq!(reply.error_code(), Some(400));
    assert!(reply.header("Nats-Service-Error").unwrap().len() < 300);
}
