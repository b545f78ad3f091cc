//! What a worker serves for one model right now: the versions it holds, which one is current,
//! and the canary split. A [`Live`] is immutable and swapped whole through an `ArcSwap`, so a
//! request path reading it takes no lock and a batch formed on the old value finishes on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntGauge};

use async_nats::HeaderBlock;
use flotilla_model::Model;
use flotilla_proto::{reply_headers, Encoding, ErrorKind, ServiceError};

use crate::discovery::EndpointStats;
use crate::metrics::Metrics;

/// A model version ready to serve.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub name: String,
    pub version: u64,
    pub model: Arc<Model>,
}

/// The codes a reply can carry, in a fixed order so counters can be resolved once.
const CODES: [u16; 7] = [200, 400, 409, 413, 500, 503, 504];

/// One loaded version with its metric handles and its replies' headers, resolved once so the
/// request path takes no registry lock and builds no headers.
pub struct Version {
    pub served: ServedModel,
    replies: [IntCounter; CODES.len()],
    /// The headers of this version's successful replies (naming this worker), serialized
    /// once per encoding: they are the same for every reply, and building them per reply was
    /// 8% of a worker's CPU on 1-row requests (BENCHMARKS.md, issue 9).
    headers: [HeaderBlock; 2],
}

impl Version {
    pub fn new(served: ServedModel, metrics: &Metrics, worker: &str) -> Version {
        let version = served.version.to_string();
        let replies = CODES.map(|code| {
            metrics
                .requests
                .with_label_values(&[&served.name, &version, &code.to_string()])
        });
        let headers = [Encoding::Json, Encoding::MsgPack]
            .map(|e| HeaderBlock::new(&reply_headers(e, served.version, worker)));
        Version {
            served,
            replies,
            headers,
        }
    }

    /// The headers of a successful reply in `encoding`.
    pub fn reply_headers(&self, encoding: Encoding) -> HeaderBlock {
        self.headers[match encoding {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
        }]
        .clone()
    }

    pub fn number(&self) -> u64 {
        self.served.version
    }

    pub fn count(&self, code: u16) {
        let i = CODES.iter().position(|&c| c == code).unwrap_or(4);
        self.replies[i].inc();
    }
}

/// Which version a request asked for, decided when it was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whatever is current when its batch forms.
    Current,
    /// Drawn for the canary (falls back to current if the canary ended meanwhile).
    Canary,
    /// `Flotilla-Version`: exactly this one.
    Pinned(u64),
}

/// The versions served for one model.
pub struct Live {
    pub current: Arc<Version>,
    pub canary: Option<(Arc<Version>, f64)>,
    /// Every version held, by number: current, canary, and earlier ones kept for pinned
    /// requests and rollbacks.
    pub held: BTreeMap<u64, Arc<Version>>,
}

impl Live {
    /// A model serving one version.
    pub fn single(version: Arc<Version>) -> Live {
        Live {
            held: BTreeMap::from([(version.number(), version.clone())]),
            current: version,
            canary: None,
        }
    }

    /// Picks the target of an unpinned request from a uniform draw in [0, 1).
    pub fn draw(&self, pinned: Option<u64>, draw: f64) -> Target {
        match (pinned, &self.canary) {
            (Some(v), _) => Target::Pinned(v),
            (None, Some((_, weight))) if draw < *weight => Target::Canary,
            _ => Target::Current,
        }
    }

    /// The most rows a batch may have to be computed where it forms
    /// ([`flotilla_model::Model::inline_rows`]), whichever held version it goes to.
    pub fn inline_rows(&self) -> usize {
        // `held` includes the current version and the canary.
        self.held
            .values()
            .map(|v| v.served.model.inline_rows())
            .min()
            .unwrap_or(0)
    }

    /// The version that serves `target`, or the 409 to answer.
    pub fn resolve(&self, target: Target, model: &str) -> Result<&Arc<Version>, ServiceError> {
        match target {
            Target::Current => Ok(&self.current),
            Target::Canary => Ok(self.canary.as_ref().map_or(&self.current, |(v, _)| v)),
            Target::Pinned(v) => self.held.get(&v).ok_or_else(|| {
                let held: Vec<String> = self.held.keys().map(u64::to_string).collect();
                ServiceError::new(
                    ErrorKind::VersionUnavailable,
                    format!(
                        "model {model:?} version {v} is not held by this worker; it holds {} (current {})",
                        held.join(", "),
                        self.current.number()
                    ),
                )
            }),
        }
    }
}

/// Everything the tasks of one model share.
pub struct Slot {
    pub name: String,
    pub live: arc_swap::ArcSwap<Live>,
    pub stats: Arc<EndpointStats>,
    pub request_duration: Histogram,
    pub queue_duration: Histogram,
    pub compute_duration: Histogram,
    pub batch_rows: Histogram,
    pub queue_rows: IntGauge,
    pub model_version: IntGauge,
}

impl Slot {
    pub fn new(name: &str, live: Live, metrics: &Metrics) -> Slot {
        let h = |v: &prometheus::HistogramVec| v.with_label_values(&[name]);
        let slot = Slot {
            request_duration: h(&metrics.request_duration),
            queue_duration: h(&metrics.queue_duration),
            compute_duration: h(&metrics.compute_duration),
            batch_rows: h(&metrics.batch_rows),
            queue_rows: metrics.queue_rows.with_label_values(&[name]),
            model_version: metrics.model_version.with_label_values(&[name]),
            stats: Arc::default(),
            live: arc_swap::ArcSwap::from_pointee(live),
            name: name.to_owned(),
        };
        slot.model_version
            .set(slot.live.load().current.number() as i64);
        slot
    }

    /// Serves `live` from now on; batches already formed finish on what they took.
    pub fn swap(&self, live: Live) {
        self.model_version.set(live.current.number() as i64);
        self.live.store(Arc::new(live));
    }
}

/// A small, fast, non-cryptographic generator for canary draws (xorshift64*), one per
/// read loop so draws take no lock.
pub struct Draws(u64);

impl Draws {
    pub fn new() -> Draws {
        let seed = nuid::next();
        let bytes = seed.as_bytes();
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for &b in bytes {
            s = (s ^ b as u64).wrapping_mul(0x100_0000_01B3);
        }
        Draws(s | 1)
    }

    /// Uniform in [0, 1).
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Version `number` of model "m" on worker "w": a dense model summing its `inputs` features.
#[cfg(test)]
pub(crate) fn test_version(number: u64, inputs: usize) -> Arc<Version> {
    let artifact = serde_json::json!({
        "format": "flotilla.model.v1", "inputs": inputs, "outputs": 1,
        "layers": [{"weights": vec![vec![1.0]; inputs], "bias": [0.0], "activation": "identity"}]
    });
    let model = Model::from_bytes(artifact.to_string().as_bytes()).unwrap();
    Arc::new(Version::new(
        ServedModel {
            name: "m".into(),
            version: number,
            model: Arc::new(model),
        },
        &Metrics::new(),
        "w",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u64) -> Arc<Version> {
        test_version(n, 1)
    }

    #[test]
    fn targets_resolve_and_pins_name_what_is_held() {
        let mut live = Live::single(version(3));
        live.held.insert(2, version(2));
        live.canary = Some((version(4), 0.25));
        assert_eq!(live.draw(None, 0.1), Target::Canary);
        assert_eq!(live.draw(None, 0.3), Target::Current);
        assert_eq!(live.draw(Some(2), 0.1), Target::Pinned(2));
        assert_eq!(live.resolve(Target::Canary, "m").unwrap().number(), 4);
        assert_eq!(live.resolve(Target::Pinned(2), "m").unwrap().number(), 2);
        let err = live.resolve(Target::Pinned(1), "m").err().unwrap();
        assert_eq!(err.kind, ErrorKind::VersionUnavailable);
        assert!(err.message.contains("holds 2, 3"), "{}", err.message);
        live.canary = None;
        assert_eq!(live.resolve(Target::Canary, "m").unwrap().number(), 3);
    }

    #[test]
    fn draws_are_uniform_enough() {
        let mut d = Draws::new();
        let n = 100_000;
        let below = (0..n).filter(|_| d.next() < 0.2).count() as f64 / n as f64;
        assert!((below - 0.2).abs() < 0.01, "{below}");
    }
}
