//! The ONNX backend's compute per batch, against bare tract plans of the same files, for the
//! two benchmark models (`models/onnx/mlp.onnx`, 64-256-256-10, and `cnn.onnx`) at batch 1
//! and 256. `scripts/bench_onnxruntime.py` times onnxruntime on the same files and batches.
//!
//! Cases, per model and batch:
//! - `seam/pool_2`: [`Model::compute_on`] in a two-thread rayon pool, as a worker computes a
//!   batch (batches over 64 rows are split by rows across the pool).
//! - `seam/pool_1`: the same in a one-thread pool: the seam's own cost over a bare plan.
//! - `bare/symbolic`: one tract plan optimised with a symbolic batch `N` (what the backend
//!   holds), run directly on a prepared tensor.
//! - `bare/concrete`: a plan optimised for exactly this batch size, the alternative of one
//!   plan per batch size.
//!
//! Inputs are made once from a fixed LCG; the seam's outputs are checked against the bare
//! plan's before anything is timed.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use flotilla_model::{Data, Model, Tensor};
use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModelExt, IntoRunnable, TValue,
    Tensor as TractTensor, TypedRunnableModel,
};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/onnx/{name}.onnx"))
}

/// Deterministic values in `[-1, 1)`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A bare tract plan of the file: symbolic batch, or fixed to `batch`.
fn plan(name: &str, row: &[usize], batch: Option<usize>) -> std::sync::Arc<TypedRunnableModel> {
    let mut model = tract_onnx::onnx()
        .model_for_path(path(name))
        .expect("the example loads");
    if let Some(b) = batch {
        let shape: Vec<usize> = std::iter::once(b).chain(row.iter().copied()).collect();
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .expect("a concrete input fact");
    }
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .expect("the example optimises")
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

fn bench(c: &mut Criterion) {
    let (pool_1, pool_2) = (pool(1), pool(2));
    for (name, row) in [("mlp", vec![64usize]), ("cnn", vec![1, 8, 8])] {
        let model = Model::load(&path(name)).expect("the example loads");
        let per_row: usize = row.iter().product();
        let symbolic = plan(name, &row, None);
        let mut group = c.benchmark_group(format!("onnx_{name}"));
        for batch in [1usize, 256] {
            let x = values(batch * per_row, 7 + batch as u64);
            let tensor = Tensor::new(batch, row.clone(), Data::F32(x.clone()));
            let shape: Vec<usize> = std::iter::once(batch).chain(row.iter().copied()).collect();
            let bare_input = TValue::from(TractTensor::from_shape(&shape, &x).expect("shape"));
            let concrete = plan(name, &row, Some(batch));

            let ours = model.compute(vec![tensor.clone()]).expect("computes");
            let bare = symbolic.run(vec![bare_input.clone()].into()).expect("runs");
            let bare = bare[0]
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .expect("f32 outputs");
            let Data::F32(ours) = &ours.outputs.data else {
                panic!("f32 outputs")
            };
            let diff = ours
                .iter()
                .zip(bare)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "{name}: seam and bare plan differ by {diff}");

            for (label, pool) in [("seam/pool_2", &pool_2), ("seam/pool_1", &pool_1)] {
                group.bench_with_input(BenchmarkId::new(label, batch), &tensor, |b, t| {
                    b.iter_batched(
                        || vec![t.clone()],
                        |inputs| model.compute_on(pool, inputs).expect("computes"),
                        BatchSize::SmallInput,
                    )
                });
            }
            for (label, plan) in [("bare/symbolic", &symbolic), ("bare/concrete", &concrete)] {
                group.bench_with_input(BenchmarkId::new(label, batch), &bare_input, |b, x| {
                    b.iter(|| plan.run(vec![black_box(x.clone())].into()).expect("runs"))
                });
            }
        }
        group.finish();
    }
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
    targets = bench
}
criterion_main!(benches);
