//! Names on the wire: model names (checked once, into [`ModelName`]) and the subjects built
//! from them. Every subject flotilla uses is spelled here.

use std::fmt;
use std::str::FromStr;

/// The default first token of every flotilla subject.
pub const DEFAULT_PREFIX: &str = "flotilla";

/// The service name every worker registers under in the NATS services API (ADR-32).
pub const SERVICE_NAME: &str = "flotilla";

/// The services API verbs a worker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceVerb {
    Ping,
    Info,
    Stats,
}

impl ServiceVerb {
    pub const ALL: [ServiceVerb; 3] = [ServiceVerb::Ping, ServiceVerb::Info, ServiceVerb::Stats];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceVerb::Ping => "PING",
            ServiceVerb::Info => "INFO",
            ServiceVerb::Stats => "STATS",
        }
    }
}

/// The subject a model's predictions are requested on.
pub fn predict_subject(prefix: &str, model: &str) -> String {
    format!("{prefix}.predict.{model}")
}

/// A services API subject: `$SRV.<verb>`, `$SRV.<verb>.<service>` or
/// `$SRV.<verb>.<service>.<id>`.
pub fn service_subject(verb: ServiceVerb, service: Option<&str>, id: Option<&str>) -> String {
    let verb = verb.as_str();
    match (service, id) {
        (None, _) => format!("$SRV.{verb}"),
        (Some(s), None) => format!("$SRV.{verb}.{s}"),
        (Some(s), Some(id)) => format!("$SRV.{verb}.{s}.{id}"),
    }
}

/// Checks a model name against the contract: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
pub fn validate_model_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        // Count characters, not bytes, and never echo an absurdly long name whole.
        let shown: String = name.chars().take(70).collect();
        return Err(format!(
            "model name {shown:?} must be 1 to 64 characters long (it has {})",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "model name {name:?} contains {bad:?}; only A-Z a-z 0-9 _ - are allowed"
        ));
    }
    Ok(())
}

/// A model name that has passed [`validate_model_name`]: safe to put in a subject, a
/// key-value key or a metric label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelName(String);

impl ModelName {
    pub fn new(name: impl Into<String>) -> Result<ModelName, String> {
        let name = name.into();
        validate_model_name(&name)?;
        Ok(ModelName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ModelName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelName::new(s)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ModelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ModelName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        assert!(validate_model_name("iris-v_2").is_ok());
        assert!(validate_model_name("").is_err());
        assert!(validate_model_name("a.b").is_err());
        assert!(validate_model_name(&"a".repeat(65)).is_err());
        assert_eq!("iris".parse::<ModelName>().unwrap().as_str(), "iris");
        assert!("a b".parse::<ModelName>().is_err());
    }

    #[test]
    fn subjects() {
        assert_eq!(predict_subject("flotilla", "iris"), "flotilla.predict.iris");
        assert_eq!(service_subject(ServiceVerb::Ping, None, None), "$SRV.PING");
        assert_eq!(
            service_subject(ServiceVerb::Info, Some(SERVICE_NAME), Some("x")),
            "$SRV.INFO.flotilla.x"
        );
    }
}
