//! The gateway's settings and their validation. The binary layers them (built-in defaults, a
//! TOML file, `FLOTILLA_GATEWAY_*` and `FLOTILLA_NATS_*` variables, flags) with the one loader
//! every subcommand uses; `config/gateway.toml` documents each with its default.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_proto::{validate_model_name, InvalidSetting, NatsConfig, DEFAULT_PREFIX};
use serde::{Deserialize, Serialize};

/// Everything a gateway can be told. Field docs are repeated in `config/gateway.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// How to reach NATS; the same `[nats]` table as the worker's.
    pub nats: NatsConfig,
    /// `HOST:PORT` the HTTP API listens on.
    pub http_addr: String,
    /// `HOST:PORT` for `/metrics` (Prometheus), kept off the public port; empty disables it.
    pub metrics_addr: String,
    /// First token of every predict subject; must match the workers'.
    pub subject_prefix: String,
    /// The model `POST /predict` calls; without one that route answers 404.
    pub default_model: Option<String>,
    /// A request's budget when it carries no `Flotilla-Timeout-Ms` header; sent on as that
    /// header, and how long the gateway waits for the fleet's answer.
    pub request_timeout_ms: u64,
    /// Largest request body accepted; larger ones are refused with 413 before reaching NATS.
    pub max_body_bytes: usize,
    /// How long a discovery query (`$SRV.INFO` and `$SRV.STATS`) gathers workers' answers.
    pub discovery_window_ms: u64,
    /// How long the fleet's answer to discovery is reused for metadata and readiness.
    pub discovery_cache_ms: u64,
    /// How long a model that no worker serves any more is still "known" (503, not 404).
    pub forget_models_after_secs: u64,
    /// Longest a graceful shutdown waits for in-flight requests to be answered.
    pub shutdown_timeout_secs: u64,
    /// TLS certificate chain (PEM); with `tls_key`, the HTTP API speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A file of bearer tokens, one per line; when set, every route but the health checks
    /// needs `Authorization: Bearer <token>`.
    pub auth_tokens_file: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            nats: NatsConfig::default(),
            http_addr: "127.0.0.1:8080".into(),
            metrics_addr: "127.0.0.1:9465".into(),
            subject_prefix: DEFAULT_PREFIX.into(),
            default_model: None,
            request_timeout_ms: 5000,
            max_body_bytes: 1024 * 1024,
            discovery_window_ms: 100,
            discovery_cache_ms: 1000,
            forget_models_after_secs: 3600,
            shutdown_timeout_secs: 30,
            tls_cert: None,
            tls_key: None,
            auth_tokens_file: None,
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting::new(key, message)
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.http_addr.trim().is_empty() {
            return Err(invalid("http_addr", "is empty; give HOST:PORT"));
        }
        for (key, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("discovery_window_ms", self.discovery_window_ms),
            ("shutdown_timeout_secs", self.shutdown_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be at least 1"));
        }
        let bad_prefix = self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ', '\t']));
        if bad_prefix {
            return Err(invalid(
                "subject_prefix",
                format!(
                    "{:?} is not a valid subject prefix (dot-separated words, no wildcards)",
                    self.subject_prefix
                ),
            ));
        }
        if let Some(model) = &self.default_model {
            validate_model_name(model).map_err(|m| invalid("default_model", m))?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        self.nats.validate()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_mistakes_name_the_key() {
        GatewayConfig::default().validate().unwrap();
        type Change = fn(&mut GatewayConfig);
        let cases: [(Change, &str); 4] = [
            (|c| c.request_timeout_ms = 0, "request_timeout_ms"),
            (|c| c.default_model = Some("a.b".into()), "default_model"),
            (|c| c.tls_key = Some("k.pem".into()), "tls_cert"),
            (|c| c.subject_prefix = "a.>".into(), "subject_prefix"),
        ];
        for (change, key) in cases {
            let mut c = GatewayConfig::default();
            change(&mut c);
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }
}
