//! The `text-embedding` kind: a sentence-transformers directory holding a BERT-family encoder
//! (all-MiniLM-L6-v2 and the like), loaded into a [`TextEncoder`] that turns texts into the
//! vectors sentence-transformers computes (truncation, mean or CLS pooling, L2 normalisation).
//!
//! It is a [`Backend`] like any other: one input named `input` of dtype
//! [`DType::String`] and per-row shape `[]`, `outputs` of `[dim]` f32 per text, and each
//! text's token count as the extra per-row reply field `tokens`. A batcher asks
//! [`Backend::token_counts`] when a request arrives (to batch and bound its queue by tokens,
//! not rows); the forward pass itself packs the batch's sequences without padding, so a
//! batch costs what its tokens cost, whatever their order.
//!
//! The registry stores a version as one object: [`pack_dir`] makes the deterministic archive
//! of a directory that [`TextEncoder::from_archive`] reads back ([`files`]).
//!
//! # Layout
//! - [`files`]: where the files come from, a directory or the registry's archive of one.
//! - [`config`]: the directory's JSON files, cross-checked into [`TextConfig`].
//! - [`weights`]: `model.safetensors` to checked ndarray weights in the layout the pass uses.
//! - [`tokenize`]: `tokenizer.json` with sentence-transformers' truncation and no padding.
//! - [`forward`]: the encoder's forward pass over packed (unpadded) sequences, then pooling.
//! - [`ops`]: the kernels (threaded GEMM, layer norm, GELU, softmax).

pub mod config;
pub mod files;
pub mod forward;
pub mod ops;
pub mod tokenize;
pub mod weights;

use std::path::Path;

use ndarray::Array2;

pub use config::{Pooling, TextConfig};
pub use tokenize::TokenIds;

use crate::tensor::{ComputeError, Computed, DType, Data, Signature, Tensor, TensorSpec};
use crate::{Backend, Kind, ModelError};
use files::Files;
use forward::Encoder;
use tokenize::TextTokenizer;
use weights::BertWeights;

/// The files of a sentence-transformers directory this kind reads (the pooling folder is the
/// one `modules.json` names; `1_Pooling` in every export seen so far).
pub const FILES: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
];

/// The vectors of a batch of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// `texts x dim`, row `i` for text `i`; unit length when the model normalises.
    pub vectors: Array2<f32>,
    /// Tokens each text used after truncation, `[CLS]` and `[SEP]` included.
    pub tokens: Vec<usize>,
}

/// A loaded, validated text encoder. Immutable, so one `Arc<TextEncoder>` serves any number of
/// batches at once.
#[derive(Debug)]
pub struct TextEncoder {
    /// The directory's JSON files, validated: sizes, max_seq_length, pooling, normalisation.
    config: TextConfig,
    /// Text to ids, truncated as sentence-transformers truncates.
    tokenizer: TextTokenizer,
    /// Ids to vectors.
    encoder: Encoder,
    /// One string per row in, `[dim]` f32 per row out.
    signature: Signature,
}

/// Validates a sentence-transformers directory and packs the files the encoder reads into
/// the archive the registry stores (deterministic: the same files give the same bytes).
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, ModelError> {
    let config = TextConfig::load(&Files::dir(dir))?;
    files::pack(dir, &config.files())
}

impl TextEncoder {
    /// Reads a sentence-transformers directory. Every missing or inconsistent file, tensor or
    /// shape is an error naming the file and the field.
    pub fn load(dir: &Path) -> Result<TextEncoder, ModelError> {
        TextEncoder::from_files(&Files::dir(dir))
    }

    /// Reads the archive [`pack_dir`] makes (a registry version's bytes).
    pub fn from_archive(bytes: &[u8]) -> Result<TextEncoder, ModelError> {
        TextEncoder::from_files(&Files::archive(bytes)?)
    }

    pub fn from_files(files: &Files) -> Result<TextEncoder, ModelError> {
        let config = TextConfig::load(files)?;
        let tokenizer = TextTokenizer::load(files, &config)?;
        let bytes = files.read("model.safetensors")?;
        let weights = BertWeights::from_safetensors(&bytes, &config)?;
        drop(bytes);
        let signature = Signature {
            inputs: vec![TensorSpec::new("input", vec![], DType::String)],
            output: TensorSpec::new("output", vec![config.hidden_size], DType::F32),
            labels: None,
        };
        Ok(TextEncoder {
            encoder: Encoder::new(weights, &config),
            config,
            tokenizer,
            signature,
        })
    }

    /// Tokenizes, then encodes, on the current rayon pool. Texts may come in any order and of
    /// any mix of lengths; the result's rows follow `texts`.
    pub fn encode(&self, texts: &[&str]) -> Result<Embeddings, ModelError> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        Ok(self.encode_tokens(&refs))
    }

    /// A text's token ids as the encoder will see them: truncated to
    /// [`max_seq_length`](Self::max_seq_length), `[CLS]` and `[SEP]` included, never empty.
    pub fn tokenize(&self, text: &str) -> Result<TokenIds, ModelError> {
        self.tokenizer.tokenize(text)
    }

    /// How many tokens `text` will cost (a batcher's unit of work).
    pub fn tokenize_len(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.tokenize(text)?.len())
    }

    /// Encodes texts already tokenized by [`tokenize`](Self::tokenize), on the current rayon
    /// pool. The cost is about linear in the total number of tokens (there is no padding), plus
    /// attention's square of each text's length.
    ///
    /// # Panics
    /// On ids that did not come from this encoder's `tokenize`: an empty sequence, one longer
    /// than `max_seq_length`, or an id outside the vocabulary.
    pub fn encode_tokens(&self, ids: &[&[u32]]) -> Embeddings {
        for seq in ids {
            assert!(
                !seq.is_empty() && seq.len() <= self.config.max_seq_length,
                "token sequences come from TextEncoder::tokenize"
            );
        }
        Embeddings {
            vectors: self.encoder.forward(ids),
            tokens: ids.iter().map(|s| s.len()).collect(),
        }
    }

    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Tokens per text at most, `[CLS]` and `[SEP]` included.
    pub fn max_seq_length(&self) -> usize {
        self.config.max_seq_length
    }

    /// Whether vectors are L2-normalised.
    pub fn normalize(&self) -> bool {
        self.config.normalize
    }

    pub fn pooling(&self) -> Pooling {
        self.config.pooling
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// f32 values in the weights (22.7 M for all-MiniLM-L6-v2).
    pub fn parameters(&self) -> usize {
        self.encoder.weights().parameters()
    }

    /// Multiply-adds ×2 of one forward pass over sequences of these lengths (projections and
    /// attention; layer norms, GELU and pooling left out), to report GFLOP/s.
    pub fn flops(&self, lengths: &[usize]) -> u64 {
        let c = &self.config;
        let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
        let per_token = 2 * (h * 3 * h + h * h + 2 * h * i);
        let layer: u64 = lengths
            .iter()
            .map(|&l| {
                let l = l as u64;
                l * per_token + 2 * 2 * l * l * h
            })
            .sum();
        layer * c.num_layers as u64
    }
}

impl Backend for TextEncoder {
    fn kind(&self) -> Kind {
        Kind::TextEmbedding
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn compute(&self, inputs: Vec<Tensor>) -> Result<Computed, ComputeError> {
        let Some(Data::String(texts)) = inputs.into_iter().next().map(|t| t.data) else {
            return Err(ComputeError::Mismatch(
                "a text model takes one input of strings".into(),
            ));
        };
        let ids = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.tokenize(t)
                    .map_err(|e| ComputeError::Failed(format!("text {i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let Embeddings { vectors, tokens } = self.encode_tokens(&refs);
        let rows = texts.len();
        let vectors = if vectors.is_standard_layout() {
            vectors.into_raw_vec_and_offset().0
        } else {
            vectors.iter().copied().collect()
        };
        Ok(Computed {
            outputs: Tensor::new(rows, vec![self.dim()], Data::F32(vectors)),
            labels: None,
            extras: vec![(
                "tokens".into(),
                Tensor::new(
                    rows,
                    vec![],
                    Data::I64(tokens.into_iter().map(|n| n as i64).collect()),
                ),
            )],
        })
    }

    fn token_counts(&self, texts: &[String]) -> Option<Result<Vec<usize>, ModelError>> {
        Some(texts.iter().map(|t| self.tokenize_len(t)).collect())
    }

    /// Tokenizing costs far more per byte than decoding numbers, so only a few sentences'
    /// worth of body is admitted on the read loop; more is tokenized on the compute pool.
    fn inline_admit_bytes(&self) -> usize {
        1024
    }

    /// Even one short text is millions of multiply-adds: always worth the pool.
    fn fans_out(&self, _rows: usize) -> bool {
        true
    }
}
