//! `tokenizer.json` through Hugging Face's `tokenizers`, set up as sentence-transformers uses
//! it: truncation to `max_seq_length` (special tokens included), no padding (the file of
//! all-MiniLM-L6-v2 says truncation 128 and fixed padding to 128; sentence-transformers
//! overrides both), lowercasing first when `do_lower_case` says so. Owns text to ids only.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::config::TextConfig;
use super::files::Files;
use crate::{invalid, ModelError};

const FILE: &str = "tokenizer.json";

/// A text's token ids, `[CLS] … [SEP]`, already truncated.
pub type TokenIds = Vec<u32>;

#[derive(Debug, Clone)]
pub struct TextTokenizer {
    /// The tokenizer.json pipeline with truncation set to max_seq_length and padding off.
    inner: Tokenizer,
    /// sentence-transformers lowercases texts itself when sentence_bert_config.json says so.
    do_lower_case: bool,
}

impl TextTokenizer {
    pub fn load(files: &Files, config: &TextConfig) -> Result<TextTokenizer, ModelError> {
        let bytes = files.read(FILE)?;
        let mut inner = Tokenizer::from_bytes(&bytes)
            .map_err(|e| ModelError::Decode(format!("{FILE}: {e}")))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: config.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| invalid(format!("{FILE}: truncation"), e.to_string()))?;
        inner.with_padding(None);
        let vocab = inner.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(invalid(
                format!("{FILE}: model.vocab"),
                format!(
                    "has {vocab} tokens (added tokens included), more than config.json's \
                     vocab_size {}",
                    config.vocab_size
                ),
            ));
        }
        let tokenizer = TextTokenizer {
            inner,
            do_lower_case: config.do_lower_case,
        };
        // A tokenizer.json without a post-processor adds no [CLS]/[SEP]: CLS pooling would then
        // pool the first word. Catch that here rather than serve wrong vectors.
        let empty = tokenizer.tokenize("")?;
        if empty.is_empty() {
            return Err(invalid(
                format!("{FILE}: post_processor"),
                "adds no special tokens to a text ([CLS] and [SEP] expected)",
            ));
        }
        Ok(tokenizer)
    }

    /// The text's ids after truncation, special tokens included.
    pub fn tokenize(&self, text: &str) -> Result<TokenIds, ModelError> {
        let encoding = if self.do_lower_case {
            self.inner.encode_fast(text.to_lowercase(), true)
        } else {
            self.inner.encode_fast(text, true)
        }
        .map_err(|e| ModelError::Tokenize(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}
