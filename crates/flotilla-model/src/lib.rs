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
//! - [`text`]: the `text-embedding` kind, BERT-family sentence encoders read from a
//!   sentence-transformers directory ([`TextEncoder`]); not yet behind [`Backend`].
//! - [`Label`]: a classifier's predicted label.
//! - [`ModelError`]: why an artifact could not become a model; messages name the field.

pub mod dense;
pub mod text;

use std::fmt;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

pub use dense::{Artifact, ArtifactEncoding, Dense, LayerSpec, Scaler, FORMAT_V1};
pub use text::{Embeddings, TextEncoder};

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
    /// A text model's tokenizer refused a text (a property of the input, not the model).
    #[error("tokenizing a text: {0}")]
    Tokenize(String),
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
    /// A sentence-transformers directory of a BERT-family encoder.
    TextEmbedding,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dense => "dense",
            Kind::TextEmbedding => "text-embedding",
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
