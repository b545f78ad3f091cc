//! The network behind every model kind, its loss and its gradients.
//!
//! Each kind is a stack of dense layers ending in an output head: linear regression is one
//! identity layer trained on mean squared error, logistic regression one sigmoid unit on binary
//! cross-entropy, softmax regression one softmax layer on cross-entropy, and an MLP puts hidden
//! layers (relu, tanh or sigmoid) in front of the head its target calls for. The layers are the
//! served model's own [`Layer`] type, so what is trained is what is written to the artifact.
//! Choosing the head from the data is [`super::fit`]'s job; updating weights is [`super::optim`]'s.

use ndarray::{Array1, Array2, ArrayView2, Axis, CowArray, Ix2, Zip};

use super::rng::Rng;
use flotilla_model::dense::{Activation, Layer, LayerSpec};

/// Which model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Linear,
    Logistic,
    Softmax,
    Mlp,
}

choices!(ModelKind, "model kind", {
    Linear => "linear",
    Logistic => "logistic",
    Softmax => "softmax",
    Mlp => "mlp",
});

/// Whether the target is predicted as a number or as a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Linear: regression; logistic and softmax: classification; MLP: classification when
    /// any target cell is text, regression when all are numbers.
    Auto,
    Regression,
    Classification,
}

choices!(Task, "task", {
    Auto => "auto",
    Regression => "regression",
    Classification => "classification",
});

/// The activation of an MLP's hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenActivation {
    Relu,
    Tanh,
    Sigmoid,
}

choices!(HiddenActivation, "hidden activation", {
    Relu => "relu",
    Tanh => "tanh",
    Sigmoid => "sigmoid",
});

impl HiddenActivation {
    pub fn activation(self) -> Activation {
        match self {
            HiddenActivation::Relu => Activation::Relu,
            HiddenActivation::Tanh => Activation::Tanh,
            HiddenActivation::Sigmoid => Activation::Sigmoid,
        }
    }
}

/// The output activation together with the loss it is trained under. Each pair is the one
/// whose gradient with respect to the logits is `output - target` (twice that for squared
/// error), which keeps backpropagation simple and numerically tame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Regression: identity output, squared error.
    Identity,
    /// Two classes: one sigmoid unit giving P(class 1), binary cross-entropy.
    Sigmoid,
    /// Two or more classes: softmax over one unit per class, cross-entropy.
    Softmax,
}

impl Head {
    pub fn activation(self) -> Activation {
        match self {
            Head::Identity => Activation::Identity,
            Head::Sigmoid => Activation::Sigmoid,
            Head::Softmax => Activation::Softmax,
        }
    }

    /// The head's outputs (predictions or probabilities) from the last layer's logits.
    pub fn output(self, mut logits: Array2<f64>) -> Array2<f64> {
        self.activation().apply(&mut logits);
        logits
    }

    /// The loss summed over rows, computed from the logits so it stays finite however
    /// confident the model is. `targets` holds numbers (identity), 0/1 (sigmoid) or one-hot
    /// rows (softmax).
    pub fn loss_sum(self, logits: ArrayView2<f64>, targets: ArrayView2<f64>) -> f64 {
        match self {
            Head::Identity => Zip::from(&logits)
                .and(&targets)
                .fold(0.0, |sum, &z, &y| sum + (z - y) * (z - y)),
            // -[y ln σ(z) + (1 - y) ln(1 - σ(z))], rearranged to avoid exp overflow.
            Head::Sigmoid => Zip::from(&logits).and(&targets).fold(0.0, |sum, &z, &y| {
                sum + z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
            }),
            // logsumexp(z) - z[true class].
            Head::Softmax => Zip::from(logits.rows())
                .and(targets.rows())
                .fold(0.0, |sum, z, y| {
                    let max = z.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    let lse = max + z.fold(0.0, |s, &v| s + (v - max).exp()).ln();
                    sum + lse - z.dot(&y)
                }),
        }
    }

    /// d(loss)/d(logit) = scale * (output - target).
    fn gradient_scale(self) -> f64 {
        match self {
            Head::Identity => 2.0,
            Head::Sigmoid | Head::Softmax => 1.0,
        }
    }
}

/// Dense layers, the last of which is the head.
#[derive(Debug, Clone)]
pub struct Network {
    pub layers: Vec<Layer>,
    pub head: Head,
}

/// One gradient (or optimizer moment) per parameter, shaped like the network's layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    pub weights: Vec<Array2<f64>>,
    pub bias: Vec<Array1<f64>>,
}

impl Gradients {
    pub fn zeros_like(net: &Network) -> Gradients {
        Gradients {
            weights: net
                .layers
                .iter()
                .map(|l| Array2::zeros(l.weights.raw_dim()))
                .collect(),
            bias: net
                .layers
                .iter()
                .map(|l| Array1::zeros(l.bias.raw_dim()))
                .collect(),
        }
    }

    pub fn add(&mut self, other: &Gradients) {
        for (a, b) in self.weights.iter_mut().zip(&other.weights) {
            *a += b;
        }
        for (a, b) in self.bias.iter_mut().zip(&other.bias) {
            *a += b;
        }
    }

    pub fn scale(&mut self, factor: f64) {
        self.weights.iter_mut().for_each(|w| *w *= factor);
        self.bias.iter_mut().for_each(|b| *b *= factor);
    }
}

impl Network {
    /// A network from `inputs` through `hidden` layers to `outputs` units of `head`.
    ///
    /// Without hidden layers the loss is convex and every weight starts at zero, so the result
    /// does not depend on the seed. With hidden layers, weights are drawn uniformly with the
    /// He bound `sqrt(6 / fan_in)` before relu and the Glorot bound
    /// `sqrt(6 / (fan_in + fan_out))` elsewhere, so activations keep their scale through depth.
    pub fn new(
        inputs: usize,
        hidden: &[usize],
        activation: HiddenActivation,
        outputs: usize,
        head: Head,
        rng: &mut Rng,
    ) -> Network {
        let mut widths = vec![inputs];
        widths.extend_from_slice(hidden);
        widths.push(outputs);
        let last = widths.len() - 2;
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, pair)| {
                let (fan_in, fan_out) = (pair[0], pair[1]);
                let is_head = l == last;
                let act = if is_head {
                    head.activation()
                } else {
                    activation.activation()
                };
                let bound = if hidden.is_empty() {
                    0.0
                } else if act == Activation::Relu {
                    (6.0 / fan_in as f64).sqrt()
                } else {
                    (6.0 / (fan_in + fan_out) as f64).sqrt()
                };
                Layer {
                    weights: Array2::from_shape_simple_fn((fan_in, fan_out), || {
                        rng.uniform(-bound, bound)
                    }),
                    bias: Array1::zeros(fan_out),
                    activation: act,
                }
            })
            .collect();
        Network { layers, head }
    }

    /// The last layer's logits (before the head's activation), without dropout.
    pub fn logits(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let (head, hidden) = self.layers.split_last().expect("a network has a head");
        let mut h = CowArray::from(x);
        for layer in hidden {
            let mut a = affine(h.view(), layer);
            layer.activation.apply(&mut a);
            h = CowArray::from(a);
        }
        affine(h.view(), head)
    }

    /// The loss summed over the rows of `x`, without dropout or penalties.
    pub fn loss_sum(&self, x: ArrayView2<f64>, targets: ArrayView2<f64>) -> f64 {
        self.head.loss_sum(self.logits(x).view(), targets)
    }

    /// The gradient of [`Network::loss_sum`] over the rows of `x` (a sum, not a mean), by
    /// backpropagation. With `dropout > 0` each hidden unit is zeroed with that probability,
    /// drawing from `rng`, and the survivors scaled by `1 / (1 - dropout)` ("inverted"
    /// dropout, so serving needs no rescaling).
    pub fn gradient(
        &self,
        x: ArrayView2<f64>,
        targets: ArrayView2<f64>,
        dropout: f64,
        rng: &mut Rng,
    ) -> Gradients {
        let (head, hidden) = self.layers.split_last().expect("a network has a head");
        // What backpropagation needs from the forward pass: each layer's input, and for each
        // hidden layer its activation before dropout and the dropout mask.
        let mut inputs: Vec<CowArray<f64, Ix2>> = vec![CowArray::from(x)];
        let mut activations = Vec::with_capacity(hidden.len());
        let mut masks = Vec::with_capacity(hidden.len());
        for layer in hidden {
            let mut a = affine(inputs.last().expect("starts with x").view(), layer);
            layer.activation.apply(&mut a);
            let mask = (dropout > 0.0).then(|| {
                let keep = 1.0 / (1.0 - dropout);
                Array2::from_shape_simple_fn(a.raw_dim(), || {
                    if rng.next_f64() < dropout {
                        0.0
                    } else {
                        keep
                    }
                })
            });
            let next = match &mask {
                Some(m) => &a * m,
                None => a.clone(),
            };
            inputs.push(CowArray::from(next));
            activations.push(a);
            masks.push(mask);
        }
        let logits = affine(inputs.last().expect("starts with x").view(), head);

        let mut delta = self.head.output(logits);
        delta -= &targets;
        delta *= self.head.gradient_scale();
        let mut grads = Gradients::zeros_like(self);
        for l in (0..self.layers.len()).rev() {
            grads.weights[l] = inputs[l].t().dot(&delta);
            grads.bias[l] = delta.sum_axis(Axis(0));
            if l == 0 {
                break;
            }
            let mut back = delta.dot(&self.layers[l].weights.t());
            if let Some(mask) = &masks[l - 1] {
                back *= mask;
            }
            let act = self.layers[l - 1].activation;
            Zip::from(&mut back)
                .and(&activations[l - 1])
                .for_each(|d, &a| *d *= derivative_at_output(act, a));
            delta = back;
        }
        grads
    }

    /// The layers as the artifact stores them.
    pub fn layer_specs(&self) -> Vec<LayerSpec> {
        self.layers
            .iter()
            .map(|layer| LayerSpec {
                weights: layer
                    .weights
                    .rows()
                    .into_iter()
                    .map(|r| r.to_vec())
                    .collect(),
                bias: layer.bias.to_vec(),
                activation: layer.activation.name().to_owned(),
            })
            .collect()
    }
}

fn affine(h: ArrayView2<f64>, layer: &Layer) -> Array2<f64> {
    let mut z = h.dot(&layer.weights);
    z += &layer.bias;
    z
}

/// A hidden activation's derivative, written in terms of its output `a` (all we keep).
fn derivative_at_output(activation: Activation, a: f64) -> f64 {
    match activation {
        Activation::Relu => {
            if a > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Tanh => 1.0 - a * a,
        Activation::Sigmoid => a * (1.0 - a),
        Activation::Identity => 1.0,
        Activation::Softmax => unreachable!("softmax is only ever a head"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// A tiny problem for `head`: 6 rows, 3 features, targets of the head's shape.
    fn problem(head: Head) -> (Array2<f64>, Array2<f64>, usize) {
        let x = array![
            [0.5, -1.2, 0.3],
            [1.5, 0.2, -0.7],
            [-0.3, 0.8, 1.1],
            [0.9, -0.4, -1.6],
            [-1.1, 1.3, 0.4],
            [0.2, 0.1, -0.2]
        ];
        let classes = [0usize, 2, 1, 2, 0, 1];
        let y = match head {
            Head::Identity => array![[1.0], [-0.5], [2.0], [0.3], [-1.2], [0.7]],
            Head::Sigmoid => Array2::from_shape_fn((6, 1), |(r, _)| (classes[r] % 2) as f64),
            Head::Softmax => {
                Array2::from_shape_fn((6, 3), |(r, c)| f64::from(u8::from(classes[r] == c)))
            }
        };
        let outputs = y.ncols();
        (x, y, outputs)
    }

    /// Central differences of `loss_sum` against the analytic gradient, for every parameter.
    fn check_gradient(head: Head, hidden: &[usize], activation: HiddenActivation) {
        let (x, y, outputs) = problem(head);
        let mut rng = Rng::new(3);
        let mut net = Network::new(3, hidden, activation, outputs, head, &mut rng);
        // Non-zero starting weights even without hidden layers, so the check is not trivial.
        for layer in &mut net.layers {
            layer.weights.mapv_inplace(|_| rng.uniform(-0.8, 0.8));
            layer.bias.mapv_inplace(|_| rng.uniform(-0.3, 0.3));
        }
        let grads = net.gradient(x.view(), y.view(), 0.0, &mut rng);
        let h = 1e-6;
        let what = format!("{head:?} {hidden:?} {activation:?}");
        for l in 0..net.layers.len() {
            for idx in 0..net.layers[l].weights.len() {
                let (r, c) = (
                    idx / net.layers[l].weights.ncols(),
                    idx % net.layers[l].weights.ncols(),
                );
                let numeric = numeric(&mut net, &x, &y, h, |n| &mut n.layers[l].weights[[r, c]]);
                let analytic = grads.weights[l][[r, c]];
                assert!(
                    (numeric - analytic).abs() <= 1e-6 * (1.0 + analytic.abs()),
                    "{what}: weights[{l}][{r},{c}]: numeric {numeric} vs analytic {analytic}"
                );
            }
            for j in 0..net.layers[l].bias.len() {
                let numeric = numeric(&mut net, &x, &y, h, |n| &mut n.layers[l].bias[j]);
                let analytic = grads.bias[l][j];
                assert!(
                    (numeric - analytic).abs() <= 1e-6 * (1.0 + analytic.abs()),
                    "{what}: bias[{l}][{j}]: numeric {numeric} vs analytic {analytic}"
                );
            }
        }
    }

    fn numeric(
        net: &mut Network,
        x: &Array2<f64>,
        y: &Array2<f64>,
        h: f64,
        param: impl Fn(&mut Network) -> &mut f64,
    ) -> f64 {
        let original = *param(net);
        *param(net) = original + h;
        let plus = net.loss_sum(x.view(), y.view());
        *param(net) = original - h;
        let minus = net.loss_sum(x.view(), y.view());
        *param(net) = original;
        (plus - minus) / (2.0 * h)
    }

    #[test]
    fn gradients_match_finite_differences_for_every_kind() {
        let relu = HiddenActivation::Relu;
        // Linear, logistic and softmax regression.
        check_gradient(Head::Identity, &[], relu);
        check_gradient(Head::Sigmoid, &[], relu);
        check_gradient(Head::Softmax, &[], relu);
        // MLPs, each head behind each hidden activation.
        for activation in [relu, HiddenActivation::Tanh, HiddenActivation::Sigmoid] {
            for head in [Head::Identity, Head::Sigmoid, Head::Softmax] {
                check_gradient(head, &[5, 4], activation);
            }
        }
    }

    #[test]
    fn losses_stay_finite_for_confident_logits() {
        let logits = array![[800.0, -800.0, 0.0]];
        let loss = Head::Softmax.loss_sum(logits.view(), array![[0.0, 1.0, 0.0]].view());
        assert!((loss - 1600.0).abs() < 1e-9, "{loss}");
        let loss = Head::Sigmoid.loss_sum(array![[-800.0]].view(), array![[1.0]].view());
        assert!((loss - 800.0).abs() < 1e-9, "{loss}");
    }

    #[test]
    fn dropout_zeroes_hidden_units_deterministically() {
        let (x, y, outputs) = problem(Head::Softmax);
        let (x, y) = (x.slice(ndarray::s![..1, ..]), y.slice(ndarray::s![..1, ..]));
        let mut rng = Rng::new(1);
        let net = Network::new(
            3,
            &[64],
            HiddenActivation::Tanh,
            outputs,
            Head::Softmax,
            &mut rng,
        );
        let plain = net.gradient(x, y, 0.0, &mut Rng::new(9));
        let dropped = net.gradient(x, y, 0.5, &mut Rng::new(9));
        let again = net.gradient(x, y, 0.5, &mut Rng::new(9));
        assert_eq!(dropped, again, "dropout is deterministic given the seed");
        // With one row, a dropped hidden unit passes no gradient back to its bias, while
        // without dropout every unit does.
        assert!(plain.bias[0].iter().all(|&g| g != 0.0));
        let zeroed = dropped.bias[0].iter().filter(|&&g| g == 0.0).count();
        assert!(
            (16..=48).contains(&zeroed),
            "{zeroed} of 64 units dropped at p = 0.5"
        );
    }
}
