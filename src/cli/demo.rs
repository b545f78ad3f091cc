//! `flotilla demo`: a local fleet in one command. Uses the NATS at `--nats`, or starts a
//! throwaway `nats-server`; starts two worker processes serving the example models; sends a
//! few predictions; waits for Ctrl-C and stops everything.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla::client::Client;
use flotilla::nats_server::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::NatsArgs;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Exit after printing the predictions instead of waiting for Ctrl-C.
    #[arg(long)]
    once: bool,
}

/// The example models, built into the binary so the demo works from any directory.
const MODELS: [(&str, &str); 3] = [
    ("linear", include_str!("../../models/linear.json")),
    ("iris", include_str!("../../models/iris.json")),
    ("iris-mlp", include_str!("../../models/mlp.json")),
];

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

    let dir = std::env::temp_dir().join(format!("flotilla-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut model_flags = Vec::new();
    for (name, json) in MODELS {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        model_flags.push(format!("{name}={}", path.display()));
    }

    let mut workers = Vec::new();
    let mut metrics_addrs = Vec::new();
    for _ in 0..2 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        workers.push(spawn_worker(
            &settings.nats.url,
            &model_flags,
            &addr,
            args.nats.config.as_deref(),
        )?);
        metrics_addrs.push(addr);
    }
    let outcome = demo(
        &nats,
        &settings.subject_prefix,
        &metrics_addrs,
        args.once,
        &shutdown,
    )
    .await;
    println!("Stopping the workers");
    for child in &mut workers {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for child in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.kill().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    outcome?;
    Ok(ExitCode::SUCCESS)
}

async fn demo(
    nats: &async_nats::Client,
    prefix: &str,
    metrics_addrs: &[String],
    once: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    for addr in metrics_addrs {
        wait_ready(addr).await?;
    }
    println!("Two workers are serving linear, iris and iris-mlp\n");
    let client = Client::new(nats.clone()).with_prefix(prefix);
    let requests: [(&str, Vec<Vec<f64>>); 3] = [
        (
            "iris",
            vec![vec![5.1, 3.5, 1.4, 0.2], vec![6.7, 3.0, 5.2, 2.3]],
        ),
        ("iris-mlp", vec![vec![5.9, 3.0, 4.2, 1.5]]),
        (
            "linear",
            vec![vec![0.5, -1.0, 0.3, 0.0, 1.2, -0.7, 0.1, 0.9, -0.2, 0.4]],
        ),
    ];
    for (model, rows) in requests {
        let reply = client.predict(model, &rows).await?;
        println!("predict {model} {rows:?}");
        match &reply.labels {
            Some(labels) => println!(
                "  -> labels {:?}, probabilities {:.3?} (version {})",
                labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                reply.outputs,
                reply.version
            ),
            None => println!(
                "  -> outputs {:.3?} (version {})",
                reply.outputs, reply.version
            ),
        }
    }
    println!(
        "\nMetrics: {}",
        metrics_addrs
            .iter()
            .map(|a| format!("http://{a}/metrics"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!(
        "Try: cargo run --release -- predict iris --x 5.1,3.5,1.4,0.2 --nats {}",
        nats_url_hint(nats)
    );
    if !once {
        println!("Press Ctrl-C to stop.");
        shutdown.cancelled().await;
    }
    Ok(())
}

fn nats_url_hint(nats: &async_nats::Client) -> String {
    let info = nats.server_info();
    format!("nats://{}:{}", info.host, info.port)
}

fn spawn_worker(
    url: &str,
    models: &[String],
    metrics_addr: &str,
    config: Option<&Path>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding the flotilla executable")?;
    let mut command = Command::new(exe);
    command
        .arg("worker")
        .args(["--nats", url, "--metrics-addr", metrics_addr]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    for m in models {
        command.args(["--model", m]);
    }
    command.kill_on_drop(true);
    command.spawn().context("starting a worker process")
}

/// Polls `/readyz` until it answers 200.
async fn wait_ready(addr: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
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
