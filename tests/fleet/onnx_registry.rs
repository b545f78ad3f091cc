//! ONNX models through the registry: published with their kind, refused at publish when no
//! worker could load them, followed and hot-swapped under load across kinds (dense, then
//! ONNX, then another ONNX model) without one failed request, and a version that fails to
//! build leaving the old one serving.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_model::Kind;
use flotilla_registry::{signing, Promote, Registry, RegistryConfig, VersionInfo};
use serde_json::json;
use sha2::Digest;

use crate::support::*;

async fn registry(server: &NatsServer) -> Registry {
    Registry::open(connect(server).await, &RegistryConfig::default())
        .await
        .unwrap()
}

fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(repo_path(rel)).unwrap()
}

async fn publish(registry: &Registry, kind: Kind, artifact: &[u8]) -> u64 {
    registry
        .publish_kind(
            "iris",
            kind.as_str(),
            artifact,
            BTreeMap::new(),
            None,
            Promote::Always,
        )
        .await
        .unwrap()
        .version
}

const ROW: [f64; 4] = [6.7, 3.0, 5.2, 2.3];

async fn ask(nats: &async_nats::Client) -> (u64, serde_json::Value) {
    let reply = request(
        nats,
        "iris",
        &[("Flotilla-Timeout-Ms", "5000")],
        json!({"inputs": [ROW]}).to_string(),
    )
    .await;
    assert_eq!(reply.error_code(), None, "{:?}", reply.json());
    let v = reply.json();
    (v["version"].as_u64().unwrap(), v)
}

async fn wait_for_version(nats: &async_nats::Client, version: u64) {
    tokio::time::timeout(WAIT, async {
        while ask(nats).await.0 != version {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("version {version} never served"));
}

#[tokio::test]
async fn publish_refuses_onnx_files_no_worker_could_load() {
    let server = server();
    let registry = registry(&server).await;
    for (file, want) in [
        (
            "tests/fixtures/onnx/corrupt.onnx",
            "not a readable ONNX file",
        ),
        (
            "tests/fixtures/onnx/unsupported_op.onnx",
            "unsupported operator \"Frobnicate\"",
        ),
    ] {
        // What every publisher checks before storing (the CLI, the trainer): the registry
        // itself stores bytes and never parses a model.
        let err = flotilla_model::publishable_kind(Kind::Onnx, &bytes(file))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{file}: {err}");
    }
    assert!(registry.manifest("bad").await.unwrap().is_none());
    // The CLI says the same and publishes good files with their kind.
    let url = server.url();
    let run = |file: String| {
        let url = url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .args(["models", "publish", "cnn", &file, "--nats", &url])
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(repo_path("tests/fixtures/onnx/unsupported_op.onnx")
        .display()
        .to_string())
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Frobnicate"));
    let out = run(repo_path("models/onnx/cnn.onnx").display().to_string()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (manifest, _) = registry.require("cnn").await.unwrap();
    assert_eq!(manifest.versions[&1].kind, "onnx");
    assert_eq!(
        manifest.versions[&1].size,
        bytes("models/onnx/cnn.onnx").len() as u64
    );
}

#[tokio::test]
async fn swaps_across_kinds_under_load_fail_no_request() {
    let server = server();
    let registry = registry(&server).await;
    let key = signing::generate();
    let signed = |kind: Kind, artifact: Vec<u8>| {
        let (registry, key) = (registry.clone(), key.clone());
        async move {
            registry
                .publish_kind(
                    "iris",
                    kind.as_str(),
                    &artifact,
                    BTreeMap::new(),
                    Some(&key),
                    Promote::Always,
                )
                .await
                .unwrap()
                .version
        }
    };
    signed(Kind::Dense, bytes("models/iris.json")).await;
    let mut cfg = config(&server);
    cfg.registry.trusted_keys = vec![signing::public_hex(&key.verifying_key())];
    let _a = Worker::follow(cfg.clone(), "iris").await;
    let _b = Worker::follow(cfg, "iris").await;
    let nats = connect(&server).await;
    assert_eq!(ask(&nats).await.0, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (nats, stop) = (nats.clone(), stop.clone());
        load.spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (version, v) = ask(&nats).await;
                // Whatever the kind, a virginica row is classified as such.
                let label = &v["labels"][0];
                match version {
                    2 => assert_eq!(label, 2, "{v}"),
                    _ => assert_eq!(label, "virginica", "{v}"),
                }
                seen.push(version);
            }
            seen
        });
    }
    let v2 = signed(Kind::Onnx, bytes("models/onnx/pipeline_logreg.onnx")).await;
    wait_for_version(&nats, v2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v3 = signed(Kind::Onnx, bytes("models/onnx/string_labels.onnx")).await;
    wait_for_version(&nats, v3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions = HashSet::new();
    let mut replies = 0;
    while let Some(done) = load.join_next().await {
        let seen = done.unwrap();
        replies += seen.len();
        versions.extend(seen);
    }
    assert_eq!(versions, HashSet::from([1, 2, 3]), "every version served");
    assert!(replies > 100, "only {replies} replies");
}

#[tokio::test]
async fn a_version_that_fails_to_build_leaves_the_old_one_serving() {
    let server = server();
    let registry = registry(&server).await;
    publish(
        &registry,
        Kind::Onnx,
        &bytes("models/onnx/pipeline_logreg.onnx"),
    )
    .await;
    let worker = Worker::follow(config(&server), "iris").await;
    let nats = connect(&server).await;
    assert_eq!(ask(&nats).await.0, 1);
    // A version whose object checks out but is no model tract can build (publish would
    // have refused it; an older flotilla or a hand-written manifest might not).
    let corrupt = bytes("tests/fixtures/onnx/corrupt.onnx");
    let object = "iris/corrupt";
    registry
        .objects()
        .put(object, &mut corrupt.as_slice())
        .await
        .unwrap();
    let info = VersionInfo {
        kind: "onnx".into(),
        object: object.into(),
        sha256: signing::to_hex(&sha2::Sha256::digest(&corrupt)),
        size: corrupt.len() as u64,
        signature: None,
        signer: None,
        metrics: BTreeMap::new(),
        created: flotilla_registry::now_rfc3339(),
    };
    registry
        .update("iris", false, |m| {
            Ok(m.add_version(info.clone(), Promote::Always))
        })
        .await
        .unwrap();
    let series = "flotilla_model_load_failures_total{model=\"iris\",reason=\"invalid\"} 1";
    tokio::time::timeout(WAIT, async {
        while !worker.metrics.render().contains(series) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the failed load was never counted");
    let (version, v) = ask(&nats).await;
    assert_eq!((version, &v["labels"][0]), (1, &json!(2)));
}
