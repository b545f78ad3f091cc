//! Changing the registry: `publish`, then `promote`, `rollback` and `canary`, each one
//! compare-and-swap of the manifest.

use anyhow::Context;
use flotilla_registry::{signing, Canary, Manifest};
use serde::Serialize;

use super::format::*;
use crate::cli::progress::Transfer;
use std::process::ExitCode;

use flotilla_model::Kind;

use super::*;

// ---- publish -------------------------------------------------------------------------

/// `publish --json`.
#[derive(Debug, Serialize)]
struct PublishOutput {
    model: String,
    version: u64,
    promoted: bool,
    /// Why the gate promoted the version or not.
    reason: String,
    sha256: String,
    signer: Option<String>,
}

pub(super) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let kind = Kind::detect(&args.file);
    let path = args.file.clone();
    // A text model's directory is stored as one deterministic archive of its files.
    let artifact = tokio::task::spawn_blocking(move || match kind {
        Kind::TextEmbedding => flotilla_model::pack_dir(&path).map_err(anyhow::Error::from),
        _ => std::fs::read(&path).map_err(anyhow::Error::from),
    })
    .await?
    .with_context(|| format!("reading the artifact {}", args.file.display()))?;
    let key = args
        .signing_key
        .as_deref()
        .map(signing::read_signing_key)
        .transpose()?;
    // Refuse what no worker could load, before touching the registry. Building a model is
    // CPU work (an ONNX plan is optimised): off the runtime.
    let checked =
        tokio::task::spawn_blocking(move || flotilla_model::publishable_kind(kind, &artifact))
            .await?
            .with_context(|| format!("publishing model {:?}", args.model))?;
    let registry = args.common.registry().await?;
    let total = checked.bytes.len() as u64;
    let shown = Transfer::new(format!("uploading {}", args.model), total);
    let published = registry
        .publish_kind_with_progress(
            &args.model,
            kind.as_str(),
            &checked.bytes,
            checked.metrics,
            key.as_ref(),
            args.promote,
            &|done, total| shown.update(done, total),
        )
        .await?;
    drop(shown);
    let output = PublishOutput {
        model: args.model,
        version: published.version,
        promoted: published.promoted,
        reason: published.reason,
        sha256: published.sha256,
        signer: key.map(|k| signing::public_hex(&k.verifying_key())),
    };
    if args.common.json {
        return print_json(&output);
    }
    let signed = output
        .signer
        .as_deref()
        .map_or("unsigned".into(), |s| format!("signed by {}", short(s)));
    println!(
        "{}: published version {} ({kind}, sha256 {}, {signed})",
        output.model,
        output.version,
        short(&output.sha256),
    );
    println!("{}", output.reason);
    Ok(())
}

// ---- promote, rollback, canary -------------------------------------------------------

/// What unpinned requests get: the part of a manifest the steering commands change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Serving {
    current: Option<u64>,
    canary: Option<Canary>,
}

impl Serving {
    fn of(m: &Manifest) -> Serving {
        Serving {
            current: m.current,
            canary: m.canary,
        }
    }
}

/// `promote|rollback|canary --json`.
#[derive(Debug, Serialize)]
struct Steered {
    model: String,
    before: Serving,
    after: Serving,
    /// The human-readable summary, e.g. "current 3 -> 2".
    change: String,
}

/// Applies one manifest change by compare-and-swap and prints what it changed.
async fn steer(
    common: &Common,
    model: &str,
    mut change: impl FnMut(&mut Manifest) -> Result<(), flotilla_registry::ManifestError>,
) -> anyhow::Result<()> {
    let registry = common.registry().await?;
    let (before, after) = registry
        .update(model, false, |m| {
            let before = Serving::of(m);
            change(m)?;
            Ok((before, Serving::of(m)))
        })
        .await?;
    let parts = state_changes(
        (before.current, before.canary),
        (after.current, after.canary),
    );
    let change = if parts.is_empty() {
        format!("unchanged (current {})", opt(after.current))
    } else {
        parts.join(", ")
    };
    if common.json {
        return print_json(&Steered {
            model: model.to_owned(),
            before,
            after,
            change,
        });
    }
    println!("{model}: {change}");
    Ok(())
}

pub(super) async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    steer(&args.common, &args.model, |m| m.promote(args.version)).await
}

pub(super) async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    steer(&args.common, &args.model, |m| m.rollback(args.to).map(drop)).await
}

pub(super) async fn canary(args: CanaryArgs) -> anyhow::Result<()> {
    let target = if args.clear {
        None
    } else {
        let version = args.version.expect("clap requires VERSION or --clear");
        let weight = args.weight.expect("clap requires --weight with VERSION");
        Some((version, weight))
    };
    steer(&args.common, &args.model, |m| match target {
        Some((version, weight)) => m.set_canary(version, weight),
        None => {
            m.clear_canary();
            Ok(())
        }
    })
    .await
}

/// `init --json`.
#[derive(Debug, Serialize)]
struct InitOutput {
    buckets: Vec<InitBucket>,
}

#[derive(Debug, Serialize)]
struct InitBucket {
    bucket: String,
    /// The JetStream stream behind it.
    stream: String,
    replicas: usize,
    created: bool,
    /// The replicas asked for, when the existing bucket has another count.
    configured: Option<usize>,
}

/// Creates the buckets with the configured replicas, or reports the existing ones. A bucket
/// replicated otherwise than asked exits 1: JetStream cannot be told to change it from here
/// (`nats stream edit KV_<bucket> --replicas N` can).
pub(super) async fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let mut settings = args.common.nats.settings()?;
    if let Some(n) = args.replicas {
        settings.registry.replicas = n.into();
    }
    let client = settings.nats.connect("flotilla-models").await?;
    let (_, buckets) = Registry::open_reporting(client, &settings.registry).await?;
    let wanted = settings.registry.replicas;
    let stream = |bucket: &str| {
        let kind = if bucket == settings.registry.kv_bucket {
            "KV"
        } else {
            "OBJ"
        };
        format!("{kind}_{bucket}")
    };
    let output = InitOutput {
        buckets: buckets
            .into_iter()
            .map(|b| InitBucket {
                configured: (b.replicas != wanted).then_some(wanted),
                stream: stream(&b.name),
                bucket: b.name,
                replicas: b.replicas,
                created: b.created,
            })
            .collect(),
    };
    let mismatched = output.buckets.iter().any(|b| b.configured.is_some());
    if args.common.json {
        print_json(&output)?;
    } else {
        for b in &output.buckets {
            let what = if b.created { "created" } else { "exists" };
            match b.configured {
                None => println!("{}: {what}, {} replicas", b.bucket, b.replicas),
                Some(n) => println!(
                    "{}: {what}, {} replicas, but {n} were asked for; change it with `nats stream edit {} --replicas {n}`",
                    b.bucket, b.replicas, b.stream
                ),
            }
        }
    }
    Ok(if mismatched {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
