//! The numeric kernels of the encoder on f32 slices and ndarray views: the threaded GEMM
//! (ndarray's `general_mat_mul`, i.e. matrixmultiply, split over the current rayon pool), layer
//! norm, the exact GELU, and the row softmax. No model knowledge: `forward` strings them together.
//!
//! Loops over a row are written with eight independent accumulators so the compiler can keep
//! them in SIMD registers: a plain `iter().sum()` of floats is a serial dependency chain.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Below this many multiply-adds a GEMM runs on the calling thread: waking a pool thread costs
/// more than it saves.
const PARALLEL_MACS: usize = 1 << 18;
/// Rows per task when splitting a GEMM by rows; below this matrixmultiply's packing of the
/// weights is no longer amortised, so small-M products are split by columns instead.
const MIN_ROWS_PER_TASK: usize = 64;

/// `c = a·w + c`, split over the current rayon pool when large enough. Callers preload `c`
/// with the bias (and the residual) so no separate pass adds them.
pub fn gemm_acc(a: ArrayView2<f32>, w: ArrayView2<f32>, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let n = w.ncols();
    debug_assert_eq!(w.nrows(), k);
    debug_assert_eq!(c.dim(), (m, n));
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * k * n < PARALLEL_MACS {
        general_mat_mul(1.0, &a, &w, 1.0, &mut c);
        return;
    }
    if m >= MIN_ROWS_PER_TASK * 2 {
        let tasks = threads.min(m / MIN_ROWS_PER_TASK);
        let rows = m.div_ceil(tasks);
        a.axis_chunks_iter(Axis(0), rows)
            .into_par_iter()
            .zip(c.axis_chunks_iter_mut(Axis(0), rows).into_par_iter())
            .for_each(|(a, mut c)| general_mat_mul(1.0, &a, &w, 1.0, &mut c));
    } else {
        // Few rows: each task takes a block of output columns, i.e. a slice of the weights,
        // so each thread streams only its share of the (memory-bound) weight matrix.
        let cols = n.div_ceil(threads).next_multiple_of(16).min(n);
        w.axis_chunks_iter(Axis(1), cols)
            .into_par_iter()
            .zip(c.axis_chunks_iter_mut(Axis(1), cols).into_par_iter())
            .for_each(|(w, mut c)| general_mat_mul(1.0, &a, &w, 1.0, &mut c));
    }
}

/// Sets every row of `out` to `bias`.
pub fn fill_rows(mut out: ArrayViewMut2<f32>, bias: &[f32]) {
    for mut row in out.rows_mut() {
        row.as_slice_mut()
            .expect("standard layout")
            .copy_from_slice(bias);
    }
}

/// `out[r] = x[r] + bias` for every row: the residual and the bias, preloaded before a GEMM
/// accumulates into `out`.
pub fn residual_plus_bias(x: ArrayView2<f32>, mut out: ArrayViewMut2<f32>, bias: &[f32]) {
    for (x, mut o) in x.rows().into_iter().zip(out.rows_mut()) {
        let x = x.as_slice().expect("standard layout");
        let o = o.as_slice_mut().expect("standard layout");
        for ((o, &x), &b) in o.iter_mut().zip(x).zip(bias) {
            *o = x + b;
        }
    }
}

/// Layer norm of each row of `x` in place: `(x - mean) / sqrt(var + eps) * gamma + beta`,
/// with the biased variance as PyTorch computes it.
pub fn layer_norm_rows(mut x: ArrayViewMut2<f32>, gamma: &[f32], beta: &[f32], eps: f32) {
    let work = |mut rows: ArrayViewMut2<f32>| {
        for mut row in rows.rows_mut() {
            layer_norm(
                row.as_slice_mut().expect("standard layout"),
                gamma,
                beta,
                eps,
            );
        }
    };
    if x.nrows() >= 256 && rayon::current_num_threads() > 1 {
        let rows = x.nrows().div_ceil(rayon::current_num_threads());
        x.axis_chunks_iter_mut(Axis(0), rows)
            .into_par_iter()
            .for_each(work);
    } else {
        work(x.view_mut());
    }
}

pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let d = v - mean;
            *a += d * d;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((v, &g), &b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * rstd * g + b;
    }
}

/// The sum of a slice, with eight accumulators.
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The dot product of two slices of equal length, with eight accumulators.
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut xc = x.chunks_exact(8);
    let mut yc = y.chunks_exact(8);
    for (a8, b8) in (&mut xc).zip(&mut yc) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a8).zip(b8) {
            *acc += a * b;
        }
    }
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The exact GELU, `x/2 · (1 + erf(x/√2))`, in place.
pub fn gelu(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `erf` in f32 as a branch-free rational function (the approximation Eigen and XLA use for
/// float), so loops over it vectorise. Outside [-4, 4], erf is ±1 in f32.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const A1: f32 = -1.609_603_332_624_15e-2_f64 as f32;
    const A3: f32 = -2.954_599_808_540_25e-3_f64 as f32;
    const A5: f32 = -7.349_906_303_268_55e-4_f64 as f32;
    const A7: f32 = -5.692_506_394_623_46e-5_f64 as f32;
    const A9: f32 = -2.101_024_020_825_08e-6_f64 as f32;
    const A11: f32 = 2.770_681_424_959_02e-8_f64 as f32;
    const A13: f32 = -2.726_142_258_013_06e-10_f64 as f32;
    const B0: f32 = -1.426_473_905_141_89e-2_f64 as f32;
    const B2: f32 = -7.373_329_167_204_68e-3_f64 as f32;
    const B4: f32 = -1.682_826_974_382_03e-3_f64 as f32;
    const B6: f32 = -2.133_740_552_789_05e-4_f64 as f32;
    const B8: f32 = -1.456_607_184_649_96e-5_f64 as f32;
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = x2 * A13 + A11;
    let p = x2 * p + A9;
    let p = x2 * p + A7;
    let p = x2 * p + A5;
    let p = x2 * p + A3;
    let p = x2 * p + A1;
    let q = x2 * B8 + B6;
    let q = x2 * q + B4;
    let q = x2 * q + B2;
    let q = x2 * q + B0;
    x * p / q
}

/// Softmax of a row in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut total = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    let inv = 1.0 / total;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// erf by its Taylor series in f64: exact enough on [-4, 4] to judge an f32 approximation.
    fn erf_reference(x: f64) -> f64 {
        let mut term = x;
        let mut total = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * total.abs().max(1e-300) || n < 10.0 {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
            if n > 200.0 {
                break;
            }
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_the_series_to_f32_precision() {
        let mut worst: f64 = 0.0;
        for i in -4000..=4000 {
            let x = i as f64 / 1000.0;
            let err = (erf(x as f32) as f64 - erf_reference(x)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "max |erf error| {worst}");
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn gelu_at_known_points() {
        let mut x = [0.0f32, 1.0, -1.0, 3.0];
        gelu(&mut x);
        // PyTorch: torch.nn.functional.gelu(torch.tensor([0., 1., -1., 3.]))
        let expected = [0.0f32, 0.841_344_7, -0.158_655_26, 2.995_950_4];
        for (a, b) in x.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn layer_norm_has_zero_mean_unit_variance() {
        let mut x: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.0)
            .collect();
        let ones = vec![1.0; 37];
        let zeros = vec![0.0; 37];
        layer_norm(&mut x, &ones, &zeros, 1e-12);
        let mean = sum(&x) / 37.0;
        let var = dot(&x, &x) / 37.0 - mean * mean;
        assert!(
            mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "{mean} {var}"
        );
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut x = [1000.0f32, 1000.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert_eq!(x, [0.5, 0.5, 0.0]);
    }

    #[test]
    fn threaded_gemm_matches_a_plain_one_for_every_split() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, k, n) in [(1, 5, 7), (9, 384, 1152), (300, 64, 96), (130, 512, 600)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 7) % 17) as f32 - 8.0);
            let w = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 3) % 13) as f32 - 6.0);
            let c0 = Array2::from_shape_fn((m, n), |(i, j)| (i + j) as f32);
            let mut expected = c0.clone();
            general_mat_mul(1.0, &a, &w, 1.0, &mut expected);
            let mut got = c0.clone();
            pool.install(|| gemm_acc(a.view(), w.view(), got.view_mut()));
            assert_eq!(got, expected, "m={m} k={k} n={n}");
        }
    }
}
