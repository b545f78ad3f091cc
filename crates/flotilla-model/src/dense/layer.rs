//! One dense layer and its activations, generic over the float they compute in: the served
//! model runs its layers in f32 ([`super::Dense`]), the trainer fits the same [`Layer`] type
//! in f64 (`flotilla-train`), so what is trained is exactly what an artifact stores.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut1, NdFloat};

/// The five activations of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
    Softmax,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "identity" => Activation::Identity,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        }
    }

    /// Applies the activation to each row of `h` in place.
    pub fn apply<A: NdFloat>(self, h: &mut Array2<A>) {
        match self {
            Activation::Identity => {}
            Activation::Relu => h.mapv_inplace(|v| v.max(A::zero())),
            Activation::Tanh => h.mapv_inplace(|v| v.tanh()),
            Activation::Sigmoid => h.mapv_inplace(sigmoid),
            Activation::Softmax => h.rows_mut().into_iter().for_each(softmax),
        }
    }
}

/// `exp(v - max) / sum` over one row: subtracting the row's maximum keeps `exp` finite.
fn softmax<A: NdFloat>(mut row: ArrayViewMut1<A>) {
    let max = row.fold(A::neg_infinity(), |m, &v| m.max(v));
    row.mapv_inplace(|v| (v - max).exp());
    let sum = row.sum();
    row.mapv_inplace(|v| v / sum);
}

/// A logistic function that neither overflows nor loses precision for large |x|.
pub fn sigmoid<A: NdFloat>(x: A) -> A {
    if x >= A::zero() {
        A::one() / (A::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (A::one() + e)
    }
}

/// One dense layer: `activation(h @ weights + bias)`. `A` is the float it computes in: f64
/// for training, f32 in a served model.
#[derive(Debug, Clone)]
pub struct Layer<A = f64> {
    /// `inputs x units`, so a layer is `h.dot(&weights) + bias`.
    pub weights: Array2<A>,
    pub bias: Array1<A>,
    pub activation: Activation,
}

impl<A: NdFloat> Layer<A> {
    /// `activation(h @ weights + bias)` for the rows of `h`. The bias and an elementwise
    /// activation are applied in one pass over the product, one loop per activation so that
    /// each compiles to SIMD code (a `match` per value did not: 15% of an MLP's time).
    pub fn forward(&self, h: ArrayView2<A>) -> Array2<A> {
        let mut z = h.dot(&self.weights);
        if !z.is_standard_layout() {
            z = z.as_standard_layout().into_owned();
        }
        let bias = self
            .bias
            .as_slice()
            .expect("a bias built from a Vec is contiguous");
        for mut row in z.rows_mut() {
            let row = row
                .as_slice_mut()
                .expect("rows of a standard layout are contiguous");
            match self.activation {
                Activation::Identity => add_then(row, bias, |v| v),
                Activation::Relu => add_then(row, bias, |v| v.max(A::zero())),
                Activation::Tanh => add_then(row, bias, |v| v.tanh()),
                Activation::Sigmoid => add_then(row, bias, sigmoid),
                Activation::Softmax => {
                    add_then(row, bias, |v| v);
                    softmax(ArrayViewMut1::from(row));
                }
            }
        }
        z
    }
}

/// `row[i] = f(row[i] + bias[i])`.
fn add_then<A: NdFloat>(row: &mut [A], bias: &[A], f: impl Fn(A) -> A) {
    for (v, &b) in row.iter_mut().zip(bias) {
        *v = f(*v + b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// The f32 and f64 paths are the same code: they agree to f32 precision.
    #[test]
    fn f32_and_f64_layers_agree() {
        for activation in [
            Activation::Identity,
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Softmax,
        ] {
            let wide = Layer {
                weights: array![[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]],
                bias: array![0.1, -0.2, 0.3],
                activation,
            };
            let narrow = Layer {
                weights: wide.weights.mapv(|v| v as f32),
                bias: wide.bias.mapv(|v| v as f32),
                activation,
            };
            let x = array![[1.0, 2.0], [-3.0, 0.5], [40.0, -40.0]];
            let want = wide.forward(x.view());
            let got = narrow.forward(x.mapv(|v| v as f32).view());
            for (g, w) in got.iter().zip(&want) {
                let (g, w) = (*g as f64, *w);
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs() + 1e-7,
                    "{activation:?}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn sigmoid_is_finite_at_the_extremes() {
        assert_eq!(sigmoid(1000.0f32), 1.0);
        assert_eq!(sigmoid(-1000.0f32), 0.0);
        assert!((sigmoid(-20.0f64) - 2.061_153_618_190_204_5e-9).abs() < 1e-20);
    }
}
