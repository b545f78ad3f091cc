//! A model's manifest: which versions exist, which one is current, the canary, and what each
//! version's artifact must hash to. Stored as JSON under the model's name in the registry's
//! key-value bucket and only ever changed by compare-and-swap, so every rule here is plain
//! synchronous code over a value, unit-tested without a server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How many earlier current versions a manifest remembers for `rollback`.
const ROLLBACK_DEPTH: usize = 32;

/// The manifest of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: String,
    /// The version unpinned requests get (unless the canary draws them).
    pub current: Option<u64>,
    /// A version that takes about `weight` of unpinned requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The highest version number ever allocated; the next publish takes `latest + 1`.
    pub latest: u64,
    /// Earlier current versions, most recent last: what `rollback` returns to.
    #[serde(default)]
    pub previous: Vec<u64>,
    /// Every published version.
    pub versions: BTreeMap<u64, VersionInfo>,
}

/// A canary split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub version: u64,
    /// Fraction of unpinned requests, in (0, 1].
    pub weight: f64,
}

/// What the registry knows of one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The kind of model the artifact is (`dense`, `onnx`, `text-embedding`), which says how
    /// to build it. Manifests written before kinds existed have none: their versions are
    /// dense. The registry stores the name and never interprets it: the worker's model crate
    /// does, and refuses a kind it does not know as it would a bad artifact.
    #[serde(default = "dense")]
    pub kind: String,
    /// Name of the artifact's object in the object store bucket.
    pub object: String,
    /// Lower-case hex SHA-256 of the artifact bytes.
    pub sha256: String,
    pub size: u64,
    /// Hex ed25519 signature of [`super::signing::signed_message`], if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Hex public key that made the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Validation metrics, as the trainer (or the artifact's metadata) reported them.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// RFC 3339 creation time.
    pub created: String,
}

/// The kind of a version whose manifest names none.
pub const DEFAULT_KIND: &str = "dense";

fn dense() -> String {
    DEFAULT_KIND.into()
}

/// When a newly published version becomes current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// Only when its validation metric is no worse than the current version's.
    IfBetter,
    Always,
    /// Publish only.
    Never,
}

impl Promote {
    pub const ALL: [Promote; 3] = [Promote::IfBetter, Promote::Always, Promote::Never];

    /// The name used on the command line and in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Promote::IfBetter => "if-better",
            Promote::Always => "always",
            Promote::Never => "never",
        }
    }
}

impl std::str::FromStr for Promote {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Promote::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of if-better, always, never"))
    }
}

/// Why a manifest change was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("model {model:?} has no version {version}; it has {}", list(.versions))]
    UnknownVersion {
        model: String,
        version: u64,
        versions: Vec<u64>,
    },
    #[error("model {model:?} has no earlier current version to roll back to")]
    NothingToRollBackTo { model: String },
    #[error("canary weight must be in (0, 1], got {0}")]
    Weight(f64),
    #[error("version {version} is already current for model {model:?}; a canary must differ")]
    CanaryIsCurrent { model: String, version: u64 },
}

fn list(versions: &[u64]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The metric a promotion gate compares: accuracy for classifiers, R2 for regressors, else
/// the first error metric found (lower is better).
pub fn primary_metric(metrics: &BTreeMap<String, f64>) -> Option<(&'static str, f64, bool)> {
    const ORDER: [(&str, bool); 6] = [
        ("accuracy", true),
        ("r2", true),
        ("log_loss", false),
        ("mse", false),
        ("rmse", false),
        ("mae", false),
    ];
    ORDER
        .iter()
        .find_map(|&(name, higher)| metrics.get(name).map(|&v| (name, v, higher)))
}

impl Manifest {
    pub fn new(model: &str) -> Manifest {
        Manifest {
            model: model.to_owned(),
            current: None,
            canary: None,
            latest: 0,
            previous: Vec::new(),
            versions: BTreeMap::new(),
        }
    }

    /// Checks what every manifest flotilla writes satisfies, for one read from the bucket
    /// under `key`: anyone with write access to the bucket can store anything there.
    ///
    /// - It names the model it is stored under. A worker verifies signatures with the
    ///   manifest's `model`, so a manifest under `iris` naming `wine` would have a worker
    ///   serve a version signed for `wine` to callers of `iris`.
    /// - Every version is at most `latest`, and `latest` has a successor: otherwise the next
    ///   publish overwrites an existing version (or overflows).
    /// - `current`, the canary and `previous` name versions it describes; the canary's weight
    ///   is in (0, 1].
    ///
    /// Found by `scripts/fuzz.sh` (manifest), except the first, found reading the worker.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if self.model != key {
            return Err(format!(
                "it is stored under {key:?} but names model {:?}",
                self.model
            ));
        }
        if self.latest == u64::MAX {
            return Err(format!(
                "latest is {}: no version number is left",
                self.latest
            ));
        }
        if let Some(&highest) = self.versions.keys().next_back() {
            if highest > self.latest {
                return Err(format!(
                    "it describes version {highest} but latest is {}",
                    self.latest
                ));
            }
        }
        let named = self
            .current
            .map(|v| ("current", v))
            .into_iter()
            .chain(self.canary.map(|c| ("canary", c.version)))
            .chain(self.previous.iter().map(|&v| ("previous", v)));
        for (field, version) in named {
            if !self.versions.contains_key(&version) {
                return Err(format!(
                    "{field} names version {version}, which it does not describe"
                ));
            }
        }
        if let Some(c) = self.canary {
            if !(c.weight > 0.0 && c.weight <= 1.0) {
                return Err(format!("canary weight {} is not in (0, 1]", c.weight));
            }
        }
        Ok(())
    }

    fn version_list(&self) -> Vec<u64> {
        self.versions.keys().copied().collect()
    }

    fn check_version(&self, version: u64) -> Result<(), ManifestError> {
        if self.versions.contains_key(&version) {
            Ok(())
        } else {
            Err(ManifestError::UnknownVersion {
                model: self.model.clone(),
                version,
                versions: self.version_list(),
            })
        }
    }

    /// Adds a version as `latest + 1` and decides, by `promote`, whether it becomes current.
    /// Returns the version and why it was (not) promoted.
    pub fn add_version(&mut self, info: VersionInfo, promote: Promote) -> (u64, bool, String) {
        let version = self.latest + 1;
        self.latest = version;
        let gate = self.gate(&info, promote);
        self.versions.insert(version, info);
        let (promoted, why) = gate;
        if promoted {
            self.set_current(version);
        }
        (version, promoted, why)
    }

    fn gate(&self, info: &VersionInfo, promote: Promote) -> (bool, String) {
        let current = self
            .current
            .and_then(|c| self.versions.get(&c).map(|i| (c, i)));
        match (promote, current) {
            (Promote::Never, _) => (false, "published only (--promote never)".into()),
            (Promote::Always, _) => (true, "promoted (--promote always)".into()),
            (Promote::IfBetter, None) => {
                (true, "promoted: the model had no current version".into())
            }
            (Promote::IfBetter, Some((c, cur))) => {
                let new = primary_metric(&info.metrics);
                let old = new.and_then(|(name, _, _)| cur.metrics.get(name).copied());
                match (new, old) {
                    (Some((name, new, higher)), Some(old)) => {
                        let no_worse = if higher { new >= old } else { new <= old };
                        if no_worse {
                            (true, format!("promoted: {name} {new:.4} is no worse than version {c}'s {old:.4}"))
                        } else {
                            (false, format!("not promoted: {name} {new:.4} is worse than version {c}'s {old:.4}; version {c} stays current"))
                        }
                    }
                    _ => (false, format!(
                        "not promoted: no validation metric to compare with version {c}'s; use --promote always to force"
                    )),
                }
            }
        }
    }

    fn set_current(&mut self, version: u64) {
        if let Some(old) = self.current {
            if old != version {
                self.previous.push(old);
                let excess = self.previous.len().saturating_sub(ROLLBACK_DEPTH);
                self.previous.drain(..excess);
            }
        }
        self.current = Some(version);
        if self.canary.is_some_and(|c| c.version == version) {
            self.canary = None;
        }
    }

    /// Makes `version` current.
    pub fn promote(&mut self, version: u64) -> Result<(), ManifestError> {
        self.check_version(version)?;
        self.set_current(version);
        Ok(())
    }

    /// Makes `to`, or the previous current version, current again. Returns the new current.
    pub fn rollback(&mut self, to: Option<u64>) -> Result<u64, ManifestError> {
        let target = match to {
            Some(v) => {
                self.check_version(v)?;
                v
            }
            None => *self
                .previous
                .iter()
                .rev()
                .find(|&&v| Some(v) != self.current)
                .ok_or_else(|| ManifestError::NothingToRollBackTo {
                    model: self.model.clone(),
                })?,
        };
        // A rollback walks back: it does not push the abandoned version onto the stack.
        if let Some(i) = self.previous.iter().rposition(|&v| v == target) {
            self.previous.truncate(i);
        }
        self.current = Some(target);
        if self.canary.is_some_and(|c| c.version == target) {
            self.canary = None;
        }
        Ok(target)
    }

    pub fn set_canary(&mut self, version: u64, weight: f64) -> Result<(), ManifestError> {
        self.check_version(version)?;
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(ManifestError::Weight(weight));
        }
        if self.current == Some(version) {
            return Err(ManifestError::CanaryIsCurrent {
                model: self.model.clone(),
                version,
            });
        }
        self.canary = Some(Canary { version, weight });
        Ok(())
    }

    pub fn clear_canary(&mut self) {
        self.canary = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(accuracy: f64) -> VersionInfo {
        VersionInfo {
            kind: DEFAULT_KIND.into(),
            object: "o".into(),
            sha256: "00".into(),
            size: 1,
            signature: None,
            signer: None,
            metrics: BTreeMap::from([("accuracy".to_string(), accuracy)]),
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn versions_count_up_and_the_gate_refuses_a_worse_model() {
        let mut m = Manifest::new("iris");
        assert_eq!(m.add_version(info(0.90), Promote::IfBetter).0, 1);
        assert_eq!(m.current, Some(1));
        let (v, promoted, why) = m.add_version(info(0.80), Promote::IfBetter);
        assert_eq!((v, promoted), (2, false));
        assert!(why.contains("worse"), "{why}");
        assert_eq!(m.current, Some(1));
        let (v, promoted, _) = m.add_version(info(0.90), Promote::IfBetter);
        assert_eq!((v, promoted), (3, true), "equal is no worse");
        assert_eq!(m.add_version(info(0.1), Promote::Always).0, 4);
        assert_eq!(m.current, Some(4));
        assert!(!m.add_version(info(1.0), Promote::Never).1);
        assert_eq!(m.latest, 5);
    }

    #[test]
    fn rollback_walks_back_through_earlier_currents() {
        let mut m = Manifest::new("iris");
        for _ in 0..3 {
            m.add_version(info(0.9), Promote::Always);
        }
        assert_eq!(m.rollback(None), Ok(2));
        assert_eq!(m.rollback(None), Ok(1));
        assert!(matches!(
            m.rollback(None),
            Err(ManifestError::NothingToRollBackTo { .. })
        ));
        assert_eq!(m.rollback(Some(3)), Ok(3));
        let err = m.rollback(Some(9)).unwrap_err().to_string();
        assert!(
            err.contains("no version 9") && err.contains("1, 2, 3"),
            "{err}"
        );
    }

    #[test]
    fn canary_rules() {
        let mut m = Manifest::new("iris");
        m.add_version(info(0.9), Promote::Always);
        m.add_version(info(0.9), Promote::Never);
        assert!(
            m.set_canary(1, 0.5).is_err(),
            "the current version is no canary"
        );
        assert!(m.set_canary(2, 0.0).is_err());
        assert!(m.set_canary(2, 1.5).is_err());
        m.set_canary(2, 0.25).unwrap();
        m.promote(2).unwrap();
        assert_eq!(m.canary, None, "promoting the canary ends the split");
    }

    /// Regressions from `scripts/fuzz.sh` (manifest): a manifest whose `latest` is below a
    /// version it describes made the next publish overwrite that version; one with `latest`
    /// at u64::MAX made it overflow. And a manifest naming another model (found reading the
    /// worker) would be verified against that model's signatures.
    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = Manifest::new("iris");
        m.add_version(info(0.9), Promote::Always);
        m.add_version(info(0.9), Promote::Never);
        m.set_canary(2, 0.5).unwrap();
        assert_eq!(m.check("iris"), Ok(()));
        let broken = |change: &dyn Fn(&mut Manifest)| {
            let mut b = m.clone();
            change(&mut b);
            b.check("iris").unwrap_err()
        };
        assert!(broken(&|b| b.model = "wine".into()).contains("\"wine\""));
        assert!(broken(&|b| b.latest = 1).contains("version 2 but latest is 1"));
        assert!(broken(&|b| b.latest = u64::MAX).contains("no version number"));
        assert!(broken(&|b| b.current = Some(7)).contains("current names version 7"));
        assert!(broken(&|b| b.previous = vec![9]).contains("previous names version 9"));
        assert!(broken(&|b| b.canary = Some(Canary {
            version: 8,
            weight: 0.5
        }))
        .contains("canary names version 8"));
        assert!(broken(&|b| b.canary = Some(Canary {
            version: 2,
            weight: 2.0
        }))
        .contains("weight 2"));
    }

    #[test]
    fn manifests_round_trip_as_json() {
        let mut m = Manifest::new("iris");
        m.add_version(info(0.9), Promote::Always);
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
    }

    /// Manifests written before kinds existed still parse, their versions dense; a version
    /// may be of another kind than the one before it.
    #[test]
    fn versions_record_their_kind_and_default_to_dense() {
        let old = r#"{"model": "m", "current": 1, "latest": 1, "versions": {"1":
            {"object": "m/a", "sha256": "00", "size": 3, "created": "2026-01-01T00:00:00Z"}}}"#;
        let mut m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.versions[&1].kind, "dense");
        let onnx = VersionInfo {
            kind: "onnx".into(),
            ..m.versions[&1].clone()
        };
        m.add_version(onnx, Promote::Always);
        let text = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.versions[&2].kind, "onnx");
        assert!(text.contains(r#""kind":"onnx""#), "{text}");
    }
}
