//! `flotilla models`: inspect and steer the JetStream model registry from the command line.
//!
//! Every subcommand is a thin layer over [`flotilla_registry::Registry`]: reads print the
//! manifests as aligned tables (or JSON with `--json`), and every change is one
//! compare-and-swap [`Registry::update`], so an operator's command never silently undoes a
//! concurrent publish. `keygen` is the one command that needs no server. The JSON shapes are
//! documented in `docs/registry.md`; keep the two in step.
//!
//! - `inspect`: list, show, history.
//! - `steer`: publish, promote, rollback, canary.
//! - `fetch`: one version downloaded, verified and written to disk.
//! - `keys`: keygen.
//! - `format`: version states, tables and the short forms of hashes, sizes and times.

mod fetch;
mod format;
mod inspect;
mod keys;
mod steer;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use flotilla_registry::{Promote, Registry};
use serde::Serialize;

use super::NatsArgs;

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Create the registry's buckets (first step on a cluster: --replicas 3), or report how
    /// the existing ones are replicated.
    Init(InitArgs),
    /// Every model: current version, canary, number of versions, primary metric.
    List(Common),
    /// One model's manifest: current, canary, rollback stack and every version.
    Show(NamedArgs),
    /// One model's versions in order, and the manifest's recorded changes.
    History(NamedArgs),
    /// Publish an artifact (dense, ONNX or a text model's directory) as the model's next version.
    Publish(PublishArgs),
    /// Download a version (the current one by default), verified as a worker verifies it, into
    /// a file (dense, ONNX) or a new directory (a text model's files).
    Fetch(FetchArgs),
    /// Make a version current.
    Promote(PromoteArgs),
    /// Make the previous current version (or --to VERSION) current again.
    Rollback(RollbackArgs),
    /// Send a share of unpinned requests to a version, or end the split with --clear.
    Canary(CanaryArgs),
    /// Write an ed25519 key pair for signing published versions.
    Keygen(KeygenArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct InitArgs {
    /// JetStream replicas of both buckets [default: registry.replicas from the settings].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: Option<u8>,
    #[command(flatten)]
    common: Common,
}

/// Flags every registry subcommand takes.
#[derive(Debug, clap::Args)]
pub(super) struct Common {
    #[command(flatten)]
    nats: NatsArgs,
    /// Print JSON on stdout instead of a table (shapes: docs/registry.md).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct NamedArgs {
    /// Model name.
    model: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub(super) struct PublishArgs {
    /// Model name.
    model: String,
    /// The artifact: a `flotilla.model.v1` file (JSON or MessagePack; its `metadata.metrics`
    /// feed the promotion gate), an `.onnx` file, or a sentence-transformers directory (a
    /// text-embedding model, stored as one archive of its files).
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
pub(super) struct FetchArgs {
    /// Model name.
    model: String,
    /// The version to download [default: the current version].
    #[arg(long)]
    version: Option<u64>,
    /// Where to write it: a new file for a dense version (MessagePack, as stored) or an ONNX
    /// version, a new or empty directory for a text model. Nothing existing is overwritten.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Accept only versions signed by this public key (hex, or a .pub file from `flotilla
    /// models keygen`), on top of registry.trusted_keys; repeatable.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub(super) struct PromoteArgs {
    /// Model name.
    model: String,
    /// The version to make current.
    version: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub(super) struct RollbackArgs {
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
pub(super) struct CanaryArgs {
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
pub(super) struct KeygenArgs {
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
        ModelsCommand::Init(a) => return steer::init(a).await,
        ModelsCommand::List(a) => inspect::list(a).await?,
        ModelsCommand::Show(a) => inspect::show(a).await?,
        ModelsCommand::History(a) => inspect::history(a).await?,
        ModelsCommand::Publish(a) => steer::publish(a).await?,
        ModelsCommand::Fetch(a) => fetch::fetch(a).await?,
        ModelsCommand::Promote(a) => steer::promote(a).await?,
        ModelsCommand::Rollback(a) => steer::rollback(a).await?,
        ModelsCommand::Canary(a) => steer::canary(a).await?,
        ModelsCommand::Keygen(a) => keys::keygen(a)?,
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

pub(super) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    super::print_out(format_args!("{}\n", serde_json::to_string_pretty(value)?))
}
