//! Command-line surface: flags, subcommand dispatch, logging and signal wiring.
//!
//! Settings are layered by [`crate::settings`]: every subcommand reads `--config` and the
//! `FLOTILLA_*` environment, then applies its own flags on top.

mod bench;
mod demo;
mod gateway;
mod load;
mod models;
mod predict;
mod progress;
mod train;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use flotilla_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

use crate::settings::{self, Setting};

#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about = "Inference worker fleet on NATS")]
pub struct Args {
    /// Log format: human-readable text, or one JSON object per line for log shippers.
    /// Levels come from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve models: answer predictions on <prefix>.predict.<model>.
    Worker(worker::WorkerArgs),
    /// Send one prediction request and print the reply as JSON.
    Predict(predict::PredictArgs),
    /// Closed-loop load test of a model (and, with --echo, of the bare broker).
    Bench(bench::BenchArgs),
    /// Start a local fleet (and a nats-server if none answers) and send it predictions.
    Demo(demo::DemoArgs),
    /// Fit a model on a CSV file and write (or publish) it.
    Train(Box<train::TrainArgs>),
    /// Inspect and steer the model registry: list, show, history, publish, fetch, promote, rollback, canary, keygen.
    Models(models::ModelsArgs),
    /// Serve HTTP in front of the fleet: the classic /predict, the NATS body over HTTP, and
    /// the Open Inference Protocol (KServe V2).
    Gateway(gateway::GatewayArgs),
}

/// How to reach NATS, and the settings file; shared by every subcommand but `train`, whose
/// `--config` is the trainer's (it takes [`NatsFlags`] and `--registry-config`).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    #[command(flatten)]
    pub flags: NatsFlags,
    /// Settings file (TOML), e.g. config/worker.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl NatsArgs {
    /// Settings from defaults, `--config`, the environment, then the flags.
    pub fn settings(&self) -> anyhow::Result<WorkerConfig> {
        self.flags.settings(self.config.as_deref())
    }
}

/// NATS URL and authentication flags. Anything not given here comes from the `[nats]` table
/// of the settings file or `FLOTILLA_NATS_*` variables.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsFlags {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long = "nats", value_name = "URL")]
    pub url: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long)]
    pub nats_user: Option<String>,
    /// NATS password (prefer FLOTILLA_NATS_PASSWORD: flags show up in `ps`).
    #[arg(long)]
    pub nats_password: Option<String>,
    /// NATS token (prefer FLOTILLA_NATS_TOKEN).
    #[arg(long)]
    pub nats_token: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate to verify the NATS server with.
    #[arg(long, value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Prefix of this client's reply subjects (default _INBOX); with per-user inbox
    /// permissions, no other client can read the replies.
    #[arg(long, value_name = "PREFIX")]
    pub nats_inbox_prefix: Option<String>,
}

impl NatsFlags {
    /// Settings from defaults, `file`, the environment, then these flags.
    pub fn settings(&self, file: Option<&std::path::Path>) -> anyhow::Result<WorkerConfig> {
        Ok(worker_settings(file, self.as_settings())?)
    }

    /// These flags as settings, so an error can name the flag that set a bad value.
    pub fn as_settings(&self) -> Vec<Setting> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            ("--nats", "nats.url", self.url.clone()),
            ("--nats-user", "nats.user", self.nats_user.clone()),
            (
                "--nats-password",
                "nats.password",
                self.nats_password.clone(),
            ),
            ("--nats-token", "nats.token", self.nats_token.clone()),
            (
                "--nats-creds",
                "nats.creds_file",
                self.nats_creds.as_ref().map(path),
            ),
            (
                "--nats-tls-ca",
                "nats.tls_ca",
                self.nats_tls_ca.as_ref().map(path),
            ),
            (
                "--nats-inbox-prefix",
                "nats.inbox_prefix",
                self.nats_inbox_prefix.clone(),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, key, value)| value.map(|v| Setting::flag(flag, key, v)))
        .collect()
    }
}

/// Worker (and fleet) settings: defaults, `file`, `FLOTILLA_*` variables, then `flags`,
/// validated with errors that name the key and where it was set.
pub fn worker_settings(
    file: Option<&std::path::Path>,
    flags: Vec<Setting>,
) -> Result<WorkerConfig, settings::SettingsError> {
    let mut layers = match file {
        Some(path) => settings::from_file(path)?,
        None => Vec::new(),
    };
    layers.extend(settings::from_env(
        std::env::vars(),
        "FLOTILLA_",
        &["nats", "registry"],
        &["TRAIN_", "GATEWAY_"],
    ));
    layers.extend(flags);
    let (config, applied) = settings::load::<WorkerConfig>(layers)?;
    config
        .validate()
        .map_err(|e| settings::check_failed(&applied, &e.key, e.message))?;
    Ok(config)
}

/// Writes command output to stdout. A reader that went away (`flotilla predict ... | head`)
/// is not an error worth a panic: the error comes back as a [`std::io::ErrorKind::BrokenPipe`]
/// that `main` turns into a quiet exit.
/// The listener of a metrics endpoint on `addr`, or `None` when `addr` is empty (disabled).
pub async fn bind_metrics(addr: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    use anyhow::Context;
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics endpoint to {addr} (in use? pick another with --metrics-addr)")
    })?;
    Ok(Some(listener))
}

pub fn print_out(text: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(text)?;
    out.flush()?;
    Ok(())
}

/// Whether `error` is stdout's reader having gone away.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `--promote`: lists the choices in `--help` and errors, parses into [`flotilla_registry::Promote`].
pub fn promote_parser() -> impl clap::builder::TypedValueParser<Value = flotilla_registry::Promote>
{
    use clap::builder::TypedValueParser;
    let names = flotilla_registry::Promote::ALL.map(|p| p.as_str());
    clap::builder::PossibleValuesParser::new(names)
        .map(|name| name.parse().expect("clap checked the name"))
}

/// Logs to stderr (stdout is for command output). Long-running commands log at `info` by
/// default, one-shot ones only warnings; `RUST_LOG` overrides both.
pub fn init_tracing(args: &Args) {
    let default = match args.command {
        Command::Worker(_) | Command::Demo(_) | Command::Train(_) | Command::Gateway(_) => {
            "info,async_nats=warn"
        }
        Command::Predict(_) | Command::Bench(_) | Command::Models(_) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Worker(a) => worker::run(a, shutdown_on_signal()).await,
        Command::Predict(a) => predict::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Demo(a) => demo::run(a, shutdown_on_signal()).await,
        Command::Train(a) => train::run(*a).await,
        Command::Models(a) => models::run(a).await,
        Command::Gateway(a) => gateway::run(a, shutdown_on_signal()).await,
    }
}

/// A token cancelled on the first SIGTERM or Ctrl-C.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => tracing::info!("shutdown: Ctrl-C received"),
                        _ = term.recv() => tracing::info!("shutdown: SIGTERM received"),
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
            tracing::info!("shutdown: Ctrl-C received");
        }
        cancel.cancel();
    });
    token
}

/// `flotilla worker` child processes (for the demo and the registry benches), stopped with
/// SIGTERM so they drain, and killed if they outlive the handle.
#[derive(Default)]
pub struct WorkerProcesses(Vec<tokio::process::Child>);

impl WorkerProcesses {
    /// A `flotilla worker --nats URL [--config FILE]` command; the caller adds the rest.
    pub fn command(
        &self,
        url: &str,
        config: Option<&std::path::Path>,
    ) -> anyhow::Result<tokio::process::Command> {
        use anyhow::Context;
        let exe = std::env::current_exe().context("finding the flotilla executable")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .args(["worker", "--nats", url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        Ok(command)
    }

    pub fn spawn(&mut self, mut command: tokio::process::Command) -> anyhow::Result<()> {
        use anyhow::Context;
        self.0
            .push(command.spawn().context("starting a worker process")?);
        Ok(())
    }

    /// SIGTERM to all, then up to 10 s each to drain and exit.
    pub async fn stop(mut self) {
        for child in &self.0 {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in &mut self.0 {
            if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
