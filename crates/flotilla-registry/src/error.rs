//! [`RegistryError`]: why a registry operation failed, with the metric label of each cause.

use crate::manifest::ManifestError;
use crate::signing;

/// Why a registry operation failed. [`RegistryError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "the NATS server has no JetStream, which the model registry needs; start nats-server with -js \
         (workers serving --model files keep working without it)"
    )]
    NoJetStream,
    #[error("registry bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("no model {model:?} in the registry; it has {}", if .models.is_empty() { "none".to_string() } else { .models.join(", ") })]
    UnknownModel { model: String, models: Vec<String> },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("invalid model name: {0}")]
    ModelName(String),
    #[error("model {model:?}: manifest is unreadable: {message}")]
    BadManifest { model: String, message: String },
    #[error("model {model:?} version {version}: downloading {object}: {message}")]
    Download {
        model: String,
        version: u64,
        object: String,
        message: String,
    },
    #[error("model {model:?} version {version}: checksum mismatch: the manifest says {expected} but the object hashes to {actual}; the object was tampered with or corrupted")]
    Checksum {
        model: String,
        version: u64,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Signature(#[from] signing::SigningError),
    #[error("model {model:?} version {version}: {message}")]
    Invalid {
        model: String,
        version: u64,
        message: String,
    },
    #[error("model {model:?} version {version}: the manifest says the artifact is {expected} bytes but the object has {actual}; the object was replaced or corrupted")]
    Size {
        model: String,
        version: u64,
        expected: u64,
        actual: String,
    },
    #[error("model {model:?} version {version}: the artifact is {size} bytes, over max_artifact_bytes ({limit}); not downloaded")]
    TooLarge {
        model: String,
        version: u64,
        size: u64,
        limit: u64,
    },
    #[error("publishing model {model:?}: {message}")]
    Publish { model: String, message: String },
    #[error("registry bucket {bucket} did not answer for {waited:.1?} (a JetStream leader election, or a lost quorum?); the last write may or may not have landed, so check with `flotilla models show` before trying again: {message}")]
    Unavailable {
        bucket: String,
        waited: std::time::Duration,
        message: String,
    },
    #[error(
        "model {model:?}: the manifest kept changing under us ({attempts} attempts); try again"
    )]
    Contention { model: String, attempts: usize },
}

impl RegistryError {
    /// A short label for `flotilla_model_load_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::Download { .. } => "download",
            RegistryError::Checksum { .. } => "checksum",
            RegistryError::Size { .. } => "size",
            RegistryError::TooLarge { .. } => "too_large",
            RegistryError::Signature(_) => "signature",
            RegistryError::Invalid { .. } => "invalid",
            RegistryError::BadManifest { .. } => "manifest",
            _ => "registry",
        }
    }
}
