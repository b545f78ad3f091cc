//! The `flotilla.model.v1` artifact as it is stored and sent: a plain serde map, in JSON or
//! MessagePack. Turning it into something that can run is [`super::Dense::from_artifact`]'s job.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ModelError;
use crate::Label;

/// The only format this version of flotilla reads and writes.
pub const FORMAT_V1: &str = "flotilla.model.v1";

/// How deeply MessagePack values may nest in an artifact. Its own structure needs five
/// levels (map, layers, layer, weights, row); the rest is room for `metadata`. The `extra`
/// keys make serde buffer the whole map, reserving up to 1 MiB per container from the length
/// it declares, so without a bound a few kilobytes of nested headers reserved a gigabyte
/// (found by `scripts/fuzz.sh`). JSON declares no lengths, and serde_json stops at 128 levels.
pub const MAX_DEPTH: usize = 32;

/// A model artifact exactly as on the wire. Unknown top-level keys are kept in `extra` so a
/// re-encoded artifact loses nothing a newer tool wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub format: String,
    pub inputs: usize,
    pub outputs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<Scaler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<Label>>,
    pub layers: Vec<LayerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Input standardisation: `(x - mean) / std`, per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// One dense layer: `activation(h @ weights + bias)`, `weights` as `inputs x units`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub weights: Vec<Vec<f64>>,
    pub bias: Vec<f64>,
    pub activation: String,
}

/// The body encoding of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactEncoding {
    Json,
    MsgPack,
}

impl Artifact {
    /// Decodes an artifact, JSON when its first non-blank byte is `{`, MessagePack otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ModelError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            None => Err(ModelError::Decode("the artifact is empty".into())),
            Some(b'{') => serde_json::from_slice(bytes)
                .map_err(|e| ModelError::Decode(format!("invalid JSON artifact: {e}"))),
            Some(_) => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(MAX_DEPTH);
                Artifact::deserialize(&mut de)
                    .map_err(|e| ModelError::Decode(format!("invalid MessagePack artifact: {e}")))
            }
        }
    }

    pub fn to_bytes(&self, encoding: ArtifactEncoding) -> Vec<u8> {
        match encoding {
            ArtifactEncoding::Json => {
                serde_json::to_vec_pretty(self).expect("an artifact always encodes")
            }
            ArtifactEncoding::MsgPack => {
                rmp_serde::to_vec_named(self).expect("an artifact always encodes")
            }
        }
    }
}
