//! Moving artifacts in and out of the object store: [`Registry::publish_kind`] stores one
//! version's bytes and adds it to the manifest, [`Registry::load`] downloads and verifies them.
//! Each has a `_with_progress` form that reports the bytes moved so far, so a command line can
//! show a ~90 MB text model going up or coming down; the registry only counts, and never
//! decides how (or whether) progress is shown.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::{manifest, now_rfc3339, signing, Promote, Published, Registry, RegistryError};
use crate::{validate_model_name, VersionInfo};

/// Told how a transfer is going: called with the bytes moved so far and the total, after each
/// chunk (64 KiB down, the object store's 128 KiB chunk up) and once more at the end.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Reports nothing: what the forms without progress pass.
fn quiet(_done: u64, _total: u64) {}

/// The bytes being published, counting what the object store has read. The store reads a
/// chunk only after the previous one was acknowledged, so what was read is (within a chunk)
/// what was stored.
struct Counted<'a> {
    rest: &'a [u8],
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.rest).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.done += read;
            (self.progress)(self.done, self.total);
        }
        polled
    }
}

impl Registry {
    /// Publishes a dense artifact as the model's next version; see [`Registry::publish_kind`].
    pub async fn publish(
        &self,
        model: &str,
        artifact: &[u8],
        metrics: BTreeMap<String, f64>,
        signing_key: Option<&SigningKey>,
        promote: Promote,
    ) -> Result<Published, RegistryError> {
        self.publish_kind(
            model,
            manifest::DEFAULT_KIND,
            artifact,
            metrics,
            signing_key,
            promote,
        )
        .await
    }

    /// Publishes an artifact of `kind` as the model's next version. The caller has checked
    /// that a worker can load it (see `flotilla_model::publishable`): the registry stores
    /// bytes and the kind's name.
    pub async fn publish_kind(
        &self,
        model: &str,
        kind: &str,
        artifact: &[u8],
        metrics: BTreeMap<String, f64>,
        signing_key: Option<&SigningKey>,
        promote: Promote,
    ) -> Result<Published, RegistryError> {
        self.publish_kind_with_progress(
            model,
            kind,
            artifact,
            metrics,
            signing_key,
            promote,
            &quiet,
        )
        .await
    }

    /// [`Registry::publish_kind`], telling `progress` how much of the artifact is stored.
    // `publish_kind`'s parameters plus the callback: the same call with one more argument
    // reads better than a parameter struct only this form would take.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_kind_with_progress(
        &self,
        model: &str,
        kind: &str,
        artifact: &[u8],
        metrics: BTreeMap<String, f64>,
        signing_key: Option<&SigningKey>,
        promote: Promote,
        progress: Progress<'_>,
    ) -> Result<Published, RegistryError> {
        validate_model_name(model).map_err(RegistryError::ModelName)?;
        let publish_error = |message: String| RegistryError::Publish {
            model: model.into(),
            message,
        };
        if artifact.len() as u64 > self.max_artifact_bytes {
            return Err(publish_error(format!(
                "the artifact is {} bytes, over max_artifact_bytes ({}); raise the limit in [registry] if this is intended",
                artifact.len(),
                self.max_artifact_bytes
            )));
        }
        let sha256 = signing::to_hex(&Sha256::digest(artifact));
        let (signature, signer) = match signing_key {
            Some(key) => {
                let (s, k) = signing::sign(key, model, &sha256);
                (Some(s), Some(k))
            }
            None => (None, None),
        };
        // A name unique to this attempt: two publishers racing for a version number never
        // write the same object, and the loser's object is simply never referenced.
        let object = format!("{model}/{}", nuid::next());
        let total = artifact.len() as u64;
        let mut counted = Counted {
            rest: artifact,
            done: 0,
            total,
            progress,
        };
        self.objects
            .put(object.as_str(), &mut counted)
            .await
            .map_err(|e| publish_error(format!("storing the artifact: {e}")))?;
        progress(total, total);
        let info = VersionInfo {
            kind: kind.to_owned(),
            object,
            sha256: sha256.clone(),
            size: total,
            signature,
            signer,
            metrics,
            created: now_rfc3339(),
        };
        let (version, promoted, reason) = self
            .update(model, true, |m| Ok(m.add_version(info.clone(), promote)))
            .await?;
        Ok(Published {
            version,
            promoted,
            reason,
            sha256,
        })
    }

    /// Downloads and verifies one version's artifact: its size against the manifest and
    /// `max_artifact_bytes` before a byte is read, then the bytes through SHA-256 as they
    /// arrive (never more than the manifest declared), then the signature when keys are
    /// trusted. Returns the verified bytes; building a model from them is the caller's job.
    pub async fn load(
        &self,
        model: &str,
        version: u64,
        info: &VersionInfo,
        trusted: &[VerifyingKey],
    ) -> Result<Vec<u8>, RegistryError> {
        self.load_with_progress(model, version, info, trusted, &quiet)
            .await
    }

    /// [`Registry::load`], telling `progress` how much of the declared size has arrived.
    pub async fn load_with_progress(
        &self,
        model: &str,
        version: u64,
        info: &VersionInfo,
        trusted: &[VerifyingKey],
        progress: Progress<'_>,
    ) -> Result<Vec<u8>, RegistryError> {
        let download = |message: String| RegistryError::Download {
            model: model.into(),
            version,
            object: info.object.clone(),
            message,
        };
        if info.size > self.max_artifact_bytes {
            return Err(RegistryError::TooLarge {
                model: model.into(),
                version,
                size: info.size,
                limit: self.max_artifact_bytes,
            });
        }
        // Each step must make progress within `download_stall`, so the time allowed grows
        // with the artifact, chunk by chunk, while a dead node costs seconds, not async-nats'
        // 10 s per request (issue 8: a follower retried a lost node's download every 10 s).
        let stall = self.download_stall;
        let stalled = |what: &str| download(format!("nothing received for {stall:?} while {what}"));
        let mut object = tokio::time::timeout(stall, self.objects.get(&info.object))
            .await
            .map_err(|_| stalled("looking up the object"))?
            .map_err(|e| download(e.to_string()))?;
        let declared = info.size as usize;
        // Grown by what arrives, never reserved from what the manifest claims.
        let mut bytes = Vec::new();
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::time::timeout(stall, object.read(&mut chunk))
                .await
                .map_err(|_| stalled(&format!("reading it after {} bytes", bytes.len())))?
                .map_err(|e| download(e.to_string()))?;
            if n == 0 {
                break;
            }
            if bytes.len() + n > declared {
                return Err(RegistryError::Size {
                    model: model.into(),
                    version,
                    expected: info.size,
                    actual: format!("more than {}", info.size),
                });
            }
            hasher.update(&chunk[..n]);
            bytes.extend_from_slice(&chunk[..n]);
            progress(bytes.len() as u64, info.size);
        }
        if bytes.len() != declared {
            return Err(RegistryError::Size {
                model: model.into(),
                version,
                expected: info.size,
                actual: bytes.len().to_string(),
            });
        }
        let actual = signing::to_hex(&hasher.finalize());
        if actual != info.sha256 {
            return Err(RegistryError::Checksum {
                model: model.into(),
                version,
                expected: info.sha256.clone(),
                actual,
            });
        }
        signing::verify(
            trusted,
            model,
            version,
            &info.sha256,
            info.signature.as_deref(),
        )?;
        Ok(bytes)
    }
}
