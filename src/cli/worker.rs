//! `flotilla worker`: load models, start the metrics endpoint, serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use flotilla::metrics::{self, Health, Metrics};
use flotilla::model::Model;
use flotilla::worker::{self, ServedModel};
use tokio_util::sync::CancellationToken;

use super::NatsArgs;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// A model to serve from a file, NAME=PATH (JSON or MessagePack artifact); repeatable.
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    /// Address for /metrics, /healthz and /readyz ("" disables) [default: 127.0.0.1:9464].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

pub async fn run(args: WorkerArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let mut config = args.nats.settings()?;
    if let Some(addr) = args.metrics_addr {
        config.metrics_addr = addr;
    }
    for spec in &args.models {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--model {spec:?}: expected NAME=PATH"))?;
        config.models.insert(name.to_owned(), PathBuf::from(path));
    }
    config.validate()?;

    let mut models = Vec::new();
    for (name, path) in &config.models {
        let model = Model::load(path)
            .with_context(|| format!("loading model {name:?} from {}", path.display()))?;
        tracing::info!(model = %name, path = %path.display(), "model loaded from file");
        // A file has no registry history: it is version 1 of its model.
        models.push(ServedModel {
            name: name.clone(),
            version: 1,
            model: Arc::new(model),
        });
    }
    if models.is_empty() {
        anyhow::bail!(
            "no models to serve; pass --model NAME=PATH or list them under [models] in --config"
        );
    }

    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    // Outlives the worker's own shutdown so /readyz can say "draining" while it drains.
    let endpoint_stop = CancellationToken::new();
    let _stop_endpoint = endpoint_stop.clone().drop_guard();
    if !config.metrics_addr.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics_addr)
            .await
            .with_context(|| {
                format!(
                    "binding the metrics endpoint to {} (in use? pick another with --metrics-addr)",
                    config.metrics_addr
                )
            })?;
        tracing::info!(addr = %listener.local_addr()?, "metrics endpoint: /metrics /healthz /readyz");
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            health.clone(),
            endpoint_stop,
        ));
    }
    let client = config.nats.connect("flotilla-worker").await?;
    tracing::info!(url = %config.nats.url, "connected to NATS");
    worker::run(client, &config, models, metrics, health, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
