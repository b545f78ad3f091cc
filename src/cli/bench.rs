//! `flotilla bench`: closed-loop load against a model, optionally beside a bare echo
//! responder measured in the same run.

use std::process::ExitCode;
use std::time::Duration;

use super::load::{self as bench, LoadSpec, Report};
use anyhow::Context;
use flotilla_proto::client::Client;
use flotilla_proto::Encoding;
use tokio_util::sync::CancellationToken;

use super::{NatsArgs, WorkerProcesses};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Model to load (a worker must be serving it).
    #[arg(long)]
    model: String,
    /// Requests in flight at once (one task each, closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// NATS connections the tasks are spread over: one connection tops out near 20k req/s,
    /// well below what a worker takes.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    connections: usize,
    /// Send this file's bytes as every request body (JSON, or MessagePack such as a binary
    /// tensor request) instead of generated rows.
    #[arg(long, value_name = "FILE")]
    payload: Option<std::path::PathBuf>,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Features per row [default: asked of the fleet through the services API].
    #[arg(long)]
    features: Option<usize>,
    /// Send MessagePack instead of JSON.
    #[arg(long)]
    msgpack: bool,
    /// Send each request as one MessagePack binary f32 tensor (`inputs: {shape, dtype,
    /// data}`), the fast path for numeric models; implies --msgpack.
    #[arg(long)]
    binary: bool,
    /// Also run the same load against a bare echo responder, alternating with the model.
    #[arg(long)]
    echo: bool,
    /// With --echo: how many echo/model pairs to run; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
    /// Swap latency: publish this many new versions of a ~--swap-bytes model to the registry
    /// as --model, and time each manifest change until every worker serves it.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    swaps: Option<usize>,
    /// Size of the swapped model (MessagePack bytes) for --swaps.
    #[arg(long, default_value_t = 1_000_000)]
    swap_bytes: usize,
    /// Throughput under swapping: alternate rounds without swaps and with a new version of
    /// --model (a small linear model) promoted every MS milliseconds.
    #[arg(long, value_name = "MS")]
    swap_every_ms: Option<u64>,
    /// With --swaps or --swap-every-ms: start this many `flotilla worker --models MODEL`
    /// processes for the measurement and stop them after.
    #[arg(long, default_value_t = 2)]
    spawn_workers: usize,
}

impl BenchArgs {
    /// The closed loop these flags describe.
    fn load_spec(&self, features: usize, payload: Option<bytes::Bytes>) -> LoadSpec {
        LoadSpec {
            concurrency: self.concurrency.max(1),
            duration: Duration::from_secs_f64(self.duration),
            rows: self.rows.max(1),
            features,
            binary: self.binary,
            encoding: match &payload {
                Some(body) => Encoding::detect(None, body).expect("sniffing never fails"),
                None if self.msgpack || self.binary => Encoding::MsgPack,
                None => Encoding::Json,
            },
            timeout: Duration::from_secs(5),
            payload,
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let settings = args.nats.settings()?;
    let nats = settings.nats.connect("flotilla-bench").await?;
    if args.swaps.is_some() || args.swap_every_ms.is_some() {
        return swapping(&args, &settings, nats).await;
    }
    let payload = match &args.payload {
        Some(path) => Some(bytes::Bytes::from(
            std::fs::read(path).with_context(|| format!("reading --payload {}", path.display()))?,
        )),
        None => None,
    };
    let features = match args.features {
        Some(n) => n,
        None if payload.is_some() => 0,
        None => bench::discover_features(&nats, &args.model)
            .await
            .with_context(|| {
                format!(
                    "no worker reported model {:?} on $SRV.STATS.flotilla; start one, or pass --features",
                    args.model
                )
            })?,
    };
    let spec = args.load_spec(features, payload);
    let mut clients = vec![Client::new(nats.clone()).with_prefix(settings.subject_prefix.clone())];
    for _ in 1..args.connections {
        let nats = settings.nats.connect("flotilla-bench").await?;
        clients.push(Client::new(nats).with_prefix(settings.subject_prefix.clone()));
    }
    let client = &clients[..];
    eprintln!(
        "bench: model {:?}, concurrency {} over {} connection(s), {}, {:?}, {:.1} s per run",
        args.model,
        spec.concurrency,
        clients.len(),
        match &spec.payload {
            Some(body) => format!("a {}-byte payload file", body.len()),
            None => format!("{} row(s) x {} features", spec.rows, spec.features),
        },
        spec.encoding,
        args.duration
    );
    // Warm connections and caches on both paths before measuring.
    let warm = LoadSpec {
        duration: Duration::from_millis(500),
        ..spec.clone()
    };
    let mut reports = Vec::new();
    if args.echo {
        let stop = CancellationToken::new();
        let echo_name = format!("bench-echo-{}", nuid::next());
        // Its own connection, like a separate responder process.
        let echo_nats = settings.nats.connect("flotilla-bench-echo").await?;
        let echo = bench::start_echo(
            echo_nats,
            &settings.subject_prefix,
            &echo_name,
            stop.clone(),
        )
        .await?;
        bench::run_load(client, &echo_name, "echo", &warm).await;
        bench::run_load(client, &args.model, &args.model, &warm).await;
        let mut throughput = Vec::new();
        let mut p99 = Vec::new();
        for round in 1..=args.rounds.max(1) {
            let e = bench::run_load(client, &echo_name, "echo", &spec).await;
            let m = bench::run_load(client, &args.model, &args.model, &spec).await;
            if !args.json {
                println!("round {round}\n  {e}\n  {m}");
            }
            throughput.push(m.requests_per_sec / e.requests_per_sec);
            p99.push(m.p99_ms / e.p99_ms);
            reports.push(e);
            reports.push(m);
        }
        stop.cancel();
        let _ = echo.await;
        let (t, p) = (bench::median(throughput), bench::median(p99));
        if args.json {
            println!(
                "{}",
                serde_json::json!({"reports": reports, "median_throughput_ratio": t, "median_p99_ratio": p})
            );
        } else {
            println!(
                "median model/echo throughput ratio: {t:.3}   median model/echo p99 ratio: {p:.3}"
            );
        }
    } else {
        bench::run_load(client, &args.model, &args.model, &warm).await;
        let report: Report = bench::run_load(client, &args.model, &args.model, &spec).await;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{report}");
        }
        reports.push(report);
    }
    let failed = reports.iter().any(|r| r.ok == 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The registry benchmarks: swap latency (`--swaps`) and throughput under swapping
/// (`--swap-every-ms`), each against workers this command starts.
async fn swapping(
    args: &BenchArgs,
    settings: &flotilla_worker::WorkerConfig,
    nats: async_nats::Client,
) -> anyhow::Result<ExitCode> {
    use flotilla_model::ArtifactEncoding;
    use flotilla_registry::{Promote, Registry};
    let registry = Registry::open(nats.clone(), &settings.registry).await?;
    let model = args.model.as_str();
    let features = args.features.unwrap_or(10);
    let first = if args.swaps.is_some() {
        bench::sized_mlp(args.swap_bytes, 999)
    } else {
        bench::linear_artifact(features, 0)
    };
    let first = first.to_bytes(ArtifactEncoding::MsgPack);
    eprintln!(
        "bench: publishing {model:?} ({} bytes) and starting {} workers",
        first.len(),
        args.spawn_workers
    );
    registry
        .publish(model, &first, Default::default(), None, Promote::Always)
        .await?;
    let mut workers = WorkerProcesses::default();
    for _ in 0..args.spawn_workers {
        let mut command = workers.command(&settings.nats.url, args.nats.config.as_deref())?;
        command.args(["--models", model, "--metrics-addr", ""]);
        workers.spawn(command)?;
    }
    let wait = async {
        while bench::fleet_versions(&nats, model, Duration::from_millis(50))
            .await
            .iter()
            .filter(|v| v.is_some())
            .count()
            < args.spawn_workers
        {}
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .context("the workers did not come up within 30 s")?;
    let outcome = if let Some(swaps) = args.swaps {
        let latencies = bench::swap_latencies(
            &nats,
            &registry,
            model,
            args.spawn_workers,
            swaps,
            args.swap_bytes,
        )
        .await?;
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let pct =
            |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1];
        let report = serde_json::json!({
            "swaps": sorted.len(), "workers": args.spawn_workers, "model_bytes": first.len(),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": sorted[sorted.len() - 1],
            "mean_ms": sorted.iter().sum::<f64>() / sorted.len() as f64,
        });
        if args.json {
            println!("{report}");
        } else {
            println!(
                "swap latency over {} swaps of a {} byte model to {} workers: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                sorted.len(), first.len(), args.spawn_workers, pct(0.5), pct(0.99), sorted[sorted.len() - 1]
            );
        }
        Ok(())
    } else {
        let every = Duration::from_millis(args.swap_every_ms.unwrap_or(100));
        let spec = args.load_spec(features, None);
        let client = &[Client::new(nats.clone()).with_prefix(settings.subject_prefix.clone())][..];
        let mut ratios = Vec::new();
        let mut swapped = 0u64;
        for round in 1..=args.rounds.max(1) {
            let calm = bench::run_load(client, model, "no swaps", &spec).await;
            let stop = CancellationToken::new();
            let swapper = {
                let (registry, stop, model) = (registry.clone(), stop.clone(), model.to_owned());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.is_cancelled() {
                        let artifact = bench::linear_artifact(features, 1 + n)
                            .to_bytes(ArtifactEncoding::MsgPack);
                        if registry
                            .publish(&model, &artifact, Default::default(), None, Promote::Always)
                            .await
                            .is_ok()
                        {
                            n += 1;
                        }
                        tokio::time::sleep(every).await;
                    }
                    n
                })
            };
            let busy = bench::run_load(client, model, "swapping", &spec).await;
            stop.cancel();
            let n = swapper.await.unwrap_or(0);
            swapped += n;
            if !args.json {
                println!("round {round}\n  {calm}\n  {busy}  ({n} swaps)");
            }
            ratios.push(busy.requests_per_sec / calm.requests_per_sec);
        }
        let ratio = bench::median(ratios);
        if args.json {
            println!(
                "{}",
                serde_json::json!({"median_throughput_ratio": ratio, "swaps": swapped})
            );
        } else {
            println!("median throughput ratio, swapping every {every:?} / no swaps: {ratio:.3} ({swapped} swaps)");
        }
        Ok(())
    };
    workers.stop().await;
    outcome.map(|()| ExitCode::SUCCESS)
}

/// `--swaps` counts swaps to time: zero would leave nothing to report.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
