//! `flotilla gateway`: load the gateway's settings, bind its listeners, connect to NATS and
//! serve HTTP until a signal. Everything it runs lives in `flotilla-gateway`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use flotilla_gateway::{GatewayConfig, Metrics};
use tokio_util::sync::CancellationToken;

use super::NatsFlags;
use crate::settings::{self, Setting};

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    nats: NatsFlags,
    /// Settings file (TOML), e.g. config/gateway.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long = "http", value_name = "HOST:PORT")]
    http: Option<String>,
    /// The model `POST /predict` calls.
    #[arg(long, value_name = "NAME")]
    default_model: Option<String>,
    /// Address for /metrics ("" disables) [default: 127.0.0.1:9465].
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

impl GatewayArgs {
    fn as_settings(&self) -> Vec<Setting> {
        let mut flags = self.nats.as_settings();
        for (flag, key, value) in [
            ("--http", "http_addr", &self.http),
            ("--default-model", "default_model", &self.default_model),
            ("--metrics-addr", "metrics_addr", &self.metrics_addr),
        ] {
            if let Some(value) = value {
                flags.push(Setting::flag(flag, key, value.clone()));
            }
        }
        flags
    }
}

pub async fn run(args: GatewayArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let config = gateway_settings(args.config.as_deref(), args.as_settings())?;
    let listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| {
            format!(
                "binding the HTTP API to {} (in use? pick another with --http)",
                config.http_addr
            )
        })?;
    let metrics = Metrics::new();
    let stop_metrics = CancellationToken::new();
    let _stop_metrics = stop_metrics.clone().drop_guard();
    if let Some(metrics_listener) = super::bind_metrics(&config.metrics_addr).await? {
        tracing::info!(addr = %metrics_listener.local_addr()?, "metrics endpoint: /metrics");
        tokio::spawn(flotilla_gateway::metrics::serve(
            metrics_listener,
            metrics.clone(),
            stop_metrics,
        ));
    }
    let nats = config.nats.connect("flotilla-gateway").await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = config.tls_cert.is_some(),
        auth = config.auth_tokens_file.is_some(),
        default_model = config.default_model.as_deref().unwrap_or(""),
        nats = %config.nats.url,
        "gateway listening"
    );
    flotilla_gateway::serve(listener, config, nats, metrics, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Gateway settings: defaults, `file`, `FLOTILLA_NATS_*` (the connection every flotilla
/// process shares) and `FLOTILLA_GATEWAY_*` variables, then `flags`; validated with errors
/// that name the key and where it was set. Other `FLOTILLA_*` variables are a worker's.
pub fn gateway_settings(
    file: Option<&std::path::Path>,
    flags: Vec<Setting>,
) -> Result<GatewayConfig, settings::SettingsError> {
    gateway_settings_from(file, std::env::vars(), flags)
}

fn gateway_settings_from(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: Vec<Setting>,
) -> Result<GatewayConfig, settings::SettingsError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let mut layers = match file {
        Some(path) => settings::from_file(path)?,
        None => Vec::new(),
    };
    layers.extend(
        settings::from_env(env.iter().cloned(), "FLOTILLA_", &["nats"], &[])
            .into_iter()
            .filter(|s| s.key.len() == 2 && s.key[0] == "nats"),
    );
    layers.extend(settings::from_env(env, "FLOTILLA_GATEWAY_", &["nats"], &[]));
    layers.extend(flags);
    let (config, applied) = settings::load::<GatewayConfig>(layers)?;
    config
        .validate()
        .map_err(|e| settings::check_failed(&applied, &e.key, e.message))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
        let config = gateway_settings_from(Some(&file), Vec::new(), Vec::new()).unwrap();
        assert_eq!(config, GatewayConfig::default());
    }

    #[test]
    fn environment_and_flags_layer_and_worker_variables_are_left_alone() {
        let config = gateway_settings_from(
            None,
            env(&[
                ("FLOTILLA_NATS_URL", "nats://10.0.0.1:4222"),
                ("FLOTILLA_NATS_INBOX_PREFIX", "_INBOX_gw"),
                ("FLOTILLA_REGISTRY_REPLICAS", "3"),
                ("FLOTILLA_MAX_BATCH_ROWS", "32"),
                ("FLOTILLA_GATEWAY_REQUEST_TIMEOUT_MS", "250"),
                ("FLOTILLA_GATEWAY_DEFAULT_MODEL", "iris"),
            ]),
            vec![Setting::flag("--http", "http_addr", "0.0.0.0:8081")],
        )
        .unwrap();
        assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(config.nats.inbox_prefix.as_deref(), Some("_INBOX_gw"));
        assert_eq!(config.request_timeout_ms, 250);
        assert_eq!(config.default_model.as_deref(), Some("iris"));
        assert_eq!(config.http_addr, "0.0.0.0:8081");

        let err = gateway_settings_from(
            None,
            env(&[("FLOTILLA_GATEWAY_REQUEST_TIMEOUT_MS", "0")]),
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("FLOTILLA_GATEWAY_REQUEST_TIMEOUT_MS"), "{err}");
        let err = gateway_settings_from(
            None,
            Vec::new(),
            vec![Setting::flag("--default-model", "default_model", "a b")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--default-model"), "{err}");
    }
}
