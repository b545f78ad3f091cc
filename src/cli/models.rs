//! `flotilla models`: inspect and steer the JetStream model registry from the command line.
//!
//! Every subcommand is a thin layer over [`flotilla_registry::Registry`]: reads print the
//! manifests as aligned tables (or JSON with `--json`), and every change is one
//! compare-and-swap [`Registry::update`], so an operator's command never silently undoes a
//! concurrent publish. `keygen` is the one command that needs no server. The JSON shapes are
//! documented in `docs/registry.md`; keep the two in step.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use flotilla_model::Kind;
use flotilla_registry::{
    primary_metric, signing, Canary, Manifest, ManifestRevision, Promote, Registry,
};
use serde::Serialize;

use super::NatsArgs;

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Every model: current version, canary, number of versions, primary metric.
    List(Common),
    /// One model's manifest: current, canary, rollback stack and every version.
    Show(NamedArgs),
    /// One model's versions in order, and the manifest's recorded changes.
    History(NamedArgs),
    /// Publish a model file (a JSON or MessagePack artifact, or an ONNX file) as the model's next version.
    Publish(PublishArgs),
    /// Make a version current.
    Promote(PromoteArgs),
    /// Make the previous current version (or --to VERSION) current again.
    Rollback(RollbackArgs),
    /// Send a share of unpinned requests to a version, or end the split with --clear.
    Canary(CanaryArgs),
    /// Write an ed25519 key pair for signing published versions.
    Keygen(KeygenArgs),
}

/// Flags every registry subcommand takes.
#[derive(Debug, clap::Args)]
struct Common {
    #[command(flatten)]
    nats: NatsArgs,
    /// Print JSON on stdout instead of a table (shapes: docs/registry.md).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct NamedArgs {
    /// Model name.
    model: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// Model name.
    model: String,
    /// The model file: a `flotilla.model.v1` artifact (.json or .msgpack; its
    /// `metadata.metrics` feed the promotion gate) or an ONNX file (.onnx), refused here if
    /// no worker could load it.
    file: PathBuf,
    /// Secret key file from `flotilla models keygen`; workers that trust its public key
    /// accept the version.
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// When the new version becomes current: if its primary metric is no worse than the
    /// current version's, always, or never.
    #[arg(long, default_value = "if-better", value_parser = super::promote_parser())]
    promote: Promote,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct PromoteArgs {
    /// Model name.
    model: String,
    /// The version to make current.
    version: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct RollbackArgs {
    /// Model name.
    model: String,
    /// The version to return to [default: the previous current version].
    #[arg(long, value_name = "VERSION")]
    to: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("action").required(true).args(["version", "clear"])),
    override_usage = "flotilla models canary [OPTIONS] <MODEL> <VERSION> --weight <WEIGHT>\n       \
                      flotilla models canary [OPTIONS] <MODEL> --clear"
)]
struct CanaryArgs {
    /// Model name.
    model: String,
    /// The canary version (with --weight).
    #[arg(requires = "weight")]
    version: Option<u64>,
    /// Fraction of unpinned requests the canary takes, in (0, 1].
    #[arg(long, requires = "version", allow_negative_numbers = true)]
    weight: Option<f64>,
    /// End the canary split: every unpinned request goes to the current version.
    #[arg(long, conflicts_with_all = ["version", "weight"])]
    clear: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Directory to write the key files into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Base name of the files: NAME.key (secret) and NAME.pub (public).
    #[arg(long, default_value = "flotilla")]
    name: String,
    /// Print the paths and the public key as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ModelsCommand::List(a) => list(a).await?,
        ModelsCommand::Show(a) => show(a).await?,
        ModelsCommand::History(a) => history(a).await?,
        ModelsCommand::Publish(a) => publish(a).await?,
        ModelsCommand::Promote(a) => promote(a).await?,
        ModelsCommand::Rollback(a) => rollback(a).await?,
        ModelsCommand::Canary(a) => canary(a).await?,
        ModelsCommand::Keygen(a) => keygen(a)?,
    }
    Ok(ExitCode::SUCCESS)
}

impl Common {
    /// Connects and opens the registry named by the layered settings.
    async fn registry(&self) -> anyhow::Result<Registry> {
        let settings = self.nats.settings()?;
        let client = settings.nats.connect("flotilla-models").await?;
        Ok(Registry::open(client, &settings.registry).await?)
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

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

async fn list(args: Common) -> anyhow::Result<()> {
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
    print!("{table}");
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
    state: Option<&'static str>,
    sha256: String,
    size: u64,
    /// Hex public key that signed the version; null when unsigned.
    signer: Option<String>,
    object: String,
    metrics: BTreeMap<String, f64>,
    created: String,
}

async fn show(args: NamedArgs) -> anyhow::Result<()> {
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
                sha256: info.sha256.clone(),
                size: info.size,
                signer: info.signer.clone(),
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
            short(&v.sha256).to_owned(),
            size_text(v.size),
            v.signer
                .as_deref()
                .map_or("unsigned".into(), |s| short(s).to_owned()),
            metrics_text(&v.metrics),
            short_time(&v.created),
        ]);
    }
    print!("{table}");
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
    state: Option<&'static str>,
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

async fn history(args: NamedArgs) -> anyhow::Result<()> {
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
    print!("{table}");
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
    print!("{table}");
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
fn describe_revision(before: Option<&Manifest>, after: &Manifest) -> String {
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

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let artifact = std::fs::read(&args.file)
        .with_context(|| format!("reading the artifact {}", args.file.display()))?;
    let key = args
        .signing_key
        .as_deref()
        .map(signing::read_signing_key)
        .transpose()?;
    let kind = Kind::of_path(&args.file).unwrap_or(Kind::Dense);
    let registry = args.common.registry().await?;
    let published = registry
        .publish_kind(
            &args.model,
            kind,
            &artifact,
            BTreeMap::new(),
            key.as_ref(),
            args.promote,
        )
        .await?;
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

async fn promote(args: PromoteArgs) -> anyhow::Result<()> {
    steer(&args.common, &args.model, |m| m.promote(args.version)).await
}

async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    steer(&args.common, &args.model, |m| m.rollback(args.to).map(drop)).await
}

async fn canary(args: CanaryArgs) -> anyhow::Result<()> {
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

/// "current 3 -> 2", "canary none -> 4@0.1": one phrase per field that moved.
fn state_changes(
    before: (Option<u64>, Option<Canary>),
    after: (Option<u64>, Option<Canary>),
) -> Vec<String> {
    let mut parts = Vec::new();
    if before.0 != after.0 {
        let text = |v: Option<u64>| v.map_or("none".into(), |v| v.to_string());
        parts.push(format!("current {} -> {}", text(before.0), text(after.0)));
    }
    if before.1 != after.1 {
        let text = |c: Option<Canary>| c.map_or("none".into(), |c| canary_text(Some(c)));
        parts.push(format!("canary {} -> {}", text(before.1), text(after.1)));
    }
    parts
}

// ---- keygen --------------------------------------------------------------------------

/// `keygen --json`.
#[derive(Debug, Serialize)]
struct KeygenOutput {
    secret_key_file: PathBuf,
    public_key_file: PathBuf,
    public_key: String,
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let name = &args.name;
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        bail!("--name {name:?} must be a plain file name: no slashes, not starting with '.'");
    }
    let secret_path = args.out.join(format!("{}.key", args.name));
    let public_path = args.out.join(format!("{}.pub", args.name));
    // Checked up front so that a refusal leaves no half-written pair behind.
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!(
                "refusing to overwrite the existing key file {}; move it away or pick another --name",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the directory {}", args.out.display()))?;
    let key = signing::generate();
    let public = signing::public_hex(&key.verifying_key());
    write_new(&secret_path, &signing::secret_hex(&key), true)?;
    write_new(&public_path, &public, false)?;
    if args.json {
        return print_json(&KeygenOutput {
            secret_key_file: secret_path,
            public_key_file: public_path,
            public_key: public,
        });
    }
    let (secret, public_file) = (secret_path.display(), public_path.display());
    println!("Secret key: {secret} (keep it private: whoever holds it can publish trusted models)");
    println!("Public key: {public_file}");
    println!("  {public}");
    println!();
    println!("Sign when publishing:");
    println!("  flotilla models publish NAME FILE --signing-key {secret}");
    println!("Trust it on workers, in the config file:");
    println!("  [registry]");
    println!("  trusted_keys = [\"{public}\"]");
    println!("or in the environment (values are TOML):");
    println!("  FLOTILLA_REGISTRY_TRUSTED_KEYS='[\"{public}\"]'");
    Ok(())
}

/// Writes `text` to a file that must not exist yet; `secret` files are readable by their
/// owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).with_context(|| {
        if path.exists() {
            format!(
                "refusing to overwrite the existing key file {}",
                path.display()
            )
        } else {
            format!("creating {}", path.display())
        }
    })?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))
}

// ---- formatting ----------------------------------------------------------------------

/// What `rollback` without `--to` would make current.
fn rollback_target(m: &Manifest) -> Option<u64> {
    m.clone().rollback(None).ok()
}

fn state(m: &Manifest, rollback_to: Option<u64>, version: u64) -> Option<&'static str> {
    if m.current == Some(version) {
        Some("current")
    } else if m.canary.is_some_and(|c| c.version == version) {
        Some("canary")
    } else if rollback_to == Some(version) {
        Some("previous")
    } else {
        None
    }
}

fn state_text(state: Option<&str>, canary: Option<Canary>) -> String {
    match (state, canary) {
        (Some("canary"), Some(c)) => format!("canary {}", percent(c.weight)),
        (Some(s), _) => s.to_owned(),
        (None, _) => String::new(),
    }
}

fn percent(weight: f64) -> String {
    let p = weight * 100.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn canary_text(c: Option<Canary>) -> String {
    c.map_or("-".into(), |c| format!("{}@{}", c.version, c.weight))
}

fn join(versions: &[u64]) -> String {
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first 12 hex digits: enough to tell hashes and keys apart at a glance.
fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

fn metrics_text(metrics: &BTreeMap<String, f64>) -> String {
    if metrics.is_empty() {
        return "-".into();
    }
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// An RFC 3339 UTC time without its fraction of a second.
fn short_time(rfc3339: &str) -> String {
    match (rfc3339.find('.'), rfc3339.strip_suffix('Z')) {
        (Some(dot), Some(_)) => format!("{}Z", &rfc3339[..dot]),
        _ => rfc3339.to_owned(),
    }
}

/// A text table: columns padded to their widest cell, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<const N: usize>(header: [&str; N]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_registry::VersionInfo;

    fn info() -> VersionInfo {
        VersionInfo {
            kind: Kind::Dense,
            object: "iris/x".into(),
            sha256: "ab".repeat(32),
            size: 10,
            signature: None,
            signer: None,
            metrics: BTreeMap::new(),
            created: "2026-01-02T03:04:05.123456789Z".into(),
        }
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(["wide cell".into(), "x".into()]);
        assert_eq!(t.to_string(), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn revisions_describe_what_moved() {
        let mut a = Manifest::new("iris");
        a.add_version(info(), Promote::Always);
        assert_eq!(
            describe_revision(None, &a),
            "published 1, current none -> 1"
        );
        let mut b = a.clone();
        b.add_version(info(), Promote::Never);
        b.set_canary(2, 0.1).unwrap();
        assert_eq!(
            describe_revision(Some(&a), &b),
            "published 2, canary none -> 2@0.1"
        );
        let mut c = b.clone();
        c.promote(2).unwrap();
        assert_eq!(
            describe_revision(Some(&b), &c),
            "current 1 -> 2, canary 2@0.1 -> none"
        );
        assert_eq!(describe_revision(Some(&c), &c), "no change");
    }

    #[test]
    fn states_mark_current_canary_and_the_rollback_target() {
        let mut m = Manifest::new("iris");
        for _ in 0..3 {
            m.add_version(info(), Promote::Always);
        }
        m.add_version(info(), Promote::Never);
        m.set_canary(4, 0.25).unwrap();
        let back = rollback_target(&m);
        assert_eq!(back, Some(2));
        let states: Vec<_> = (1..=4).map(|v| state(&m, back, v)).collect();
        assert_eq!(
            states,
            [None, Some("previous"), Some("current"), Some("canary")]
        );
        assert_eq!(state_text(Some("canary"), m.canary), "canary 25%");
    }

    #[test]
    fn small_formatters() {
        assert_eq!(
            short_time("2026-01-02T03:04:05.123Z"),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(short_time("2026-01-02T03:04:05Z"), "2026-01-02T03:04:05Z");
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(percent(0.125), "12.5%");
    }
}
