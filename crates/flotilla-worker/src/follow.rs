//! Registry mode: serve what the registry's manifests say, and follow them as they change.
//!
//! One watch on the manifest bucket feeds a reconciler per model through a `watch` channel,
//! so a burst of manifest changes collapses to the latest one and a slow download for one
//! model never delays another. A reconciler downloads and verifies any version it does not
//! hold, builds and warms it up off the request path, then swaps a new [`Live`] in whole. If
//! anything fails it keeps serving what it has, logs why, counts
//! `flotilla_model_load_failures_total{model,reason}`, and retries with backoff when the cause
//! may pass (a download, the bucket) or waits for the next manifest when it will not (a bad
//! checksum, signature or model).
//!
//! Nothing here may die quietly. A download runs in its own task, so a panic inside the NATS
//! client is a counted failure; a reconciler that panics anyway is restarted by the follower,
//! which counts it, logs it and holds `/readyz` at not-ready until the new one has caught up.
//! A watch that fails (its consumer's node died) is re-created, and every model is
//! resynchronised from its current manifest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use ed25519_dalek::VerifyingKey;
use flotilla_model::{Kind, Model};
use flotilla_registry::{parse_manifest, Manifest, Registry, RegistryError};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::live::{Live, ServedModel, Slot, Version};
use crate::metrics::Metrics;
use crate::panic_text;
use crate::worker::{Selection, ServedModels, WorkerError};

/// The first wait before retrying a transient failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one attempt to watch the manifests again may take. Creating the watch's consumer
/// takes milliseconds on a healthy server; during a JetStream leader election the request is
/// not answered at all, and async-nats would wait its full 10 s before the next attempt could
/// start (docs/reliability.md, cluster). Abandoning it sooner lets the retry after the
/// election succeed within a few seconds of it.
const REWATCH_ATTEMPT: Duration = Duration::from_secs(2);

/// Loads versions for one model.
#[derive(Clone)]
struct Loader {
    registry: Registry,
    trusted: Arc<Vec<VerifyingKey>>,
    metrics: Metrics,
    worker_id: Arc<String>,
}

impl Loader {
    /// Downloads, verifies, builds and warms up one version.
    async fn version(
        &self,
        manifest: &Manifest,
        version: u64,
    ) -> Result<Arc<Version>, RegistryError> {
        let model = manifest.model.clone();
        let info =
            manifest
                .versions
                .get(&version)
                .cloned()
                .ok_or_else(|| RegistryError::BadManifest {
                    model: model.clone(),
                    message: format!("it names version {version} but does not describe it"),
                })?;
        // Its own task: async-nats has panicked inside its object store on a timeout, and
        // that must be a failed download, not a dead follower.
        let (registry, trusted, name) =
            (self.registry.clone(), self.trusted.clone(), model.clone());
        let object = info.object.clone();
        let kind = Kind::parse(&info.kind).ok_or_else(|| RegistryError::Invalid {
            model: model.clone(),
            version,
            message: format!(
                "the manifest says it is a {:?} model, which this worker cannot serve",
                info.kind
            ),
        })?;
        let bytes =
            tokio::spawn(async move { registry.load(&name, version, &info, &trusted).await })
                .await
                .map_err(|e| RegistryError::Download {
                    model: model.clone(),
                    version,
                    object,
                    message: match e.try_into_panic() {
                        Ok(payload) => format!("the download panicked: {}", panic_text(&*payload)),
                        Err(e) => e.to_string(),
                    },
                })??;
        // Decoding, validation and the first forward pass (which touches every weight page
        // and allocator path, so no caller pays for it) are CPU work: off the runtime.
        let built = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let model = Model::from_kind_bytes(kind, &bytes).map_err(|e| e.to_string())?;
                model
                    .warm_up()
                    .map_err(|e| format!("its warm-up pass failed: {e}"))?;
                Ok::<_, String>(model)
            }))
            .unwrap_or_else(|panic| Err(format!("building it panicked: {}", panic_text(&*panic))))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|message| RegistryError::Invalid {
            model: model.clone(),
            version,
            message,
        })?;
        Ok(Arc::new(Version::new(
            ServedModel {
                name: model,
                version,
                model: Arc::new(built),
            },
            &self.metrics,
            &self.worker_id,
        )))
    }

    /// What to serve for `manifest`, reusing versions in `held`; `None` with no current.
    async fn live(
        &self,
        manifest: &Manifest,
        old: Option<&Live>,
        keep: usize,
    ) -> Result<Option<Live>, RegistryError> {
        let Some(current) = manifest.current else {
            return Ok(None);
        };
        let mut held: BTreeMap<u64, Arc<Version>> = old.map(|l| l.held.clone()).unwrap_or_default();
        let wanted = std::iter::once(current).chain(manifest.canary.map(|c| c.version));
        for v in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = held.entry(v) {
                slot.insert(self.version(manifest, v).await?);
            }
        }
        let canary = manifest
            .canary
            .map(|c| (held[&c.version].clone(), c.weight));
        // Keep the current, the canary, then the version being replaced and the newest of
        // the rest, up to `keep` besides the canary.
        let mut order = vec![current];
        if let Some(old) = old {
            order.push(old.current.number());
        }
        order.extend(held.keys().rev().copied());
        let mut kept = BTreeMap::new();
        for v in order {
            if kept.len() >= keep.max(1) {
                break;
            }
            if let Some(version) = held.get(&v) {
                kept.insert(v, version.clone());
            }
        }
        if let Some((c, _)) = &canary {
            kept.insert(c.number(), c.clone());
        }
        Ok(Some(Live {
            current: held[&current].clone(),
            canary,
            held: kept,
        }))
    }

    fn failed(&self, model: &str, err: &RegistryError) {
        self.metrics
            .load_failures
            .with_label_values(&[model, err.reason()])
            .inc();
        tracing::warn!(%model, reason = err.reason(), error = %err, "model load failed; still serving the previous version");
    }
}

/// A model found in the registry after start-up (with `--models '*'`), loaded and ready to add.
type NewModel = (String, Manifest, Live);

/// One model's reconciler, as the follower supervises it.
struct Reconciler {
    manifests: watch::Sender<Manifest>,
    slot: Arc<Slot>,
}

pub(crate) struct Follower {
    loader: Loader,
    selection: Selection,
    keep: usize,
    health: Arc<Health>,
    watch: kv::Watch,
    reconcilers: HashMap<String, Reconciler>,
    /// Which model each running reconciler task serves, to restart the right one.
    task_models: HashMap<Id, String>,
    pending: HashSet<String>,
    reconcile_tasks: JoinSet<()>,
    loads: JoinSet<()>,
    new_models: (mpsc::Sender<NewModel>, mpsc::Receiver<NewModel>),
}

impl Follower {
    /// Loads every selected model's current version and starts serving them.
    pub(crate) async fn start(
        registry: Registry,
        selection: Selection,
        trusted: Arc<Vec<VerifyingKey>>,
        keep: usize,
        health: Arc<Health>,
        fleet: &mut ServedModels,
    ) -> Result<Follower, WorkerError> {
        // Watch first: whatever is published while we load is then not missed.
        let watch = registry.watch().await?;
        let names = match &selection {
            Selection::All => registry.models().await?,
            Selection::Named(names) => names.clone(),
        };
        let loader = Loader {
            registry,
            trusted,
            metrics: fleet.shared.metrics.clone(),
            worker_id: fleet.shared.worker_id.clone(),
        };
        let mut follower = Follower {
            loader,
            selection,
            keep,
            health,
            watch,
            reconcilers: HashMap::new(),
            task_models: HashMap::new(),
            pending: HashSet::new(),
            reconcile_tasks: JoinSet::new(),
            loads: JoinSet::new(),
            new_models: mpsc::channel(16),
        };
        for name in names {
            let (manifest, _) = follower.loader.registry.require(&name).await?;
            let live = follower
                .loader
                .live(&manifest, None, keep)
                .await?
                .ok_or_else(|| WorkerError::NoCurrentVersion {
                    model: name.clone(),
                })?;
            follower.serve(fleet, &name, manifest, live).await?;
        }
        Ok(follower)
    }

    async fn serve(
        &mut self,
        fleet: &mut ServedModels,
        name: &str,
        manifest: Manifest,
        live: Live,
    ) -> Result<(), WorkerError> {
        let slot = fleet.add(name, live).await?;
        let (tx, rx) = watch::channel(manifest);
        self.spawn_reconciler(name, slot.clone(), rx, None);
        self.reconcilers.insert(
            name.to_owned(),
            Reconciler {
                manifests: tx,
                slot,
            },
        );
        Ok(())
    }

    fn spawn_reconciler(
        &mut self,
        name: &str,
        slot: Arc<Slot>,
        rx: watch::Receiver<Manifest>,
        recovering: Option<Arc<Health>>,
    ) {
        let task = self.reconcile_tasks.spawn(reconcile(
            self.loader.clone(),
            slot,
            rx,
            self.keep,
            recovering,
        ));
        self.task_models.insert(task.id(), name.to_owned());
    }

    /// Routes manifest changes until `shutdown` fires.
    pub(crate) async fn run(mut self, fleet: &mut ServedModels, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(ended) = self.reconcile_tasks.join_next_with_id() => self.restart(ended),
                Some((name, manifest, live)) = self.new_models.1.recv() => {
                    self.pending.remove(&name);
                    if let Err(e) = self.serve(fleet, &name, manifest, live).await {
                        tracing::warn!(model = %name, error = %e, "could not start serving a new model");
                    }
                }
                Some(_) = self.loads.join_next() => {}
                entry = self.watch.next() => match entry {
                    Some(Ok(entry)) => self.route(entry),
                    // A watch whose consumer died (its node was lost) reports missed
                    // heartbeats forever, and one that ends delivers nothing more: either
                    // way, watch again and catch up on what was missed.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "manifest watch failed; watching again");
                        self.rewatch(shutdown).await;
                    }
                    None => {
                        tracing::warn!("manifest watch ended; watching again");
                        self.rewatch(shutdown).await;
                    }
                },
            }
        }
        self.reconcile_tasks.abort_all();
        self.loads.abort_all();
    }

    /// A reconciler ended, which only a panic makes it do while the worker runs: count it,
    /// say so, and start a new one on the latest manifest.
    fn restart(&mut self, ended: Result<(Id, ()), tokio::task::JoinError>) {
        let (id, why) = match ended {
            Ok((id, ())) => (id, "it stopped".to_owned()),
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                let id = e.id();
                let why = match e.try_into_panic() {
                    Ok(payload) => format!("it panicked: {}", panic_text(&*payload)),
                    Err(e) => e.to_string(),
                };
                (id, why)
            }
        };
        let Some(name) = self.task_models.remove(&id) else {
            return;
        };
        let Some(reconciler) = self.reconcilers.get(&name) else {
            return;
        };
        tracing::error!(model = %name, %why, "registry follower died; restarting it");
        self.loader
            .metrics
            .follower_restarts
            .with_label_values(&[&name])
            .inc();
        self.health.follower_down();
        let mut rx = reconciler.manifests.subscribe();
        rx.mark_changed();
        let slot = reconciler.slot.clone();
        self.spawn_reconciler(&name, slot, rx, Some(self.health.clone()));
    }

    /// Watches the manifests again, retrying with backoff until it works or shutdown, then
    /// resynchronises every model from its current manifest.
    async fn rewatch(&mut self, shutdown: &CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            let attempt = tokio::time::timeout(REWATCH_ATTEMPT, self.loader.registry.watch());
            let why = match attempt.await {
                Ok(Ok(w)) => {
                    self.watch = w;
                    break;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {REWATCH_ATTEMPT:?}"),
            };
            tracing::warn!(error = %why, retry_in = ?backoff, "re-watching manifests failed");
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let mut names: Vec<String> = self.reconcilers.keys().cloned().collect();
        if self.selection == Selection::All {
            match self.loader.registry.models().await {
                Ok(all) => names.extend(all),
                Err(e) => tracing::warn!(error = %e, "listing models after re-watching failed"),
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            if !self.selection.wants(&name) {
                continue;
            }
            match self.loader.registry.manifest(&name).await {
                Ok(Some((manifest, _))) => self.route_manifest(&name, manifest),
                Ok(None) => {}
                Err(e) => tracing::warn!(model = %name, error = %e, "resynchronising failed"),
            }
        }
        tracing::info!("manifest watch re-created and models resynchronised");
    }

    fn route(&mut self, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put || !self.selection.wants(&entry.key) {
            return;
        }
        match parse_manifest(&entry.key, &entry.value) {
            Ok(manifest) => self.route_manifest(&entry.key, manifest),
            Err(e) => self.loader.failed(&entry.key, &e),
        }
    }

    fn route_manifest(&mut self, name: &str, manifest: Manifest) {
        if let Some(r) = self.reconcilers.get(name) {
            r.manifests.send_replace(manifest);
            return;
        }
        if !self.pending.insert(name.to_owned()) {
            return;
        }
        // A model published after start-up: load it off this loop, then add it.
        let (loader, keep, tx) = (self.loader.clone(), self.keep, self.new_models.0.clone());
        let name = name.to_owned();
        self.loads.spawn(async move {
            match loader.live(&manifest, None, keep).await {
                Ok(Some(live)) => {
                    let _ = tx.send((name, manifest, live)).await;
                }
                Ok(None) => tracing::info!(model = %name, "new model has no current version yet"),
                Err(e) => loader.failed(&name, &e),
            }
        });
    }
}

/// Whether a failure may pass on its own, so the same manifest is worth trying again.
fn transient(err: &RegistryError) -> bool {
    matches!(
        err,
        RegistryError::Download { .. } | RegistryError::Bucket { .. }
    )
}

/// Keeps one model's [`Live`] in step with its manifest, latest change first. `recovering`
/// is the health to mark up again once a restarted reconciler has caught up.
async fn reconcile(
    loader: Loader,
    slot: Arc<Slot>,
    mut manifests: watch::Receiver<Manifest>,
    keep: usize,
    mut recovering: Option<Arc<Health>>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut retry = false;
    loop {
        if !retry && manifests.changed().await.is_err() {
            return;
        }
        if retry {
            // Retry the same manifest after the backoff, unless a newer one comes first.
            tokio::select! {
                changed = manifests.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        let manifest = manifests.borrow_and_update().clone();
        let old = slot.live.load_full();
        let next = match loader.live(&manifest, Some(&old), keep).await {
            Ok(Some(next)) => {
                retry = false;
                backoff = FIRST_BACKOFF;
                next
            }
            Ok(None) => {
                tracing::warn!(model = %slot.name, "manifest has no current version; still serving the previous one");
                retry = false;
                continue;
            }
            Err(e) => {
                loader.failed(&slot.name, &e);
                retry = transient(&e);
                if retry {
                    tracing::info!(model = %slot.name, retry_in = ?backoff, "will retry the download");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
        };
        if let Some(health) = recovering.take() {
            tracing::info!(model = %slot.name, "registry follower restarted and caught up");
            health.follower_up();
        }
        let same = next.current.number() == old.current.number()
            && next.canary.as_ref().map(|(v, w)| (v.number(), *w))
                == old.canary.as_ref().map(|(v, w)| (v.number(), *w))
            && next.held.keys().eq(old.held.keys());
        if same {
            continue;
        }
        tracing::info!(
            model = %slot.name,
            from = old.current.number(),
            to = next.current.number(),
            canary = ?next.canary.as_ref().map(|(v, w)| (v.number(), *w)),
            held = ?next.held.keys().collect::<Vec<_>>(),
            "model swapped"
        );
        loader.metrics.swaps.with_label_values(&[&slot.name]).inc();
        slot.swap(next);
    }
}
