//! The JSON files of a sentence-transformers directory (`config.json`,
//! `sentence_bert_config.json`, `modules.json`, `<pooling>/config.json`), read with serde and
//! checked against each other into one [`TextConfig`]. It knows nothing of the weights or the
//! tokenizer: `weights` checks the tensors against this, `tokenize` builds the tokenizer.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::files::Files;
use crate::{invalid, ModelError};

/// The module type that makes sentence-transformers L2-normalise the pooled vector.
const NORMALIZE: &str = "sentence_transformers.models.Normalize";
const TRANSFORMER: &str = "sentence_transformers.models.Transformer";
const POOLING: &str = "sentence_transformers.models.Pooling";

/// How a sequence's token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the sequence's tokens (special tokens included, padding excluded).
    Mean,
    /// The hidden state of the first token, `[CLS]`.
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// Everything the encoder needs from the directory's JSON files, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// `config.json`: rows of `embeddings.word_embeddings.weight`.
    pub vocab_size: usize,
    /// `config.json`: the width of every token vector, and of the output.
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// `config.json`: the feed-forward width.
    pub intermediate_size: usize,
    /// `config.json`: rows of `embeddings.position_embeddings.weight`, an upper bound on
    /// `max_seq_length`.
    pub max_position_embeddings: usize,
    /// `config.json`: rows of `embeddings.token_type_embeddings.weight`.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    /// `sentence_bert_config.json`: tokens per text, `[CLS]` and `[SEP]` included; longer texts
    /// are truncated to it.
    pub max_seq_length: usize,
    /// `sentence_bert_config.json`: sentence-transformers lowercases texts before tokenizing.
    pub do_lower_case: bool,
    pub pooling: Pooling,
    /// `modules.json` lists a `Normalize` module.
    pub normalize: bool,
    /// The pooling module's config, `1_Pooling/config.json` in every export seen so far.
    pub pooling_file: String,
}

/// The keys of `config.json` the encoder uses; the others (dropout, architectures) are ignored.
#[derive(Deserialize)]
struct BertConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// Reads the file `name` as JSON; errors name the file.
pub(crate) fn read_json<T: DeserializeOwned>(files: &Files, name: &str) -> Result<T, ModelError> {
    let bytes = files.read(name)?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::Decode(format!("{name}: {e}")))
}

impl TextConfig {
    /// Reads and cross-checks the four JSON files of a sentence-transformers directory.
    pub fn load(files: &Files) -> Result<TextConfig, ModelError> {
        let bert: BertConfig = read_json(files, "config.json")?;
        let sbert: SentenceBertConfig = read_json(files, "sentence_bert_config.json")?;
        let modules: Vec<ModuleEntry> = read_json(files, "modules.json")?;
        let (pooling_dir, normalize) = check_modules(&modules)?;
        let pooling_file = format!("{pooling_dir}/config.json");
        let pooling: PoolingConfig = read_json(files, &pooling_file)?;
        TextConfig::from_parts(bert, sbert, normalize, pooling_file, pooling)
    }

    /// Every file the encoder reads, by its name in the directory: what an archive of the
    /// model holds.
    pub fn files(&self) -> Vec<String> {
        [
            "config.json",
            "sentence_bert_config.json",
            "modules.json",
            &self.pooling_file,
            "tokenizer.json",
            "model.safetensors",
        ]
        .map(String::from)
        .to_vec()
    }

    fn from_parts(
        bert: BertConfig,
        sbert: SentenceBertConfig,
        normalize: bool,
        pooling_file: String,
        pooling: PoolingConfig,
    ) -> Result<TextConfig, ModelError> {
        if let Some(t) = bert.model_type.as_deref() {
            if t != "bert" {
                return Err(invalid(
                    "config.json: model_type",
                    format!("{t:?} is not supported (only \"bert\")"),
                ));
            }
        }
        if bert.hidden_act != "gelu" {
            return Err(invalid(
                "config.json: hidden_act",
                format!(
                    "{:?} is not supported (only \"gelu\", the exact erf form)",
                    bert.hidden_act
                ),
            ));
        }
        if let Some(p) = bert.position_embedding_type.as_deref() {
            if p != "absolute" {
                return Err(invalid(
                    "config.json: position_embedding_type",
                    format!("{p:?} is not supported (only \"absolute\")"),
                ));
            }
        }
        for (field, value) in [
            ("vocab_size", bert.vocab_size),
            ("hidden_size", bert.hidden_size),
            ("num_hidden_layers", bert.num_hidden_layers),
            ("num_attention_heads", bert.num_attention_heads),
            ("intermediate_size", bert.intermediate_size),
            ("max_position_embeddings", bert.max_position_embeddings),
            ("type_vocab_size", bert.type_vocab_size),
        ] {
            if value == 0 {
                return Err(invalid(
                    format!("config.json: {field}"),
                    "must be at least 1",
                ));
            }
        }
        if !bert.hidden_size.is_multiple_of(bert.num_attention_heads) {
            return Err(invalid(
                "config.json: num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    bert.num_attention_heads, bert.hidden_size
                ),
            ));
        }
        let eps = bert.layer_norm_eps;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(invalid(
                "config.json: layer_norm_eps",
                format!("{eps} is not a positive number"),
            ));
        }
        if sbert.max_seq_length < 2 {
            return Err(invalid(
                "sentence_bert_config.json: max_seq_length",
                format!(
                    "{} leaves no room for [CLS] and [SEP]",
                    sbert.max_seq_length
                ),
            ));
        }
        if sbert.max_seq_length > bert.max_position_embeddings {
            return Err(invalid(
                "sentence_bert_config.json: max_seq_length",
                format!(
                    "{} is more than config.json's max_position_embeddings {}",
                    sbert.max_seq_length, bert.max_position_embeddings
                ),
            ));
        }
        if pooling.word_embedding_dimension != bert.hidden_size {
            return Err(invalid(
                format!("{pooling_file}: word_embedding_dimension"),
                format!(
                    "{} differs from config.json's hidden_size {}",
                    pooling.word_embedding_dimension, bert.hidden_size
                ),
            ));
        }
        let unsupported = [
            ("pooling_mode_max_tokens", pooling.pooling_mode_max_tokens),
            (
                "pooling_mode_mean_sqrt_len_tokens",
                pooling.pooling_mode_mean_sqrt_len_tokens,
            ),
            (
                "pooling_mode_weightedmean_tokens",
                pooling.pooling_mode_weightedmean_tokens,
            ),
            ("pooling_mode_lasttoken", pooling.pooling_mode_lasttoken),
        ];
        if let Some((mode, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(invalid(
                format!("{pooling_file}: {mode}"),
                "is not supported (only mean or CLS pooling)",
            ));
        }
        let pooling = match (
            pooling.pooling_mode_mean_tokens,
            pooling.pooling_mode_cls_token,
        ) {
            (true, false) => Pooling::Mean,
            (false, true) => Pooling::Cls,
            (true, true) => {
                return Err(invalid(
                    pooling_file.as_str(),
                    "both pooling_mode_mean_tokens and pooling_mode_cls_token are set \
                     (concatenated poolings are not supported)",
                ))
            }
            (false, false) => {
                return Err(invalid(
                    pooling_file.as_str(),
                    "neither pooling_mode_mean_tokens nor pooling_mode_cls_token is set",
                ))
            }
        };
        Ok(TextConfig {
            vocab_size: bert.vocab_size,
            hidden_size: bert.hidden_size,
            num_layers: bert.num_hidden_layers,
            num_heads: bert.num_attention_heads,
            intermediate_size: bert.intermediate_size,
            max_position_embeddings: bert.max_position_embeddings,
            type_vocab_size: bert.type_vocab_size,
            layer_norm_eps: eps as f32,
            max_seq_length: sbert.max_seq_length,
            do_lower_case: sbert.do_lower_case,
            pooling,
            normalize,
            pooling_file,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The pipeline must be Transformer (at the directory's root), Pooling, then optionally
/// Normalize: returns the pooling module's folder and whether to normalise. Normalize is told by
/// its type, not its folder (exports often list a `2_Normalize` folder that does not exist).
fn check_modules(modules: &[ModuleEntry]) -> Result<(String, bool), ModelError> {
    let field = |i: usize| format!("modules.json: module {i}");
    let Some(first) = modules.first() else {
        return Err(invalid("modules.json", "lists no modules"));
    };
    if first.kind != TRANSFORMER || !first.path.is_empty() {
        return Err(invalid(
            field(0),
            format!(
                "expected the {TRANSFORMER} at path \"\", found {} at {:?}",
                first.kind, first.path
            ),
        ));
    }
    let Some(pool) = modules.get(1) else {
        return Err(invalid(
            "modules.json",
            format!("lists no {POOLING} module"),
        ));
    };
    if pool.kind != POOLING {
        return Err(invalid(
            field(1),
            format!("expected {POOLING}, found {}", pool.kind),
        ));
    }
    if pool.path.is_empty() || pool.path.contains("..") || pool.path.starts_with('/') {
        return Err(invalid(
            field(1),
            format!("path {:?} is not a folder inside the model", pool.path),
        ));
    }
    let mut normalize = false;
    for (i, module) in modules.iter().enumerate().skip(2) {
        if module.kind == NORMALIZE && !normalize {
            normalize = true;
        } else {
            return Err(invalid(
                field(i),
                format!(
                    "{} is not supported after Pooling (only one {NORMALIZE})",
                    module.kind
                ),
            ));
        }
    }
    Ok((pool.path.clone(), normalize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(json: &str) -> Result<(String, bool), ModelError> {
        check_modules(&serde_json::from_str::<Vec<ModuleEntry>>(json).unwrap())
    }

    #[test]
    fn normalize_is_told_by_type_not_folder() {
        let (dir, norm) = modules(
            r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
                {"path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"path":"somewhere_else","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        assert_eq!((dir.as_str(), norm), ("1_Pooling", true));
        let (_, norm) = modules(
            r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
                {"path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap();
        assert!(!norm);
    }

    #[test]
    fn unsupported_modules_are_named() {
        let err = modules(
            r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
                {"path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("modules.json: module 2"), "{err}");
        assert!(err.contains("Dense"), "{err}");
        let err = modules(
            r#"[{"path":"","type":"sentence_transformers.models.Transformer"},
                {"path":"../etc","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("module 1"), "{err}");
    }
}
