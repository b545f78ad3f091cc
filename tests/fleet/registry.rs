//! The JetStream registry: version allocation, manifest operations, verification on load.

use std::collections::BTreeMap;

use flotilla_registry::{signing, Promote, Registry, RegistryConfig, RegistryError};

use crate::support::*;

fn iris_bytes() -> Vec<u8> {
    std::fs::read(repo_path("models/iris.json")).unwrap()
}

fn metrics(accuracy: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([("accuracy".to_string(), accuracy)])
}

#[tokio::test]
async fn publish_load_and_verify() {
    let server = server();
    let registry = Registry::open(connect(&server).await, &RegistryConfig::default())
        .await
        .unwrap();
    let p = registry
        .publish("iris", &iris_bytes(), metrics(0.9), None, Promote::IfBetter)
        .await
        .unwrap();
    assert_eq!((p.version, p.promoted), (1, true));
    let (manifest, _) = registry.require("iris").await.unwrap();
    assert_eq!(manifest.current, Some(1));
    let info = &manifest.versions[&1];
    let bytes = registry.load("iris", 1, info, &[]).await.unwrap();
    assert_eq!(
        bytes,
        iris_bytes(),
        "the registry hands back exactly what was published"
    );
    assert_eq!(
        flotilla_model::Model::from_bytes(&bytes).unwrap().inputs(),
        4
    );

    // Trusting a key refuses the unsigned version.
    let key = signing::generate();
    let err = registry
        .load("iris", 1, info, &[key.verifying_key()])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "signature", "{err}");
    let p = registry
        .publish(
            "iris",
            &iris_bytes(),
            metrics(0.9),
            Some(&key),
            Promote::IfBetter,
        )
        .await
        .unwrap();
    let (manifest, _) = registry.require("iris").await.unwrap();
    registry
        .load(
            "iris",
            p.version,
            &manifest.versions[&p.version],
            &[key.verifying_key()],
        )
        .await
        .unwrap();

    let err = registry.require("nope").await.unwrap_err();
    assert!(
        matches!(err, RegistryError::UnknownModel { .. }) && err.to_string().contains("iris"),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_publishers_never_share_a_version() {
    let server = server();
    let config = RegistryConfig::default();
    let a = Registry::open(connect(&server).await, &config)
        .await
        .unwrap();
    let b = Registry::open(connect(&server).await, &config)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let registry = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            registry
                .publish("iris", &iris_bytes(), metrics(0.9), None, Promote::Never)
                .await
                .unwrap()
                .version
        });
    }
    let mut versions = Vec::new();
    while let Some(v) = tasks.join_next().await {
        versions.push(v.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_server_without_jetstream_gets_a_clear_error_and_file_workers_still_serve() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let client = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(c) = async_nats::connect(&url).await {
                break c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let err = Registry::open(client.clone(), &RegistryConfig::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RegistryError::NoJetStream));
    assert!(err.to_string().contains("-js"), "{err}");

    // Workers serving model files do not need JetStream.
    let mut cfg = flotilla_worker::WorkerConfig::default();
    cfg.nats.url = url.clone();
    cfg.metrics_addr = String::new();
    let worker = Worker::start(cfg, vec![("iris", example_model("iris"))]).await;
    let p = flotilla_proto::Client::new(client)
        .predict("iris", &[vec![5.1, 3.5, 1.4, 0.2]])
        .await
        .unwrap();
    assert_eq!(p.version, 1);
    worker.stop().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

/// Issue 8, cluster node loss: a download from a node that stopped answering waited
/// async-nats' 10 s per request (then panicked inside its object store) before a retry could
/// go elsewhere. Each step of a download now gets `download_stall_secs`, and says it stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_is_abandoned_after_the_stall_limit() {
    let mut server = server();
    let config = RegistryConfig {
        download_stall_secs: 1,
        ..RegistryConfig::default()
    };
    let registry = Registry::open(connect(&server).await, &config)
        .await
        .unwrap();
    registry
        .publish("iris", &iris_bytes(), metrics(0.9), None, Promote::Always)
        .await
        .unwrap();
    let (manifest, _) = registry.require("iris").await.unwrap();
    let info = &manifest.versions[&1];
    // The server is gone: nothing will answer until it is back.
    server.kill();
    let err = tokio::time::timeout(WAIT, registry.load("iris", 1, info, &[]))
        .await
        .expect("the download came back")
        .expect_err("nothing can be downloaded from a dead server");
    assert!(
        matches!(&err, RegistryError::Download { message, .. } if message.contains("nothing received for 1s")),
        "{err}"
    );
    // The same handle downloads again once the server is back.
    tokio::task::block_in_place(|| server.start_again()).unwrap();
    let bytes = tokio::time::timeout(WAIT, async {
        loop {
            match registry.load("iris", 1, info, &[]).await {
                Ok(bytes) => return bytes,
                Err(RegistryError::Download { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("downloaded once the server was back");
    assert_eq!(bytes, iris_bytes());
}
