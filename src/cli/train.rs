//! `flotilla train`: fit a model to a CSV file, print its validation metrics, and write the
//! artifact (and, on request, a PNG of the loss curves). Training itself is the library's
//! [`flotilla_train::fit`], run on a blocking thread; this file only wires flags, progress
//! output and files around it.

use std::fmt::Debug;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use flotilla_model::ArtifactEncoding;
use flotilla_proto::validate_model_name;
use flotilla_registry::{signing, Promote, Registry};
use flotilla_train::{
    self, EpochStats, HiddenActivation, ModelKind, OptimizerKind, Task, TrainConfig, Trained,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::NatsFlags;
use crate::settings;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// CSV file with a header row: numeric feature columns and the target column.
    #[arg(long, value_name = "FILE.csv")]
    data: PathBuf,
    /// The column to predict: numbers for regression, labels (text or numbers) for classes.
    #[arg(long, value_name = "COLUMN")]
    target: String,
    /// Model name (1 to 64 of A-Z a-z 0-9 _ -).
    #[arg(long)]
    name: String,
    /// Model kind: linear regression, logistic (2 classes), softmax (2+ classes) or an MLP.
    #[arg(long, value_parser = choice::<ModelKind>(ModelKind::NAMES))]
    kind: ModelKind,
    /// Trainer settings file (TOML), e.g. config/trainer.toml; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MLP hidden layer widths [default: 64,32].
    #[arg(long, value_name = "WIDTHS", value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// MLP hidden activation [default: relu].
    #[arg(long, value_parser = choice::<HiddenActivation>(HiddenActivation::NAMES))]
    activation: Option<HiddenActivation>,
    /// regression or classification; auto lets the kind (and for mlp the target) decide
    /// [default: auto].
    #[arg(long, value_parser = choice::<Task>(Task::NAMES))]
    task: Option<Task>,
    /// How weights are updated from gradients [default: adam].
    #[arg(long, value_parser = choice::<OptimizerKind>(OptimizerKind::NAMES))]
    optimizer: Option<OptimizerKind>,
    /// Most passes over the training rows [default: 200].
    #[arg(long)]
    epochs: Option<usize>,
    /// Step size of each update [default: 0.01].
    #[arg(long, value_name = "RATE")]
    learning_rate: Option<f64>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Rows per gradient step [default: 32].
    #[arg(long, value_name = "ROWS")]
    batch_size: Option<usize>,
    /// L1 penalty on weights [default: 0].
    #[arg(long)]
    l1: Option<f64>,
    /// L2 penalty on weights [default: 0].
    #[arg(long)]
    l2: Option<f64>,
    /// MLP hidden-unit dropout probability [default: 0].
    #[arg(long, value_name = "P")]
    dropout: Option<f64>,
    /// Stop after this many epochs without a lower validation loss; 0 never [default: 20].
    #[arg(long, value_name = "EPOCHS")]
    patience: Option<usize>,
    /// Share of rows held out for validation [default: 0.2].
    #[arg(long, value_name = "FRACTION")]
    validation_fraction: Option<f64>,
    /// Seeds the split, initial weights, shuffling and dropout [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Write the artifact here: JSON if the name ends in .json, MessagePack otherwise.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw the training and validation loss curves to this PNG file.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// When the new version becomes current: if-better (its validation metric is no worse
    /// than the current version's), always, or never (publish only).
    #[arg(long, default_value = "if-better", value_parser = super::promote_parser())]
    promote: Promote,
    /// Sign the published version with this secret key (from `flotilla models keygen`).
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Train (and write --out) without publishing to the registry.
    #[arg(long)]
    no_publish: bool,
    /// Fleet settings file (the [nats] and [registry] tables of config/worker.toml) for
    /// publishing.
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsFlags,
}

/// A clap parser that lists `names` in `--help` and errors, and parses into `T`.
fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: Debug,
{
    PossibleValuesParser::new(names).map(|name| name.parse::<T>().expect("clap checked the name"))
}

impl TrainArgs {
    /// Settings from defaults, `--config`, `FLOTILLA_TRAIN_*`, then these flags.
    fn settings(&self) -> anyhow::Result<TrainConfig> {
        let mut layers = match &self.config {
            Some(path) => settings::from_file(path)?,
            None => Vec::new(),
        };
        layers.extend(settings::from_env(
            std::env::vars(),
            flotilla_train::ENV_PREFIX,
            &[],
            &[],
        ));
        let (mut c, applied) = settings::load::<TrainConfig>(layers)?;
        if let Some(v) = &self.hidden {
            c.hidden = v.clone();
        }
        macro_rules! apply {
            ($($field:ident),+) => { $(if let Some(v) = self.$field { c.$field = v; })+ };
        }
        apply!(
            activation,
            task,
            optimizer,
            epochs,
            learning_rate,
            momentum,
            batch_size,
            l1,
            l2,
            dropout,
            patience,
            validation_fraction,
            seed
        );
        c.validate()
            .map_err(|e| settings::check_failed(&applied, &e.key, e.message))?;
        Ok(c)
    }
}

pub async fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    validate_model_name(&args.name)
        .map_err(anyhow::Error::msg)
        .context("--name")?;
    let config = args.settings()?;
    // Settle where it will be published before spending time on training.
    let destination = if args.no_publish {
        None
    } else {
        let settings = args.nats.settings(args.registry_config.as_deref())?;
        let signing_key = args
            .signing_key
            .as_deref()
            .map(signing::read_signing_key)
            .transpose()?;
        let client = settings.nats.connect("flotilla-train").await?;
        Some((
            Registry::open(client, &settings.registry).await?,
            signing_key,
        ))
    };
    let kind = args.kind;
    let max_epochs = config.epochs;
    let (data, target, plot) = (args.data.clone(), args.target.clone(), args.plot.clone());
    let title = format!("{}: {kind}", args.name);

    let started = Instant::now();
    // Loading, training and drawing are CPU work: off the async runtime, onto rayon.
    let trained = tokio::task::spawn_blocking(move || -> anyhow::Result<Trained> {
        let dataset = flotilla_train::load_csv(&data, &target)?;
        let task = flotilla_train::resolve_task(&dataset, kind, config.task)?;
        let progress = Progress::new(config.epochs, task);
        let trained = flotilla_train::fit(&dataset, kind, &config, &mut |e| progress.epoch(e));
        progress.finish();
        let trained = trained?;
        if let Some(path) = &plot {
            let title = format!(
                "{title}, validation {} {:.4}",
                trained.primary_metric.name, trained.primary_metric.value
            );
            flotilla_train::write_loss_plot(path, &trained.history, trained.best_epoch, &title)?;
        }
        Ok(trained)
    })
    .await
    .context("the training thread panicked")??;
    let elapsed = started.elapsed();

    if let Some(out) = &args.out {
        let encoding = if out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            ArtifactEncoding::Json
        } else {
            ArtifactEncoding::MsgPack
        };
        tokio::fs::write(out, trained.artifact.to_bytes(encoding))
            .await
            .with_context(|| format!("writing the model to {}", out.display()))?;
    }
    tracing::info!(
        model = %args.name,
        epochs = trained.history.len(),
        best_epoch = trained.best_epoch,
        seconds = elapsed.as_secs_f64(),
        "training finished"
    );
    let published = match destination {
        None => None,
        Some((registry, key)) => {
            let bytes = trained.artifact.to_bytes(ArtifactEncoding::MsgPack);
            let metrics = trained.metrics.clone().into_iter().collect();
            Some(
                registry
                    .publish(&args.name, &bytes, metrics, key.as_ref(), args.promote)
                    .await?,
            )
        }
    };
    if args.json {
        let mut summary = summary(&args, &trained, elapsed);
        summary["published"] = match &published {
            None => serde_json::Value::Null,
            Some(p) => serde_json::json!({
                "version": p.version, "promoted": p.promoted, "reason": p.reason, "sha256": p.sha256,
            }),
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_text(&args, &trained, max_epochs, elapsed);
        if let Some(p) = &published {
            println!(
                "published {} version {}: {}",
                args.name, p.version, p.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(args: &TrainArgs, t: &Trained, elapsed: Duration) -> serde_json::Value {
    let meta = t.artifact.metadata.as_ref();
    serde_json::json!({
        "model": args.name,
        "kind": args.kind.name(),
        "task": meta.map(|m| m["task"].clone()),
        "data": args.data,
        "target": args.target,
        "epochs_run": t.history.len(),
        "best_epoch": t.best_epoch,
        "seconds": elapsed.as_secs_f64(),
        "train_rows": t.split.train.len(),
        "validation_rows": t.split.validation.len(),
        "metrics": t.metrics,
        "primary_metric": t.primary_metric,
        "out": args.out,
        "plot": args.plot,
    })
}

fn print_text(args: &TrainArgs, t: &Trained, max_epochs: usize, elapsed: Duration) {
    let stopped = if t.history.len() < max_epochs {
        " (stopped early)"
    } else {
        ""
    };
    println!(
        "trained {} ({}) on {}, target `{}`: {} epochs{stopped}, best {}, {:.2} s",
        args.name,
        args.kind,
        args.data.display(),
        args.target,
        t.history.len(),
        t.best_epoch,
        elapsed.as_secs_f64()
    );
    println!(
        "validation: {} rows ({} trained on)",
        t.split.validation.len(),
        t.split.train.len()
    );
    for (name, value) in &t.metrics {
        let primary = if *name == t.primary_metric.name {
            "  (primary)"
        } else {
            ""
        };
        println!("  {name:<9} {value:.4}{primary}");
    }
    match &args.out {
        Some(out) => println!("wrote {}", out.display()),
        None => println!("artifact not written to a file (pass --out FILE for that)"),
    }
    if let Some(plot) = &args.plot {
        println!("wrote {}", plot.display());
    }
}

/// Per-epoch progress on stderr: a bar when it is a terminal, otherwise a log line every
/// `every` epochs so long runs do not flood the log.
enum Progress {
    Bar(ProgressBar, &'static str),
    Log { every: usize, metric: &'static str },
}

impl Progress {
    fn new(epochs: usize, task: Task) -> Progress {
        let metric = match task {
            Task::Regression => "r2",
            Task::Classification | Task::Auto => "accuracy",
        };
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(epochs as u64);
            bar.set_style(
                ProgressStyle::with_template("epoch {pos:>4}/{len} [{bar:30}] {msg} ({elapsed})")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            Progress::Bar(bar, metric)
        } else {
            Progress::Log {
                every: (epochs / 20).max(1),
                metric,
            }
        }
    }

    fn epoch(&self, e: &EpochStats) {
        match self {
            Progress::Bar(bar, metric) => {
                bar.set_position(e.epoch as u64);
                bar.set_message(format!(
                    "loss {}  val loss {}  val {metric} {:.4}",
                    loss(e.train_loss),
                    loss(e.val_loss),
                    e.val_metric
                ));
            }
            Progress::Log { every, metric } => {
                if e.epoch == 1 || e.epoch.is_multiple_of(*every) {
                    tracing::info!(
                        epoch = e.epoch,
                        train_loss = e.train_loss,
                        val_loss = e.val_loss,
                        metric,
                        value = e.val_metric,
                        "epoch"
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar, _) = self {
            bar.abandon();
        }
    }
}

/// Four decimals, or four significant digits for losses too small for that.
fn loss(value: f64) -> String {
    if value != 0.0 && value.abs() < 1e-3 {
        format!("{value:.3e}")
    } else {
        format!("{value:.4}")
    }
}
