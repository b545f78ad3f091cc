//! A worker's settings and their validation. The binary layers them (built-in defaults, a TOML
//! file, `FLOTILLA_*` environment variables, flags) with the one loader every subcommand uses;
//! `config/worker.toml` documents each with its default.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_proto::{validate_model_name, InvalidSetting, NatsConfig, DEFAULT_PREFIX};
use flotilla_registry::RegistryConfig;
use serde::{Deserialize, Serialize};

fn invalid(key: &str, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting::new(key, message)
}

/// Everything a worker can be told. Field docs are repeated in `config/worker.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Text models: most tokens in one forward pass, counted padded (rows times the longest
    /// text), so a batch of long texts holds fewer of them.
    pub max_batch_tokens: usize,
    /// Text models: tokens admitted and waiting per model; past it, 503 at once.
    pub max_queue_tokens: usize,
    /// Most rows in one request; more is refused with 413.
    pub max_request_rows: usize,
    /// Bodies up to this size are decoded on the read loop; larger ones on the rayon pool.
    pub inline_decode_bytes: usize,
    /// Bytes of larger bodies that may wait to be decoded on the compute pool; past it, 503.
    pub max_decode_bytes: usize,
    /// Batches up to this many rows, of models that compute such a batch in microseconds
    /// (small dense models), are computed on the read loop's thread; every other batch on
    /// the model's compute thread. 0: always on the compute thread.
    pub inline_compute_rows: usize,
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
            max_batch_tokens: 4096,
            max_queue_tokens: 65_536,
            max_request_rows: 1024,
            inline_decode_bytes: 16 * 1024,
            max_decode_bytes: 64 * 1024 * 1024,
            inline_compute_rows: 64,
            metrics_addr: "127.0.0.1:9464".into(),
            compute_threads: 0,
            shutdown_timeout_secs: 30,
            models: BTreeMap::new(),
            registry: RegistryConfig::default(),
        }
    }
}

impl WorkerConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (key, value) in [
            ("max_batch_rows", self.max_batch_rows),
            ("max_queue_rows", self.max_queue_rows),
            ("max_request_rows", self.max_request_rows),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_queue_tokens", self.max_queue_tokens),
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

fn check_subject_tokens(key: &str, subject: &str) -> Result<(), InvalidSetting> {
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
