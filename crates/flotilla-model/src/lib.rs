//! Models a worker can serve, behind one seam: a [`Model`] is a [`Backend`] (one per kind of
//! model) plus what callers need to know about it. The worker, the registry and the trainer
//! see only [`Model`]; a new kind of model is a new backend module, never an `if` elsewhere.
//!
//! A model is immutable once built, so a worker shares it behind an `Arc` with any number of
//! batches at once and swaps it without locks. Forward passes are synchronous CPU work for a
//! rayon pool, never for an async runtime thread.
//!
//! A backend declares its [`Signature`] (each input's name, per-row shape and dtype; what a
//! reply's `outputs` and, for classifiers, `labels` hold) and computes a batch of
//! batch-first [`Tensor`]s, one per input. The worker checks requests against the signature
//! and concatenates them row-wise, so it never knows the kind. A text encoder plugs in the
//! same way: one input of dtype [`DType::String`] with per-row shape `[]`, its embeddings as
//! `outputs` and its token counts as an extra per-row field ([`Computed::extras`]); it also
//! tells the batcher what each text costs in tokens ([`Backend::token_counts`]).
//!
//! # Layout
//! - [`tensor`]: the seam's types: [`Signature`] (what a model takes and gives, per row),
//!   [`Tensor`] and [`Data`] (batch-first values, numbers or text), [`Computed`].
//! - [`dense`]: the `flotilla.model.v1` artifact (dense layers with an optional scaler), its
//!   validation and its forward pass on ndarray (the scaler in f64, the layers in f32).
//! - [`onnx`]: ONNX files run by tract (pure Rust), including the `ai.onnx.ml` operators
//!   scikit-learn exports use.
//! - [`text`]: the `text-embedding` kind, BERT-family sentence encoders read from a
//!   sentence-transformers directory or the registry's archive of one ([`TextEncoder`]).
//! - [`Label`]: a classifier's predicted label.
//! - [`ModelError`]: why an artifact could not become a model; messages name the field, the
//!   operator or the dtype.

pub mod dense;
pub mod onnx;
pub mod tensor;
pub mod text;

use std::fmt;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

pub use dense::{Artifact, ArtifactEncoding, Dense, LayerSpec, Scaler, FORMAT_V1};
pub use onnx::Onnx;
pub use tensor::{ComputeError, Computed, DType, Data, DataRef, Signature, Tensor, TensorSpec};
pub use text::{pack_dir, Embeddings, TextEncoder};

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
    /// An ONNX file that does not even decode.
    #[error("not a readable ONNX file: {0}")]
    Corrupt(String),
    /// An ONNX operator tract does not implement.
    #[error("unsupported operator {op:?}{} in node {node:?}: tract cannot run it; re-export the model without it", domain_text(.domain))]
    UnsupportedOperator {
        op: String,
        domain: String,
        node: String,
    },
    /// An ONNX model tract refused, for a reason other than the above.
    #[error("tract cannot load this ONNX model: {0}")]
    Onnx(String),
    /// A text model's tokenizer refused a text (a property of the input, not the model).
    #[error("tokenizing a text: {0}")]
    Tokenize(String),
}

fn domain_text(domain: &str) -> String {
    if domain.is_empty() {
        String::new()
    } else {
        format!(" (domain {domain:?})")
    }
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
    /// An integer class: the class index of a dense model, or an ONNX model's integer label.
    Index(i64),
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
    /// An ONNX file.
    Onnx,
    /// A sentence-transformers directory of a BERT-family encoder.
    TextEmbedding,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dense => "dense",
            Kind::Onnx => "onnx",
            Kind::TextEmbedding => "text-embedding",
        }
    }
}

impl Kind {
    /// The kind of a model file, from its path: `.json`/`.msgpack` are dense artifacts,
    /// `.onnx` ONNX files. `None` for anything else (a directory will be a text encoder).
    pub fn of_path(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" | "msgpack" | "mpk" => Some(Kind::Dense),
            "onnx" => Some(Kind::Onnx),
            _ => None,
        }
    }

    /// The kind of what `path` names: a directory is a text encoder (a sentence-transformers
    /// directory), a file goes by [`Kind::of_path`], and an unknown extension is dense.
    pub fn detect(path: &Path) -> Kind {
        if path.is_dir() {
            Kind::TextEmbedding
        } else {
            Kind::of_path(path).unwrap_or(Kind::Dense)
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "dense" => Some(Kind::Dense),
            "onnx" => Some(Kind::Onnx),
            "text-embedding" => Some(Kind::TextEmbedding),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kind of model, behind the seam. Implementations are immutable and thread-safe;
/// `compute` runs on the calling thread and may split large batches over the current rayon
/// pool.
pub trait Backend: Send + Sync + fmt::Debug {
    fn kind(&self) -> Kind;
    /// What the model takes and gives, per row.
    fn signature(&self) -> &Signature;
    /// Computes a batch. `inputs[i]` matches `signature().inputs[i]`: its dtype, its row
    /// shape, and every input has the same number of rows (the worker has checked; a backend
    /// answers [`ComputeError::Mismatch`] rather than panicking when not). Inputs are passed
    /// by value so a backend can take their buffers without copying.
    fn compute(&self, inputs: Vec<Tensor>) -> Result<Computed, ComputeError>;
    /// The label of one `outputs` row of f64, for dense classifiers (the trainer's metrics).
    fn label(&self, _output: &[f64]) -> Option<Label> {
        None
    }
    /// For models whose work is counted in tokens rather than rows (text models): how many
    /// tokens each text will cost, so a batcher can size batches and bound its queue by them
    /// before computing anything. `None` for models counted in rows; an error when a text
    /// cannot be tokenized.
    fn token_counts(&self, _texts: &[String]) -> Option<Result<Vec<usize>, ModelError>> {
        None
    }
    /// Whether a batch of `rows` is worth running inside the rayon pool, where the backend
    /// may split it; below that it runs on the calling thread, since waking pool threads
    /// costs more than it saves.
    fn fans_out(&self, rows: usize) -> bool {
        rows > ROWS_PER_TASK
    }
    /// The largest request body whose admission (decoding, checking, counting tokens) stays
    /// within microseconds, so it may happen on the NATS read loop; larger bodies are admitted
    /// on the compute pool. Numbers decode at about a byte per nanosecond.
    fn inline_admit_bytes(&self) -> usize {
        usize::MAX
    }
    /// The most rows a batch may have and still compute within a few microseconds (about
    /// [`INLINE_MULTIPLY_ADDS`]), so that the worker may compute it where it formed, on its
    /// async runtime's thread, instead of handing it to a compute thread: the hand-off costs
    /// two thread wake-ups, more than such a pass. 0, the default, for backends whose cost is
    /// not known to be that small.
    fn inline_rows(&self) -> usize {
        0
    }
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

/// Checks that `bytes` build a model of `kind` (the same checks a worker makes) and returns
/// what to publish, so the registry never stores a version no worker could load. Dense
/// artifacts are re-encoded canonically; other kinds are stored as they are.
pub fn publishable_kind(kind: Kind, bytes: &[u8]) -> Result<Publishable, ModelError> {
    if kind == Kind::Dense {
        return publishable(bytes);
    }
    Model::from_kind_bytes(kind, bytes)?;
    Ok(Publishable {
        kind,
        bytes: bytes.to_vec(),
        metrics: Default::default(),
    })
}

/// [`publishable_kind`] for a dense artifact (JSON or MessagePack).
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

/// Multiply-adds a batch may cost and still count as microseconds of work
/// ([`Backend::inline_rows`]): 16,384 take 1-4 µs in the dense forward pass here, about what
/// decoding a small JSON request costs.
pub const INLINE_MULTIPLY_ADDS: usize = 16_384;

impl Model {
    pub fn new(backend: Box<dyn Backend>, metadata: Option<serde_json::Value>) -> Model {
        Model { backend, metadata }
    }

    /// Reads and validates a model of the kind its path says ([`Kind::detect`]): a
    /// directory is a text encoder; a file with an unknown extension is read as a dense
    /// artifact, as before kinds existed.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let kind = Kind::detect(path);
        if kind == Kind::TextEmbedding {
            return Ok(Model::new(Box::new(TextEncoder::load(path)?), None));
        }
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Model::from_kind_bytes(kind, &bytes)
    }

    /// Builds a model of `kind` from its artifact's bytes.
    pub fn from_kind_bytes(kind: Kind, bytes: &[u8]) -> Result<Model, ModelError> {
        match kind {
            Kind::Dense => Model::from_bytes(bytes),
            Kind::Onnx => Ok(Model::new(Box::new(Onnx::from_bytes(bytes)?), None)),
            // The registry's archive of the directory (`text::pack_dir`).
            Kind::TextEmbedding => Ok(Model::new(
                Box::new(TextEncoder::from_archive(bytes)?),
                None,
            )),
        }
    }

    /// Builds a dense model from a `flotilla.model.v1` artifact's bytes.
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

    pub fn signature(&self) -> &Signature {
        self.backend.signature()
    }

    /// Values per row of the first input.
    pub fn inputs(&self) -> usize {
        self.signature().inputs[0].row_len()
    }

    /// Values per row of `outputs`.
    pub fn outputs(&self) -> usize {
        self.signature().output.row_len()
    }

    pub fn is_classifier(&self) -> bool {
        self.signature().labels.is_some()
    }

    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.metadata.as_ref()
    }

    /// Computes a batch on the calling thread (large batches may fan out over the current
    /// rayon pool), after checking that it matches the signature.
    pub fn compute(&self, inputs: Vec<Tensor>) -> Result<Computed, ComputeError> {
        check_batch(self.signature(), &inputs)?;
        self.backend.compute(inputs)
    }

    /// [`Model::compute`] on `pool`: small batches right here on the calling thread, larger
    /// ones inside the pool so that backends can split them ([`Backend::fans_out`]).
    pub fn compute_on(
        &self,
        pool: &rayon::ThreadPool,
        inputs: Vec<Tensor>,
    ) -> Result<Computed, ComputeError> {
        if self.backend.fans_out(inputs.first().map_or(0, |t| t.rows)) {
            pool.install(|| self.compute(inputs))
        } else {
            self.compute(inputs)
        }
    }

    /// See [`Backend::inline_admit_bytes`].
    pub fn inline_admit_bytes(&self) -> usize {
        self.backend.inline_admit_bytes()
    }

    /// See [`Backend::inline_rows`].
    pub fn inline_rows(&self) -> usize {
        self.backend.inline_rows()
    }

    /// Tokens each text costs, for models counted in tokens ([`Backend::token_counts`]).
    pub fn token_counts(&self, texts: &[String]) -> Option<Result<Vec<usize>, ModelError>> {
        self.backend.token_counts(texts)
    }

    /// One pass over a row of zeros (empty texts), so the first caller does not pay for
    /// touching every weight page and allocator path.
    pub fn warm_up(&self) -> Result<(), ComputeError> {
        let inputs = self
            .signature()
            .inputs
            .iter()
            .map(|s| Tensor::new(1, s.shape.clone(), Data::zeros(s.dtype, s.row_len())))
            .collect();
        self.compute(inputs).map(|_| ())
    }

    /// The forward pass of a one-input numeric model over `rows x inputs` f64 values,
    /// returning `outputs` as `rows x outputs` f64 (widened from the model's own dtype, f32
    /// for dense models): the trainer's and the benches' view.
    ///
    /// # Panics
    /// When the model does not take one numeric input of `x.ncols()` values per row, or its
    /// outputs are not numbers.
    pub fn forward(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let spec = &self.signature().inputs;
        assert!(
            spec.len() == 1 && spec[0].dtype.is_numeric(),
            "forward takes one numeric input"
        );
        assert_eq!(x.ncols(), self.inputs(), "caller checks the feature count");
        let values = x.iter().copied();
        let data = match spec[0].dtype {
            DType::F64 => Data::F64(values.collect()),
            DType::F32 => Data::F32(values.map(|v| v as f32).collect()),
            DType::I64 => Data::I64(values.map(|v| v as i64).collect()),
            DType::String => unreachable!("checked above"),
        };
        let input = Tensor::new(x.nrows(), spec[0].shape.clone(), data);
        let computed = self.compute(vec![input]).expect("forward pass");
        let out = computed.outputs.data.to_f64().expect("numeric outputs");
        Array2::from_shape_vec((x.nrows(), self.outputs()), out).expect("rows x outputs")
    }

    /// [`Model::forward`] on `pool`, as [`Model::compute_on`].
    pub fn forward_on(&self, pool: &rayon::ThreadPool, x: ArrayView2<f64>) -> Array2<f64> {
        if x.nrows() <= ROWS_PER_TASK {
            self.forward(x)
        } else {
            pool.install(|| self.forward(x))
        }
    }

    /// The predicted label of one output row, for dense classifiers.
    pub fn label(&self, output: &[f64]) -> Option<Label> {
        self.backend.label(output)
    }
}

/// Checks a batch against a signature: one tensor per input, each of its dtype and row shape,
/// all with the same number of rows and as many values as they claim.
pub fn check_batch(signature: &Signature, inputs: &[Tensor]) -> Result<(), ComputeError> {
    let mismatch = |m: String| Err(ComputeError::Mismatch(m));
    if inputs.len() != signature.inputs.len() {
        return mismatch(format!(
            "{} inputs given, the model takes {}",
            inputs.len(),
            signature.inputs.len()
        ));
    }
    let rows = inputs.first().map_or(0, |t| t.rows);
    for (t, spec) in inputs.iter().zip(&signature.inputs) {
        if t.data.dtype() != spec.dtype {
            return mismatch(format!(
                "input {:?} is {}, the model takes {}",
                spec.name,
                t.data.dtype(),
                spec.dtype
            ));
        }
        if t.row_shape != spec.shape || t.rows != rows || t.data.len() != rows * spec.row_len() {
            return mismatch(format!(
                "input {:?} has {} rows of shape {:?} and {} values; the model takes rows of shape {:?}, {rows} of them",
                spec.name,
                t.rows,
                t.row_shape,
                t.data.len(),
                spec.shape
            ));
        }
    }
    Ok(())
}
