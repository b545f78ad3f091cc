//! Registry mode: serve what the registry's manifests say, and follow them as they change.
//!
//! One watch on the manifest bucket feeds a reconciler per model through a `watch` channel,
//! so a burst of manifest changes collapses to the latest one and a slow download for one
//! model never delays another. A reconciler downloads and verifies any version it does not
//! hold, warms it up off the request path, then swaps a new [`Live`] in whole. If anything
//! fails it keeps serving what it has, logs why and counts
//! `flotilla_model_load_failures_total{model,reason}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use flotilla_registry::{parse_manifest, Manifest, Registry, RegistryError};

use crate::live::{Live, ServedModel, Slot, Version};
use crate::metrics::Metrics;
use crate::worker::{Selection, ServedModels, WorkerError};

/// Loads versions for one model.
#[derive(Clone)]
struct Loader {
    registry: Registry,
    trusted: Arc<Vec<VerifyingKey>>,
    metrics: Metrics,
}

impl Loader {
    /// Downloads, verifies, builds and warms up one version.
    async fn version(
        &self,
        manifest: &Manifest,
        version: u64,
    ) -> Result<Arc<Version>, RegistryError> {
        let model = &manifest.model;
        let info = manifest
            .versions
            .get(&version)
            .ok_or_else(|| RegistryError::BadManifest {
                model: model.clone(),
                message: format!("it names version {version} but does not describe it"),
            })?;
        let model_name = model.clone();
        let built = self
            .registry
            .load(model, version, info, self.trusted.clone())
            .await?;
        // The first forward pass touches every weight page and allocator path: do it here,
        // not on a caller's request.
        let built = tokio::task::spawn_blocking(move || {
            if let Err(e) = built.warm_up() {
                tracing::warn!(%model_name, version, error = %e, "warm-up pass failed");
            }
            built
        })
        .await
        .expect("a warm-up forward pass does not panic");
        Ok(Arc::new(Version::new(
            ServedModel {
                name: model.clone(),
                version,
                model: Arc::new(built),
            },
            &self.metrics,
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

pub(crate) struct Follower {
    loader: Loader,
    selection: Selection,
    keep: usize,
    watch: kv::Watch,
    reconcilers: HashMap<String, watch::Sender<Manifest>>,
    pending: HashSet<String>,
    tasks: JoinSet<()>,
    new_models: (mpsc::Sender<NewModel>, mpsc::Receiver<NewModel>),
}

impl Follower {
    /// Loads every selected model's current version and starts serving them.
    pub(crate) async fn start(
        registry: Registry,
        selection: Selection,
        trusted: Arc<Vec<VerifyingKey>>,
        keep: usize,
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
        };
        let mut follower = Follower {
            loader,
            selection,
            keep,
            watch,
            reconcilers: HashMap::new(),
            pending: HashSet::new(),
            tasks: JoinSet::new(),
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
        self.reconcilers.insert(name.to_owned(), tx);
        self.tasks
            .spawn(reconcile(self.loader.clone(), slot, rx, self.keep));
        Ok(())
    }

    /// Routes manifest changes until `shutdown` fires.
    pub(crate) async fn run(mut self, fleet: &mut ServedModels, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((name, manifest, live)) = self.new_models.1.recv() => {
                    self.pending.remove(&name);
                    if let Err(e) = self.serve(fleet, &name, manifest, live).await {
                        tracing::warn!(model = %name, error = %e, "could not start serving a new model");
                    }
                }
                entry = self.watch.next() => match entry {
                    Some(Ok(entry)) => self.route(entry),
                    Some(Err(e)) => tracing::warn!(error = %e, "manifest watch error"),
                    None => {
                        tracing::warn!("manifest watch ended; watching again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        match self.loader.registry.watch().await {
                            Ok(w) => self.watch = w,
                            Err(e) => tracing::warn!(error = %e, "re-watching manifests failed"),
                        }
                    }
                },
            }
        }
        self.tasks.abort_all();
    }

    fn route(&mut self, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put || !self.selection.wants(&entry.key) {
            return;
        }
        let manifest = match parse_manifest(&entry.key, &entry.value) {
            Ok(m) => m,
            Err(e) => {
                self.loader.failed(&entry.key, &e);
                return;
            }
        };
        if let Some(tx) = self.reconcilers.get(&entry.key) {
            tx.send_replace(manifest);
            return;
        }
        if !self.pending.insert(entry.key.clone()) {
            return;
        }
        // A model published after start-up: load it off this loop, then add it.
        let (loader, keep, tx) = (self.loader.clone(), self.keep, self.new_models.0.clone());
        self.tasks.spawn(async move {
            let name = entry.key;
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

/// Keeps one model's [`Live`] in step with its manifest, latest change first.
async fn reconcile(
    loader: Loader,
    slot: Arc<Slot>,
    mut manifests: watch::Receiver<Manifest>,
    keep: usize,
) {
    while manifests.changed().await.is_ok() {
        let manifest = manifests.borrow_and_update().clone();
        let old = slot.live.load_full();
        let next = match loader.live(&manifest, Some(&old), keep).await {
            Ok(Some(next)) => next,
            Ok(None) => {
                tracing::warn!(model = %slot.name, "manifest has no current version; still serving the previous one");
                continue;
            }
            Err(e) => {
                loader.failed(&slot.name, &e);
                continue;
            }
        };
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
