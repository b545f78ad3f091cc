//! The NATS services API: `$SRV.PING|INFO|STATS.flotilla` list the fleet and its models.

use futures::StreamExt;
use serde_json::Value;

use crate::support::*;

/// Collects the `expected` answers to a services API request, failing if they do not all
/// come within the bound. Each answer names its instance, so a duplicate would show.
async fn gather(nats: &async_nats::Client, subject: &str, expected: usize) -> Vec<Value> {
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    let mut out: Vec<Value> = Vec::new();
    while out.len() < expected {
        let m = tokio::time::timeout(WAIT, replies.next())
            .await
            .unwrap_or_else(|_| panic!("{subject}: {} of {expected} answers", out.len()))
            .unwrap();
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    let mut ids: Vec<_> = out.iter().map(|v| v["id"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected, "one answer per worker: {out:?}");
    out
}

#[tokio::test]
async fn workers_register_with_the_services_api() {
    let server = server();
    let _a = Worker::start(
        config(&server),
        vec![
            ("iris", example_model("iris")),
            ("linear", example_model("linear")),
        ],
    )
    .await;
    let _b = Worker::start(config(&server), vec![("iris", example_model("iris"))]).await;
    let nats = connect(&server).await;
    flotilla_proto::Client::new(nats.clone())
        .predict("iris", &[vec![5.0, 3.0, 1.5, 0.2]])
        .await
        .unwrap();

    let pings = gather(&nats, "$SRV.PING.flotilla", 2).await;
    assert_eq!(pings.len(), 2, "{pings:?}");
    for p in &pings {
        assert_eq!(p["type"], "io.nats.micro.v1.ping_response");
        assert_eq!(p["name"], "flotilla");
        assert!(p["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert_eq!(gather(&nats, "$SRV.PING", 2).await.len(), 2);
    let id = pings[0]["id"].as_str().unwrap();
    assert_eq!(
        gather(&nats, &format!("$SRV.PING.flotilla.{id}"), 1)
            .await
            .len(),
        1
    );

    let infos = gather(&nats, "$SRV.INFO.flotilla", 2).await;
    let mut endpoint_counts: Vec<usize> = infos
        .iter()
        .map(|i| {
            assert_eq!(i["type"], "io.nats.micro.v1.info_response");
            let endpoints = i["endpoints"].as_array().unwrap();
            for e in endpoints {
                let name = e["name"].as_str().unwrap();
                assert_eq!(e["subject"], format!("flotilla.predict.{name}"));
                assert_eq!(e["queue_group"], "flotilla");
                let metadata = e["metadata"].as_object().unwrap();
                assert!(metadata.values().all(|v| v.is_string()), "{metadata:?}");
                let (inputs, classifier) = match name {
                    "iris" => ("[-1,4]", "true"),
                    _ => ("[-1,10]", "false"),
                };
                assert_eq!(e["metadata"]["model"], name);
                assert_eq!(e["metadata"]["kind"], "dense");
                assert_eq!(e["metadata"]["version"], "1");
                assert_eq!(e["metadata"]["input_shape"], inputs);
                let specs: Value =
                    serde_json::from_str(e["metadata"]["inputs"].as_str().unwrap()).unwrap();
                assert_eq!(specs[0]["shape"].to_string(), inputs);
                assert_eq!(e["metadata"]["classifier"], classifier);
            }
            endpoints.len()
        })
        .collect();
    endpoint_counts.sort();
    assert_eq!(endpoint_counts, vec![1, 2]);

    let stats = gather(&nats, "$SRV.STATS.flotilla", 2).await;
    assert_eq!(stats.len(), 2);
    let mut iris_requests = 0;
    for s in &stats {
        assert_eq!(s["type"], "io.nats.micro.v1.stats_response");
        assert!(s["started"].as_str().is_some());
        for e in s["endpoints"].as_array().unwrap() {
            let data = &e["data"];
            assert!(data.is_object(), "stats data must be a JSON object: {data}");
            assert_eq!(data["version"], 1);
            assert!(data["inputs"].as_u64().is_some());
            if e["name"] == "iris" {
                iris_requests += e["num_requests"].as_u64().unwrap();
            }
        }
    }
    assert_eq!(
        iris_requests, 1,
        "the one request is counted by the worker that served it"
    );
}
