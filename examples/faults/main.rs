//! End-to-end fault injection against real `nats-server` and `flotilla worker` processes, all
//! on 127.0.0.1, every wait bounded: what `scripts/faults.sh` runs (issue 8). Each scenario
//! prints its figures and a `PASS`/`FAIL` line and exits 1 when it fails, so the script can
//! report every scenario and still fail as a whole.
//!
//! - `broker-restart`: a worker serving a file answers again within 2 s of nats-server coming
//!   back (killed, then started on the same port after an outage of up to 10 s), for a fresh
//!   client and one that stayed connected.
//! - `sigkill`: two workers, one SIGKILLed under load; a client that retries keeps getting
//!   answers.
//! - `cluster`: three clustered nats-servers with JetStream, registry buckets with three
//!   replicas; the node leading the manifests stream is killed, a new version is published
//!   and must be served by both registry workers, the node comes back; repeated.
//! - `sigterm`: SIGTERM to a worker under load, N times: every request it accepted is
//!   answered and it exits 0 promptly; then SIGTERM to idle workers (issue 8, item 6).
//!
//! Build with `cargo build --release --example faults` (the script does). The cluster and
//! sigterm scenarios are in their own modules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use flotilla_proto::{Client, ClientError, RequestSpec};
use flotilla_registry::{Promote, Registry, RegistryConfig};
use flotilla_testkit::NatsServer;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

mod cluster;
mod sigterm;

use cluster::cluster;
use sigterm::sigterm;

#[derive(Debug, Parser)]
#[command(name = "faults", about = "Fault injection against a local fleet")]
struct Args {
    /// The `flotilla` binary [default: target/release/flotilla].
    #[arg(long, global = true)]
    flotilla: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Kill nats-server under a file-serving worker and start it again after 0, 0, 1, 3, 5
    /// and 10 s.
    BrokerRestart {
        #[arg(long, default_value_t = 6)]
        rounds: usize,
    },
    /// SIGKILL one of two workers under load from a retrying client.
    Sigkill {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A 3-node cluster losing the manifests stream's leader, ROUNDS times.
    Cluster {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// SIGTERM under load ROUNDS times, then to IDLE idle workers.
    Sigterm {
        #[arg(long, default_value_t = 100)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        idle: usize,
    },
}

const MODEL: &str = "iris";
/// Requests in flight at once from the load generator.
const CONCURRENCY: usize = 8;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let flotilla = match args.flotilla {
        Some(path) => path,
        None => repo().join("target/release/flotilla"),
    };
    anyhow::ensure!(
        flotilla.exists(),
        "{} not found; run `cargo build --release` first",
        flotilla.display()
    );
    let fleet = Fleet { flotilla };
    match args.scenario {
        Scenario::BrokerRestart { rounds } => broker_restart(&fleet, rounds).await,
        Scenario::Sigkill { rounds } => sigkill(&fleet, rounds).await,
        Scenario::Cluster { rounds } => cluster(&fleet, rounds).await,
        Scenario::Sigterm { rounds, idle } => sigterm(&fleet, rounds, idle).await,
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn verdict(name: &str, ok: bool, why: &str) -> bool {
    println!("{name}: {} {why}", if ok { "PASS" } else { "FAIL" });
    ok
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Starts `flotilla worker` processes.
struct Fleet {
    flotilla: PathBuf,
}

/// A `flotilla worker` process; killed on drop.
struct WorkerProcess {
    child: Child,
    pid: nix::unistd::Pid,
}

impl Fleet {
    /// A worker serving `iris` from `models/<file>.json` (`Some`) or following the registry
    /// (`None`), connected to `urls`.
    fn worker(&self, urls: &str, file: Option<&str>, env: &[(&str, &str)]) -> WorkerProcess {
        self.worker_logged(urls, file, env, None)
    }

    /// [`Fleet::worker`] with its log (`info` and up) appended to `log`.
    fn worker_logged(
        &self,
        urls: &str,
        file: Option<&str>,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> WorkerProcess {
        let mut cmd = Command::new(&self.flotilla);
        cmd.args(["worker", "--nats", urls, "--metrics-addr", ""]);
        match file {
            Some(file) => cmd.arg("--model").arg(format!(
                "{MODEL}={}",
                repo().join(format!("models/{file}.json")).display()
            )),
            None => cmd.args(["--models", MODEL]),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("a worker log file"),
            ),
            None => Stdio::null(),
        };
        let child = cmd
            .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("starting flotilla worker");
        let pid = nix::unistd::Pid::from_raw(child.id().expect("just started") as i32);
        WorkerProcess { child, pid }
    }
}

impl WorkerProcess {
    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid, signal);
    }

    /// Waits up to `limit` for the process to exit: its status and how long it took.
    async fn exit_within(
        &mut self,
        limit: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let start = Instant::now();
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Some((status, start.elapsed())),
            _ => None,
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------------------------
// Clients

async fn connect(urls: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.parse())
        .collect::<Result<_, _>>()?;
    // The reconnection backoff flotilla's own clients use (`NatsConfig::connect`), so "a
    // client that stayed connected" measures what a flotilla client sees.
    Ok(async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .reconnect_delay_callback(flotilla_proto::connect::reconnect_delay)
        .retry_on_initial_connect()
        .connect(servers)
        .await?)
}

fn row() -> Vec<Vec<f64>> {
    vec![vec![5.1, 3.5, 1.4, 0.2]]
}

fn spec(timeout: Duration) -> RequestSpec {
    RequestSpec {
        timeout,
        ..RequestSpec::default()
    }
}

/// Time until a *new* connection gets an answer from `model`, trying every 10 ms.
async fn fresh_answer(urls: &str, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let attempt = async {
            let nats = connect(urls).await.ok()?;
            Client::new(nats)
                .predict_with(MODEL, &row(), spec(Duration::from_millis(250)))
                .await
                .ok()
        };
        if tokio::time::timeout(Duration::from_millis(500), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Time until `client` (an existing connection) gets an answer, trying every 10 ms.
async fn answer(client: &Client, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if client
            .predict_with(MODEL, &row(), spec(Duration::from_millis(250)))
            .await
            .is_ok()
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// What the load generator saw. Attempts are single requests; a request with retries is
/// `ok` or `failed` once, whatever its attempts were.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    ok: AtomicU64,
    ok_after_retry: AtomicU64,
    failed: AtomicU64,
    /// Attempts that got no reply within their timeout: unanswered.
    timeouts: AtomicU64,
    /// Attempts no worker was subscribed for (never accepted by anyone).
    no_responders: AtomicU64,
    /// Attempts answered with an error reply (503 while draining, ...).
    error_replies: AtomicU64,
    /// Attempts that failed in NATS itself (disconnected, ...).
    other: AtomicU64,
    /// Answers by version.
    versions: std::sync::Mutex<BTreeMap<u64, u64>>,
}

impl Counts {
    fn get(v: &AtomicU64) -> u64 {
        v.load(Relaxed)
    }

    fn line(&self) -> String {
        format!(
            "requests {}, ok {} ({} after a retry), failed {}; attempts: {} unanswered (timeout), {} no responders, {} error replies, {} other",
            Self::get(&self.requests),
            Self::get(&self.ok),
            Self::get(&self.ok_after_retry),
            Self::get(&self.failed),
            Self::get(&self.timeouts),
            Self::get(&self.no_responders),
            Self::get(&self.error_replies),
            Self::get(&self.other),
        )
    }
}

/// A closed loop of `CONCURRENCY` tasks until `stop`; each request is tried up to
/// `1 + retries` times, each attempt waiting at most `timeout`.
fn load(
    client: Client,
    timeout: Duration,
    retries: usize,
    stop: CancellationToken,
) -> (Arc<Counts>, tokio::task::JoinSet<()>) {
    let counts = Arc::new(Counts::default());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, counts, stop) = (client.clone(), counts.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                counts.requests.fetch_add(1, Relaxed);
                let mut done = false;
                for attempt in 0..=retries {
                    // The request's own timeout bounds it; this outer one catches a client
                    // that never comes back at all.
                    let result = tokio::time::timeout(
                        timeout + Duration::from_secs(1),
                        client.predict_with(MODEL, &row(), spec(timeout)),
                    )
                    .await;
                    match result {
                        Ok(Ok(p)) => {
                            counts.ok.fetch_add(1, Relaxed);
                            if attempt > 0 {
                                counts.ok_after_retry.fetch_add(1, Relaxed);
                            }
                            *counts
                                .versions
                                .lock()
                                .unwrap()
                                .entry(p.version)
                                .or_default() += 1;
                            done = true;
                            break;
                        }
                        Ok(Err(ClientError::Timeout { .. })) | Err(_) => {
                            counts.timeouts.fetch_add(1, Relaxed);
                        }
                        Ok(Err(ClientError::NoResponders { .. })) => {
                            counts.no_responders.fetch_add(1, Relaxed);
                            // Nobody is listening: do not spin.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Ok(Err(ClientError::Service(_))) => {
                            counts.error_replies.fetch_add(1, Relaxed);
                        }
                        Ok(Err(_)) => {
                            counts.other.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                if !done {
                    counts.failed.fetch_add(1, Relaxed);
                }
            }
        });
    }
    (counts, tasks)
}

async fn finish(stop: CancellationToken, mut tasks: tokio::task::JoinSet<()>) {
    stop.cancel();
    while tasks.join_next().await.is_some() {}
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// A plain `nats-server` on a fixed loopback port that can be stopped for a while.
struct Broker {
    port: u16,
    child: Option<std::process::Child>,
}

impl Broker {
    fn start(port: u16) -> anyhow::Result<Broker> {
        let mut broker = Broker { port, child: None };
        broker.up()?;
        Ok(broker)
    }

    fn up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = std::process::Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting nats-server")?;
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if child.try_wait()?.is_some() {
                    break; // the port is not free yet: start it again
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Outages, in seconds, one per round: an immediate restart, then longer ones, where the
/// worker's reconnect backoff has grown.
const OUTAGES: [u64; 6] = [0, 0, 1, 3, 5, 10];

async fn broker_restart(fleet: &Fleet, rounds: usize) -> anyhow::Result<bool> {
    let mut broker = Broker::start(free_port()?)?;
    let url = broker.url();
    let _worker = fleet.worker(&url, Some("iris"), &[]);
    fresh_answer(&url, Duration::from_secs(20))
        .await
        .context("the worker never answered")?;
    let stayed = Client::new(connect(&url).await?);
    let mut worst = Duration::ZERO;
    let mut all = true;
    for round in 1..=rounds {
        let outage = Duration::from_secs(OUTAGES[(round - 1) % OUTAGES.len()]);
        broker.kill();
        tokio::time::sleep(outage).await;
        broker.up()?;
        let (fresh, old) = tokio::join!(
            fresh_answer(&url, Duration::from_secs(30)),
            answer(&stayed, Duration::from_secs(30))
        );
        let show = |d: Option<Duration>| d.map(ms).unwrap_or_else(|| "never (30 s)".into());
        println!(
            "round {round}: nats-server killed, down {} s; the worker answers {} after it accepts connections again (new client), {} (client that stayed connected)",
            outage.as_secs(),
            show(fresh),
            show(old)
        );
        match fresh {
            Some(d) => worst = worst.max(d),
            None => all = false,
        }
        if old.is_none() {
            all = false;
        }
    }
    Ok(verdict(
        "broker-restart",
        all && worst <= Duration::from_secs(2),
        &format!("worst time to serving again {} (limit 2 s)", ms(worst)),
    ))
}

async fn sigkill(fleet: &Fleet, rounds: usize) -> anyhow::Result<bool> {
    let server = NatsServer::start()?;
    let url = server.url();
    let mut failed_total = 0;
    for round in 1..=rounds {
        let mut victim = fleet.worker(&url, Some("iris"), &[]);
        let _survivor = fleet.worker(&url, Some("iris"), &[]);
        fresh_answer(&url, Duration::from_secs(20))
            .await
            .context("the workers never answered")?;
        // Both subscribed: give the second a moment to be ready too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let client = Client::new(connect(&url).await?);
        let stop = CancellationToken::new();
        let (counts, tasks) = load(client, Duration::from_millis(500), 3, stop.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = Counts::get(&counts.ok);
        victim.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = victim.exit_within(Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = Counts::get(&counts.ok) - before;
        finish(stop, tasks).await;
        failed_total += Counts::get(&counts.failed);
        println!(
            "round {round}: {}; {after} answered in the 3 s after the kill",
            counts.line()
        );
        if after == 0 {
            failed_total += 1;
        }
    }
    Ok(verdict(
        "sigkill",
        failed_total == 0,
        &format!("{failed_total} requests failed after retries"),
    ))
}
