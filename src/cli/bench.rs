//! `flotilla bench`: closed-loop load against a model, optionally beside a bare echo
//! responder measured in the same run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use flotilla::bench::{self, LoadSpec, Report};
use flotilla::client::Client;
use flotilla::protocol::Encoding;
use tokio_util::sync::CancellationToken;

use super::NatsArgs;

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
    /// Also run the same load against a bare echo responder, alternating with the model.
    #[arg(long)]
    echo: bool,
    /// With --echo: how many echo/model pairs to run; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let settings = args.nats.settings()?;
    let nats = settings.nats.connect("flotilla-bench").await?;
    let features = match args.features {
        Some(n) => n,
        None => bench::discover_features(&nats, &args.model)
            .await
            .with_context(|| {
                format!(
                    "no worker reported model {:?} on $SRV.STATS.flotilla; start one, or pass --features",
                    args.model
                )
            })?,
    };
    let spec = LoadSpec {
        concurrency: args.concurrency.max(1),
        duration: Duration::from_secs_f64(args.duration),
        rows: args.rows.max(1),
        features,
        encoding: if args.msgpack {
            Encoding::MsgPack
        } else {
            Encoding::Json
        },
        timeout: Duration::from_secs(5),
    };
    let client = Client::new(nats.clone()).with_prefix(settings.subject_prefix.clone());
    eprintln!(
        "bench: model {:?}, concurrency {}, {} row(s) x {} features, {:?}, {:.1} s per run",
        args.model, spec.concurrency, spec.rows, spec.features, spec.encoding, args.duration
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
        bench::run_load(&client, &echo_name, "echo", &warm).await;
        bench::run_load(&client, &args.model, &args.model, &warm).await;
        let mut throughput = Vec::new();
        let mut p99 = Vec::new();
        for round in 1..=args.rounds.max(1) {
            let e = bench::run_load(&client, &echo_name, "echo", &spec).await;
            let m = bench::run_load(&client, &args.model, &args.model, &spec).await;
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
        bench::run_load(&client, &args.model, &args.model, &warm).await;
        let report: Report = bench::run_load(&client, &args.model, &args.model, &spec).await;
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
