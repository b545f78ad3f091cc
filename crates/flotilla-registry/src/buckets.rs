//! The registry's two buckets as JetStream streams: looking them up, creating them only when
//! they do not exist, and reporting how they are replicated.

use async_nats::jetstream::{self, stream};

use crate::RegistryError;

/// A registry bucket as [`Registry::open_reporting`] found or made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketStatus {
    pub name: String,
    pub replicas: usize,
    /// Whether this call created it.
    pub created: bool,
}

impl BucketStatus {
    pub(crate) async fn existing(name: &str, stream: &mut stream::Stream) -> BucketStatus {
        let replicas = match stream.info().await {
            Ok(info) => info.config.num_replicas,
            Err(_) => stream.cached_info().config.num_replicas,
        };
        BucketStatus {
            name: name.to_owned(),
            replicas: replicas.max(1),
            created: false,
        }
    }
}

/// Said when a JetStream API call gets no answer: a NATS user without permission for the
/// subject gets none (the server drops the request and logs a permissions violation).
pub(crate) const PERMISSION_HINT: &str =
    "; if this NATS user may not use that JetStream API subject the \
     server drops the request, so also check its permissions (see docs/operations.md) and this \
     process's log for a permissions violation";

pub(crate) fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Why a bucket's stream could not be looked up. Anything but "not found" is reported, never
/// answered by trying to create the stream (which a user denied the lookup is denied too).
pub(crate) fn stream_error(
    bucket: &str,
    stream_name: &str,
    e: jetstream::context::GetStreamError,
) -> RegistryError {
    let hint = match e.kind() {
        jetstream::context::GetStreamErrorKind::Request => PERMISSION_HINT,
        _ => "",
    };
    RegistryError::Bucket {
        bucket: bucket.to_owned(),
        message: format!(
            "looking up stream {stream_name} ($JS.API.STREAM.INFO.{stream_name}): {e}{hint}"
        ),
    }
}

/// Gets the bucket's stream, or creates it with `config` when it does not exist.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    bucket: &str,
    config: stream::Config,
) -> Result<BucketStatus, RegistryError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => Ok(BucketStatus::existing(bucket, &mut existing).await),
        Err(e) if stream_not_found(&e) => {
            let replicas = config.num_replicas;
            // Another process may create it first: the caller's get settles that.
            if let Err(e) = js.create_stream(config).await {
                tracing::debug!(error = %e, stream = %name, "creating a registry bucket");
            }
            Ok(BucketStatus {
                name: bucket.to_owned(),
                replicas,
                created: true,
            })
        }
        Err(e) => Err(stream_error(bucket, &name, e)),
    }
}
