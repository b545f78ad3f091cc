//! The operations stack's checks (issue 10), run as tests so CI runs them: the Prometheus
//! configuration, rules and alert unit tests, the compose file against the Compose
//! Specification, and every dashboard query against a real Prometheus scraping a real worker
//! under load. They need Debian's `prometheus` package (promtool) and Python; `.ci/run`
//! installs both, and a missing one fails here with what to install.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: `apt-get install prometheus` (Debian) gives promtool and \
         prometheus; .ci/run installs it"
    );
}

fn run(script: &str, args: &[&str]) {
    let out = Command::new("bash")
        .arg(repo().join(script))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_rules_alerts_and_compose_file_check_out() {
    require("promtool");
    run("scripts/check_deploy.sh", &[]);
}

/// A real worker process under load from a client, scraped by a real Prometheus with the
/// shipped rules: every dashboard query is valid and the panels a healthy fleet fills have
/// data.
#[test]
fn every_dashboard_query_runs_against_a_live_worker() {
    require("prometheus");
    let server = flotilla_testkit::NatsServer::start().expect("nats-server on PATH");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let model = repo().join("models/iris.json");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["worker", "--nats", &server.url(), "--metrics-addr", &addr])
        .arg("--model")
        .arg(format!("iris={}", model.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Load for as long as the check runs: a closed loop of predictions, bounded in time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop) = (server.url(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let nats = async_nats::connect(url).await.unwrap();
                let client = flotilla_proto::Client::new(nats);
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(180)
                {
                    let _ = client.predict("iris", &[vec![5.1, 3.5, 1.4, 0.2]]).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
    };
    let outcome = std::panic::catch_unwind(|| run("scripts/check_prometheus_live.sh", &[&addr]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
