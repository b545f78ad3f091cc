//! Models a worker can serve, behind one seam: a [`Model`] is a [`Backend`] (one per kind of
//! model) plus what callers need to know about it. The worker, the registry and the trainer
//! see only [`Model`]; a new kind of model is a new backend module, never an `if` elsewhere.
//!
//! A model is immutable once built, so a worker shares it behind an `Arc` with any number of
//! batches at once and swaps it without locks. Forward passes are synchronous CPU work for a
//! rayon pool, never for an async runtime thread.
//!
//! # Layout
//! - [`dense`]: the `flotilla.model.v1` artifact (dense layers with an optional scaler), its
//!   validation and its forward pass on ndarray.
//! - [`Label`]: a classifier's predicted label.
//! - [`ModelError`]: why an artifact could not become a model; messages name the field.

pub mod dense;

use std::fmt;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

pub use dense::{Artifact, ArtifactEncoding, Dense, LayerSpec, Scaler, FORMAT_V1};

/// Why an artifact could not be turned into a model. Messages name the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Decode(String),
    #[error("invalid model: {field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A predicted label: the model's own label, or the class index when it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Index(u64),
    Name(String),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Index(i) => write!(f, "{i}"),
            Label::Name(n) => f.write_str(n),
        }
    }
}

/// The kinds of model, as the registry's manifests and the discovery metadata name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `flotilla.model.v1`: dense layers.
    Dense,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dense => "dense",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kind of model's forward pass. Implementations are immutable and thread-safe; `forward`
/// may split large batches over the current rayon pool.
pub trait Backend: Send + Sync + fmt::Debug {
    fn kind(&self) -> Kind;
    /// Values per input row.
    fn inputs(&self) -> usize;
    /// Values per output row.
    fn outputs(&self) -> usize;
    /// Whether outputs are class probabilities with a label per row.
    fn is_classifier(&self) -> bool;
    /// `rows x inputs` to `rows x outputs`.
    fn forward(&self, x: ArrayView2<f64>) -> Array2<f64>;
    /// The label of one output row, for classifiers.
    fn label(&self, output: &[f64]) -> Option<Label>;
}

/// An artifact checked to be loadable, in the form the registry stores.
#[derive(Debug, Clone)]
pub struct Publishable {
    pub kind: Kind,
    /// The canonical bytes: dense artifacts are re-encoded as MessagePack.
    pub bytes: Vec<u8>,
    /// Numeric `metadata.metrics` of an artifact trained elsewhere, for the promotion gate.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// Checks that `bytes` build a model (the same checks a worker makes) and returns what to
/// publish, so the registry never stores a version no worker could load.
pub fn publishable(bytes: &[u8]) -> Result<Publishable, ModelError> {
    let artifact = Artifact::from_bytes(bytes)?;
    Dense::from_artifact(&artifact)?;
    let metrics = artifact
        .metadata
        .as_ref()
        .and_then(|m| m.get("metrics"))
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Publishable {
        kind: Kind::Dense,
        bytes: artifact.to_bytes(ArtifactEncoding::MsgPack),
        metrics,
    })
}

/// A validated, runnable model of any kind.
#[derive(Debug)]
pub struct Model {
    backend: Box<dyn Backend>,
    /// The artifact's free-form `metadata` (who trained it, its metrics), kept for display.
    metadata: Option<serde_json::Value>,
}

/// Rows below which a batch is computed on the calling thread: waking pool threads costs
/// more than it saves.
pub const ROWS_PER_TASK: usize = 64;

impl Model {
    pub fn new(backend: Box<dyn Backend>, metadata: Option<serde_json::Value>) -> Model {
        Model { backend, metadata }
    }

    /// Reads and validates a model file: a `flotilla.model.v1` artifact (JSON or MessagePack).
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Model::from_bytes(&bytes)
    }

    /// Builds a model from an artifact's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        Model::from_artifact(Artifact::from_bytes(bytes)?)
    }

    /// Validates every shape and number of a dense artifact and builds it. The artifact is
    /// consumed: a served model holds its weights once, in the form it computes with.
    pub fn from_artifact(artifact: Artifact) -> Result<Model, ModelError> {
        let dense = Dense::from_artifact(&artifact)?;
        Ok(Model::new(Box::new(dense), artifact.metadata))
    }

    pub fn kind(&self) -> Kind {
        self.backend.kind()
    }

    pub fn inputs(&self) -> usize {
        self.backend.inputs()
    }

    pub fn outputs(&self) -> usize {
        self.backend.outputs()
    }

    pub fn is_classifier(&self) -> bool {
        self.backend.is_classifier()
    }

    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.metadata.as_ref()
    }

    /// The forward pass over `rows x inputs`, returning `rows x outputs`, on the current
    /// rayon pool.
    pub fn forward(&self, x: ArrayView2<f64>) -> Array2<f64> {
        assert_eq!(x.ncols(), self.inputs(), "caller checks the feature count");
        self.backend.forward(x)
    }

    /// The forward pass on `pool`: small batches are computed right here on the calling
    /// thread, larger ones split by rows across the pool.
    pub fn forward_on(&self, pool: &rayon::ThreadPool, x: ArrayView2<f64>) -> Array2<f64> {
        if x.nrows() <= ROWS_PER_TASK {
            self.forward(x)
        } else {
            pool.install(|| self.forward(x))
        }
    }

    /// The predicted label of one output row, for classifiers.
    pub fn label(&self, output: &[f64]) -> Option<Label> {
        self.backend.label(output)
    }
}
