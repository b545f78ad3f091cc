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
use flotilla_registry::{signing, Canary, Manifest, Promote, Registry};
use serde::Serialize;

use super::NatsArgs;

mod format;
mod inspect;

use format::*;

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
        ModelsCommand::List(a) => inspect::list(a).await?,
        ModelsCommand::Show(a) => inspect::show(a).await?,
        ModelsCommand::History(a) => inspect::history(a).await?,
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
