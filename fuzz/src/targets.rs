//! The four fuzz targets: each feeds bytes to the code that parses them in a worker, a
//! publisher or an operator's CLI, then checks what came back against the contract (a
//! decoded request is well-formed, a published artifact loads, a manifest re-reads the same).
//! A target panics on any violation; the engine catches and reports it.

use flotilla_model::{publishable, Model};
use flotilla_proto::{error_encoding, Encoding, ErrorKind, PredictRequest};
use flotilla_registry::manifest::{primary_metric, Promote, VersionInfo};
use flotilla_registry::parse_manifest;

/// `max_request_rows` as a worker is configured by default.
pub const MAX_ROWS: usize = 1024;

/// The longest error message a decode failure may produce: it is echoed to the caller in a
/// header and the body, so a long input must never come back whole.
pub const MAX_ERROR_MESSAGE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `PredictRequest::decode_limited` on a JSON body, and `error_encoding`.
    RequestJson,
    /// `PredictRequest::decode_limited` on a MessagePack body, and `error_encoding`.
    RequestMsgpack,
    /// `Model::from_bytes` (and a forward pass), `flotilla_model::publishable`.
    Artifact,
    /// `flotilla_registry::parse_manifest` and the manifest operations run on what it returns.
    Manifest,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::RequestJson,
        Target::RequestMsgpack,
        Target::Artifact,
        Target::Manifest,
    ];

    /// The name of its corpus directory and its crash files.
    pub fn name(self) -> &'static str {
        match self {
            Target::RequestJson => "request-json",
            Target::RequestMsgpack => "request-msgpack",
            Target::Artifact => "artifact",
            Target::Manifest => "manifest",
        }
    }

    /// Runs one input; panics on a contract violation. Returns whether the input was
    /// accepted (decoded, loaded, parsed), to tell how deep the mutants reach.
    pub fn run(self, input: &[u8]) -> bool {
        match self {
            Target::RequestJson => request(Encoding::Json, input),
            Target::RequestMsgpack => request(Encoding::MsgPack, input),
            Target::Artifact => artifact(input),
            Target::Manifest => manifest(input),
        }
    }
}

fn request(encoding: Encoding, body: &[u8]) -> bool {
    // What a worker does with every message: sniff, decode, and on refusal pick the reply's
    // encoding from the body.
    let _ = Encoding::detect(None, body).expect("sniffing never refuses");
    let reply_encoding = error_encoding(encoding, body);
    match PredictRequest::decode_limited(encoding, body, MAX_ROWS) {
        Ok(request) => {
            let rows = request.rows();
            assert!(
                (1..=MAX_ROWS).contains(&rows),
                "accepted {rows} rows (the limit is {MAX_ROWS})"
            );
            for (name, tensor) in request.inputs.tensors() {
                // Named inputs' row counts are compared by the worker, against the model.
                assert!(
                    tensor.rows <= MAX_ROWS,
                    "input {name:?}: {} rows",
                    tensor.rows
                );
                // Found by this check (seed 0x5eed, input 12247): `[[], 5]` decoded as two
                // rows holding one value. Fixed in the decoder (request::nested).
                assert_eq!(
                    tensor.values.len(),
                    tensor.rows * tensor.row_len(),
                    "input {name:?}: values do not fill its rows"
                );
                if let flotilla_proto::request::Values::F64(values) = &tensor.values {
                    assert!(values.iter().all(|v| v.is_finite()), "non-finite value");
                }
            }
            assert!(!request.single || rows == 1);
            assert_eq!(
                reply_encoding, encoding,
                "a request that decodes is answered in its own encoding"
            );
            true
        }
        Err(e) => {
            assert!(
                matches!(e.kind, ErrorKind::BadRequest | ErrorKind::TooLarge),
                "decoding answered {:?}",
                e.kind
            );
            assert!(!e.message.is_empty(), "an empty error message");
            assert!(
                e.message.len() <= MAX_ERROR_MESSAGE,
                "a {}-byte error message for a {}-byte body: {}...",
                e.message.len(),
                body.len(),
                e.message.chars().take(120).collect::<String>()
            );
            false
        }
    }
}

fn artifact(bytes: &[u8]) -> bool {
    let loaded = Model::from_bytes(bytes);
    let published = publishable(bytes);
    assert_eq!(
        loaded.is_ok(),
        published.is_ok(),
        "a worker must load exactly what publishing accepts: load {:?}, publish {:?}",
        loaded.as_ref().err().map(ToString::to_string),
        published.as_ref().err().map(ToString::to_string),
    );
    let Ok(model) = loaded else { return false };
    // What a worker does before serving a version: one forward pass, and labels.
    assert!(model.inputs() >= 1 && model.outputs() >= 1);
    let zeros = ndarray::Array2::zeros((1, model.inputs()));
    let out = model.forward(zeros.view());
    assert_eq!(out.dim(), (1, model.outputs()));
    let row = out.row(0).to_vec();
    assert_eq!(model.label(&row).is_some(), model.is_classifier());
    // The registry stores the canonical bytes: they must load, and be a fixed point.
    let published = published.expect("checked above");
    let stored = Model::from_bytes(&published.bytes)
        .unwrap_or_else(|e| panic!("the bytes publish stores do not load: {e}"));
    assert_eq!(
        (stored.inputs(), stored.outputs()),
        (model.inputs(), model.outputs())
    );
    let again = publishable(&published.bytes).expect("stored bytes publish again");
    assert_eq!(
        again.bytes, published.bytes,
        "canonical bytes are a fixed point"
    );
    true
}

/// The key the manifest corpus is stored under.
pub const MANIFEST_KEY: &str = "iris";

fn manifest(bytes: &[u8]) -> bool {
    let Ok(manifest) = parse_manifest(MANIFEST_KEY, bytes) else {
        return false;
    };
    // The registry rewrites a manifest on every change: nothing may be lost on the way.
    let text = serde_json::to_vec(&manifest).expect("a parsed manifest encodes");
    let again = parse_manifest(MANIFEST_KEY, &text).expect("a written manifest parses");
    assert_eq!(again, manifest, "a manifest changed on re-writing");
    for info in manifest.versions.values() {
        let _ = primary_metric(&info.metrics);
    }
    // Every operation an operator or publisher runs on a manifest it read.
    let info = VersionInfo {
        kind: "dense".into(),
        object: "fuzz/object".into(),
        sha256: "00".into(),
        size: 1,
        signature: None,
        signer: None,
        metrics: [("accuracy".to_string(), 0.5)].into(),
        created: "2026-01-01T00:00:00Z".into(),
    };
    for promote in Promote::ALL {
        let mut m = manifest.clone();
        let (version, promoted, _) = m.add_version(info.clone(), promote);
        assert!(
            !manifest.versions.contains_key(&version),
            "publishing reused version {version}"
        );
        assert!(m.versions.contains_key(&version));
        assert_eq!(promoted, m.current == Some(version));
    }
    let mut m = manifest.clone();
    let _ = m.rollback(None);
    let versions: Vec<u64> = manifest.versions.keys().copied().take(8).collect();
    for v in versions {
        let mut m = manifest.clone();
        if m.promote(v).is_ok() {
            assert_eq!(m.current, Some(v));
        }
        let _ = manifest.clone().rollback(Some(v));
        let _ = manifest.clone().set_canary(v, 0.5);
    }
    true
}
