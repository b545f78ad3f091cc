//! Reading the registry: `list`, `show`, `history`.

use std::collections::BTreeMap;

use anyhow::bail;
use flotilla_registry::{primary_metric, signing, Canary, Manifest, ManifestRevision};
use serde::Serialize;

use super::format::*;
use super::*;

// ---- list ----------------------------------------------------------------------------

/// `list --json`: one object per model.
#[derive(Debug, Serialize)]
struct ListEntry {
    model: String,
    current: Option<u64>,
    canary: Option<Canary>,
    versions: usize,
    latest: u64,
    /// The current version's primary metric.
    metric: Option<Metric>,
}

#[derive(Debug, Serialize)]
struct Metric {
    name: &'static str,
    value: f64,
    higher_is_better: bool,
}

pub(super) async fn list(args: Common) -> anyhow::Result<()> {
    let registry = args.registry().await?;
    let mut entries = Vec::new();
    for model in registry.models().await? {
        // A model listed a moment ago has a manifest; skip it if it vanished meanwhile.
        let Some((m, _)) = registry.manifest(&model).await? else {
            continue;
        };
        let metric = m
            .current
            .and_then(|c| m.versions.get(&c))
            .and_then(|info| primary_metric(&info.metrics))
            .map(|(name, value, higher_is_better)| Metric {
                name,
                value,
                higher_is_better,
            });
        entries.push(ListEntry {
            model,
            current: m.current,
            canary: m.canary,
            versions: m.versions.len(),
            latest: m.latest,
            metric,
        });
    }
    if args.json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        println!(
            "The registry has no models; publish one with `flotilla models publish NAME FILE`."
        );
        return Ok(());
    }
    let mut table = Table::new(["MODEL", "CURRENT", "CANARY", "VERSIONS", "LATEST", "METRIC"]);
    for e in &entries {
        table.row([
            e.model.clone(),
            opt(e.current),
            canary_text(e.canary),
            e.versions.to_string(),
            e.latest.to_string(),
            e.metric
                .as_ref()
                .map_or("-".into(), |m| format!("{} {:.4}", m.name, m.value)),
        ]);
    }
    super::super::print_out(format_args!("{table}"))?;
    Ok(())
}

// ---- show ----------------------------------------------------------------------------

/// `show --json`.
#[derive(Debug, Serialize)]
struct ShowOutput {
    model: String,
    /// The manifest's key-value revision.
    revision: u64,
    current: Option<u64>,
    canary: Option<Canary>,
    latest: u64,
    /// Earlier current versions, most recent last.
    previous: Vec<u64>,
    /// What `rollback` without `--to` would make current.
    rollback_to: Option<u64>,
    versions: Vec<VersionOutput>,
}

#[derive(Debug, Serialize)]
struct VersionOutput {
    version: u64,
    /// `current`, `canary`, `previous` (the rollback target), or null.
    state: Option<VersionState>,
    /// `dense`, `onnx` or `text-embedding`: how a worker builds it.
    kind: String,
    sha256: String,
    size: u64,
    /// Hex public key the manifest says signed the version; null when unsigned.
    signer: Option<String>,
    /// Whether the signature verifies against `signer` (over the model name and SHA-256).
    /// A manifest can name any signer: only a verified one is shown as "signed by".
    signature_valid: bool,
    object: String,
    metrics: BTreeMap<String, f64>,
    created: String,
}

pub(super) async fn show(args: NamedArgs) -> anyhow::Result<()> {
    let registry = args.common.registry().await?;
    let (m, revision) = registry.require(&args.model).await?;
    let rollback_to = rollback_target(&m);
    let output = ShowOutput {
        model: m.model.clone(),
        revision,
        current: m.current,
        canary: m.canary,
        latest: m.latest,
        previous: m.previous.clone(),
        rollback_to,
        versions: m
            .versions
            .iter()
            .map(|(&version, info)| VersionOutput {
                version,
                state: state(&m, rollback_to, version),
                kind: info.kind.clone(),
                sha256: info.sha256.clone(),
                size: info.size,
                signer: info.signer.clone(),
                signature_valid: signature_verifies(&m.model, version, info),
                object: info.object.clone(),
                metrics: info.metrics.clone(),
                created: info.created.clone(),
            })
            .collect(),
    };
    if args.common.json {
        return print_json(&output);
    }
    println!(
        "{}: current {}, canary {}, latest {}, rollback stack [{}]",
        output.model,
        opt(output.current),
        canary_text(output.canary),
        output.latest,
        join(&output.previous),
    );
    let mut table = Table::new([
        "VERSION",
        "STATE",
        "KIND",
        "SHA256",
        "SIZE",
        "SIGNED BY",
        "METRICS",
        "CREATED",
    ]);
    for v in &output.versions {
        table.row([
            v.version.to_string(),
            state_text(v.state, output.canary),
            v.kind.clone(),
            short(&v.sha256).to_owned(),
            size_text(v.size),
            match (&v.signer, v.signature_valid) {
                (None, _) => "unsigned".into(),
                (Some(s), true) => short(s).to_owned(),
                (Some(s), false) => format!("claims {} (BAD SIGNATURE)", short(s)),
            },
            metrics_text(&v.metrics),
            short_time(&v.created),
        ]);
    }
    super::super::print_out(format_args!("{table}"))?;
    Ok(())
}

// ---- history -------------------------------------------------------------------------

/// `history --json`.
#[derive(Debug, Serialize)]
struct HistoryOutput {
    model: String,
    versions: Vec<HistoryVersion>,
    /// The manifest revisions the bucket still keeps, oldest first.
    changes: Vec<Change>,
}

#[derive(Debug, Serialize)]
struct HistoryVersion {
    version: u64,
    created: String,
    state: Option<VersionState>,
    metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Change {
    revision: u64,
    created: String,
    current: Option<u64>,
    canary: Option<Canary>,
    latest: u64,
    /// What this revision changed from the one before it.
    change: String,
}

pub(super) async fn history(args: NamedArgs) -> anyhow::Result<()> {
    let registry = args.common.registry().await?;
    let revisions = registry.history(&args.model).await?;
    let Some(last) = revisions.last() else {
        bail!("model {:?} has no manifest revisions", args.model);
    };
    let m = &last.manifest;
    let rollback_to = rollback_target(m);
    let output = HistoryOutput {
        model: m.model.clone(),
        versions: m
            .versions
            .iter()
            .map(|(&version, info)| HistoryVersion {
                version,
                created: info.created.clone(),
                state: state(m, rollback_to, version),
                metrics: info.metrics.clone(),
            })
            .collect(),
        changes: changes(&revisions),
    };
    if args.common.json {
        return print_json(&output);
    }
    let mut table = Table::new(["VERSION", "CREATED", "STATE", "METRICS"]);
    for v in &output.versions {
        table.row([
            v.version.to_string(),
            short_time(&v.created),
            state_text(v.state, m.canary),
            metrics_text(&v.metrics),
        ]);
    }
    super::super::print_out(format_args!("{table}"))?;
    println!("\nManifest changes, oldest first (the bucket keeps the last `registry.history`):");
    let mut table = Table::new(["REVISION", "WRITTEN", "CURRENT", "CANARY", "CHANGE"]);
    for c in &output.changes {
        table.row([
            c.revision.to_string(),
            short_time(&c.created),
            opt(c.current),
            canary_text(c.canary),
            c.change.clone(),
        ]);
    }
    super::super::print_out(format_args!("{table}"))?;
    Ok(())
}

/// Each revision with what it changed from the one before.
fn changes(revisions: &[ManifestRevision]) -> Vec<Change> {
    let mut before: Option<&Manifest> = None;
    revisions
        .iter()
        .map(|r| {
            let change = describe_revision(before, &r.manifest);
            before = Some(&r.manifest);
            Change {
                revision: r.revision,
                created: r.created.clone(),
                current: r.manifest.current,
                canary: r.manifest.canary,
                latest: r.manifest.latest,
                change,
            }
        })
        .collect()
}

/// "published 3, current 2 -> 3": new versions first, then current and canary moves.
pub(super) fn describe_revision(before: Option<&Manifest>, after: &Manifest) -> String {
    let mut parts = Vec::new();
    let new: Vec<u64> = after
        .versions
        .keys()
        .copied()
        .filter(|v| before.is_none_or(|b| !b.versions.contains_key(v)))
        .collect();
    if !new.is_empty() {
        parts.push(format!("published {}", join(&new)));
    }
    let (current, canary) = before.map_or((None, None), |b| (b.current, b.canary));
    parts.extend(state_changes(
        (current, canary),
        (after.current, after.canary),
    ));
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join(", ")
    }
}

/// Whether a version's signature verifies against the key its manifest names. Checked here
/// because `show` must not vouch for a `signer` field anyone can write.
fn signature_verifies(model: &str, version: u64, info: &flotilla_registry::VersionInfo) -> bool {
    let Some(key) = info
        .signer
        .as_deref()
        .and_then(|k| signing::parse_public_key(k).ok())
    else {
        return false;
    };
    signing::verify(
        &[key],
        model,
        version,
        &info.sha256,
        info.signature.as_deref(),
    )
    .is_ok()
}
