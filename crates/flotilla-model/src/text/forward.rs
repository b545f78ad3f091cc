//! The BERT encoder's forward pass over a batch of token-id sequences, in f32 on ndarray,
//! ending in pooling and optional L2 normalisation. It owns the arithmetic, not the files
//! (`weights`) nor the text (`tokenize`).
//!
//! # Packed, not padded
//! The sequences of a batch are laid end to end in one `[tokens, H]` matrix, without padding:
//! every projection, layer norm and GELU works per token, so padding rows would only be computed
//! to be thrown away. Attention, the one step that mixes tokens, runs per sequence and head over
//! that sequence's own rows, which is exactly softmax with padded keys at -inf. So a batch costs
//! its real tokens, not rows × longest, and the order of texts in a batch does not matter.
//!
//! The projections are GEMMs over all tokens of the batch at once (`ops::gemm_acc`, threaded
//! on the current rayon pool); the buffers are allocated once per batch and reused by every layer.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::config::{Pooling, TextConfig};
use super::ops::{dot, fill_rows, gelu, gemm_acc, layer_norm_rows, residual_plus_bias, softmax};
use super::weights::{BertWeights, Layer};

/// Sequences up to this length attend with plain loops (dot products over head_dim); longer
/// ones through the GEMM, whose packing only pays off on larger tiles. Not tuned: attention is
/// ~4% of a batch of short texts.
const SHORT_SEQUENCE: usize = 24;
/// Attention work (multiply-adds) above which (sequence, head) pairs run in parallel.
const PARALLEL_ATTENTION_MACS: usize = 1 << 17;
/// Elements above which GELU runs in parallel.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// The activations of one batch, allocated once and reused by every layer.
struct Buffers {
    /// The hidden states entering (and, after a layer, leaving) a layer: `[tokens, H]`.
    x: Array2<f32>,
    /// Queries, keys and values side by side: `[tokens, 3H]`.
    qkv: Array2<f32>,
    /// The attention context, heads side by side: `[tokens, H]`.
    ctx: Array2<f32>,
    /// Where a sub-layer's output (plus residual) is built before it becomes `x`.
    tmp: Array2<f32>,
    /// The feed-forward activations: `[tokens, I]`.
    inter: Array2<f32>,
}

/// The encoder: weights plus the few numbers the pass needs.
#[derive(Debug)]
pub struct Encoder {
    weights: BertWeights,
    /// Width of a token vector (H).
    hidden: usize,
    /// Attention heads; each owns `head_dim` consecutive columns of Q, K, V and the context.
    heads: usize,
    head_dim: usize,
    /// Width of the feed-forward layer (I).
    intermediate: usize,
    /// Layer norm's epsilon, from `config.json`.
    eps: f32,
    pooling: Pooling,
    /// L2-normalise pooled vectors (the model lists a Normalize module).
    normalize: bool,
}

impl Encoder {
    pub fn new(weights: BertWeights, config: &TextConfig) -> Encoder {
        Encoder {
            weights,
            hidden: config.hidden_size,
            heads: config.num_heads,
            head_dim: config.head_dim(),
            intermediate: config.intermediate_size,
            eps: config.layer_norm_eps,
            pooling: config.pooling,
            normalize: config.normalize,
        }
    }

    pub fn weights(&self) -> &BertWeights {
        &self.weights
    }

    /// Pooled (and, when the model says so, normalised) vectors, one row per sequence, in the
    /// order given. Every id must be below the vocabulary size and every sequence non-empty and
    /// no longer than the position table; the tokenizer guarantees both.
    pub fn forward(&self, sequences: &[&[u32]]) -> Array2<f32> {
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for seq in sequences {
            assert!(
                !seq.is_empty(),
                "a tokenized text has at least [CLS] and [SEP]"
            );
            offsets.push(offsets.last().copied().unwrap_or(0) + seq.len());
        }
        let hidden = self.hidden_states(sequences, &offsets);
        self.pool(hidden.view(), &offsets)
    }

    /// The last layer's token vectors, `[tokens, H]`, sequences end to end.
    pub fn hidden_states(&self, sequences: &[&[u32]], offsets: &[usize]) -> Array2<f32> {
        let tokens = *offsets.last().expect("offsets start at 0");
        let mut b = Buffers {
            x: self.embed(sequences, tokens),
            qkv: Array2::zeros((tokens, 3 * self.hidden)),
            ctx: Array2::zeros((tokens, self.hidden)),
            tmp: Array2::zeros((tokens, self.hidden)),
            inter: Array2::zeros((tokens, self.intermediate)),
        };
        for layer in &self.weights.layers {
            self.layer(layer, &mut b, offsets);
        }
        b.x
    }

    /// Word + position + token-type-0 embeddings, then layer norm.
    fn embed(&self, sequences: &[&[u32]], tokens: usize) -> Array2<f32> {
        let w = &self.weights;
        let mut x = Array2::<f32>::zeros((tokens, self.hidden));
        let token_type = w.token_type.as_slice().expect("owned");
        let mut rows = x.rows_mut().into_iter();
        for seq in sequences {
            for (pos, &id) in seq.iter().enumerate() {
                let mut row = rows.next().expect("one row per token");
                let out = row.as_slice_mut().expect("standard layout");
                let word = w.word.row(id as usize);
                let position = w.position.row(pos);
                let (word, position) = (
                    word.as_slice().expect("owned"),
                    position.as_slice().expect("owned"),
                );
                for (((o, &a), &b), &c) in out.iter_mut().zip(word).zip(position).zip(token_type) {
                    *o = a + b + c;
                }
            }
        }
        let norm = &w.embed_norm;
        layer_norm_rows(
            x.view_mut(),
            slice(&norm.gamma),
            slice(&norm.beta),
            self.eps,
        );
        x
    }

    fn layer(&self, layer: &Layer, b: &mut Buffers, offsets: &[usize]) {
        // Self-attention: one fused QKV GEMM over every token of the batch.
        fill_rows(b.qkv.view_mut(), slice(&layer.qkv.b));
        gemm_acc(b.x.view(), layer.qkv.w.view(), b.qkv.view_mut());
        self.attention(b.qkv.view(), b.ctx.view_mut(), offsets);
        // Output projection accumulated onto residual + bias, then layer norm.
        residual_plus_bias(b.x.view(), b.tmp.view_mut(), slice(&layer.attn_out.b));
        gemm_acc(b.ctx.view(), layer.attn_out.w.view(), b.tmp.view_mut());
        let n = &layer.attn_norm;
        layer_norm_rows(b.tmp.view_mut(), slice(&n.gamma), slice(&n.beta), self.eps);
        std::mem::swap(&mut b.x, &mut b.tmp);
        // Feed-forward, the same way.
        fill_rows(b.inter.view_mut(), slice(&layer.ffn_in.b));
        gemm_acc(b.x.view(), layer.ffn_in.w.view(), b.inter.view_mut());
        gelu_all(b.inter.as_slice_mut().expect("owned"), self.intermediate);
        residual_plus_bias(b.x.view(), b.tmp.view_mut(), slice(&layer.ffn_out.b));
        gemm_acc(b.inter.view(), layer.ffn_out.w.view(), b.tmp.view_mut());
        let n = &layer.ffn_norm;
        layer_norm_rows(b.tmp.view_mut(), slice(&n.gamma), slice(&n.beta), self.eps);
        std::mem::swap(&mut b.x, &mut b.tmp);
    }

    /// Scaled dot-product attention per sequence and head: `ctx = softmax(q·kᵀ)·v`, where `q`
    /// already carries the `1/√head_dim` scale. Heads write disjoint column blocks of `ctx`.
    fn attention(&self, qkv: ArrayView2<f32>, mut ctx: ArrayViewMut2<f32>, offsets: &[usize]) {
        let (h, d) = (self.hidden, self.head_dim);
        let mut tasks = Vec::with_capacity((offsets.len() - 1) * self.heads);
        let mut rest = ctx.view_mut();
        let mut macs = 0;
        for win in offsets.windows(2) {
            let (start, len) = (win[0], win[1] - win[0]);
            let (mut cols, tail) = rest.split_at(Axis(0), len);
            rest = tail;
            macs += 2 * len * len * h;
            for head in 0..self.heads {
                let (out, more) = cols.split_at(Axis(1), d);
                tasks.push((start, len, head, out));
                cols = more;
            }
        }
        let run =
            |scores: &mut Vec<f32>,
             (start, len, head, out): (usize, usize, usize, ArrayViewMut2<f32>)| {
                let rows = start..start + len;
                let q = qkv.slice(s![rows.clone(), head * d..(head + 1) * d]);
                let k = qkv.slice(s![rows.clone(), h + head * d..h + (head + 1) * d]);
                let v = qkv.slice(s![rows, 2 * h + head * d..2 * h + (head + 1) * d]);
                attend(q, k, v, out, scores);
            };
        if macs >= PARALLEL_ATTENTION_MACS && rayon::current_num_threads() > 1 {
            tasks.into_par_iter().for_each_init(Vec::new, run);
        } else {
            let mut scores = Vec::new();
            for task in tasks {
                run(&mut scores, task);
            }
        }
    }

    /// One vector per sequence from the token vectors: mean or `[CLS]`, then L2 normalisation
    /// when the model has a Normalize module.
    fn pool(&self, hidden: ArrayView2<f32>, offsets: &[usize]) -> Array2<f32> {
        let n = offsets.len() - 1;
        let mut out = Array2::<f32>::zeros((n, self.hidden));
        for (i, mut row) in out.rows_mut().into_iter().enumerate() {
            let (start, end) = (offsets[i], offsets[i + 1]);
            let row = row.as_slice_mut().expect("owned");
            match self.pooling {
                Pooling::Cls => row.copy_from_slice(slice_row(hidden, start)),
                Pooling::Mean => {
                    for t in start..end {
                        for (o, &v) in row.iter_mut().zip(slice_row(hidden, t)) {
                            *o += v;
                        }
                    }
                    // sentence-transformers divides by max(mask sum, 1e-9); a sequence here
                    // always has at least its [CLS] and [SEP].
                    let inv = 1.0 / (end - start) as f32;
                    row.iter_mut().for_each(|v| *v *= inv);
                }
            }
            if self.normalize {
                let norm = dot(row, row).sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        out
    }
}

/// One head of one sequence. `q`, `k`, `v`: `[len, d]` (rows of the QKV matrix, so each row
/// is a contiguous slice); `out`: `[len, d]` of the context matrix.
fn attend(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    mut out: ArrayViewMut2<f32>,
    scores: &mut Vec<f32>,
) {
    let len = q.nrows();
    scores.clear();
    scores.resize(len * len, 0.0);
    if len <= SHORT_SEQUENCE {
        for (i, qi) in q.rows().into_iter().enumerate() {
            let qi = qi.to_slice().expect("row of a standard-layout matrix");
            let row = &mut scores[i * len..(i + 1) * len];
            for (s, kj) in row.iter_mut().zip(k.rows()) {
                *s = dot(qi, kj.to_slice().expect("row"));
            }
            softmax(row);
            let mut o = out.row_mut(i);
            let o = o.as_slice_mut().expect("row of a standard-layout matrix");
            o.fill(0.0);
            for (&p, vj) in row.iter().zip(v.rows()) {
                for (o, &x) in o.iter_mut().zip(vj.to_slice().expect("row")) {
                    *o += p * x;
                }
            }
        }
    } else {
        let mut sc = ArrayViewMut2::from_shape((len, len), &mut scores[..]).expect("len²");
        general_mat_mul(1.0, &q, &k.t(), 0.0, &mut sc);
        for mut row in sc.rows_mut() {
            softmax(row.as_slice_mut().expect("contiguous"));
        }
        general_mat_mul(1.0, &sc, &v, 0.0, &mut out);
    }
}

/// GELU over the FFN activations, split by rows over the pool when large.
fn gelu_all(x: &mut [f32], width: usize) {
    if x.len() >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        let per_task = x
            .len()
            .div_ceil(rayon::current_num_threads())
            .next_multiple_of(width);
        x.par_chunks_mut(per_task).for_each(gelu);
    } else {
        gelu(x);
    }
}

fn slice(a: &ndarray::Array1<f32>) -> &[f32] {
    a.as_slice().expect("owned vectors are contiguous")
}

fn slice_row(a: ArrayView2<'_, f32>, row: usize) -> &[f32] {
    a.index_axis_move(Axis(0), row)
        .to_slice()
        .expect("row of a standard-layout matrix")
}
