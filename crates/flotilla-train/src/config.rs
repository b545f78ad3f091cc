//! Training settings, validated with messages that name the key. The binary layers them
//! (built-in defaults, a TOML file, `FLOTILLA_TRAIN_*` environment variables, flags) with the
//! same loader as every other setting; `config/trainer.toml` documents each with its default.
//! What to train on and which model kind are not settings but arguments of [`super::fit`].

use serde::{Deserialize, Deserializer, Serialize};

use super::models::{HiddenActivation, Task};
use super::optim::OptimizerKind;
/// Prefix of the environment variables that reach the trainer's settings.
pub const ENV_PREFIX: &str = "FLOTILLA_TRAIN_";

/// A setting with a value that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("setting `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Everything about a training run except the data and the model kind. Field docs are repeated
/// in `config/trainer.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Regression or classification; `auto` lets the kind decide, and for an MLP the target
    /// (text labels: classification, numbers: regression).
    pub task: Task,
    /// MLP hidden layer widths, first to last.
    #[serde(deserialize_with = "widths")]
    pub hidden: Vec<usize>,
    /// MLP hidden layer activation.
    pub activation: HiddenActivation,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    /// SGD only: the share of the previous step kept in the next.
    pub momentum: f64,
    /// Rows per gradient step.
    pub batch_size: usize,
    /// Most passes over the training split.
    pub epochs: usize,
    /// Stop after this many epochs without a lower validation loss (0: never stop early). The
    /// weights of the best epoch are kept either way.
    pub patience: usize,
    /// Penalty `l1 * sum(|w|)` on weights (not biases).
    pub l1: f64,
    /// Penalty `l2 / 2 * sum(w^2)` on weights (not biases).
    pub l2: f64,
    /// MLP only: the probability of zeroing a hidden unit during training.
    pub dropout: f64,
    /// The share of rows held out to measure the model, decided row by row from `seed`.
    pub validation_fraction: f64,
    /// Seeds the split, the initial weights, the shuffling and dropout.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            task: Task::Auto,
            hidden: vec![64, 32],
            activation: HiddenActivation::Relu,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.01,
            momentum: 0.9,
            batch_size: 32,
            epochs: 200,
            patience: 20,
            l1: 0.0,
            l2: 0.0,
            dropout: 0.0,
            validation_fraction: 0.2,
            seed: 42,
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(invalid(
                "learning_rate",
                format!("is {}; it must be above 0", self.learning_rate),
            ));
        }
        for (key, value) in [("l1", self.l1), ("l2", self.l2)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(key, format!("is {value}; it must be 0 or more")));
            }
        }
        for (key, value) in [("momentum", self.momentum), ("dropout", self.dropout)] {
            if !(0.0..1.0).contains(&value) {
                return Err(invalid(
                    key,
                    format!("is {value}; it must be at least 0 and below 1"),
                ));
            }
        }
        if !(1e-4..1.0).contains(&self.validation_fraction) {
            return Err(invalid(
                "validation_fraction",
                format!(
                    "is {}; it must be at least 0.0001 and below 1 (training needs a validation split)",
                    self.validation_fraction
                ),
            ));
        }
        for (key, value) in [("batch_size", self.batch_size), ("epochs", self.epochs)] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.hidden.contains(&0) {
            return Err(invalid(
                "hidden",
                "every hidden layer needs at least 1 unit",
            ));
        }
        Ok(())
    }
}

/// Hidden widths as a TOML list (`[64, 32]`) or as text (`"64,32"`, e.g. from the environment).
fn widths<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Widths {
        List(Vec<usize>),
        Text(String),
    }
    match Widths::deserialize(deserializer)? {
        Widths::List(list) => Ok(list),
        Widths::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                w.parse::<usize>().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{w:?} is not a layer width; expected a list like [64, 32] or \"64,32\""
                    ))
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let c = TrainConfig {
            dropout: 1.0,
            ..TrainConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "dropout");
        let c = TrainConfig {
            hidden: vec![4, 0],
            ..TrainConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "hidden");
        assert!(TrainConfig::default().validate().is_ok());
    }
}
