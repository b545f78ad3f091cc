//! What the fleet serves, as the fleet itself says: the gateway asks `$SRV.INFO.flotilla` and
//! `$SRV.STATS.flotilla` (ADR-32) together, gathers the workers' answers for a short window,
//! and keeps the result for `discovery_cache_ms`. Model metadata, model readiness and the
//! 404-or-503 choice for an unserved model all come from this view; the predict path never
//! waits for it.
//!
//! [`Fleet`] is a handle: readers load the current [`View`] from an `ArcSwap`, and one task
//! owns refreshing it, so concurrent callers of a stale view share one discovery query.
//! A model is *known* while some worker serves it, and for `forget_models_after_secs` after a
//! worker last did (or after it last answered a prediction through this gateway).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use flotilla_proto::name::{service_subject, ServiceVerb, SERVICE_NAME};
use flotilla_proto::{predict_subject, ModelName};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// One model as the workers that serve it describe it. Shapes use -1 for the batch dimension.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    /// Workers serving it now.
    pub workers: usize,
    /// Every version some worker holds.
    pub versions: BTreeSet<u64>,
    /// The newest version some worker serves by default.
    pub current: Option<u64>,
    /// `dense`, `onnx`, `text-embedding`, when the workers say.
    pub kind: Option<String>,
    pub input_shape: Option<Vec<i64>>,
    pub output_shape: Option<Vec<i64>>,
    /// The element type of inputs (`f32`, `f64`, `string`), when the workers say.
    pub dtype: Option<String>,
    /// Whether replies carry `labels`, when the workers say.
    pub classifier: Option<bool>,
}

/// Where a model stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    /// Some worker serves it now.
    Served(ModelInfo),
    /// Seen recently, but no worker serves it now.
    Known,
    Unknown,
}

/// The fleet at one moment.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// When discovery was last asked; `None` before the first time.
    pub taken: Option<Instant>,
    pub served: BTreeMap<String, ModelInfo>,
    /// Every model seen, with when it was last seen.
    pub known: BTreeMap<String, Instant>,
}

enum Command {
    Refresh(oneshot::Sender<Arc<View>>),
    Seen(String),
}

/// How discovery is asked and remembered.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub prefix: String,
    pub window: Duration,
    pub cache: Duration,
    pub forget_after: Duration,
}

/// A cheap-to-clone handle on the fleet's view.
#[derive(Clone)]
pub struct Fleet {
    view: Arc<ArcSwap<View>>,
    commands: mpsc::Sender<Command>,
    cache: Duration,
}

impl Fleet {
    /// Starts the task that refreshes the view; it ends with `shutdown`.
    pub fn start(
        nats: async_nats::Client,
        settings: FleetSettings,
        shutdown: CancellationToken,
    ) -> Fleet {
        let view = Arc::new(ArcSwap::from_pointee(View::default()));
        let (commands, rx) = mpsc::channel(256);
        let cache = settings.cache;
        tokio::spawn(refresher(nats, settings, view.clone(), rx, shutdown));
        Fleet {
            view,
            commands,
            cache,
        }
    }

    /// The view, refreshed first when older than the cache time.
    pub async fn view(&self) -> Arc<View> {
        let current = self.view.load_full();
        if current.taken.is_some_and(|t| t.elapsed() < self.cache) {
            return current;
        }
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Refresh(tx)).await.is_err() {
            return current;
        }
        rx.await.unwrap_or(current)
    }

    pub async fn presence(&self, model: &str) -> Presence {
        let view = self.view().await;
        if let Some(info) = view.served.get(model) {
            Presence::Served(info.clone())
        } else if view.known.contains_key(model) {
            Presence::Known
        } else {
            Presence::Unknown
        }
    }

    /// Notes that `model` just answered. Costs one atomic load unless the model is new.
    pub fn seen(&self, model: &ModelName) {
        if !self.view.load().known.contains_key(model.as_str()) {
            let _ = self.commands.try_send(Command::Seen(model.to_string()));
        }
    }
}

async fn refresher(
    nats: async_nats::Client,
    settings: FleetSettings,
    view: Arc<ArcSwap<View>>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            command = commands.recv() => match command {
                Some(c) => c,
                None => return,
            },
        };
        let mut waiters = Vec::new();
        let mut pending = Some(first);
        while let Some(command) = pending.take().or_else(|| commands.try_recv().ok()) {
            match command {
                Command::Refresh(tx) => waiters.push(tx),
                Command::Seen(model) => {
                    let mut next = View::clone(&view.load());
                    next.known.insert(model, Instant::now());
                    view.store(Arc::new(next));
                }
            }
        }
        if waiters.is_empty() {
            continue;
        }
        let fresh = view
            .load()
            .taken
            .is_some_and(|t| t.elapsed() < settings.cache);
        if !fresh {
            let answers = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                answers = ask(&nats, settings.window) => answers,
            };
            let mut next = View::clone(&view.load());
            next.taken = Some(Instant::now());
            next.served = merge(&settings.prefix, &answers.0, &answers.1);
            let now = Instant::now();
            for name in next.served.keys() {
                next.known.insert(name.clone(), now);
            }
            next.known
                .retain(|_, seen| now.duration_since(*seen) < settings.forget_after);
            view.store(Arc::new(next));
        }
        let current = view.load_full();
        for tx in waiters {
            let _ = tx.send(current.clone());
        }
    }
}

/// INFO and STATS answers, gathered together for one window.
async fn ask(nats: &async_nats::Client, window: Duration) -> (Vec<Value>, Vec<Value>) {
    let info = service_subject(ServiceVerb::Info, Some(SERVICE_NAME), None);
    let stats = service_subject(ServiceVerb::Stats, Some(SERVICE_NAME), None);
    tokio::join!(gather(nats, info, window), gather(nats, stats, window))
}

async fn gather(nats: &async_nats::Client, subject: String, window: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + window;
    // The inbox honours the connection's inbox prefix, like every request the gateway sends.
    let inbox = nats.new_inbox();
    let mut replies = match nats.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "discovery: subscribing for answers failed");
            return Vec::new();
        }
    };
    if let Err(e) = nats.publish_with_reply(subject, inbox, "".into()).await {
        tracing::warn!(error = %e, "discovery: asking the fleet failed");
        return Vec::new();
    }
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await {
        match serde_json::from_slice(&m.payload) {
            Ok(v) => out.push(v),
            Err(e) => tracing::debug!(error = %e, "discovery: ignoring an undecodable answer"),
        }
    }
    let _ = replies.unsubscribe().await;
    out
}

/// One model per endpoint name, over every worker; only endpoints on this deployment's
/// subject prefix count (several deployments may share one NATS and one service name).
pub fn merge(prefix: &str, infos: &[Value], stats: &[Value]) -> BTreeMap<String, ModelInfo> {
    let mut workers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut models: BTreeMap<String, ModelInfo> = BTreeMap::new();
    for (answer, field) in infos
        .iter()
        .map(|a| (a, "metadata"))
        .chain(stats.iter().map(|a| (a, "data")))
    {
        let worker = answer["id"].as_str().unwrap_or("").to_owned();
        for endpoint in answer["endpoints"].as_array().into_iter().flatten() {
            let Some(name) = endpoint["name"].as_str() else {
                continue;
            };
            if endpoint["subject"].as_str() != Some(&predict_subject(prefix, name)) {
                continue;
            }
            workers
                .entry(name.to_owned())
                .or_default()
                .insert(worker.clone());
            let info = models.entry(name.to_owned()).or_insert_with(|| ModelInfo {
                name: name.to_owned(),
                ..ModelInfo::default()
            });
            describe(info, &endpoint[field]);
        }
    }
    for (name, info) in &mut models {
        info.workers = workers.get(name).map_or(0, BTreeSet::len);
    }
    models
}

/// Folds one endpoint's metadata (INFO, string values per ADR-32) or data (STATS) into `info`.
fn describe(info: &mut ModelInfo, fields: &Value) {
    let version = number(&fields["version"]);
    if let Some(v) = version {
        info.versions.insert(v);
        info.current = info.current.max(Some(v));
    }
    for v in parsed(&fields["versions"])
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        info.versions.extend(number(v));
    }
    if let Some(kind) = fields["kind"].as_str() {
        info.kind.get_or_insert_with(|| kind.to_owned());
    }
    if info.input_shape.is_none() {
        info.input_shape = shape(&fields["input_shape"]).or_else(|| shape(&fields["inputs"]));
    }
    if info.output_shape.is_none() {
        info.output_shape = shape(&fields["output_shape"]).or_else(|| shape(&fields["outputs"]));
    }
    if let Some(dtype) = fields["dtype"].as_str() {
        info.dtype.get_or_insert_with(|| dtype.to_ascii_lowercase());
    }
    if info.classifier.is_none() {
        info.classifier = match parsed(&fields["classifier"]) {
            Some(Value::Bool(b)) => Some(b),
            _ if !fields["labels"].is_null() => Some(true),
            _ => None,
        };
    }
}

/// A value, or the JSON inside a string value (ADR-32 metadata values are strings).
fn parsed(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(serde_json::from_str(s).unwrap_or_else(|_| v.clone())),
        other => Some(other.clone()),
    }
}

fn number(v: &Value) -> Option<u64> {
    parsed(v).and_then(|v| v.as_u64())
}

/// A shape such as `[-1, 4]`, or a count of values per row (`4`, meaning `[-1, 4]`).
fn shape(v: &Value) -> Option<Vec<i64>> {
    match parsed(v)? {
        Value::Number(n) => n.as_i64().map(|n| vec![-1, n]),
        Value::Array(dims) => dims.iter().map(Value::as_i64).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_info_metadata_and_stats_data_over_workers() {
        let infos = [
            json!({"id": "a", "endpoints": [
                {"name": "iris", "subject": "flotilla.predict.iris", "metadata": {"model": "iris"}},
                {"name": "emb", "subject": "flotilla.predict.emb", "metadata": {
                    "kind": "text-embedding", "version": "3", "inputs": "[-1]",
                    "outputs": "[-1, 384]", "dtype": "string", "classifier": "false"}},
                {"name": "other", "subject": "staging.predict.other", "metadata": {}},
            ]}),
            json!({"id": "b", "endpoints": [
                {"name": "iris", "subject": "flotilla.predict.iris", "metadata": {"model": "iris"}},
            ]}),
        ];
        let stats = [json!({"id": "a", "endpoints": [
            {"name": "iris", "subject": "flotilla.predict.iris",
             "data": {"version": 2, "versions": [2, 1], "inputs": 4, "outputs": 3}},
        ]})];
        let models = merge("flotilla", &infos, &stats);
        assert_eq!(models.keys().collect::<Vec<_>>(), ["emb", "iris"]);
        let iris = &models["iris"];
        assert_eq!(iris.workers, 2);
        assert_eq!(iris.versions, BTreeSet::from([1, 2]));
        assert_eq!(iris.current, Some(2));
        assert_eq!(iris.input_shape, Some(vec![-1, 4]));
        assert_eq!(iris.output_shape, Some(vec![-1, 3]));
        let emb = &models["emb"];
        assert_eq!(emb.kind.as_deref(), Some("text-embedding"));
        assert_eq!(emb.input_shape, Some(vec![-1]));
        assert_eq!(emb.output_shape, Some(vec![-1, 384]));
        assert_eq!((emb.current, emb.classifier), (Some(3), Some(false)));
    }
}
