//! Workers following the registry: hot swaps under load, rollback, canary, pinned versions,
//! and refusal of tampered or unsigned artifacts while the old version keeps serving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::client::{Client, RequestSpec};
use flotilla_registry::{signing, Promote, Registry, RegistryConfig};
use serde_json::json;

use crate::support::*;

/// A one-feature linear model `y = x + bias`: each version is told apart by its bias.
fn linear(bias: f64) -> Vec<u8> {
    json!({"format": "flotilla.model.v1", "inputs": 1, "outputs": 1,
           "layers": [{"weights": [[1.0]], "bias": [bias], "activation": "identity"}],
           "metadata": {"metrics": {"r2": 0.5}}})
    .to_string()
    .into_bytes()
}

async fn registry(server: &NatsServer) -> Registry {
    Registry::open(connect(server).await, &RegistryConfig::default())
        .await
        .unwrap()
}

async fn publish(registry: &Registry, bias: f64, promote: Promote) -> u64 {
    registry
        .publish("lin", &linear(bias), BTreeMap::new(), None, promote)
        .await
        .unwrap()
        .version
}

/// Predicts x = 0 and returns (version, y, worker).
async fn ask(nats: &async_nats::Client, headers: &[(&str, &str)]) -> (u64, f64, String) {
    let reply = request(nats, "lin", headers, r#"{"x": [0]}"#).await;
    assert_eq!(reply.error_code(), None, "{:?}", reply.json());
    let v = reply.json();
    (
        v["version"].as_u64().unwrap(),
        v["y_pred"].as_f64().unwrap(),
        reply.header("Flotilla-Worker").unwrap(),
    )
}

async fn wait_for_version(nats: &async_nats::Client, version: u64) {
    tokio::time::timeout(WAIT, async {
        while ask(nats, &[]).await.0 != version {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("version {version} never served"));
}

#[tokio::test]
async fn a_worker_started_later_serves_the_current_version_and_pins_held_ones() {
    let server = server();
    let registry = registry(&server).await;
    publish(&registry, 1.0, Promote::Always).await;
    publish(&registry, 2.0, Promote::Always).await;
    publish(&registry, 3.0, Promote::Never).await;
    let _w = Worker::follow(config(&server), "lin").await;
    let nats = connect(&server).await;
    assert_eq!(ask(&nats, &[]).await.0, 2);
    // Version 3 was published but never promoted; version 1 was never loaded here.
    for v in ["1", "3"] {
        let reply = request(&nats, "lin", &[("Flotilla-Version", v)], r#"{"x": [0]}"#).await;
        assert_eq!(reply.error_code(), Some(409));
    }
    registry
        .update("lin", false, |m| m.promote(3))
        .await
        .unwrap();
    wait_for_version(&nats, 3).await;
    // The previous current stays loaded (keep_versions = 2) for pinned requests.
    let (v, y, _) = ask(&nats, &[("Flotilla-Version", "2")]).await;
    assert_eq!((v, y), (2, 2.0));
}

#[tokio::test]
async fn rollback_restores_the_previous_predictions() {
    let server = server();
    let registry = registry(&server).await;
    publish(&registry, 10.0, Promote::Always).await;
    let worker = Worker::follow(config(&server), "*").await;
    let nats = connect(&server).await;
    assert_eq!(ask(&nats, &[]).await, (1, 10.0, ask(&nats, &[]).await.2));
    publish(&registry, 20.0, Promote::Always).await;
    wait_for_version(&nats, 2).await;
    assert_eq!(ask(&nats, &[]).await.1, 20.0);
    let back = registry
        .update("lin", false, |m| m.rollback(None))
        .await
        .unwrap();
    assert_eq!(back, 1);
    wait_for_version(&nats, 1).await;
    let (v, y, _) = ask(&nats, &[]).await;
    assert_eq!((v, y), (1, 10.0));
    assert_eq!(worker.metric("flotilla_model_version{model=\"lin\"}"), 1.0);
    assert_eq!(
        worker.metric("flotilla_model_swaps_total{model=\"lin\"}"),
        2.0
    );
}

#[tokio::test]
async fn tampered_and_unsigned_versions_are_refused_while_the_old_one_serves() {
    let server = server();
    let registry = registry(&server).await;
    let key = signing::generate();
    let pubkey = signing::public_hex(&key.verifying_key());
    let signed = |bias| {
        let registry = registry.clone();
        let key = key.clone();
        async move {
            registry
                .publish(
                    "lin",
                    &linear(bias),
                    BTreeMap::new(),
                    Some(&key),
                    Promote::Never,
                )
                .await
                .unwrap()
                .version
        }
    };
    let v1 = signed(1.0).await;
    registry
        .update("lin", false, |m| m.promote(v1))
        .await
        .unwrap();
    let mut cfg = config(&server);
    cfg.registry.trusted_keys = vec![pubkey];
    let worker = Worker::follow(cfg, "lin").await;
    let nats = connect(&server).await;
    assert_eq!(ask(&nats, &[]).await.0, v1);
    let failures = |reason: &str| {
        worker.metric(&format!(
            "flotilla_model_load_failures_total{{model=\"lin\",reason=\"{reason}\"}}"
        ))
    };
    let wait_failures = |reason: &'static str, n: f64| {
        let metrics = worker.metrics.clone();
        async move {
            tokio::time::timeout(WAIT, async {
            loop {
                let text = metrics.render();
                let series = format!("flotilla_model_load_failures_total{{model=\"lin\",reason=\"{reason}\"}} {n}");
                if text.contains(&series) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {reason} failure counted"));
        }
    };

    // Unsigned: refused.
    let v2 = publish(&registry, 2.0, Promote::Always).await;
    wait_failures("signature", 1.0).await;
    assert_eq!(ask(&nats, &[]).await.0, v1);

    // Tampered: signed, but its object is replaced (by one of the same size, so it is the
    // hash that catches it) before it is promoted.
    let v3 = signed(3.0).await;
    let (manifest, _) = registry.require("lin").await.unwrap();
    let object = manifest.versions[&v3].object.clone();
    registry
        .objects()
        .put(object.as_str(), &mut linear(7.0).as_slice())
        .await
        .unwrap();
    registry
        .update("lin", false, |m| m.promote(v3))
        .await
        .unwrap();
    wait_failures("checksum", 1.0).await;
    let (v, y, _) = ask(&nats, &[]).await;
    assert_eq!((v, y), (v1, 1.0), "the old version keeps serving");
    // Each manifest change retried the unsigned current version, and refused it again.
    assert!(failures("signature") >= 1.0);

    // A good signed version still goes through.
    let v4 = signed(4.0).await;
    registry
        .update("lin", false, |m| m.promote(v4))
        .await
        .unwrap();
    wait_for_version(&nats, v4).await;
    assert!(v2 < v3 && v3 < v4);
}

#[tokio::test]
async fn a_canary_takes_about_its_weight_of_unpinned_requests() {
    let server = server();
    let registry = registry(&server).await;
    publish(&registry, 1.0, Promote::Always).await;
    publish(&registry, 2.0, Promote::Never).await;
    let _w = Worker::follow(config(&server), "lin").await;
    registry
        .update("lin", false, |m| m.set_canary(2, 0.3))
        .await
        .unwrap();
    let client = Client::new(connect(&server).await);
    // Wait until the canary is live, then count.
    tokio::time::timeout(WAIT, async {
        while client.predict("lin", &[vec![0.0]]).await.unwrap().version != 2 {}
    })
    .await
    .expect("the canary never served");
    let n = 2000;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut canary = 0;
            for _ in 0..n / 8 {
                let p = client.predict("lin", &[vec![t as f64]]).await.unwrap();
                assert_eq!(p.outputs[0][0], t as f64 + p.version as f64);
                canary += (p.version == 2) as usize;
            }
            canary
        });
    }
    let mut canary = 0;
    while let Some(c) = tasks.join_next().await {
        canary += c.unwrap();
    }
    let share = canary as f64 / n as f64;
    // Binomial sd at p = 0.3, n = 2000 is about 0.010: five of them either side.
    assert!((share - 0.3).abs() < 0.05, "canary share {share}");
    // Pinned requests are not drawn.
    let spec = RequestSpec {
        version: Some(1),
        ..RequestSpec::default()
    };
    for _ in 0..50 {
        assert_eq!(
            client
                .predict_with("lin", &[vec![0.0]], spec)
                .await
                .unwrap()
                .version,
            1
        );
    }
}

#[tokio::test]
async fn hot_swaps_under_load_fail_no_request_and_never_go_backwards() {
    let server = server();
    let registry = registry(&server).await;
    publish(&registry, 1.0, Promote::Always).await;
    let _a = Worker::follow(config(&server), "lin").await;
    let _b = Worker::follow(config(&server), "lin").await;
    let nats = connect(&server).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (nats, stop) = (nats.clone(), stop.clone());
        load.spawn(async move {
            let mut last: HashMap<String, u64> = HashMap::new();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let x = t as f64;
                let reply = request(
                    &nats,
                    "lin",
                    &[("Flotilla-Timeout-Ms", "5000")],
                    json!({"x": [x]}).to_string(),
                )
                .await;
                assert_eq!(reply.error_code(), None, "{:?}", reply.json());
                let v = reply.json();
                let version = v["version"].as_u64().unwrap();
                assert_eq!(
                    v["y_pred"].as_f64().unwrap(),
                    x + version as f64,
                    "computed by its version"
                );
                let worker = reply.header("Flotilla-Worker").unwrap();
                let previous = last.insert(worker.clone(), version).unwrap_or(0);
                assert!(
                    version >= previous,
                    "worker {worker} went back from {previous} to {version}"
                );
                seen.push(version);
            }
            seen
        });
    }
    let swaps = 24;
    for bias in 2..=(swaps + 1) {
        publish(&registry, bias as f64, Promote::Always).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    wait_for_version(&nats, swaps as u64 + 1).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions = HashSet::new();
    let mut replies = 0;
    while let Some(done) = load.join_next().await {
        let seen = done.unwrap();
        replies += seen.len();
        versions.extend(seen);
    }
    assert!(versions.iter().all(|v| (1..=swaps as u64 + 1).contains(v)));
    assert!(
        versions.len() >= 10,
        "the load saw only versions {versions:?}"
    );
    assert!(replies > 500, "only {replies} replies");
}

#[tokio::test]
async fn train_publish_predict_end_to_end_and_the_gate_refuses_a_worse_model() {
    let server = server();
    let url = server.url();
    let train = |extra: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["train", "--data", "data/iris.csv", "--target", "species"])
                .args([
                    "--name", "iris", "--kind", "softmax", "--json", "--nats", &url,
                ])
                .args(extra)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    let first = train(&[]).await;
    assert_eq!(first["published"]["version"], 1);
    assert_eq!(first["published"]["promoted"], true);
    assert!(first["metrics"]["accuracy"].as_f64().unwrap() >= 0.93);

    let worker = Worker::follow(config(&server), "iris").await;
    let client = Client::new(connect(&server).await);
    let p = client
        .predict(
            "iris",
            &[vec![5.1, 3.5, 1.4, 0.2], vec![6.7, 3.0, 5.2, 2.3]],
        )
        .await
        .unwrap();
    assert_eq!(p.version, 1);
    let labels: Vec<String> = p.labels.unwrap().iter().map(|l| l.to_string()).collect();
    assert_eq!(labels, ["setosa", "virginica"]);

    // One epoch of training is worse on validation: published, but not promoted.
    let worse = train(&["--epochs", "1"]).await;
    assert_eq!(worse["published"]["version"], 2);
    assert_eq!(worse["published"]["promoted"], false, "{worse}");
    assert!(worse["published"]["reason"]
        .as_str()
        .unwrap()
        .contains("worse"));
    let registry = registry(&server).await;
    assert_eq!(registry.require("iris").await.unwrap().0.current, Some(1));
    assert_eq!(
        client
            .predict("iris", &[vec![5.1, 3.5, 1.4, 0.2]])
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(worker.metric("flotilla_model_version{model=\"iris\"}"), 1.0);
}
