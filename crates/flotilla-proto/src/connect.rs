//! How to reach and authenticate to NATS: the `[nats]` settings every flotilla process shares,
//! and turning them into a connected client whose connection changes are logged.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A setting with a value that cannot work; `key` is its dotted name in the config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("setting `{key}`: {message}")]
pub struct InvalidSetting {
    pub key: String,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidSetting {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// How to reach and authenticate to NATS. The `[nats]` table of every config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Prefix of this client's reply subjects (default `_INBOX`). Give each NATS user its
    /// own (`_INBOX_<user>`) and allow it only that, so no client can read another's replies.
    pub inbox_prefix: Option<String>,
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
            inbox_prefix: None,
        }
    }
}

/// Why a connection could not be made. Only a server that does not answer gets the hint to
/// start one: an authentication or TLS failure means it answered.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid NATS URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("reading NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("NATS TLS file {path} ({setting}): {message}")]
    TlsFile {
        setting: &'static str,
        path: String,
        message: String,
    },
    #[error("connecting to NATS at {url}: {source}{hint}", hint = hint(source))]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

fn hint(e: &async_nats::ConnectError) -> &'static str {
    use async_nats::ConnectErrorKind as K;
    match e.kind() {
        K::Io | K::TimedOut | K::Dns => {
            " (is nats-server running? start one with `nats-server -js`)"
        }
        K::Authentication | K::AuthorizationViolation => {
            " (the server refused these credentials: check nats.user/password, token, nkey or creds)"
        }
        K::Tls => " (check nats.tls_ca, nats.tls_cert and nats.tls_key)",
        _ => "",
    }
}

/// The longest wait between two reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// How long to wait before reconnection attempt `attempts` (1 for the first): at once, then
/// 10 ms doubling to [`MAX_RECONNECT_DELAY`]. async-nats' default doubles from 1 ms up to 4 s,
/// so after an outage of a few seconds a worker stayed away up to 4 s after the server was
/// back (3.1 s after a 5 s outage: issue 8). A connection refused on a dead server costs
/// nothing, so trying twice a second is cheap; the attempt counter restarts once connected.
pub fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => {
            let doublings = u32::try_from(n - 2).unwrap_or(u32::MAX).min(16);
            (Duration::from_millis(10) * 2u32.pow(doublings)).min(MAX_RECONNECT_DELAY)
        }
    }
}

impl NatsConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.url.trim().is_empty() {
            return Err(InvalidSetting::new("nats.url", "is empty"));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(InvalidSetting::new(
                "nats.user",
                "user and password must be set together",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(InvalidSetting::new(
                "nats.tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        if let Some(prefix) = &self.inbox_prefix {
            let bad = prefix.is_empty()
                || prefix
                    .split('.')
                    .any(|t| t.is_empty() || t.contains(['*', '>', ' ', '\t']));
            if bad {
                return Err(InvalidSetting::new(
                    "nats.inbox_prefix",
                    format!(
                        "{prefix:?} is not a subject prefix (dot-separated words, no wildcards)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Connects as `name`, logging every later connection change at `info`/`warn`.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(self.connect_timeout_secs.max(1)))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connection (re)established")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                    // The server answers a denied publish or subscribe only with this event;
                    // the operation itself just gets no answer, so say it loudly here.
                    async_nats::Event::ServerError(e)
                        if e.to_string().to_ascii_lowercase().contains("permission") =>
                    {
                        tracing::error!(error = %e, "NATS refused an operation: this user lacks a permission (see docs/operations.md for what each role needs)")
                    }
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
            options = options.credentials_file(path).await.map_err(|source| {
                ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                }
            })?;
        }
        // async-nats reads these files only when it connects, and then reports a bare I/O
        // error: check them first so the message names the file.
        for (setting, path) in [
            ("nats.tls_ca", &self.tls_ca),
            ("nats.tls_cert", &self.tls_cert),
            ("nats.tls_key", &self.tls_key),
        ] {
            if let Some(path) = path {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(ConnectError::TlsFile {
                        setting,
                        path: path.display().to_string(),
                        message: e.to_string(),
                    });
                }
            }
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
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ConnectError::Url {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        options
            .connect(servers)
            .await
            .map_err(|source| ConnectError::Connect {
                url: self.url.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_start_at_once_and_never_wait_long() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3), Duration::from_millis(20));
        for attempts in [8, 9, 50, usize::MAX] {
            assert_eq!(reconnect_delay(attempts), MAX_RECONNECT_DELAY);
        }
        // Monotonic: a longer outage never makes the next attempt come sooner.
        for attempts in 1..100 {
            assert!(reconnect_delay(attempts) <= reconnect_delay(attempts + 1));
        }
    }
}
