//! `model.safetensors` to the encoder's weights: every tensor the forward pass uses is looked up
//! by its BERT name, checked (F32, the shape `config.json` implies) and copied into ndarray in
//! the layout the forward pass computes with. It owns that layout, not the arithmetic.
//!
//! Layout choices, made once at load so the forward pass does no per-call reshaping:
//! - Linear weights are stored `[out, in]` in the file (`y = x·Wᵀ + b`); they are kept
//!   transposed, `[in, out]` row-major, so every projection is a plain `x·W` GEMM.
//! - Query, key and value are fused into one `[H, 3H]` projection: one large GEMM instead of
//!   three, and the attention scale `1/√head_dim` is folded into the query columns and bias.

use std::collections::HashMap;

use ndarray::{concatenate, Array1, Array2, Axis};
use safetensors::{Dtype, SafeTensors};

use super::config::TextConfig;
use crate::{invalid, ModelError};

const FILE: &str = "model.safetensors";
/// An int64 buffer of `0..max_position_embeddings` that PyTorch exports save; positions are
/// computed here instead.
const POSITION_IDS: &str = "embeddings.position_ids";

/// `y = x·w + b`, with `w` as `[in, out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[in, out]`, row-major (the file's `[out, in]` transposed once at load).
    pub w: Array2<f32>,
    /// `[out]`.
    pub b: Array1<f32>,
}

impl Linear {
    pub fn inputs(&self) -> usize {
        self.w.nrows()
    }

    pub fn outputs(&self) -> usize {
        self.w.ncols()
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// The scale, `[H]` (PyTorch's `LayerNorm.weight`).
    pub gamma: Array1<f32>,
    /// The shift, `[H]` (PyTorch's `LayerNorm.bias`).
    pub beta: Array1<f32>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Query (pre-scaled by `1/√head_dim`), key and value side by side: `[H, 3H]`.
    pub qkv: Linear,
    /// The attention output projection, `[H, H]`.
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    /// `[H, I]`, followed by GELU.
    pub ffn_in: Linear,
    /// `[I, H]`.
    pub ffn_out: Linear,
    pub ffn_norm: LayerNorm,
}

/// All the weights of a BERT encoder, as the forward pass uses them.
#[derive(Debug, Clone)]
pub struct BertWeights {
    /// `[vocab, H]`.
    pub word: Array2<f32>,
    /// `[max_position_embeddings, H]`.
    pub position: Array2<f32>,
    /// Row 0 of the token-type embeddings: every token of a single text has type 0.
    pub token_type: Array1<f32>,
    pub embed_norm: LayerNorm,
    pub layers: Vec<Layer>,
}

impl BertWeights {
    /// Parses a safetensors file's bytes and checks every tensor against `config`.
    pub fn from_safetensors(bytes: &[u8], config: &TextConfig) -> Result<BertWeights, ModelError> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Decode(format!("{FILE}: {e}")))?;
        Tensors::new(&file)?.weights(config)
    }

    /// The number of f32 values held, for reporting the model's size.
    pub fn parameters(&self) -> usize {
        let linear = |l: &Linear| l.w.len() + l.b.len();
        let norm = |n: &LayerNorm| n.gamma.len() + n.beta.len();
        self.word.len()
            + self.position.len()
            + self.token_type.len()
            + norm(&self.embed_norm)
            + self
                .layers
                .iter()
                .map(|l| {
                    linear(&l.qkv)
                        + linear(&l.attn_out)
                        + norm(&l.attn_norm)
                        + linear(&l.ffn_in)
                        + linear(&l.ffn_out)
                        + norm(&l.ffn_norm)
                })
                .sum::<usize>()
    }
}

/// The file's tensors by name, with the optional `bert.` prefix of some exports removed.
struct Tensors<'a> {
    /// Views into the file's bytes; copied out only for the tensors the encoder uses.
    by_name: HashMap<String, safetensors::tensor::TensorView<'a>>,
}

impl<'a> Tensors<'a> {
    fn new(file: &SafeTensors<'a>) -> Result<Tensors<'a>, ModelError> {
        let mut by_name = HashMap::new();
        for (name, view) in file.iter() {
            let name = name.strip_prefix("bert.").unwrap_or(name);
            if view.dtype() != Dtype::F32 && name != POSITION_IDS {
                return Err(invalid(
                    format!("{FILE}: tensor {name}"),
                    format!(
                        "has dtype {:?}; only F32 weights are supported",
                        view.dtype()
                    ),
                ));
            }
            by_name.insert(name.to_owned(), view);
        }
        Ok(Tensors { by_name })
    }

    /// The named F32 tensor as an array of `shape`; `why` says where the expected shape comes
    /// from, for the error.
    fn get(
        &self,
        name: &str,
        shape: &[usize],
        why: &str,
    ) -> Result<ndarray::ArrayD<f32>, ModelError> {
        let field = || format!("{FILE}: tensor {name}");
        let view = self
            .by_name
            .get(name)
            .ok_or_else(|| invalid(field(), "is missing"))?;
        if view.shape() != shape {
            return Err(invalid(
                field(),
                format!("has shape {:?}, expected {shape:?} ({why})", view.shape()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        ndarray::ArrayD::from_shape_vec(shape, values).map_err(|e| invalid(field(), e.to_string()))
    }

    fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        why: &str,
    ) -> Result<Array2<f32>, ModelError> {
        let a = self.get(name, &[rows, cols], why)?;
        Ok(a.into_dimensionality().expect("checked shape"))
    }

    fn vector(&self, name: &str, len: usize, why: &str) -> Result<Array1<f32>, ModelError> {
        let a = self.get(name, &[len], why)?;
        Ok(a.into_dimensionality().expect("checked shape"))
    }

    /// A linear layer stored `[out, in]`, returned as `[in, out]`.
    fn linear(
        &self,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        why: &str,
    ) -> Result<Linear, ModelError> {
        let w = self.matrix(&format!("{prefix}.weight"), outputs, inputs, why)?;
        let b = self.vector(&format!("{prefix}.bias"), outputs, why)?;
        Ok(Linear {
            w: w.t().as_standard_layout().into_owned(),
            b,
        })
    }

    fn norm(&self, prefix: &str, width: usize) -> Result<LayerNorm, ModelError> {
        let why = &format!("config.json: hidden_size {width}");
        Ok(LayerNorm {
            gamma: self.vector(&format!("{prefix}.weight"), width, why)?,
            beta: self.vector(&format!("{prefix}.bias"), width, why)?,
        })
    }

    fn weights(&self, c: &TextConfig) -> Result<BertWeights, ModelError> {
        let h = c.hidden_size;
        let i = c.intermediate_size;
        let hh = &format!("config.json: hidden_size {h}");
        let word = self.matrix(
            "embeddings.word_embeddings.weight",
            c.vocab_size,
            h,
            &format!("config.json: vocab_size {} x hidden_size {h}", c.vocab_size),
        )?;
        let position = self.matrix(
            "embeddings.position_embeddings.weight",
            c.max_position_embeddings,
            h,
            &format!(
                "config.json: max_position_embeddings {} x hidden_size {h}",
                c.max_position_embeddings
            ),
        )?;
        let token_type = self.matrix(
            "embeddings.token_type_embeddings.weight",
            c.type_vocab_size,
            h,
            &format!(
                "config.json: type_vocab_size {} x hidden_size {h}",
                c.type_vocab_size
            ),
        )?;
        let embed_norm = self.norm("embeddings.LayerNorm", h)?;
        self.check_no_extra_layers(c.num_layers)?;
        let scale = 1.0 / (c.head_dim() as f32).sqrt();
        let layers = (0..c.num_layers)
            .map(|n| {
                let p = format!("encoder.layer.{n}");
                let mut q = self.linear(&format!("{p}.attention.self.query"), h, h, hh)?;
                let k = self.linear(&format!("{p}.attention.self.key"), h, h, hh)?;
                let v = self.linear(&format!("{p}.attention.self.value"), h, h, hh)?;
                q.w.mapv_inplace(|x| x * scale);
                q.b.mapv_inplace(|x| x * scale);
                let qkv = Linear {
                    w: concatenate(Axis(1), &[q.w.view(), k.w.view(), v.w.view()])
                        .expect("same rows"),
                    b: concatenate(Axis(0), &[q.b.view(), k.b.view(), v.b.view()])
                        .expect("vectors"),
                };
                let ffn_why = &format!("config.json: hidden_size {h}, intermediate_size {i}");
                Ok(Layer {
                    qkv,
                    attn_out: self.linear(&format!("{p}.attention.output.dense"), h, h, hh)?,
                    attn_norm: self.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    ffn_in: self.linear(&format!("{p}.intermediate.dense"), h, i, ffn_why)?,
                    ffn_out: self.linear(&format!("{p}.output.dense"), i, h, ffn_why)?,
                    ffn_norm: self.norm(&format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(BertWeights {
            word,
            position,
            token_type: token_type.row(0).to_owned(),
            embed_norm,
            layers,
        })
    }

    /// A file with more layers than `config.json` says is inconsistent: refusing it beats
    /// silently computing a different model.
    fn check_no_extra_layers(&self, layers: usize) -> Result<(), ModelError> {
        let extra = self.by_name.keys().find_map(|name| {
            let n: usize = name
                .strip_prefix("encoder.layer.")?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            (n >= layers).then_some(name)
        });
        match extra {
            Some(name) => Err(invalid(
                format!("{FILE}: tensor {name}"),
                format!("belongs to no layer: config.json says num_hidden_layers {layers}"),
            )),
            None => Ok(()),
        }
    }
}
