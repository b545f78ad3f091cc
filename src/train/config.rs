//! Training settings: built-in defaults, then a TOML file, then `FLOTILLA_TRAIN_*` environment
//! variables, then command-line flags (applied by the binary), validated with messages that name
//! the key. Every setting is documented with its default in `config/trainer.toml`; a test loads
//! that file and checks it equals the defaults. What to train on and which model kind are not
//! settings but arguments of [`super::fit`].

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::models::{HiddenActivation, Task};
use super::optim::OptimizerKind;
use crate::config::{env_value, read_table, ConfigError};

/// Prefix of the environment variables read by [`TrainConfig::load`].
pub const ENV_PREFIX: &str = "FLOTILLA_TRAIN_";

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
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl TrainConfig {
    /// Defaults, then `file` (if any), then `FLOTILLA_TRAIN_*` variables from `env`, validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TrainConfig, ConfigError> {
        // (key, value, where it was set) in precedence order, so errors can say where.
        let mut settings: Vec<(String, toml::Value, String)> = Vec::new();
        if let Some(path) = file {
            let origin = path.display().to_string();
            let table = read_table(path)?;
            settings.extend(table.into_iter().map(|(k, v)| (k, v, origin.clone())));
        }
        for (var, raw) in env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let value = env_value(&raw);
            settings.push((key.to_ascii_lowercase(), value, var.clone()));
        }

        let defaults = toml::Table::try_from(TrainConfig::default())
            .expect("the default settings serialise to TOML");
        let mut merged = defaults.clone();
        for (key, value, origin) in settings {
            if !defaults.contains_key(&key) {
                let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
                return Err(invalid(
                    &key,
                    format!(
                        "unknown setting (set in {origin}); the settings are: {}",
                        known.join(", ")
                    ),
                ));
            }
            // Decoding each key on its own is what lets a type error name its key.
            let mut one = defaults.clone();
            one.insert(key.clone(), value.clone());
            TrainConfig::deserialize(toml::Value::Table(one))
                .map_err(|e| invalid(&key, format!("{} (set in {origin})", e.message())))?;
            merged.insert(key, value);
        }
        let config = TrainConfig::deserialize(toml::Value::Table(merged))
            .expect("every key was decoded on its own above");
        config.validate()?;
        Ok(config)
    }

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

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/trainer.toml");
        let loaded = TrainConfig::load(Some(&path), []).unwrap();
        assert_eq!(loaded, TrainConfig::default());
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "epochs = 5\noptimizer = \"sgd\"\nhidden = [8]\n").unwrap();
        let c = TrainConfig::load(
            Some(&file),
            env(&[
                ("FLOTILLA_TRAIN_EPOCHS", "7"),
                ("FLOTILLA_TRAIN_HIDDEN", "16, 4"),
                ("FLOTILLA_TRAIN_LEARNING_RATE", "0.5"),
                ("FLOTILLA_MAX_BATCH_ROWS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.epochs, 7);
        assert_eq!(c.optimizer, OptimizerKind::Sgd);
        assert_eq!(c.hidden, [16, 4]);
        assert_eq!(c.learning_rate, 0.5);
    }

    #[test]
    fn errors_name_the_key_and_where_it_was_set() {
        let cases = [
            (("FLOTILLA_TRAIN_EPOCHS", "many"), "`epochs`"),
            (("FLOTILLA_TRAIN_EPOCHS", "0"), "`epochs`"),
            (("FLOTILLA_TRAIN_OPTIMIZER", "rmsprop"), "`optimizer`"),
            (("FLOTILLA_TRAIN_OPTIMIZER", "rmsprop"), "adam"),
            (("FLOTILLA_TRAIN_DROPOUT", "1"), "`dropout`"),
            (
                ("FLOTILLA_TRAIN_VALIDATION_FRACTION", "0"),
                "`validation_fraction`",
            ),
            (("FLOTILLA_TRAIN_LEARNING_RATE", "-1"), "`learning_rate`"),
            (("FLOTILLA_TRAIN_HIDDEN", "64,x"), "`hidden`"),
            (("FLOTILLA_TRAIN_EPOHCS", "3"), "`epohcs`"),
            (("FLOTILLA_TRAIN_EPOHCS", "3"), "FLOTILLA_TRAIN_EPOHCS"),
        ];
        for ((var, value), expected) in cases {
            let err = TrainConfig::load(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{var}={value}: {err}");
        }
    }
}
