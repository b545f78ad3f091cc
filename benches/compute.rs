//! The cost of flotilla's forward pass against the same arithmetic written as bare ndarray,
//! and of the whole worker path around it (decode, forward, encode; NATS excluded).
//!
//! Cases, each group comparing its entries side by side:
//! - `mlp_64x256x256x10_256rows`: `flotilla/pool_N` is [`Model::forward`] inside a rayon pool
//!   of the machine's thread count, as the worker runs it; `flotilla/pool_1` the same in a
//!   one-thread pool, which isolates the implementation's overhead from the parallel speed-up;
//!   `bare` is the same scaler and layers as single-threaded ndarray code.
//! - `linear_10x1_1row`: one row through a 10-input linear model, the latency-bound case;
//!   `flotilla/pool_N` also pays the hop onto the pool.
//! - `worker_path_256rows`: one 256-row MessagePack request through decode, batch buffer,
//!   forward, labels and reply encoding, as `worker::compute` does it.
//!
//! Weights come from a fixed LCG, so every run measures the same model. Before anything is
//! timed, flotilla's outputs are checked against the bare ones.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_model::{Artifact, Data, Label, LayerSpec, Model, Scaler, Tensor, FORMAT_V1};
use flotilla_proto::{
    Encoding, Inputs, OutputsRef, PredictReply, PredictRequest, Prediction, Values, ValuesRef,
};
use ndarray::{Array1, Array2, ArrayView2, Axis};

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

/// The weights of an artifact as ndarray values, for the bare baseline.
struct Bare {
    mean: Array1<f64>,
    std: Array1<f64>,
    layers: Vec<(Array2<f64>, Array1<f64>)>,
}

impl Bare {
    fn new(a: &Artifact) -> Bare {
        let scaler = a.scaler.as_ref().expect("bench artifacts have a scaler");
        let layers = a
            .layers
            .iter()
            .map(|l| {
                let flat: Vec<f64> = l.weights.iter().flatten().copied().collect();
                let w = Array2::from_shape_vec((l.weights.len(), l.bias.len()), flat)
                    .expect("rectangular weights");
                (w, Array1::from(l.bias.clone()))
            })
            .collect();
        Bare {
            mean: Array1::from(scaler.mean.clone()),
            std: Array1::from(scaler.std.clone()),
            layers,
        }
    }

    /// scaler, relu, relu, softmax: written out the way one would without flotilla.
    fn mlp(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let [(w1, b1), (w2, b2), (w3, b3)] = &self.layers[..] else {
            panic!("the MLP has three layers")
        };
        let h0 = (&x - &self.mean) / &self.std;
        let mut h1 = h0.dot(w1) + b1;
        h1.mapv_inplace(|v| v.max(0.0));
        let mut h2 = h1.dot(w2) + b2;
        h2.mapv_inplace(|v| v.max(0.0));
        let mut h3 = h2.dot(w3) + b3;
        for mut row in h3.axis_iter_mut(Axis(0)) {
            let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        h3
    }

    /// scaler, one identity layer.
    fn linear(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let (w, b) = &self.layers[0];
        ((&x - &self.mean) / &self.std).dot(w) + b
    }
}

fn inputs(rows: usize, features: usize, seed: u64) -> Array2<f64> {
    let mut rng = Lcg(seed);
    Array2::from_shape_vec((rows, features), rng.vec(rows * features, 2.0, 0.5))
        .expect("rows * features values")
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

/// The worker's path for one request, minus NATS: decode the body, copy it into the batch
/// buffer, compute (forward and labels), encode the reply (as `worker::compute` and
/// `encode_reply` do).
fn worker_path(model: &Model, body: &[u8]) -> bytes::Bytes {
    let request = PredictRequest::decode(Encoding::MsgPack, body).expect("a valid request");
    let Inputs::Unnamed(input) = &request.inputs else {
        panic!("one unnamed input")
    };
    let Values::F64(sent) = &input.values else {
        panic!("numbers")
    };
    let rows = input.rows;
    let mut values = Vec::with_capacity(rows * model.inputs());
    values.extend_from_slice(sent);
    let batch = Tensor::new(rows, vec![model.inputs()], Data::F64(values));
    let computed = model.compute(vec![batch]).expect("a dense model computes");
    let Data::F64(block) = &computed.outputs.data else {
        panic!("dense outputs are f64")
    };
    assert!(block.iter().all(|v| v.is_finite()));
    let reply = PredictReply::<Label> {
        outputs: OutputsRef {
            values: ValuesRef::F64(block),
            rows,
            row_shape: &computed.outputs.row_shape,
            binary: None,
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

fn compute(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool_n = pool(threads);
    let pool_1 = pool(1);
    let ours_n = format!("flotilla/pool_{threads}");

    let mlp = mlp_artifact();
    let bare_mlp = Bare::new(&mlp);
    let model_mlp = Model::from_artifact(mlp).expect("a valid MLP");
    let x = inputs(ROWS, MLP[0], 3);

    let linear = linear_artifact();
    let bare_linear = Bare::new(&linear);
    let model_linear = Model::from_artifact(linear).expect("a valid linear model");
    let x1 = inputs(1, LINEAR_INPUTS, 4);

    let rows: Vec<Vec<f64>> = x.outer_iter().map(|r| r.to_vec()).collect();
    let body = PredictRequest::encode(Encoding::MsgPack, &rows, Some("bench"));

    // Benchmarks of different arithmetic would be worthless: check agreement first.
    let expected = bare_mlp.mlp(x.view());
    for (name, p) in [(&ours_n, &pool_n), (&"flotilla/pool_1".to_owned(), &pool_1)] {
        let ours = p.install(|| model_mlp.forward(x.view()));
        let diff = max_abs_diff(&ours, &expected);
        assert!(diff < 1e-9, "MLP {name} vs bare: max abs diff {diff:e}");
    }
    let reply = pool_n.install(|| worker_path(&model_mlp, &body));
    let decoded: Prediction = rmp_serde::from_slice(&reply).expect("the reply decodes");
    let from_reply = Array2::from_shape_vec(
        (ROWS, MLP[3]),
        decoded.outputs.into_iter().flatten().collect(),
    )
    .expect("rows x outputs");
    let diff = max_abs_diff(&from_reply, &expected);
    assert!(diff < 1e-9, "worker path vs bare: max abs diff {diff:e}");
    let diff = max_abs_diff(
        &model_linear.forward(x1.view()),
        &bare_linear.linear(x1.view()),
    );
    assert!(diff < 1e-9, "linear vs bare: max abs diff {diff:e}");

    let mut group = c.benchmark_group("mlp_64x256x256x10_256rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function(BenchmarkId::from_parameter(&ours_n), |b| {
        b.iter(|| pool_n.install(|| model_mlp.forward(black_box(x.view()))))
    });
    group.bench_function("flotilla/pool_1", |b| {
        b.iter(|| pool_1.install(|| model_mlp.forward(black_box(x.view()))))
    });
    group.bench_function("bare", |b| b.iter(|| bare_mlp.mlp(black_box(x.view()))));
    group.finish();

    let mut group = c.benchmark_group("linear_10x1_1row");
    group.bench_function("flotilla", |b| {
        b.iter(|| model_linear.forward(black_box(x1.view())))
    });
    group.bench_function(BenchmarkId::from_parameter(&ours_n), |b| {
        b.iter(|| pool_n.install(|| model_linear.forward(black_box(x1.view()))))
    });
    group.bench_function("bare", |b| {
        b.iter(|| bare_linear.linear(black_box(x1.view())))
    });
    group.finish();

    let mut group = c.benchmark_group("worker_path_256rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function(BenchmarkId::new("msgpack", &ours_n), |b| {
        b.iter(|| pool_n.install(|| worker_path(&model_mlp, black_box(&body))))
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
