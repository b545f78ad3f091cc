//! tract through flotilla's ONNX backend, timed exactly as `scripts/bench_onnxruntime.py`
//! times onnxruntime, so the two print comparable JSON lines: per (model, batch), 50 untimed
//! calls, then timed calls until both 200 calls and 2 seconds are done, each call timed alone,
//! medians and percentiles in microseconds. On a shared machine a per-call median shrugs off
//! the calls another process preempted; criterion's estimate (benches/onnx.rs) does not.
//!
//!     cargo bench --bench onnx_median
//!
//! Cases: `seam` is `Model::compute_on` in a two-thread rayon pool, as a worker computes a
//! batch (the input tensor is built before the clock starts); `bare` is the backend's own
//! plan shape (symbolic batch) run directly, single-threaded; `concrete` a plan optimised for
//! exactly that batch size.

use std::path::PathBuf;
use std::time::Instant;

use flotilla_model::{Data, Model, Tensor};
use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModelExt, IntoRunnable, TValue,
    Tensor as TractTensor, TypedRunnableModel,
};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/onnx/{name}.onnx"))
}

fn plan(name: &str, shape: Option<&[usize]>) -> std::sync::Arc<TypedRunnableModel> {
    let mut model = tract_onnx::onnx()
        .model_for_path(path(name))
        .expect("the example loads");
    if let Some(shape) = shape {
        model
            .set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .expect("a concrete input fact");
    }
    model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .expect("the example optimises")
}

/// One timed call: returns how long the measured part took.
type TimedCall<'a> = dyn FnMut() -> std::time::Duration + 'a;

/// Times `call` per call: 50 untimed, then at least 200 calls and 2 seconds.
fn time(mut call: impl FnMut() -> std::time::Duration) -> (usize, f64, f64, f64) {
    for _ in 0..50 {
        call();
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 200 || start.elapsed().as_secs_f64() < 2.0 {
        times.push(call().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    (times.len(), at(0.5), at(0.1), at(0.9))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a rayon pool");
    for (name, row) in [("mlp", vec![64usize]), ("cnn", vec![1, 8, 8])] {
        let model = Model::load(&path(name)).expect("the example loads");
        let symbolic = plan(name, None);
        let per_row: usize = row.iter().product();
        for batch in [1usize, 256] {
            let x: Vec<f32> = (0..batch * per_row)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let shape: Vec<usize> = std::iter::once(batch).chain(row.iter().copied()).collect();
            let concrete = plan(name, Some(&shape));
            let input = TValue::from(TractTensor::from_shape(&shape, &x).expect("shape"));
            let tensor = Tensor::new(batch, row.clone(), Data::F32(x));
            let cases: [(&str, Box<TimedCall>); 3] = [
                (
                    "seam",
                    Box::new(|| {
                        let inputs = vec![tensor.clone()];
                        let t = Instant::now();
                        model.compute_on(&pool, inputs).expect("computes");
                        t.elapsed()
                    }),
                ),
                (
                    "bare",
                    Box::new(|| {
                        let inputs = vec![input.clone()].into();
                        let t = Instant::now();
                        symbolic.run(inputs).expect("runs");
                        t.elapsed()
                    }),
                ),
                (
                    "concrete",
                    Box::new(|| {
                        let inputs = vec![input.clone()].into();
                        let t = Instant::now();
                        concrete.run(inputs).expect("runs");
                        t.elapsed()
                    }),
                ),
            ];
            for (case, call) in cases {
                let (iters, median, p10, p90) = time(call);
                println!(
                    "{{\"runtime\": \"tract-{case}\", \"model\": \"{name}\", \"batch\": {batch}, \"iters\": {iters}, \"median_us\": {median:.1}, \"p10_us\": {p10:.1}, \"p90_us\": {p90:.1}}}"
                );
            }
        }
    }
}
