//! `flotilla worker`: load models, start the metrics endpoint, serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use flotilla_model::Model;
use flotilla_registry::Registry;
use flotilla_worker::health::{self, Health};
use flotilla_worker::Metrics;
use flotilla_worker::{self as worker, Selection, ServedModel, Source};
use tokio_util::sync::CancellationToken;

use super::NatsArgs;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// A model to serve from a file, NAME=PATH: a .json or .msgpack artifact, or an .onnx
    /// file; repeatable.
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    /// Serve models from the registry and follow their manifests: NAME[,NAME...] or '*'
    /// (every model, including those published later).
    #[arg(long = "models", value_name = "NAMES", conflicts_with = "models")]
    registry_models: Option<String>,
    /// Trust versions signed by this public key (hex, or a .pub file from `flotilla models
    /// keygen`); repeatable. With any trusted key, unsigned versions are refused.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
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
    config.registry.trusted_keys.extend(args.trusted_keys);
    config.validate()?;

    let selection = args
        .registry_models
        .as_deref()
        .map(Selection::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
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
    match (models.is_empty(), selection.is_none()) {
        (true, true) => anyhow::bail!(
            "no models to serve; pass --model NAME=PATH, --models NAME[,NAME...] or --models '*' \
             (from the registry), or list files under [models] in --config"
        ),
        (false, false) => anyhow::bail!(
            "--models (registry) and --model or [models] (files) cannot be combined in one worker; run two"
        ),
        _ => {}
    }

    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    // Outlives the worker's own shutdown so /readyz can say "draining" while it drains.
    let endpoint_stop = CancellationToken::new();
    let _stop_endpoint = endpoint_stop.clone().drop_guard();
    if let Some(listener) = super::bind_metrics(&config.metrics_addr).await? {
        tracing::info!(addr = %listener.local_addr()?, "metrics endpoint: /metrics /healthz /readyz");
        tokio::spawn(health::serve(
            listener,
            metrics.clone(),
            health.clone(),
            endpoint_stop,
        ));
    }
    let client = config.nats.connect("flotilla-worker").await?;
    tracing::info!(url = %config.nats.url, "connected to NATS");
    let source = match selection {
        None => Source::Fixed(models),
        Some(models) => {
            let registry = Registry::open(client.clone(), &config.registry).await?;
            Source::Registry {
                registry: Box::new(registry),
                models,
                trusted: Arc::new(config.registry.trusted()?),
            }
        }
    };
    worker::run(client, &config, source, metrics, health, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
