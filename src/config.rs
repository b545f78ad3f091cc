//! Settings: built-in defaults, then a TOML file, then `FLOTILLA_*` environment variables,
//! then command-line flags (applied by the binary). `FLOTILLA_NATS_*` and
//! `FLOTILLA_REGISTRY_*` reach the `[nats]` and `[registry]` tables. Every setting is documented with its
//! default in `config/worker.toml`; a test loads that file and checks it equals the defaults.
//!
//! This module also turns [`NatsConfig`] into a connected client, since every subcommand
//! connects the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::{validate_model_name, DEFAULT_PREFIX};
use crate::registry::RegistryConfig;

/// Why settings could not be loaded; each message names the file, variable or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// How to reach and authenticate to NATS. Shared by every subcommand.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated for a cluster.
    pub url: String,
    /// User and password authentication.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// NKey seed (`SU...`) authentication.
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT + NKey), as issued by an operator.
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    pub tls_required: bool,
    /// Seconds to wait for the first connection.
    pub connect_timeout_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout_secs: 5,
        }
    }
}

/// Everything a worker can be told. Field docs are repeated in `config/worker.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub nats: NatsConfig,
    /// First token of every subject; lets several deployments share one NATS.
    pub subject_prefix: String,
    /// Queue group every worker of a model joins, so each request reaches one worker.
    pub queue_group: String,
    /// Most rows computed in one forward pass.
    pub max_batch_rows: usize,
    /// How long a batch smaller than `max_batch_rows` may wait for more requests (0: never).
    pub max_batch_delay_us: u64,
    /// Rows admitted and waiting per model; past it requests are refused with 503 at once.
    pub max_queue_rows: usize,
    /// Most rows in one request; more is refused with 413.
    pub max_request_rows: usize,
    /// Bodies up to this size are decoded on the read loop; larger ones on the rayon pool.
    pub inline_decode_bytes: usize,
    /// `HOST:PORT` for `/metrics`, `/healthz` and `/readyz`; empty to disable.
    pub metrics_addr: String,
    /// Threads for forward passes (0: one per core).
    pub compute_threads: usize,
    /// Longest a graceful shutdown waits for accepted requests to be answered.
    pub shutdown_timeout_secs: u64,
    /// Models served from files: name -> artifact path.
    pub models: BTreeMap<String, PathBuf>,
    /// The JetStream model registry: bucket names, replication, trusted signing keys.
    pub registry: RegistryConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            nats: NatsConfig::default(),
            subject_prefix: DEFAULT_PREFIX.into(),
            queue_group: "flotilla".into(),
            max_batch_rows: 256,
            max_batch_delay_us: 0,
            max_queue_rows: 8192,
            max_request_rows: 1024,
            inline_decode_bytes: 16 * 1024,
            metrics_addr: "127.0.0.1:9464".into(),
            compute_threads: 0,
            shutdown_timeout_secs: 30,
            models: BTreeMap::new(),
            registry: RegistryConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// Defaults, then `file` (if any), then `FLOTILLA_*` variables from `env`, validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<WorkerConfig, ConfigError> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(path) => read_table(path)?,
        };
        overlay_env(&mut table, env)?;
        let config: WorkerConfig =
            WorkerConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Parse {
                    path: file.map_or("(environment)".into(), |p| p.display().to_string()),
                    message: e.to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("max_batch_rows", self.max_batch_rows),
            ("max_queue_rows", self.max_queue_rows),
            ("max_request_rows", self.max_request_rows),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_request_rows > self.max_queue_rows {
            return Err(invalid(
                "max_request_rows",
                format!(
                    "is {} but max_queue_rows is {}: a request that large could never be queued",
                    self.max_request_rows, self.max_queue_rows
                ),
            ));
        }
        check_subject_tokens("subject_prefix", &self.subject_prefix)?;
        if self.queue_group.is_empty() || self.queue_group.contains(char::is_whitespace) {
            return Err(invalid("queue_group", "must be a non-empty word"));
        }
        for name in self.models.keys() {
            validate_model_name(name).map_err(|m| invalid("models", m))?;
        }
        if self.registry.keep_versions == 0 {
            return Err(invalid("registry.keep_versions", "must be at least 1"));
        }
        if self.registry.replicas == 0 || self.registry.replicas > 5 {
            return Err(invalid("registry.replicas", "must be 1 to 5"));
        }
        self.registry
            .trusted()
            .map_err(|e| invalid("registry.trusted_keys", e.to_string()))?;
        self.nats.validate()
    }

    pub fn max_batch_delay(&self) -> Duration {
        Duration::from_micros(self.max_batch_delay_us)
    }
}

impl NatsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(invalid("nats.url", "is empty"));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid(
                "nats.user",
                "user and password must be set together",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "nats.tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        Ok(())
    }

    /// Connects, logging every later connection change at `info`/`warn`.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        use anyhow::Context;
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(self.connect_timeout_secs.max(1)))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connection (re)established")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            });
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading NATS credentials file {}", path.display()))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("invalid NATS URL {:?}", self.url))?;
        options.connect(servers).await.with_context(|| {
            format!(
                "connecting to NATS at {} (is nats-server running? start one with `nats-server -js`)",
                self.url
            )
        })
    }
}

/// Reads a TOML settings file; errors name the file.
pub(crate) fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let origin = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: origin(),
        message: e.to_string(),
    })
}

/// An environment variable's value as a TOML scalar when it parses as one (`32`, `true`,
/// `["a"]`), as a string otherwise.
pub(crate) fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) if !t["v"].is_table() => t.remove("v").expect("just parsed"),
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn check_subject_tokens(key: &str, subject: &str) -> Result<(), ConfigError> {
    let bad = subject.is_empty()
        || subject
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>', ' ', '\t']));
    if bad {
        return Err(invalid(
            key,
            format!(
                "{subject:?} is not a valid subject prefix (dot-separated words, no wildcards)"
            ),
        ));
    }
    Ok(())
}

/// Applies `FLOTILLA_<KEY>` (top-level keys) and `FLOTILLA_NATS_<KEY>` (the `[nats]` table).
/// Values are read as TOML scalars when they parse as one, as strings otherwise.
fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(key) = var.strip_prefix("FLOTILLA_") else {
            continue;
        };
        // The trainer's own settings (see train::TrainConfig).
        if key.starts_with("TRAIN_") {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let value = env_value(&raw);
        let section = ["nats", "registry"].into_iter().find_map(|t| {
            key.strip_prefix(&format!("{t}_"))
                .map(|f| (t, f.to_owned()))
        });
        let (target, field) = match section {
            Some((name, field)) => {
                let sub = table
                    .entry(name)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(sub) = sub else {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{name}` in the config file is not a table"),
                    });
                };
                (sub, field)
            }
            None => (&mut *table, key),
        };
        // Strings stay strings where a setting is textual, e.g. FLOTILLA_NATS_TOKEN=123.
        let value = match (&value, field.as_str()) {
            (toml::Value::String(_), _) => value,
            (
                _,
                "url" | "user" | "password" | "token" | "nkey_seed" | "subject_prefix"
                | "queue_group" | "metrics_addr",
            ) => toml::Value::String(raw),
            _ => value,
        };
        target.insert(field, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/worker.toml");
        let loaded = WorkerConfig::load(Some(&path), []).unwrap();
        assert_eq!(loaded, WorkerConfig::default());
    }

    #[test]
    fn environment_overrides_file_and_errors_name_the_key() {
        let env = [
            ("FLOTILLA_MAX_BATCH_ROWS".to_string(), "32".to_string()),
            ("FLOTILLA_NATS_URL".into(), "nats://10.0.0.1:4222".into()),
            ("FLOTILLA_NATS_TOKEN".into(), "123".into()),
            ("UNRELATED".into(), "x".into()),
        ];
        let c = WorkerConfig::load(None, env).unwrap();
        assert_eq!(c.max_batch_rows, 32);
        assert_eq!(c.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(c.nats.token.as_deref(), Some("123"));

        let err =
            WorkerConfig::load(None, [("FLOTILLA_MAX_QUEUE_ROWS".into(), "0".into())]).unwrap_err();
        assert!(err.to_string().contains("max_queue_rows"), "{err}");
        let err =
            WorkerConfig::load(None, [("FLOTILLA_MAX_BACH_ROWS".into(), "1".into())]).unwrap_err();
        assert!(err.to_string().contains("max_bach_rows"), "{err}");
    }
}
