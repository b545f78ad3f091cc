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
    #[error("model {model:?} version {version}: {source}")]
    Invalid {
        model: String,
        version: u64,
        source: flotilla_model::ModelError,
    },
    #[error("publishing model {model:?}: {message}")]
    Publish { model: String, message: String },
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
            RegistryError::Signature(_) => "signature",
            RegistryError::Invalid { .. } => "invalid",
            RegistryError::BadManifest { .. } => "manifest",
            _ => "registry",
        }
    }
}
