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

/// Said when a JetStream API call gets no answer and no refusal was seen: a user without
/// permission for the subject normally gets a refusal at once ([`denied`]), but the server
/// may drop a request without one (a denied reply subject on some servers).
pub(crate) const PERMISSION_HINT: &str =
    "; if this NATS user may not use that JetStream API subject the \
     server may drop the request, so also check its permissions (see docs/operations.md) and \
     this process's log for a permissions violation";

/// The server's refusal to publish a request (a permissions violation), when that is what
/// `e` or anything that caused it is. The vendored async-nats fails such a request at once
/// with [`async_nats::PermissionDenied`] instead of letting it time out.
pub(crate) fn denied<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e async_nats::PermissionDenied> {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(denied) = err.downcast_ref() {
            return Some(denied);
        }
        cause = err.source();
    }
    None
}

/// Why a JetStream API request on `subject` failed: a refusal said as one, anything else as
/// `e` says, with [`PERMISSION_HINT`] when `hint` (no answer came).
pub(crate) fn api_failure(
    subject: &str,
    e: &(dyn std::error::Error + 'static),
    hint: bool,
) -> String {
    match denied(e) {
        Some(d) => format!(
            "permission denied: this NATS user may not publish to {subject} (the server said: {}); \
             see docs/operations.md for what each role needs",
            d.server_error()
        ),
        None if hint => format!("{e}{PERMISSION_HINT}"),
        None => e.to_string(),
    }
}

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
    let subject = format!("$JS.API.STREAM.INFO.{stream_name}");
    let hint = matches!(e.kind(), jetstream::context::GetStreamErrorKind::Request);
    RegistryError::Bucket {
        bucket: bucket.to_owned(),
        message: format!(
            "looking up stream {stream_name} ({subject}): {}",
            api_failure(&subject, &e, hint)
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
