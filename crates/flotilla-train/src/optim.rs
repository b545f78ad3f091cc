//! Update rules: mini-batch SGD with momentum, Adam and Adagrad, and the L1 and L2 penalties.
//!
//! An [`Optimizer`] turns one mean mini-batch gradient into one update of every parameter and
//! owns the per-parameter state the rule needs (velocity, moments, accumulated squares).
//! Penalties apply to weights only: a bias shifts an output and shrinking it towards zero
//! would only bias the model. Computing gradients and deciding when to stop belong to
//! [`super::fit`].

use ndarray::{Array, Dimension, Zip};

use super::config::TrainConfig;
use super::models::{Gradients, Network};

/// How parameters are updated from gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// `v = momentum * v + g; w -= lr * v`.
    Sgd,
    /// Kingma & Ba (2015), with the usual beta1 0.9, beta2 0.999, epsilon 1e-8.
    Adam,
    /// Duchi et al. (2011): `G += g^2; w -= lr * g / (sqrt(G) + 1e-10)`.
    Adagrad,
}

choices!(OptimizerKind, "optimizer", {
    Sgd => "sgd",
    Adam => "adam",
    Adagrad => "adagrad",
});

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPSILON: f64 = 1e-8;
const ADAGRAD_EPSILON: f64 = 1e-10;

/// One rule with its settings; SGD and Adagrad use only `first`, Adam both moments.
#[derive(Debug, Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    learning_rate: f64,
    momentum: f64,
    l1: f64,
    l2: f64,
    /// Updates made so far; Adam's bias correction depends on it.
    steps: i32,
    /// SGD's velocity, Adam's first moment, Adagrad's sum of squared gradients.
    first: Gradients,
    /// Adam's second moment.
    second: Gradients,
}

/// The per-step constants of a rule, so the inner loop is a plain match.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Sgd {
        lr: f64,
        momentum: f64,
    },
    Adam {
        lr: f64,
        correct1: f64,
        correct2: f64,
    },
    Adagrad {
        lr: f64,
    },
}

impl Optimizer {
    pub fn new(config: &TrainConfig, net: &Network) -> Optimizer {
        Optimizer {
            kind: config.optimizer,
            learning_rate: config.learning_rate,
            momentum: config.momentum,
            l1: config.l1,
            l2: config.l2,
            steps: 0,
            first: Gradients::zeros_like(net),
            second: Gradients::zeros_like(net),
        }
    }

    /// Updates every parameter of `net` from `grads`, the mean gradient of the data loss over a
    /// mini-batch; the penalties' gradients are added to the weights' here.
    pub fn step(&mut self, net: &mut Network, grads: &Gradients) {
        self.steps = self.steps.saturating_add(1);
        let lr = self.learning_rate;
        let rule = match self.kind {
            OptimizerKind::Sgd => Rule::Sgd {
                lr,
                momentum: self.momentum,
            },
            OptimizerKind::Adam => Rule::Adam {
                lr,
                correct1: 1.0 - ADAM_BETA1.powi(self.steps),
                correct2: 1.0 - ADAM_BETA2.powi(self.steps),
            },
            OptimizerKind::Adagrad => Rule::Adagrad { lr },
        };
        for (l, layer) in net.layers.iter_mut().enumerate() {
            update(
                rule,
                (self.l1, self.l2),
                &mut layer.weights,
                &grads.weights[l],
                &mut self.first.weights[l],
                &mut self.second.weights[l],
            );
            update(
                rule,
                (0.0, 0.0),
                &mut layer.bias,
                &grads.bias[l],
                &mut self.first.bias[l],
                &mut self.second.bias[l],
            );
        }
    }
}

fn update<D: Dimension>(
    rule: Rule,
    (l1, l2): (f64, f64),
    params: &mut Array<f64, D>,
    grads: &Array<f64, D>,
    first: &mut Array<f64, D>,
    second: &mut Array<f64, D>,
) {
    Zip::from(params)
        .and(grads)
        .and(first)
        .and(second)
        .for_each(|w, &g, m, v| {
            // The L1 subgradient is 0 at 0, so a zero weight is not pushed off zero.
            let sign = if *w > 0.0 {
                1.0
            } else if *w < 0.0 {
                -1.0
            } else {
                0.0
            };
            let g = g + l1 * sign + l2 * *w;
            match rule {
                Rule::Sgd { lr, momentum } => {
                    *m = momentum * *m + g;
                    *w -= lr * *m;
                }
                Rule::Adam {
                    lr,
                    correct1,
                    correct2,
                } => {
                    *m = ADAM_BETA1 * *m + (1.0 - ADAM_BETA1) * g;
                    *v = ADAM_BETA2 * *v + (1.0 - ADAM_BETA2) * g * g;
                    *w -= lr * (*m / correct1) / ((*v / correct2).sqrt() + ADAM_EPSILON);
                }
                Rule::Adagrad { lr } => {
                    *m += g * g;
                    *w -= lr * g / (m.sqrt() + ADAGRAD_EPSILON);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Head, HiddenActivation};
    use crate::rng::Rng;
    use ndarray::Array2;

    /// The penalty `l1 * sum(|w|) + l2 / 2 * sum(w^2)` over the weights of `net`.
    fn penalty(net: &Network, l1: f64, l2: f64) -> f64 {
        net.layers
            .iter()
            .flat_map(|layer| layer.weights.iter())
            .map(|&w| l1 * w.abs() + 0.5 * l2 * w * w)
            .sum()
    }

    /// y = 2 a - 3 b + 0.5 c + 1 + noise, 200 rows.
    fn regression_problem() -> (Array2<f64>, Array2<f64>) {
        let mut rng = Rng::new(5);
        let mut x = Array2::from_shape_simple_fn((200, 3), || rng.uniform(-1.0, 1.0));
        // Centred exactly, so the best intercept is mean(y) whatever the weights are.
        x -= &x.mean_axis(ndarray::Axis(0)).unwrap();
        let y = Array2::from_shape_fn((200, 1), |(r, _)| {
            2.0 * x[[r, 0]] - 3.0 * x[[r, 1]]
                + 0.5 * x[[r, 2]]
                + 1.0
                + 0.05 * rng.uniform(-1.0, 1.0)
        });
        (x, y)
    }

    /// Full-batch training; returns the network and the mean loss before and after.
    fn train(config: &TrainConfig, steps: usize) -> (Network, f64, f64) {
        let (x, y) = regression_problem();
        let mut rng = Rng::new(1);
        let mut net = Network::new(3, &[], HiddenActivation::Relu, 1, Head::Identity, &mut rng);
        let mut opt = Optimizer::new(config, &net);
        let rows = x.nrows() as f64;
        let before = net.loss_sum(x.view(), y.view()) / rows;
        for _ in 0..steps {
            let mut grads = net.gradient(x.view(), y.view(), 0.0, &mut rng);
            grads.scale(1.0 / rows);
            opt.step(&mut net, &grads);
        }
        let after = net.loss_sum(x.view(), y.view()) / rows;
        (net, before, after)
    }

    #[test]
    fn every_optimizer_decreases_the_loss() {
        for (optimizer, learning_rate) in [
            (OptimizerKind::Sgd, 0.05),
            (OptimizerKind::Adam, 0.05),
            (OptimizerKind::Adagrad, 0.5),
        ] {
            let config = TrainConfig {
                optimizer,
                learning_rate,
                ..TrainConfig::default()
            };
            let (_, before, after) = train(&config, 300);
            // The noise floor is 0.05^2 / 3 ≈ 0.0008; the starting loss is about 5.
            assert!(after < 0.01 * before, "{optimizer}: {before} -> {after}");
        }
    }

    #[test]
    fn penalties_shrink_the_weights_but_not_the_bias() {
        let plain = TrainConfig {
            learning_rate: 0.05,
            ..TrainConfig::default()
        };
        let norm = |net: &Network| net.layers[0].weights.iter().map(|w| w.abs()).sum::<f64>();
        let (unpenalised, _, _) = train(&plain, 500);
        for (l1, l2) in [(0.5, 0.0), (0.0, 1.0)] {
            let config = TrainConfig {
                l1,
                l2,
                ..plain.clone()
            };
            let (penalised, _, _) = train(&config, 500);
            assert!(
                norm(&penalised) < 0.8 * norm(&unpenalised),
                "l1 {l1} l2 {l2}: |w| {} vs {}",
                norm(&penalised),
                norm(&unpenalised)
            );
            // The intercept is not penalised: with centred inputs it stays at mean(y).
            let (_, y) = regression_problem();
            let mean = y.mean().unwrap();
            let bias = penalised.layers[0].bias[0];
            assert!(
                (bias - mean).abs() < 0.01,
                "l1 {l1} l2 {l2}: bias {bias} vs {mean}"
            );
            assert!(penalty(&penalised, l1, l2) > 0.0);
        }
    }
}
