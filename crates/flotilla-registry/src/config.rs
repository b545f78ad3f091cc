//! The `[registry]` settings: where the registry lives and whom a worker trusts.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::signing;

/// Where the registry lives and whom it trusts. The `[registry]` table of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Key-value bucket of manifests, one key per model.
    pub kv_bucket: String,
    /// Object store bucket of artifacts, one object per version.
    pub object_bucket: String,
    /// JetStream replicas of both buckets (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// Manifest revisions the key-value bucket keeps per model (an audit trail).
    pub history: i64,
    /// Versions a worker keeps loaded per model (current, previous, ...), so pinned requests
    /// and rollbacks need no download.
    pub keep_versions: usize,
    /// Public keys (hex, or files written by `flotilla models keygen`) whose signatures a
    /// worker accepts. Empty: any version whose checksum matches is accepted.
    pub trusted_keys: Vec<String>,
    /// The largest artifact (bytes) published or loaded; a manifest declaring more is
    /// refused before anything is downloaded.
    pub max_artifact_bytes: u64,
    /// Seconds a download may go without receiving anything before the attempt is abandoned
    /// (and retried by a worker). async-nats' own limit is 10 s per request, and an attempt
    /// against a dead cluster node waited that long each time.
    pub download_stall_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            kv_bucket: "flotilla-manifests".into(),
            object_bucket: "flotilla-models".into(),
            replicas: 1,
            history: 64,
            keep_versions: 2,
            trusted_keys: Vec::new(),
            max_artifact_bytes: 512 * 1024 * 1024,
            download_stall_secs: 3,
        }
    }
}

impl RegistryConfig {
    /// Parses the trusted keys.
    pub fn trusted(&self) -> Result<Vec<VerifyingKey>, signing::SigningError> {
        self.trusted_keys
            .iter()
            .map(|k| signing::parse_public_key(k))
            .collect()
    }
}
