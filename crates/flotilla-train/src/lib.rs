//! Training: fit a `flotilla.model.v1` model to a CSV file, on the CPU, reproducibly.
//!
//! A run goes [`load_csv`] → [`fit`] → [`Trained`]: the rows are split into training and
//! validation by a seeded per-row rule, standardised on the training split, and a linear,
//! logistic, softmax or MLP network is trained by mini-batch gradient descent (SGD with
//! momentum, Adam or Adagrad; L1/L2 penalties; dropout; early stopping) with each batch's
//! gradient computed in parallel on rayon. The result is an [`Artifact`](flotilla_model::Artifact)
//! any worker can serve, with its validation metrics measured by running that artifact.
//! Everything here is synchronous CPU work: callers run it on a blocking thread. Writing or
//! publishing the artifact is the caller's job.
//!
//! # Layout
//! - `config`: [`TrainConfig`] and its validation.
//! - `data`: [`Dataset`] from CSV, class labels, and the [`split`] rule.
//! - `scaler`: standardisation fitted on the training split.
//! - `models`: the network, its heads and losses, and backpropagation.
//! - `optim`: update rules and penalties.
//! - `fit`: the epoch loop, parallel gradients, early stopping, the artifact and its metrics.
//! - `metrics`: regression and classification metrics.
//! - `plot` (feature `plot`): the loss curves as a PNG.
//! - `rng`: SplitMix64, the only source of randomness.

/// Implements `NAMES`, `name`, `Display`, `FromStr` and serde (as the name) for a fieldless
/// enum of choices, so config files, environment variables, flags and artifact metadata all
/// spell a choice the same way and an unknown one is refused with the list of known ones.
macro_rules! choices {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(text: &str) -> Result<$ty, String> {
                match text {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(format!(
                        "unknown {} {text:?}; use one of {}",
                        $what,
                        $ty::NAMES.join(", ")
                    )),
                }
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

mod config;
mod data;
mod fit;
mod metrics;
mod models;
mod optim;
#[cfg(feature = "plot")]
mod plot;
mod rng;
mod scaler;

pub use config::{ConfigError, TrainConfig, ENV_PREFIX};
pub use data::{load_csv, split, Classes, Dataset, Split};
pub use fit::{fit, resolve_task, EpochStats, PrimaryMetric, Trained};
pub use metrics::{accuracy, classification, macro_f1, predicted_class, r2, regression};
pub use models::{HiddenActivation, ModelKind, Task};
pub use optim::OptimizerKind;
#[cfg(feature = "plot")]
pub use plot::write_loss_plot;
pub use rng::splitmix64;

use flotilla_model::ModelError;

/// Why a training run failed. Each message says what failed and where: the file, line and
/// column for data, the setting for configuration.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Csv {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}: the file is empty; expected a header line naming the columns, then one row per example")]
    EmptyFile { path: String },
    #[error("{path}: the header is there but no data rows follow it")]
    NoRows { path: String },
    #[error("{path}: no column named {target:?} to predict; the columns are: {}", columns.join(", "))]
    MissingTarget {
        path: String,
        target: String,
        columns: Vec<String>,
    },
    #[error("{path}: column `{column}` appears twice in the header")]
    DuplicateColumn { path: String, column: String },
    #[error(
        "{path}: the target `{target}` is the only column; there are no features to learn from"
    )]
    NoFeatures { path: String, target: String },
    #[error("{path}: line {line} has {found} fields but the header has {expected}")]
    Ragged {
        path: String,
        line: u64,
        found: usize,
        expected: usize,
    },
    #[error("{path}: line {line}, column `{column}`: {value:?} is not a number (features must be finite numbers; missing values are not supported)")]
    NotANumber {
        path: String,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{path}: line {line}: the target column `{column}` is empty (missing values are not supported)")]
    EmptyTarget {
        path: String,
        line: u64,
        column: String,
    },
    #[error("{path}: line {line}, target column `{column}`: {value:?} is not a number, but {model} predicts numbers; for class labels use --kind logistic, softmax or mlp")]
    TargetNotNumeric {
        path: String,
        line: u64,
        column: String,
        value: String,
        model: &'static str,
    },
    #[error("target `{column}` {message}")]
    Classes { column: String, message: String },
    #[error("feature `{column}` has values too large to standardise (its mean or spread is not a finite number); rescale the column")]
    NotFiniteFeature { column: String },
    #[error("target `{column}` is constant on the training split; there is nothing to learn")]
    ConstantTarget { column: String },
    #[error("the {which} split is empty ({rows} rows with validation_fraction {fraction}); use more rows or another validation_fraction")]
    EmptySplit {
        which: &'static str,
        rows: usize,
        fraction: f64,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("training diverged at epoch {epoch}: the loss became {loss}; lower learning_rate (it is {learning_rate})")]
    Diverged {
        epoch: usize,
        loss: f64,
        learning_rate: f64,
    },
    #[error("the trained model failed validation: {0}")]
    Model(#[from] ModelError),
    #[error("drawing the loss plot {path}: {message}")]
    Plot { path: String, message: String },
}
