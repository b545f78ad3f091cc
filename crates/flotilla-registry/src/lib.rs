//! The model registry, kept entirely in NATS JetStream (layout: `docs/registry.md`).
//!
//! Artifacts are immutable objects in an Object Store bucket, one per version. A key-value
//! bucket holds one [`Manifest`] per model, changed only by compare-and-swap so that
//! concurrent publishers never take the same version number and an operator's rollback never
//! silently undoes a publish. Workers watch the key-value bucket and fetch what a manifest
//! points at through [`Registry::load`], which checks the size, SHA-256 and (when keys are
//! trusted) the signature, and hands back bytes. The registry stores and verifies bytes; it
//! never parses a model, so it knows nothing of model formats or forward passes. Uploads and
//! downloads can report their progress (`transfer`), for a command line to show.
//!
//! Works on nats-server 2.9 and newer: the key-value bucket's stream is created directly,
//! since async-nats' `create_key_value` cannot parse 2.9's account info.

mod buckets;
mod config;
mod error;
pub mod manifest;
pub mod signing;
mod transfer;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use futures::StreamExt;

pub use buckets::BucketStatus;
use buckets::{api_failure, ensure_stream, stream_error, stream_not_found};
pub use config::RegistryConfig;
pub use error::RegistryError;
pub use manifest::{primary_metric, Canary, Manifest, ManifestError, Promote, VersionInfo};
pub use transfer::Progress;

use flotilla_proto::validate_model_name;

/// What [`Registry::publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub promoted: bool,
    /// Why it was or was not promoted.
    pub reason: String,
    pub sha256: String,
}

/// One stored revision of a model's manifest: who was current, and when.
#[derive(Debug, Clone)]
pub struct ManifestRevision {
    /// The key-value revision (the stream sequence that compare-and-swap compares).
    pub revision: u64,
    /// When the server stored it, RFC 3339.
    pub created: String,
    pub manifest: Manifest,
}

/// A handle on the registry's two buckets. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    objects: object_store::ObjectStore,
    /// The manifest bucket's configured name, for error messages.
    kv_bucket: Arc<str>,
    /// The largest artifact published or loaded.
    max_artifact_bytes: u64,
    /// How long a download may make no progress: each step (finding the object, each chunk)
    /// must finish within it.
    download_stall: Duration,
}

const CAS_ATTEMPTS: usize = 50;

/// How long a manifest change keeps retrying while the bucket does not answer.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(20);

/// How one compare-and-swap write went.
enum Write {
    Done,
    /// Another writer got there first.
    Lost,
    TimedOut(String),
    Failed(String),
}

impl Registry {
    /// Opens the registry, creating its buckets if they do not exist yet. A bucket that
    /// exists with another replica count than configured is used as it is, with a warning:
    /// on a cluster, create the buckets first with `flotilla models init --replicas N`.
    pub async fn open(
        client: async_nats::Client,
        config: &RegistryConfig,
    ) -> Result<Registry, RegistryError> {
        let (registry, buckets) = Registry::open_reporting(client, config).await?;
        for b in buckets
            .iter()
            .filter(|b| b.replicas != config.replicas.max(1))
        {
            tracing::warn!(
                bucket = %b.name,
                replicas = b.replicas,
                configured = config.replicas,
                "registry bucket has another replica count than configured; on a cluster run \
                 `flotilla models init --replicas N` before anything else touches the registry"
            );
        }
        Ok(registry)
    }

    /// [`Registry::open`], saying for each bucket whether it was created and its replicas.
    pub async fn open_reporting(
        client: async_nats::Client,
        config: &RegistryConfig,
    ) -> Result<(Registry, Vec<BucketStatus>), RegistryError> {
        // A server without JetStream has no responder on the API subjects.
        match client.request("$JS.API.INFO", "".into()).await {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(RegistryError::NoJetStream)
            }
            Err(e) => {
                return Err(RegistryError::Bucket {
                    bucket: config.kv_bucket.clone(),
                    message: format!(
                        "asking the server about JetStream: {}",
                        api_failure("$JS.API.INFO", &e, true)
                    ),
                })
            }
            Ok(_) => {}
        }
        let js = jetstream::new(client);
        let kv_status = ensure_stream(
            &js,
            &config.kv_bucket,
            stream::Config {
                name: format!("KV_{}", config.kv_bucket),
                description: Some("flotilla model manifests".into()),
                subjects: vec![format!("$KV.{}.>", config.kv_bucket)],
                max_messages_per_subject: config.history.max(1),
                num_replicas: config.replicas.max(1),
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            },
        )
        .await?;
        let kv = js
            .get_key_value(&config.kv_bucket)
            .await
            .map_err(|e| RegistryError::Bucket {
                bucket: config.kv_bucket.clone(),
                message: e.to_string(),
            })?;
        let object_stream = format!("OBJ_{}", config.object_bucket);
        let objects_status = match js.get_stream(&object_stream).await {
            Ok(mut existing) => BucketStatus::existing(&config.object_bucket, &mut existing).await,
            Err(e) if stream_not_found(&e) => {
                let created = js
                    .create_object_store(object_store::Config {
                        bucket: config.object_bucket.clone(),
                        description: Some("flotilla model artifacts".into()),
                        num_replicas: config.replicas.max(1),
                        ..Default::default()
                    })
                    .await;
                // Another process may have created it first: getting it below settles that.
                if let Err(e) = created {
                    tracing::debug!(error = %e, "creating the artifact bucket");
                }
                BucketStatus {
                    name: config.object_bucket.clone(),
                    replicas: config.replicas.max(1),
                    created: true,
                }
            }
            Err(e) => return Err(stream_error(&config.object_bucket, &object_stream, e)),
        };
        let objects = js
            .get_object_store(&config.object_bucket)
            .await
            .map_err(|e| RegistryError::Bucket {
                bucket: config.object_bucket.clone(),
                message: e.to_string(),
            })?;
        let registry = Registry {
            kv,
            objects,
            kv_bucket: config.kv_bucket.as_str().into(),
            max_artifact_bytes: config.max_artifact_bytes,
            download_stall: Duration::from_secs(config.download_stall_secs.max(1)),
        };
        Ok((registry, vec![kv_status, objects_status]))
    }

    /// Every model with a manifest, sorted.
    pub async fn models(&self) -> Result<Vec<String>, RegistryError> {
        let mut keys = self.kv.keys().await.map_err(|e| RegistryError::Bucket {
            bucket: self.kv_bucket.to_string(),
            message: e.to_string(),
        })?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            if let Ok(key) = key {
                out.push(key);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The model's manifest and its revision, if it has one.
    pub async fn manifest(&self, model: &str) -> Result<Option<(Manifest, u64)>, RegistryError> {
        validate_model_name(model).map_err(RegistryError::ModelName)?;
        let entry = self
            .kv
            .entry(model)
            .await
            .map_err(|e| RegistryError::Bucket {
                bucket: self.kv_bucket.to_string(),
                message: e.to_string(),
            })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((parse_manifest(model, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// The manifest, or an error listing the models that exist.
    pub async fn require(&self, model: &str) -> Result<(Manifest, u64), RegistryError> {
        match self.manifest(model).await? {
            Some(m) => Ok(m),
            None => Err(RegistryError::UnknownModel {
                model: model.into(),
                models: self.models().await.unwrap_or_default(),
            }),
        }
    }

    /// Applies `change` to the model's manifest by compare-and-swap, retrying on conflict.
    /// `create` allows a model without a manifest (publishing its first version).
    pub async fn update<T>(
        &self,
        model: &str,
        create: bool,
        mut change: impl FnMut(&mut Manifest) -> Result<T, ManifestError>,
    ) -> Result<T, RegistryError> {
        // A JetStream leader election makes the bucket briefly unanswerable: ride it out
        // within a bound, then say so, rather than block or fail with a fragment.
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        while attempt < CAS_ATTEMPTS {
            let unavailable = |message: String| RegistryError::Unavailable {
                bucket: self.kv_bucket.to_string(),
                waited: started.elapsed(),
                message,
            };
            let current = match self.manifest(model).await {
                Ok(current) => current,
                Err(RegistryError::Bucket { message, .. })
                    if started.elapsed() < UNAVAILABLE_FOR =>
                {
                    tracing::info!(%model, error = %message, "registry unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(RegistryError::Bucket { message, .. }) => return Err(unavailable(message)),
                Err(e) => return Err(e),
            };
            let (mut manifest, revision) = match current {
                Some((m, r)) => (m, Some(r)),
                None if create => (Manifest::new(model), None),
                None => {
                    return Err(RegistryError::UnknownModel {
                        model: model.into(),
                        models: self.models().await.unwrap_or_default(),
                    })
                }
            };
            let out = change(&mut manifest)?;
            let value: bytes::Bytes = serde_json::to_vec(&manifest)
                .expect("manifests always encode")
                .into();
            // A lost race (someone wrote a newer revision first) is retried at once; a timeout
            // within the bound; anything else is reported as it is.
            let written = match revision {
                None => match self.kv.create(model, value).await {
                    Ok(_) => Write::Done,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Write::Lost,
                    Err(e) if e.to_string().contains("timed out") => Write::TimedOut(e.to_string()),
                    Err(e) => Write::Failed(e.to_string()),
                },
                Some(r) => match self.kv.update(model, value, r).await {
                    Ok(_) => Write::Done,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Write::Lost,
                    Err(e) if e.kind() == kv::UpdateErrorKind::TimedOut => {
                        Write::TimedOut(e.to_string())
                    }
                    Err(e) => Write::Failed(e.to_string()),
                },
            };
            match written {
                Write::Done => return Ok(out),
                Write::Failed(message) => {
                    return Err(RegistryError::Bucket {
                        bucket: self.kv_bucket.to_string(),
                        message: format!("writing the manifest of {model:?}: {message}"),
                    })
                }
                Write::TimedOut(message) if started.elapsed() >= UNAVAILABLE_FOR => {
                    return Err(unavailable(message))
                }
                Write::TimedOut(message) => {
                    // The write may have landed: the next read shows it (and a lost race
                    // then retries against the new revision as usual).
                    tracing::info!(%model, error = %message, "manifest write timed out; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Write::Lost => {
                    attempt += 1;
                    tracing::debug!(%model, attempt, "manifest changed under us; retrying");
                    let jitter = (nuid::next().as_bytes()[0] % 8) as u64;
                    tokio::time::sleep(Duration::from_millis(1 + jitter)).await;
                }
            }
        }
        Err(RegistryError::Contention {
            model: model.into(),
            attempts: CAS_ATTEMPTS,
        })
    }

    /// The model's manifest revisions the bucket still keeps (up to `history`), oldest first.
    pub async fn history(&self, model: &str) -> Result<Vec<ManifestRevision>, RegistryError> {
        // Also answers an unknown model with the list of known ones, and guarantees the key
        // has entries: a history consumer on an empty subject would wait forever.
        self.require(model).await?;
        let bucket_error = |message: String| RegistryError::Bucket {
            bucket: self.kv_bucket.to_string(),
            message,
        };
        let mut entries = self
            .kv
            .history(model)
            .await
            .map_err(|e| bucket_error(e.to_string()))?;
        let collect = async {
            let mut out = Vec::new();
            // The stream ends after the entry that was newest when it started.
            while let Some(entry) = entries.next().await {
                let entry = entry.map_err(|e| bucket_error(e.to_string()))?;
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                out.push(ManifestRevision {
                    revision: entry.revision,
                    created: entry
                        .created
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_else(|_| entry.created.to_string()),
                    manifest: parse_manifest(model, &entry.value)?,
                });
            }
            Ok(out)
        };
        tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .map_err(|_| bucket_error(format!("reading the history of {model:?} timed out")))?
    }

    /// Watches every manifest change from now on.
    pub async fn watch(&self) -> Result<kv::Watch, RegistryError> {
        self.kv
            .watch_all()
            .await
            .map_err(|e| RegistryError::Bucket {
                bucket: self.kv_bucket.to_string(),
                message: e.to_string(),
            })
    }

    /// The raw object store, for tests that tamper with artifacts.
    pub fn objects(&self) -> &object_store::ObjectStore {
        &self.objects
    }
}

/// Reads the manifest stored under `model` and checks it ([`Manifest::check`]).
pub fn parse_manifest(model: &str, bytes: &[u8]) -> Result<Manifest, RegistryError> {
    let bad = |message: String| RegistryError::BadManifest {
        model: model.into(),
        message,
    };
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    manifest.check(model).map_err(bad)?;
    Ok(manifest)
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats any UTC time")
}
