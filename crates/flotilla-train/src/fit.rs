//! The training run: from a [`Dataset`] and settings to a validated artifact and its metrics.
//!
//! [`fit`] picks the head from the model kind and the target, splits and standardises the rows,
//! then runs epochs of shuffled mini-batches. Each mini-batch is cut into fixed-size chunks
//! whose gradients are computed in parallel on rayon and summed in chunk order, so a run gives
//! the same weights on any number of threads. After every epoch it measures the training and
//! validation loss, reports them to the caller's progress callback, and stops once the
//! validation loss has not improved for `patience` epochs, keeping the best epoch's weights.
//! Finally it builds the artifact and measures it on the validation split through
//! [`Model::forward`], exactly as it will be served. Everything here is blocking CPU work.

use std::collections::BTreeMap;
use std::ops::Range;

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::config::TrainConfig;
use super::data::{split, Classes, Dataset, Split};
use super::metrics;
use super::models::{Gradients, Head, ModelKind, Network, Task};
use super::optim::Optimizer;
use super::rng::Rng;
use super::scaler::Standardiser;
use super::TrainError;
use crate::config::ConfigError;
use flotilla_model::{Artifact, Label, Model, FORMAT_V1};

/// A mini-batch is cut into chunks of at least this many rows (and at most
/// [`MAX_CHUNKS`] chunks); smaller chunks would cost more in scheduling than they save.
const MIN_CHUNK_ROWS: usize = 16;
const MAX_CHUNKS: usize = 8;
/// Rows per parallel task when measuring a loss over a whole split.
const EVAL_CHUNK_ROWS: usize = 1024;

/// What one epoch achieved, reported to the progress callback and kept in the history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochStats {
    /// From 1.
    pub epoch: usize,
    /// Mean loss over the training split after the epoch (no dropout, no penalty). Regression
    /// losses are mean squared errors in the target's own units.
    pub train_loss: f64,
    /// The same over the validation split; early stopping watches it.
    pub val_loss: f64,
    /// The primary metric (r2 or accuracy) on the validation split.
    pub val_metric: f64,
}

/// The number a promotion gate compares: r2 for regression, accuracy for classifiers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrimaryMetric {
    pub name: &'static str,
    pub value: f64,
    pub higher_is_better: bool,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The model, with `metadata` describing the run (kind, settings, metrics, split).
    pub artifact: Artifact,
    /// Validation metrics of the artifact as served.
    pub metrics: BTreeMap<String, f64>,
    /// One entry per epoch run.
    pub history: Vec<EpochStats>,
    pub primary_metric: PrimaryMetric,
    /// The epoch whose weights were kept (lowest validation loss).
    pub best_epoch: usize,
    /// Which rows trained and which measured the model.
    pub split: Split,
}

/// How the target is fed to the network and measured.
enum Target {
    /// Standardised for training (with the training split's mean and std) so the default
    /// learning rate suits any target scale; the scaling is folded back into the output layer.
    Regression {
        values: Vec<f64>,
        mean: f64,
        std: f64,
    },
    Classes(Classes),
}

impl Target {
    /// Rows x outputs the network is trained towards: standardised values, 0/1, or one-hot.
    fn matrix(&self, rows: &[usize], head: Head) -> Array2<f64> {
        match self {
            Target::Regression { values, mean, std } => {
                Array2::from_shape_fn((rows.len(), 1), |(r, _)| (values[rows[r]] - mean) / std)
            }
            Target::Classes(classes) => match head {
                Head::Softmax => {
                    Array2::from_shape_fn((rows.len(), classes.labels.len()), |(r, c)| {
                        f64::from(u8::from(classes.index[rows[r]] == c))
                    })
                }
                _ => Array2::from_shape_fn((rows.len(), 1), |(r, _)| classes.index[rows[r]] as f64),
            },
        }
    }

    /// Multiplies a loss on the training scale back into the target's units.
    fn loss_scale(&self) -> f64 {
        match self {
            Target::Regression { std, .. } => std * std,
            Target::Classes(_) => 1.0,
        }
    }

    /// The primary metric of `outputs` (on the training scale) against `rows`.
    fn primary(&self, rows: &[usize], targets: ArrayView2<f64>, outputs: ArrayView2<f64>) -> f64 {
        match self {
            Target::Regression { .. } => {
                let truth: Vec<f64> = targets.column(0).to_vec();
                metrics::r2(&truth, outputs.column(0))
            }
            Target::Classes(classes) => {
                let truth: Vec<usize> = rows.iter().map(|&r| classes.index[r]).collect();
                metrics::accuracy(&truth, outputs)
            }
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> TrainError {
    TrainError::Config(ConfigError {
        key: key.into(),
        message: message.into(),
    })
}

/// Trains a `kind` model on `dataset` to predict its target column, calling `progress` after
/// every epoch. Blocking and CPU-bound: run it on a blocking thread, never an async one.
pub fn fit(
    dataset: &Dataset,
    kind: ModelKind,
    config: &TrainConfig,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<Trained, TrainError> {
    config.validate()?;
    let split = split(dataset.rows(), config.validation_fraction, config.seed);
    for (which, rows) in [
        ("training", &split.train),
        ("validation", &split.validation),
    ] {
        if rows.is_empty() {
            return Err(TrainError::EmptySplit {
                which,
                rows: dataset.rows(),
                fraction: config.validation_fraction,
            });
        }
    }
    let (head, target) = choose_head(dataset, kind, config, &split.train)?;

    let x_train_raw = dataset.x.select(Axis(0), &split.train);
    let scaler = Standardiser::fit(x_train_raw.view(), &dataset.features)?;
    let data = Prepared {
        x_train: scaler.transform(x_train_raw.view()),
        y_train: target.matrix(&split.train, head),
        x_val: scaler.transform(dataset.x.select(Axis(0), &split.validation).view()),
        y_val: target.matrix(&split.validation, head),
        validation: &split.validation,
    };
    let hidden: &[usize] = match kind {
        ModelKind::Mlp => &config.hidden,
        _ => &[],
    };
    let mut rng = Rng::new(config.seed);
    let net = Network::new(
        dataset.features.len(),
        hidden,
        config.activation,
        data.y_train.ncols(),
        head,
        &mut rng,
    );
    let (mut net, history, best_epoch) =
        run_epochs(net, &data, &target, config, &mut rng, progress)?;

    // Serve predictions in the target's own units: y = z * std + mean, folded into the head.
    if let Target::Regression { mean, std, .. } = &target {
        let out = net.layers.last_mut().expect("a network has a head");
        out.weights *= *std;
        out.bias.mapv_inplace(|b| b * std + mean);
    }
    let labels = match &target {
        Target::Classes(c) => Some(c.labels.iter().cloned().map(Label::Name).collect()),
        Target::Regression { .. } => None,
    };
    let mut artifact = Artifact {
        format: FORMAT_V1.to_owned(),
        inputs: dataset.features.len(),
        outputs: data.y_train.ncols(),
        scaler: Some(scaler.to_scaler()),
        labels,
        layers: net.layer_specs(),
        metadata: None,
        extra: BTreeMap::new(),
    };
    let (metrics, primary_metric) = measure(&artifact, dataset, &split.validation, &target)?;

    let task = match target {
        Target::Regression { .. } => Task::Regression,
        Target::Classes(_) => Task::Classification,
    };
    artifact.metadata = Some(json!({
        "trained_by": "flotilla train",
        "kind": kind.name(),
        "task": task.name(),
        "optimizer": config.optimizer.name(),
        "epochs_run": history.len(),
        "best_epoch": best_epoch,
        "target": dataset.target,
        "features": dataset.features,
        "metrics": metrics,
        "validation": {
            "fraction": config.validation_fraction,
            "seed": config.seed,
            "rows": split.validation.len(),
            "train_rows": split.train.len(),
        },
        "config": config,
    }));
    Ok(Trained {
        artifact,
        metrics,
        history,
        primary_metric,
        best_epoch,
        split,
    })
}

/// The standardised splits the network trains and is checked on.
struct Prepared<'a> {
    x_train: Array2<f64>,
    y_train: Array2<f64>,
    x_val: Array2<f64>,
    y_val: Array2<f64>,
    /// The validation rows' indices in the dataset, for class truth.
    validation: &'a [usize],
}

/// The epoch loop: shuffled mini-batches, then the epoch's losses, then early stopping.
/// Returns the network of the epoch with the lowest validation loss, the history, and that
/// epoch.
fn run_epochs(
    mut net: Network,
    data: &Prepared,
    target: &Target,
    config: &TrainConfig,
    rng: &mut Rng,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<(Network, Vec<EpochStats>, usize), TrainError> {
    // Dropout applies to hidden layers; a network without any has nothing to drop.
    let dropout = if net.layers.len() > 1 {
        config.dropout
    } else {
        0.0
    };
    let mut optimizer = Optimizer::new(config, &net);
    let mut history = Vec::new();
    let mut best = (f64::INFINITY, 0, net.clone());
    let mut order: Vec<usize> = (0..data.x_train.nrows()).collect();
    for epoch in 1..=config.epochs {
        rng.shuffle(&mut order);
        for batch in order.chunks(config.batch_size) {
            let x = data.x_train.select(Axis(0), batch);
            let y = data.y_train.select(Axis(0), batch);
            let grads = mean_gradient(&net, x.view(), y.view(), dropout, rng);
            optimizer.step(&mut net, &grads);
        }

        let scale = target.loss_scale();
        let train_loss = mean_loss(&net, data.x_train.view(), data.y_train.view()) * scale;
        let val_logits = logits(&net, data.x_val.view());
        let val_loss = net.head.loss_sum(val_logits.view(), data.y_val.view())
            / data.x_val.nrows() as f64
            * scale;
        if !(train_loss.is_finite() && val_loss.is_finite()) {
            return Err(TrainError::Diverged {
                epoch,
                loss: train_loss,
                learning_rate: config.learning_rate,
            });
        }
        let outputs = net.head.output(val_logits);
        let stats = EpochStats {
            epoch,
            train_loss,
            val_loss,
            val_metric: target.primary(data.validation, data.y_val.view(), outputs.view()),
        };
        progress(&stats);
        history.push(stats);
        if val_loss < best.0 {
            best = (val_loss, epoch, net.clone());
        } else if config.patience > 0 && epoch - best.1 >= config.patience {
            break;
        }
    }
    let (_, best_epoch, net) = best;
    Ok((net, history, best_epoch))
}

/// Validates `artifact` as a worker would and measures it on the `validation` rows.
fn measure(
    artifact: &Artifact,
    dataset: &Dataset,
    validation: &[usize],
    target: &Target,
) -> Result<(BTreeMap<String, f64>, PrimaryMetric), TrainError> {
    let model = Model::from_artifact(artifact.clone())?;
    let outputs = model.forward(dataset.x.select(Axis(0), validation).view());
    Ok(match target {
        Target::Regression { values, .. } => {
            let truth: Vec<f64> = validation.iter().map(|&r| values[r]).collect();
            let m = metrics::regression(&truth, outputs.column(0));
            let primary = PrimaryMetric {
                name: "r2",
                value: m["r2"],
                higher_is_better: true,
            };
            (m, primary)
        }
        Target::Classes(classes) => {
            let truth: Vec<usize> = validation.iter().map(|&r| classes.index[r]).collect();
            let m = metrics::classification(&truth, outputs.view());
            let primary = PrimaryMetric {
                name: "accuracy",
                value: m["accuracy"],
                higher_is_better: true,
            };
            (m, primary)
        }
    })
}

/// Whether `kind`, asked for `requested`, regresses or classifies this dataset's target:
/// never [`Task::Auto`]. Also what decides the primary metric (r2 or accuracy) before a run.
pub fn resolve_task(
    dataset: &Dataset,
    kind: ModelKind,
    requested: Task,
) -> Result<Task, TrainError> {
    Ok(match (kind, requested) {
        (ModelKind::Linear, Task::Classification) => return Err(invalid(
            "task",
            "linear regression predicts numbers; for classes use --kind logistic, softmax or mlp",
        )),
        (ModelKind::Logistic | ModelKind::Softmax, Task::Regression) => {
            return Err(invalid(
                "task",
                format!("{kind} regression predicts classes; for numbers use --kind linear or mlp"),
            ))
        }
        (ModelKind::Linear, _) => Task::Regression,
        (ModelKind::Logistic | ModelKind::Softmax, _) => Task::Classification,
        (ModelKind::Mlp, Task::Auto) if dataset.target_is_numeric() => Task::Regression,
        (ModelKind::Mlp, Task::Auto) => Task::Classification,
        (ModelKind::Mlp, task) => task,
    })
}

/// The output head `kind` needs for this target, and the target read accordingly (a
/// regression target with the mean and std of its `train` rows).
fn choose_head(
    dataset: &Dataset,
    kind: ModelKind,
    config: &TrainConfig,
    train: &[usize],
) -> Result<(Head, Target), TrainError> {
    let task = resolve_task(dataset, kind, config.task)?;
    if kind == ModelKind::Mlp && config.hidden.is_empty() {
        return Err(invalid(
            "hidden",
            "an MLP needs at least one hidden layer, e.g. --hidden 64,32",
        ));
    }
    if task == Task::Regression {
        let model = match kind {
            ModelKind::Mlp => "an MLP regressor",
            _ => "linear regression",
        };
        let values = dataset.numeric_target(model)?;
        let n = train.len() as f64;
        let mean = train.iter().map(|&r| values[r]).sum::<f64>() / n;
        let variance = train
            .iter()
            .map(|&r| (values[r] - mean) * (values[r] - mean))
            .sum::<f64>()
            / n;
        let std = variance.sqrt();
        if std <= f64::EPSILON * mean.abs().max(1.0) {
            return Err(TrainError::ConstantTarget {
                column: dataset.target.clone(),
            });
        }
        return Ok((Head::Identity, Target::Regression { values, mean, std }));
    }
    let classes = dataset.classes();
    let found = classes.labels.len();
    let listed = || {
        let shown: Vec<&str> = classes.labels.iter().take(10).map(String::as_str).collect();
        let more = if found > 10 { ", ..." } else { "" };
        format!("{}{more}", shown.join(", "))
    };
    if found < 2 {
        return Err(TrainError::Classes {
            column: dataset.target.clone(),
            message: format!(
                "has a single class ({}); a classifier needs at least two",
                listed()
            ),
        });
    }
    let head = match kind {
        ModelKind::Logistic if found != 2 => {
            return Err(TrainError::Classes {
                column: dataset.target.clone(),
                message: format!(
                    "has {found} classes ({}) but logistic regression is binary; \
                     use --kind softmax (or mlp) for more than two classes",
                    listed()
                ),
            })
        }
        ModelKind::Softmax => Head::Softmax,
        _ if found == 2 => Head::Sigmoid,
        _ => Head::Softmax,
    };
    Ok((head, Target::Classes(classes)))
}

/// Runs `task` over consecutive `chunk`-row ranges of `rows` in parallel; results in order.
fn par_row_chunks<T: Send>(
    rows: usize,
    chunk: usize,
    task: impl Fn(usize, Range<usize>) -> T + Sync,
) -> Vec<T> {
    (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map(|c| task(c, c * chunk..((c + 1) * chunk).min(rows)))
        .collect()
}

/// The mean gradient over a mini-batch, computed in parallel chunks. The chunk size depends
/// only on the batch size and the partial sums are added in chunk order, so the result is the
/// same on any number of threads; each chunk draws its dropout masks from its own seed.
fn mean_gradient(
    net: &Network,
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    dropout: f64,
    rng: &mut Rng,
) -> Gradients {
    let rows = x.nrows();
    let chunk = rows.div_ceil(MAX_CHUNKS).max(MIN_CHUNK_ROWS);
    let seeds: Vec<u64> = (0..rows.div_ceil(chunk)).map(|_| rng.next_u64()).collect();
    let parts = par_row_chunks(rows, chunk, |c, range| {
        net.gradient(
            x.slice(s![range.clone(), ..]),
            y.slice(s![range, ..]),
            dropout,
            &mut Rng::new(seeds[c]),
        )
    });
    let mut parts = parts.into_iter();
    let mut total = parts.next().expect("a mini-batch has at least one row");
    for part in parts {
        total.add(&part);
    }
    total.scale(1.0 / rows as f64);
    total
}

/// The logits of every row, in parallel chunks.
fn logits(net: &Network, x: ArrayView2<f64>) -> Array2<f64> {
    let parts = par_row_chunks(x.nrows(), EVAL_CHUNK_ROWS, |_, range| {
        net.logits(x.slice(s![range, ..]))
    });
    let views: Vec<_> = parts.iter().map(Array2::view).collect();
    ndarray::concatenate(Axis(0), &views).expect("every chunk has the same columns")
}

/// The mean loss over every row, in parallel chunks summed in order.
fn mean_loss(net: &Network, x: ArrayView2<f64>, y: ArrayView2<f64>) -> f64 {
    let parts = par_row_chunks(x.nrows(), EVAL_CHUNK_ROWS, |_, range| {
        net.loss_sum(x.slice(s![range.clone(), ..]), y.slice(s![range, ..]))
    });
    parts.iter().sum::<f64>() / x.nrows() as f64
}

#[cfg(test)]
mod tests;
