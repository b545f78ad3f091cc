//! The closed-loop load generator behind `flotilla bench`.
//!
//! `concurrency` tasks each send a request, wait for its reply, and send the next, for
//! `duration`. With an echo baseline, the same load runs against a bare responder that returns
//! the request body unchanged, so the broker's own ceiling on this machine is measured in the
//! same run; rounds alternate echo and model so drifting background load hits both alike.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use flotilla_proto::client::{Client, ClientError, RequestSpec};
use flotilla_proto::{Encoding, PredictRequest};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub concurrency: usize,
    pub duration: Duration,
    pub rows: usize,
    pub features: usize,
    pub encoding: Encoding,
    /// Send each request as one binary f32 tensor (MessagePack), not as rows of numbers.
    pub binary: bool,
    pub timeout: Duration,
    /// A request body to send as it is, instead of generated rows.
    pub payload: Option<bytes::Bytes>,
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub requests_per_sec: f64,
    /// `requests_per_sec` times the rows per request.
    pub rows_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<24} {:>10.0} req/s {:>10.0} rows/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  ok {}  errors {:?}",
            self.target,
            self.requests_per_sec,
            self.rows_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.ok,
            self.errors
        )
    }
}

/// Deterministic request rows, varied so no cache sees the same numbers twice in a row.
pub fn rows(rows: usize, features: usize, seed: usize) -> Vec<Vec<f64>> {
    (0..rows)
        .map(|r| {
            (0..features)
                .map(|c| (((seed + r) * 31 + c * 17) % 97) as f64 / 97.0 - 0.5)
                .collect()
        })
        .collect()
}

/// Runs the closed loop against `model` and reports. The `concurrency` tasks are spread over
/// `clients` (one NATS connection each), since one connection, one socket and one connection
/// task cap what a single client can push well below what the broker and a worker can take.
pub async fn run_load(clients: &[Client], model: &str, target: &str, spec: &LoadSpec) -> Report {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..spec.concurrency {
        let client = clients[t % clients.len()].clone();
        let (model, spec) = (model.to_owned(), spec.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut i = t;
            let request = RequestSpec {
                encoding: spec.encoding,
                version: None,
                timeout: spec.timeout,
            };
            // A few distinct bodies, encoded up front, so the loop measures the fleet, not us.
            let bodies: Vec<_> = match &spec.payload {
                Some(payload) => vec![payload.clone()],
                None => (0..8)
                    .map(|k| {
                        let rows = rows(spec.rows, spec.features, t * 8 + k);
                        if spec.binary {
                            let values: Vec<f32> =
                                rows.concat().iter().map(|&v| v as f32).collect();
                            PredictRequest::encode_binary_f32(
                                spec.rows,
                                &[spec.features],
                                &values,
                                None,
                            )
                        } else {
                            PredictRequest::encode(spec.encoding, &rows, None)
                        }
                    })
                    .collect(),
            };
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client
                    .request(&model, bodies[i % bodies.len()].clone(), request)
                    .await
                {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(e) => *errors.entry(error_name(&e)).or_default() += 1,
                }
                i += 1;
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.expect("load task panicked");
        latencies.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Report {
        target: target.to_owned(),
        ok: latencies.len() as u64,
        errors,
        seconds,
        requests_per_sec: latencies.len() as f64 / seconds,
        rows_per_sec: (latencies.len() * spec.rows) as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
    }
}

fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Service(s) => s.kind.code().to_string(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::NoResponders { .. } => "no_responders".into(),
        _ => "other".into(),
    }
}

/// A bare responder on `<prefix>.predict.<name>` that answers every request with its own body:
/// the broker round trip and nothing else. Stops when `stop` fires.
pub async fn start_echo(
    nats: async_nats::Client,
    prefix: &str,
    name: &str,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    let mut sub = nats
        .subscribe(flotilla_proto::predict_subject(prefix, name))
        .await?;
    nats.flush().await.ok();
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            if let Some(reply) = message.reply {
                let _ = nats.publish(reply, message.payload).await;
            }
        }
    }))
}

/// Asks the fleet, through the services API, how many features `model` takes: the first
/// worker that reports serving it answers, within 2 s. Every worker answers `$SRV.STATS`, and
/// the first answer may come from one that does not serve `model` (it used to be the only
/// one read, so with workers serving different models discovery failed at random).
pub async fn discover_features(nats: &async_nats::Client, model: &str) -> Option<usize> {
    let mut replies = ask_stats(nats).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return None;
        }
        let inputs = endpoint_stats(&m.payload, model).and_then(|e| e["inputs"].as_u64());
        if let Some(n) = inputs {
            return Some(n as usize);
        }
    }
    None
}

/// Sends one `$SRV.STATS.flotilla` request; its answers, one per worker, arrive on the
/// returned subscription.
async fn ask_stats(nats: &async_nats::Client) -> Option<async_nats::Subscriber> {
    let inbox = nats.new_inbox();
    let replies = nats.subscribe(inbox.clone()).await.ok()?;
    nats.publish_with_reply(stats_subject(), inbox, "".into())
        .await
        .ok()?;
    Some(replies)
}

/// The `data` a worker's stats answer holds for `model`, if it serves it.
fn endpoint_stats(payload: &[u8], model: &str) -> Option<serde_json::Value> {
    let stats: serde_json::Value = serde_json::from_slice(payload).ok()?;
    stats["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == model)
        .map(|e| e["data"].clone())
}

/// The median of some numbers (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A dense MLP artifact of about `target_bytes` as MessagePack (f64 weights take 9 bytes),
/// different for every `seed`: the payload of a swap benchmark.
pub fn sized_mlp(target_bytes: usize, seed: u64) -> flotilla_model::Artifact {
    use flotilla_model::{Artifact, LayerSpec, FORMAT_V1};
    // 64 inputs, two hidden layers of `width`, 10 outputs: (w^2 + 74w) weights and biases of
    // 9 bytes each, so solve w^2 + 74w = target / 9.
    let n = target_bytes as f64 / 9.0;
    let width = (((74.0f64 * 74.0 + 4.0 * n).sqrt() - 74.0) / 2.0).max(8.0) as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut layer = |n_in: usize, n_out: usize, activation: &str| LayerSpec {
        weights: (0..n_in)
            .map(|_| (0..n_out).map(|_| next() / (n_in as f64).sqrt()).collect())
            .collect(),
        bias: (0..n_out).map(|_| next() * 0.1).collect(),
        activation: activation.into(),
    };
    Artifact {
        format: FORMAT_V1.into(),
        inputs: 64,
        outputs: 10,
        scaler: None,
        labels: None,
        layers: vec![
            layer(64, width, "relu"),
            layer(width, width, "relu"),
            layer(width, 10, "softmax"),
        ],
        metadata: Some(
            serde_json::json!({"metrics": {"accuracy": 0.5}, "trained_by": "flotilla bench"}),
        ),
        extra: Default::default(),
    }
}

/// The version each worker reports serving for `model` in `$SRV.STATS.flotilla`, gathered
/// for `window`.
pub async fn fleet_versions(
    nats: &async_nats::Client,
    model: &str,
    window: Duration,
) -> Vec<Option<u64>> {
    let Some(mut replies) = ask_stats(nats).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await {
        out.push(endpoint_stats(&m.payload, model).and_then(|e| e["version"].as_u64()));
    }
    out
}

/// Milliseconds from a manifest change to every one of `workers` reporting the new version,
/// for each of `swaps` publishes of a ~`bytes` model.
pub async fn swap_latencies(
    nats: &async_nats::Client,
    registry: &flotilla_registry::Registry,
    model: &str,
    workers: usize,
    swaps: usize,
    bytes: usize,
) -> Result<Vec<f64>, flotilla_registry::RegistryError> {
    use flotilla_model::ArtifactEncoding;
    use flotilla_registry::Promote;
    let mut latencies = Vec::with_capacity(swaps);
    for i in 0..swaps {
        let artifact = sized_mlp(bytes, 1000 + i as u64).to_bytes(ArtifactEncoding::MsgPack);
        // Upload first; the clock starts at the manifest change that workers react to.
        let published = registry
            .publish(model, &artifact, BTreeMap::new(), None, Promote::Never)
            .await?;
        let version = published.version;
        let start = Instant::now();
        registry
            .update(model, false, |m| m.promote(version))
            .await?;
        loop {
            let seen = fleet_versions(nats, model, Duration::from_millis(3)).await;
            let ready = seen.iter().filter(|v| **v == Some(version)).count();
            if ready >= workers {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                tracing::warn!(version, ready, workers, "swap did not complete in 30 s");
                break;
            }
        }
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// A `features`-input linear regressor whose bias depends on `seed`: cheap to compute and to
/// swap, for measuring what swapping costs the request path.
pub fn linear_artifact(features: usize, seed: u64) -> flotilla_model::Artifact {
    use flotilla_model::{Artifact, LayerSpec, FORMAT_V1};
    Artifact {
        format: FORMAT_V1.into(),
        inputs: features,
        outputs: 1,
        scaler: None,
        labels: None,
        layers: vec![LayerSpec {
            weights: (0..features)
                .map(|i| vec![(i as f64 + 1.0) / 10.0])
                .collect(),
            bias: vec![seed as f64],
            activation: "identity".into(),
        }],
        metadata: Some(serde_json::json!({"metrics": {"r2": 0.5}, "trained_by": "flotilla bench"})),
        extra: Default::default(),
    }
}

/// `$SRV.STATS.flotilla`: every worker's per-model stats.
fn stats_subject() -> String {
    use flotilla_proto::name::{service_subject, ServiceVerb, SERVICE_NAME};
    service_subject(ServiceVerb::Stats, Some(SERVICE_NAME), None)
}
