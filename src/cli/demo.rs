//! `flotilla demo`: the whole loop in one command. Uses the NATS at `--nats`, or starts a
//! throwaway `nats-server -js`; trains an iris classifier, publishes it to a registry, starts
//! two worker processes following that registry, sends predictions, then retrains a better
//! model and shows each worker switching versions live. Ctrl-C stops everything.
//!
//! The demo keeps to its own registry buckets (`flotilla-demo-*`) and model name, so running
//! it against a shared NATS server touches nothing else there.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_model::ArtifactEncoding;
use flotilla_proto::client::Client;
use flotilla_registry::{Promote, Registry, RegistryConfig};
use flotilla_testkit::NatsServer;
use flotilla_train::{self as train, ModelKind, TrainConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{NatsArgs, WorkerProcesses};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Exit after the version switch instead of waiting for Ctrl-C.
    #[arg(long)]
    once: bool,
}

const MODEL: &str = "demo-iris";
/// Iris, as shipped in data/, built in so the demo runs from any directory.
const IRIS_CSV: &str = include_str!("../../data/iris.csv");

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let mut settings = args.nats.settings()?;
    settings.nats.connect_timeout_secs = 1;
    let mut _own_server = None;
    let nats = match settings.nats.connect("flotilla-demo").await {
        Ok(client) => {
            println!("Using the NATS server at {}", settings.nats.url);
            client
        }
        Err(_) => {
            println!(
                "No NATS server answers at {}; starting nats-server with a temporary JetStream directory",
                settings.nats.url
            );
            let server = NatsServer::start()?;
            settings.nats.url = server.url();
            println!("Started nats-server at {}", server.url());
            _own_server = Some(server);
            settings.nats.connect("flotilla-demo").await?
        }
    };
    let registry_config = RegistryConfig {
        kv_bucket: "flotilla-demo-manifests".into(),
        object_bucket: "flotilla-demo-models".into(),
        ..settings.registry.clone()
    };
    let registry = Registry::open(nats.clone(), &registry_config)
        .await
        .context("the demo needs JetStream for its model registry")?;

    println!("\n1. Training a softmax classifier on iris for 3 epochs (a deliberately weak start)");
    let first = fit(3).await?;
    let published = registry
        .publish(MODEL, &first.0, first.1, None, Promote::Always)
        .await?;
    println!(
        "   published {MODEL} version {}: {}",
        published.version, published.reason
    );

    let mut workers = WorkerProcesses::default();
    let mut metrics_addrs = Vec::new();
    for _ in 0..2 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut command = workers.command(&settings.nats.url, args.nats.config.as_deref())?;
        command
            .args(["--metrics-addr", &addr, "--models", MODEL])
            .env("FLOTILLA_REGISTRY_KV_BUCKET", &registry_config.kv_bucket)
            .env(
                "FLOTILLA_REGISTRY_OBJECT_BUCKET",
                &registry_config.object_bucket,
            );
        workers.spawn(command)?;
        metrics_addrs.push(addr);
    }
    let outcome = demo(
        &nats,
        &registry,
        &settings.subject_prefix,
        &metrics_addrs,
        args.once,
        &shutdown,
    )
    .await;
    println!("Stopping the workers");
    workers.stop().await;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// Trains on the built-in iris data; returns the artifact and its validation metrics.
async fn fit(epochs: usize) -> anyhow::Result<(Vec<u8>, BTreeMap<String, f64>)> {
    tokio::task::spawn_blocking(move || {
        let dataset = train::Dataset::from_reader(IRIS_CSV.as_bytes(), "data/iris.csv", "species")?;
        let config = TrainConfig {
            epochs,
            ..TrainConfig::default()
        };
        let trained = train::fit(&dataset, ModelKind::Softmax, &config, &mut |_| {})?;
        println!(
            "   validation accuracy {:.3} after {} epochs",
            trained.metrics.get("accuracy").copied().unwrap_or(f64::NAN),
            trained.history.len()
        );
        Ok((
            trained.artifact.to_bytes(ArtifactEncoding::MsgPack),
            trained.metrics,
        ))
    })
    .await
    .context("the training thread panicked")?
}

async fn demo(
    nats: &async_nats::Client,
    registry: &Registry,
    prefix: &str,
    metrics_addrs: &[String],
    once: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for addr in metrics_addrs {
        wait_ready(addr).await?;
    }
    println!("\n2. Two workers follow the registry and serve {MODEL}");
    let client = Client::new(nats.clone()).with_prefix(prefix);
    let rows = vec![
        vec![5.1, 3.5, 1.4, 0.2],
        vec![6.3, 2.8, 5.1, 1.5],
        vec![6.7, 3.0, 5.2, 2.3],
    ];
    let p = client.predict(MODEL, &rows).await?;
    println!("   predict {rows:?}");
    println!("   -> {:?} (version {})", label_names(&p), p.version);

    println!("\n3. Retraining for 200 epochs and publishing with --promote if-better");
    let better = fit(200).await?;
    // Watch both workers while the new version rolls out.
    let watcher = tokio::spawn(watch_switch(nats.clone(), prefix.to_owned()));
    let published = registry
        .publish(MODEL, &better.0, better.1, None, Promote::IfBetter)
        .await?;
    println!(
        "   published {MODEL} version {}: {}",
        published.version, published.reason
    );
    let switches = watcher.await.context("the watcher failed")?;
    for (worker, from, to, after) in switches {
        println!("   worker {worker}: version {from} -> {to}, {after:.0?} after publishing began");
    }
    let p = client.predict(MODEL, &rows).await?;
    println!(
        "   predict again -> {:?} (version {})",
        label_names(&p),
        p.version
    );

    println!(
        "\nMetrics: {}",
        metrics_addrs
            .iter()
            .map(|a| format!("http://{a}/metrics"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!(
        "Roll back with: flotilla models rollback {MODEL} --nats {} (with FLOTILLA_REGISTRY_KV_BUCKET=flotilla-demo-manifests FLOTILLA_REGISTRY_OBJECT_BUCKET=flotilla-demo-models)",
        nats_url_hint(nats)
    );
    if !once {
        println!("Press Ctrl-C to stop.");
        shutdown.cancelled().await;
    }
    Ok(())
}

fn label_names(p: &flotilla_proto::Prediction) -> Vec<String> {
    p.labels.iter().flatten().map(|l| l.to_string()).collect()
}

/// The longest the demo waits for both workers to switch: a bound for a slow machine, not a
/// window it always waits out (it returns as soon as both have switched).
const SWITCH_BOUND: Duration = Duration::from_secs(30);

/// Sends requests until both workers have switched version (or [`SWITCH_BOUND`] passes) and
/// records, per worker, when its version changed.
async fn watch_switch(
    nats: async_nats::Client,
    prefix: String,
) -> Vec<(String, u64, u64, Duration)> {
    let subject = flotilla_proto::predict_subject(&prefix, MODEL);
    let start = Instant::now();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut switches = Vec::new();
    while start.elapsed() < SWITCH_BOUND && switches.len() < 2 {
        let Ok(reply) = nats
            .request(subject.clone(), r#"{"x": [5.9, 3.0, 5.1, 1.8]}"#.into())
            .await
        else {
            continue;
        };
        let headers = reply.headers.unwrap_or_default();
        let worker = headers
            .get(flotilla_proto::headers::WORKER_HEADER)
            .map(|v| v.as_str().to_owned());
        let version = headers
            .get(flotilla_proto::headers::VERSION_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok());
        if let (Some(worker), Some(version)) = (worker, version) {
            let short: String = worker.chars().take(8).collect();
            match versions.insert(short.clone(), version) {
                Some(old) if old != version => {
                    switches.push((short, old, version, start.elapsed()))
                }
                _ => {}
            }
        }
    }
    switches
}

fn nats_url_hint(nats: &async_nats::Client) -> String {
    let info = nats.server_info();
    format!("nats://{}:{}", info.host, info.port)
}

/// Polls `/readyz` until it answers 200.
async fn wait_ready(addr: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            if response.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the worker with metrics on {addr} did not become ready within 20 s")
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
