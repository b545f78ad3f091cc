//! The one settings loader, for every subcommand: built-in defaults, then a TOML file, then
//! `FLOTILLA_*` environment variables, then flags. Each layer is a list of [`Setting`]s that
//! remember where they came from, and each is decoded on its own against the defaults, so an
//! error names the key and the file, variable or flag that set it. The settings types
//! themselves (`WorkerConfig`, `TrainConfig`, ...) live with their subsystems; this module only
//! layers and decodes them.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(String),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {path}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One key set to one value by one source.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The dotted key, e.g. `["nats", "url"]`.
    pub key: Vec<String>,
    pub value: toml::Value,
    pub origin: Origin,
}

impl Setting {
    /// A flag's value for `key` (dotted).
    pub fn flag(flag: &'static str, key: &str, value: impl Into<toml::Value>) -> Setting {
        Setting {
            key: key.split('.').map(str::to_owned).collect(),
            value: value.into(),
            origin: Origin::Flag(flag),
        }
    }
}

/// Why settings could not be loaded. Messages name the key and its source, never a value:
/// a value may be a password.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: line {line}, column {column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("setting `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: Origin,
        message: String,
    },
    #[error("setting `{key}`{}: {message}", origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default())]
    Check {
        key: String,
        origin: Option<Origin>,
        message: String,
    },
}

/// The settings in a TOML file. A syntax error says where, but not the line's text.
pub fn from_file(path: &Path) -> Result<Vec<Setting>, SettingsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: shown.clone(),
        source,
    })?;
    let table = text.parse::<toml::Table>().map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(&text, span.start))
            .unwrap_or((0, 0));
        SettingsError::Syntax {
            path: shown.clone(),
            line,
            column,
            message: e.message().to_owned(),
        }
    })?;
    let mut out = Vec::new();
    flatten(&mut Vec::new(), table, &Origin::File(shown), &mut out);
    Ok(out)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Tables are flattened to their leaves, so each leaf is decoded (and blamed) on its own.
fn flatten(prefix: &mut Vec<String>, table: toml::Table, origin: &Origin, out: &mut Vec<Setting>) {
    for (key, value) in table {
        prefix.push(key);
        match value {
            toml::Value::Table(sub) if !sub.is_empty() => flatten(prefix, sub, origin, out),
            value => out.push(Setting {
                key: prefix.clone(),
                value,
                origin: origin.clone(),
            }),
        }
        prefix.pop();
    }
}

/// The settings in `FLOTILLA_<prefix><KEY>` variables: `FLOTILLA_MAX_BATCH_ROWS` is
/// `max_batch_rows`, and a key that starts with one of `tables` goes into that table
/// (`FLOTILLA_NATS_URL` is `nats.url`). Variables that start with one of `skip` belong to
/// another subcommand. Values are read as TOML values when they parse as one (`32`, `true`,
/// `["a"]`), as strings otherwise.
pub fn from_env(
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
    tables: &[&str],
    skip: &[&str],
) -> Vec<Setting> {
    let mut out = Vec::new();
    for (var, raw) in env {
        let Some(key) = var.strip_prefix(prefix) else {
            continue;
        };
        if skip.iter().any(|s| key.starts_with(s)) {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let path = match tables
            .iter()
            .find_map(|t| key.strip_prefix(&format!("{t}_")).map(|f| (*t, f)))
        {
            Some((table, field)) => vec![table.to_owned(), field.to_owned()],
            None => vec![key],
        };
        out.push(Setting {
            key: path,
            value: env_value(&raw),
            origin: Origin::Env(var),
        });
    }
    out
}

fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) if !t["v"].is_table() => t.remove("v").expect("just parsed"),
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// `T`'s defaults with `layers` applied in order. Each setting is first decoded on its own, so
/// an unknown key or a value of the wrong type is blamed on its source. A value read from the
/// environment that decodes only as text (a token like `123`) is taken as text.
pub fn load<T: Serialize + DeserializeOwned + Default>(
    layers: impl IntoIterator<Item = Setting>,
) -> Result<(T, Vec<Setting>), SettingsError> {
    let defaults = toml::Value::try_from(T::default()).expect("defaults serialise to TOML");
    let mut merged = defaults.clone();
    let mut applied = Vec::new();
    for mut setting in layers {
        let mut alone = defaults.clone();
        insert(&mut alone, &setting.key, setting.value.clone());
        if let Err(e) = T::deserialize(alone.clone()) {
            let as_text = match (&setting.origin, &setting.value) {
                (Origin::Env(_) | Origin::Flag(_), v) if !v.is_str() => {
                    let text = toml::Value::String(raw_text(v));
                    insert(&mut alone, &setting.key, text.clone());
                    T::deserialize(alone).ok().map(|_| text)
                }
                _ => None,
            };
            match as_text {
                Some(text) => setting.value = text,
                None => {
                    return Err(SettingsError::Invalid {
                        key: setting.key.join("."),
                        origin: setting.origin,
                        message: e.message().to_owned(),
                    })
                }
            }
        }
        insert(&mut merged, &setting.key, setting.value.clone());
        applied.push(setting);
    }
    let config = T::deserialize(merged).map_err(|e| SettingsError::Check {
        key: "(combined settings)".into(),
        origin: None,
        message: e.message().to_owned(),
    })?;
    Ok((config, applied))
}

/// A validation failure, blamed on whichever source set that key last.
pub fn check_failed(applied: &[Setting], key: &str, message: String) -> SettingsError {
    let origin = applied
        .iter()
        .rev()
        .find(|s| s.key.join(".") == key)
        .map(|s| s.origin.clone());
    SettingsError::Check {
        key: key.to_owned(),
        origin,
        message,
    }
}

fn raw_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn insert(root: &mut toml::Value, key: &[String], value: toml::Value) {
    let mut node = root;
    for (i, part) in key.iter().enumerate() {
        let table = match node {
            toml::Value::Table(t) => t,
            other => {
                *other = toml::Value::Table(toml::Table::new());
                other.as_table_mut().expect("just made a table")
            }
        };
        if i + 1 == key.len() {
            table.insert(part.clone(), value);
            return;
        }
        node = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_train::TrainConfig;
    use flotilla_worker::WorkerConfig;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn worker(pairs: &[(&str, &str)]) -> Result<WorkerConfig, SettingsError> {
        let (c, _) = load::<WorkerConfig>(from_env(
            env(pairs),
            "FLOTILLA_",
            &["nats", "registry"],
            &["TRAIN_"],
        ))?;
        Ok(c)
    }

    #[test]
    fn the_shipped_configs_document_the_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let (w, _) = load::<WorkerConfig>(from_file(&dir.join("worker.toml")).unwrap()).unwrap();
        assert_eq!(w, WorkerConfig::default());
        let (t, _) = load::<TrainConfig>(from_file(&dir.join("trainer.toml")).unwrap()).unwrap();
        assert_eq!(t, TrainConfig::default());
    }

    #[test]
    fn environment_overrides_and_errors_name_the_key_and_source() {
        let c = worker(&[
            ("FLOTILLA_MAX_BATCH_ROWS", "32"),
            ("FLOTILLA_NATS_URL", "nats://10.0.0.1:4222"),
            ("FLOTILLA_NATS_TOKEN", "123"),
            ("FLOTILLA_TRAIN_EPOCHS", "3"),
            ("UNRELATED", "x"),
        ])
        .unwrap();
        assert_eq!(c.max_batch_rows, 32);
        assert_eq!(c.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(c.nats.token.as_deref(), Some("123"));

        let err = worker(&[("FLOTILLA_MAX_BACH_ROWS", "1")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_bach_rows"), "{text}");
        assert!(text.contains("FLOTILLA_MAX_BACH_ROWS"), "{text}");
        let text = worker(&[("FLOTILLA_MAX_QUEUE_ROWS", "many")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("`max_queue_rows`"), "{text}");
        assert!(text.contains("FLOTILLA_MAX_QUEUE_ROWS"), "{text}");
    }

    #[test]
    fn a_syntax_error_names_the_place_but_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(&file, "[nats]\npassword = \"hunter2\" oops\n").unwrap();
        let text = from_file(&file).unwrap_err().to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn validation_failures_are_blamed_on_their_source() {
        let applied = from_env(
            env(&[("FLOTILLA_MAX_QUEUE_ROWS", "0")]),
            "FLOTILLA_",
            &[],
            &[],
        );
        let text =
            check_failed(&applied, "max_queue_rows", "must be at least 1".into()).to_string();
        assert!(text.contains("FLOTILLA_MAX_QUEUE_ROWS"), "{text}");
    }

    #[test]
    fn trainer_settings_name_the_key_and_where_they_were_set() {
        let cases = [
            (("FLOTILLA_TRAIN_EPOCHS", "many"), "`epochs`"),
            (("FLOTILLA_TRAIN_OPTIMIZER", "rmsprop"), "adam"),
            (("FLOTILLA_TRAIN_HIDDEN", "64,x"), "`hidden`"),
            (("FLOTILLA_TRAIN_EPOHCS", "3"), "FLOTILLA_TRAIN_EPOHCS"),
        ];
        for ((var, value), expected) in cases {
            let err =
                load::<TrainConfig>(from_env(env(&[(var, value)]), "FLOTILLA_TRAIN_", &[], &[]))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(expected), "{var}={value}: {err}");
        }
        let (c, _) = load::<TrainConfig>(from_env(
            env(&[
                ("FLOTILLA_TRAIN_HIDDEN", "16, 4"),
                ("FLOTILLA_TRAIN_EPOCHS", "7"),
            ]),
            "FLOTILLA_TRAIN_",
            &[],
            &[],
        ))
        .unwrap();
        assert_eq!((c.hidden, c.epochs), (vec![16, 4], 7));
    }
}
