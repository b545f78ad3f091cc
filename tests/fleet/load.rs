//! Overload and shutdown: past the queue bound requests are refused at once, and a worker
//! told to stop answers everything it accepted. Nothing goes unanswered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::client::{Client, ClientError, RequestSpec};
use flotilla_proto::ErrorKind;

use crate::support::*;

#[tokio::test]
async fn a_flood_past_max_queue_rows_gets_503s_and_every_request_an_answer() {
    let server = server();
    let mut cfg = config(&server);
    cfg.max_queue_rows = 32;
    cfg.max_request_rows = 8;
    cfg.max_batch_rows = 8;
    let worker = Worker::start(cfg, vec![("slow", slow_model(4))]).await;
    let client = Client::new(connect(&server).await);
    let mut tasks = tokio::task::JoinSet::new();
    let requests = 300;
    for i in 0..requests {
        let client = client.clone();
        tasks.spawn(async move { client.predict("slow", &rows(4, 4, i)).await });
    }
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(p) => {
                assert_eq!(p.outputs.len(), 4);
                ok += 1;
            }
            Err(ClientError::Service(e)) if e.kind == ErrorKind::Overloaded => {
                assert!(e.message.contains("max_queue_rows 32"), "{}", e.message);
                overloaded += 1;
            }
            Err(other) => panic!("every request must be answered 200 or 503, got {other}"),
        }
    }
    assert_eq!(ok + overloaded, requests);
    assert!(overloaded > 0, "the queue never filled");
    assert!(ok >= 8, "only {ok} requests were served");
    let series = |code: u16| {
        format!("flotilla_requests_total{{code=\"{code}\",model=\"slow\",version=\"1\"}}")
    };
    assert_eq!(worker.metric(&series(503)), overloaded as f64);
    assert_eq!(worker.metric(&series(200)), ok as f64);
    assert_eq!(worker.metric("flotilla_queue_rows{model=\"slow\"}"), 0.0);
}

#[tokio::test]
async fn in_process_shutdown_answers_everything_accepted() {
    let server = server();
    let worker = Worker::start(config(&server), vec![("slow", slow_model(4))]).await;
    let client = Client::new(connect(&server).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = client.clone();
        tasks.spawn(async move { client.predict("slow", &rows(8, 4, i)).await });
    }
    // Let the requests arrive and queue up behind the first batches, then stop.
    tokio::time::timeout(WAIT, async {
        while worker.metric("flotilla_queue_rows{model=\"slow\"}") == 0.0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("requests never queued");
    let health = worker.health.clone();
    let stopping = tokio::spawn(worker.stop());
    tokio::time::timeout(WAIT, async {
        while health.readiness().is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("still ready while draining");
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(p) => {
                assert_eq!(p.outputs.len(), 8);
                answered += 1;
            }
            // Requests that reached the server after the worker unsubscribed were never accepted.
            Err(ClientError::NoResponders { .. }) => {}
            Err(other) => panic!("an accepted request was lost: {other}"),
        }
    }
    assert!(answered > 0);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn sigterm_during_load_loses_no_accepted_request_and_exits_zero() {
    let server = server();
    let mut child = worker_process(&server, "mlp", "mlp", &["--metrics-addr", ""]);
    let client = Client::new(connect(&server).await);
    let spec = RequestSpec {
        timeout: Duration::from_secs(10),
        ..RequestSpec::default()
    };
    wait_answering(&client, "mlp", 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loops = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
        loops.spawn(async move {
            let (mut ok, mut lost) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = rows(1 + (t + i) % 5, 4, t * 1000 + i);
                match client.predict_with("mlp", &body, spec).await {
                    Ok(p) => {
                        assert_eq!(p.outputs.len(), body.len());
                        ok += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The worker has unsubscribed: this request was never accepted.
                    Err(ClientError::NoResponders { .. }) => break,
                    Err(other) => lost.push(other.to_string()),
                }
                i += 1;
            }
            (ok, lost)
        });
    }
    // Stop it in the middle of real load: once every client loop has had a few answers.
    tokio::time::timeout(WAIT, async {
        while answered.load(Ordering::Relaxed) < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the load never got going");
    sigterm(&child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("worker did not exit")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut lost) = (0, Vec::new());
    while let Some(done) = loops.join_next().await {
        let (o, l) = done.unwrap();
        ok += o;
        lost.extend(l);
    }
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}; log:\n{stderr}");
    assert!(
        lost.is_empty(),
        "{} requests lost or failed: {lost:?}",
        lost.len()
    );
    assert!(ok > 100, "only {ok} requests answered before the signal");
    assert!(
        stderr.contains("every accepted request answered"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_idle_worker_exits_promptly_on_sigterm() {
    // The drain must not wait on traffic that will never come.
    let server = server();
    let mut child = worker_process(&server, "iris", "iris", &["--metrics-addr", ""]);
    let client = Client::new(connect(&server).await);
    wait_answering(&client, "iris", 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("an idle worker must exit within seconds of SIGTERM")
        .unwrap();
    assert!(status.success());
}
