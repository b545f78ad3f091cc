//! The cost of flotilla's forward pass against the same arithmetic written as bare ndarray,
//! and of the whole worker path around it (decode, forward, encode; NATS excluded).
//!
//! Cases, each group comparing its entries side by side:
//! - `mlp_64x256x256x10_256rows`: `flotilla/pool_N` is [`Model::compute_on`] of an f64 batch
//!   (what the worker assembles) in a rayon pool of the machine's thread count, as the worker
//!   runs it; `flotilla/pool_1` the same in a one-thread pool, which isolates the
//!   implementation's overhead from the parallel speed-up. The baselines are the same scaler
//!   and layers as bare ndarray code on inputs already in their precision: `bare_f32/pool_N`
//!   split by rows over the same pool (the target of issue 9), `bare_f32` on one thread, and
//!   `bare_f64/pool_N` for reference. Throughput is in FLOPs (two per multiply-add), so
//!   criterion's `elem/s` reads as FLOP/s.
//! - `linear_10x1_1row`: one row through a 10-input linear model, the latency-bound case;
//!   `flotilla/pool_N` also pays the hop onto the pool.
//! - `worker_path_256rows`: one 256-row MessagePack request through decode, batch buffer,
//!   forward, labels and reply encoding, as `worker::compute` does it: rows as lists, and a
//!   binary f32 tensor answered with one.
//!
//! Weights come from a fixed LCG, so every run measures the same model. Before anything is
//! timed, flotilla's outputs are checked against the bare f64 ones to 1e-5 relative: the
//! layers compute in f32.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_model::{Artifact, Data, Label, LayerSpec, Model, Scaler, Tensor, FORMAT_V1};
use flotilla_proto::{
    Encoding, Inputs, OutputsRef, PredictReply, PredictRequest, Prediction, Values, ValuesRef,
};
use ndarray::{s, Array1, Array2, ArrayView2, Axis, NdFloat};
use rayon::prelude::*;
use serde::Deserialize;

const ROWS: usize = 256;
const MLP: [usize; 4] = [64, 256, 256, 10];
const LINEAR_INPUTS: usize = 10;

/// A 64-bit LCG (Knuth's MMIX constants): deterministic values without a `rand` dependency.
struct Lcg(u64);

impl Lcg {
    /// Uniform in `[-1, 1)`.
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The top 53 bits are the well-mixed ones.
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f64, offset: f64) -> Vec<f64> {
        (0..n).map(|_| offset + scale * self.next()).collect()
    }
}

/// An artifact with a scaler and dense layers of the given widths and activations.
fn artifact(
    widths: &[usize],
    activations: &[&str],
    labels: Option<Vec<Label>>,
    seed: u64,
) -> Artifact {
    let mut rng = Lcg(seed);
    let inputs = widths[0];
    let layers = widths
        .windows(2)
        .zip(activations)
        .map(|(w, activation)| {
            // Glorot-like scale keeps activations in a range where softmax is not saturated.
            let scale = (3.0 / w[0] as f64).sqrt();
            LayerSpec {
                weights: (0..w[0]).map(|_| rng.vec(w[1], scale, 0.0)).collect(),
                bias: rng.vec(w[1], 0.1, 0.0),
                activation: (*activation).to_owned(),
            }
        })
        .collect();
    Artifact {
        format: FORMAT_V1.to_owned(),
        inputs,
        outputs: *widths.last().expect("at least one width"),
        scaler: Some(Scaler {
            mean: rng.vec(inputs, 1.0, 0.0),
            std: rng.vec(inputs, 0.5, 1.0),
        }),
        labels,
        layers,
        metadata: None,
        extra: Default::default(),
    }
}

fn mlp_artifact() -> Artifact {
    let labels = (0..MLP[3])
        .map(|i| Label::Name(format!("class_{i}")))
        .collect();
    artifact(&MLP, &["relu", "relu", "softmax"], Some(labels), 1)
}

fn linear_artifact() -> Artifact {
    artifact(&[LINEAR_INPUTS, 1], &["identity"], None, 2)
}

/// The weights of an artifact as ndarray values in `A`, for the bare baselines.
struct Bare<A> {
    mean: Array1<A>,
    std: Array1<A>,
    layers: Vec<(Array2<A>, Array1<A>)>,
}

impl<A: NdFloat> Bare<A> {
    fn new(a: &Artifact, cast: impl Fn(f64) -> A + Copy) -> Bare<A> {
        let scaler = a.scaler.as_ref().expect("bench artifacts have a scaler");
        let vector = |v: &[f64]| v.iter().map(|&x| cast(x)).collect::<Array1<A>>();
        let layers = a
            .layers
            .iter()
            .map(|l| {
                let flat: Vec<A> = l.weights.iter().flatten().map(|&x| cast(x)).collect();
                let w = Array2::from_shape_vec((l.weights.len(), l.bias.len()), flat)
                    .expect("rectangular weights");
                (w, vector(&l.bias))
            })
            .collect();
        Bare {
            mean: vector(&scaler.mean),
            std: vector(&scaler.std),
            layers,
        }
    }

    /// scaler, relu, relu, softmax: written out the way one would without flotilla.
    fn mlp(&self, x: ArrayView2<A>) -> Array2<A> {
        let [(w1, b1), (w2, b2), (w3, b3)] = &self.layers[..] else {
            panic!("the MLP has three layers")
        };
        let zero = A::zero();
        let h0 = (&x - &self.mean) / &self.std;
        let mut h1 = h0.dot(w1) + b1;
        h1.mapv_inplace(|v| v.max(zero));
        let mut h2 = h1.dot(w2) + b2;
        h2.mapv_inplace(|v| v.max(zero));
        let mut h3 = h2.dot(w3) + b3;
        for mut row in h3.axis_iter_mut(Axis(0)) {
            let max = row.fold(A::neg_infinity(), |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        h3
    }

    /// [`Bare::mlp`] split by rows over the current rayon pool, as one would parallelise it
    /// by hand (the same split flotilla makes: up to one 64-row part per thread).
    fn mlp_split(&self, x: ArrayView2<A>) -> Array2<A> {
        let rows = x.nrows();
        let tasks = rows.div_ceil(64).min(rayon::current_num_threads()).max(1);
        let chunk = rows.div_ceil(tasks);
        let parts: Vec<Array2<A>> = (0..tasks)
            .into_par_iter()
            .map(|t| self.mlp(x.slice(s![t * chunk..((t + 1) * chunk).min(rows), ..])))
            .collect();
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).expect("parts of equal width")
    }

    /// scaler, one identity layer.
    fn linear(&self, x: ArrayView2<A>) -> Array2<A> {
        let (w, b) = &self.layers[0];
        ((&x - &self.mean) / &self.std).dot(w) + b
    }
}

/// FLOPs of one row through layers of these widths: a multiply and an add per weight.
fn flops_per_row(widths: &[usize]) -> u64 {
    widths
        .windows(2)
        .map(|w| 2 * w[0] as u64 * w[1] as u64)
        .sum()
}

fn inputs(rows: usize, features: usize, seed: u64) -> Array2<f64> {
    let mut rng = Lcg(seed);
    Array2::from_shape_vec((rows, features), rng.vec(rows * features, 2.0, 0.5))
        .expect("rows * features values")
}

/// Asserts that `got` is within 1e-5 relative (plus 1e-7 absolute, for probabilities near
/// zero) of the f64 reference: the layers compute in f32, whose rounding is 6e-8 per step.
fn assert_close(what: &str, got: &Array2<f64>, want: &Array2<f64>) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (1e-5 * w.abs() + 1e-7))
        .fold(0.0, f64::max);
    assert!(
        worst <= 1.0,
        "{what}: {worst:.2}x the tolerance off the f64 reference"
    );
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

/// The worker's path for one request, minus NATS: decode the body, copy it into the batch
/// buffer in the model's input dtype, compute (forward and labels), encode the reply in the
/// form the request asks for (as `worker::compute` and `encode_reply` do).
fn worker_path(model: &Model, body: &[u8]) -> bytes::Bytes {
    let request = PredictRequest::decode(Encoding::MsgPack, body).expect("a valid request");
    let Inputs::Unnamed(input) = &request.inputs else {
        panic!("one unnamed input")
    };
    let rows = input.rows;
    let mut values = Vec::with_capacity(rows * model.inputs());
    match &input.values {
        Values::F64(sent) => values.extend_from_slice(sent),
        Values::F32(sent) => values.extend(sent.iter().map(|&v| v as f64)),
        Values::Text(_) => panic!("numbers"),
    }
    let batch = Tensor::new(rows, vec![model.inputs()], Data::F64(values));
    let computed = model.compute(vec![batch]).expect("a dense model computes");
    let Data::F32(block) = &computed.outputs.data else {
        panic!("dense outputs are f32")
    };
    assert!(block.iter().all(|v| v.is_finite()));
    let reply = PredictReply::<Label> {
        outputs: OutputsRef {
            values: ValuesRef::F32(block),
            rows,
            row_shape: &computed.outputs.row_shape,
            binary: request.reply_form(),
        },
        labels: computed.labels.as_deref(),
        model: "bench",
        version: 1,
        id: request.id.as_deref(),
        y_pred: None,
        extras: Vec::new(),
    };
    Encoding::MsgPack.encode(&reply).expect("a reply encodes")
}

/// The `outputs` of a reply to a binary tensor request, as rows x columns f64.
fn binary_outputs(reply: &[u8], cols: usize) -> Array2<f64> {
    #[derive(Deserialize)]
    struct Tensor<'a> {
        dtype: &'a str,
        data: &'a [u8],
    }
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        outputs: Tensor<'a>,
    }
    let r: Reply = rmp_serde::from_slice(reply).expect("a binary reply");
    assert_eq!(r.outputs.dtype, "f32", "an f32 request is answered in f32");
    let values: Vec<f64> = r
        .outputs
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
        .collect();
    Array2::from_shape_vec((values.len() / cols, cols), values).expect("rows x outputs")
}

fn compute(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool_n = pool(threads);
    let pool_1 = pool(1);
    let ours_n = format!("flotilla/pool_{threads}");
    let bare_f32_n = format!("bare_f32/pool_{threads}");
    let bare_f64_n = format!("bare_f64/pool_{threads}");

    let mlp = mlp_artifact();
    let bare_mlp = Bare::new(&mlp, |v| v);
    let bare_mlp32 = Bare::new(&mlp, |v| v as f32);
    let model_mlp = Model::from_artifact(mlp).expect("a valid MLP");
    let x = inputs(ROWS, MLP[0], 3);
    let x32 = x.mapv(|v| v as f32);
    let batch = Tensor::new(ROWS, vec![MLP[0]], Data::F64(x.iter().copied().collect()));

    let linear = linear_artifact();
    let bare_linear = Bare::new(&linear, |v| v);
    let bare_linear32 = Bare::new(&linear, |v| v as f32);
    let model_linear = Model::from_artifact(linear).expect("a valid linear model");
    let x1 = inputs(1, LINEAR_INPUTS, 4);
    let x1_32 = x1.mapv(|v| v as f32);

    let rows: Vec<Vec<f64>> = x.outer_iter().map(|r| r.to_vec()).collect();
    let body = PredictRequest::encode(Encoding::MsgPack, &rows, Some("bench"));
    let body_f32 = PredictRequest::encode_binary_f32(
        ROWS,
        &[MLP[0]],
        x32.as_slice().expect("standard layout"),
        Some("bench"),
    );

    // Benchmarks of different arithmetic would be worthless: check agreement first.
    let expected = bare_mlp.mlp(x.view());
    for (name, p) in [(&ours_n, &pool_n), (&"flotilla/pool_1".to_owned(), &pool_1)] {
        let ours = p.install(|| model_mlp.forward(x.view()));
        assert_close(&format!("MLP {name} vs bare f64"), &ours, &expected);
    }
    let bare32 = pool_n.install(|| bare_mlp32.mlp_split(x32.view()));
    assert_close(
        "bare f32 vs bare f64",
        &bare32.mapv(|v| v as f64),
        &expected,
    );
    let reply = pool_n.install(|| worker_path(&model_mlp, &body));
    let decoded: Prediction = rmp_serde::from_slice(&reply).expect("the reply decodes");
    let from_reply = Array2::from_shape_vec(
        (ROWS, MLP[3]),
        decoded.outputs.into_iter().flatten().collect(),
    )
    .expect("rows x outputs");
    assert_close("worker path vs bare f64", &from_reply, &expected);
    // The binary request's inputs are f32: its reference is the f64 chain on those values.
    let reply = pool_n.install(|| worker_path(&model_mlp, &body_f32));
    let expected_f32_inputs = bare_mlp.mlp(x32.mapv(|v| v as f64).view());
    assert_close(
        "binary worker path vs bare f64",
        &binary_outputs(&reply, MLP[3]),
        &expected_f32_inputs,
    );
    assert_close(
        "linear vs bare f64",
        &model_linear.forward(x1.view()),
        &bare_linear.linear(x1.view()),
    );

    let mut group = c.benchmark_group("mlp_64x256x256x10_256rows");
    group.throughput(Throughput::Elements(ROWS as u64 * flops_per_row(&MLP)));
    // The batch buffer is copied in every iteration, as the worker assembles one per batch
    // (timed apart with `iter_batched`, the two-thread case measured no faster than one
    // thread, while the bare split chain halved: see BENCHMARKS.md, issue 9).
    let one_batch = || vec![batch.clone()];
    group.bench_function(BenchmarkId::from_parameter(&ours_n), |b| {
        b.iter(|| model_mlp.compute_on(&pool_n, black_box(one_batch())))
    });
    group.bench_function("flotilla/pool_1", |b| {
        b.iter(|| model_mlp.compute_on(&pool_1, black_box(one_batch())))
    });
    group.bench_function(BenchmarkId::from_parameter(&bare_f32_n), |b| {
        b.iter(|| pool_n.install(|| bare_mlp32.mlp_split(black_box(x32.view()))))
    });
    group.bench_function("bare_f32", |b| {
        b.iter(|| bare_mlp32.mlp(black_box(x32.view())))
    });
    group.bench_function(BenchmarkId::from_parameter(&bare_f64_n), |b| {
        b.iter(|| pool_n.install(|| bare_mlp.mlp_split(black_box(x.view()))))
    });
    group.finish();

    let mut group = c.benchmark_group("linear_10x1_1row");
    group.bench_function("flotilla", |b| {
        b.iter(|| model_linear.forward(black_box(x1.view())))
    });
    group.bench_function(BenchmarkId::from_parameter(&ours_n), |b| {
        b.iter(|| pool_n.install(|| model_linear.forward(black_box(x1.view()))))
    });
    group.bench_function("bare_f32", |b| {
        b.iter(|| bare_linear32.linear(black_box(x1_32.view())))
    });
    group.bench_function("bare_f64", |b| {
        b.iter(|| bare_linear.linear(black_box(x1.view())))
    });
    group.finish();

    let mut group = c.benchmark_group("worker_path_256rows");
    group.throughput(Throughput::Elements(ROWS as u64 * flops_per_row(&MLP)));
    group.bench_function(BenchmarkId::new("msgpack", &ours_n), |b| {
        b.iter(|| pool_n.install(|| worker_path(&model_mlp, black_box(&body))))
    });
    group.bench_function(BenchmarkId::new("binary_f32", &ours_n), |b| {
        b.iter(|| pool_n.install(|| worker_path(&model_mlp, black_box(&body_f32))))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = compute
}
criterion_main!(benches);
