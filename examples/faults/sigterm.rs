//! The `sigterm` scenario: SIGTERM to a worker under load, then to idle ones (issue 8, item 6).

use super::*;

/// Under load: SIGTERM, then the exit status and time, and how every request ended.
pub(crate) async fn sigterm(fleet: &Fleet, rounds: usize, idle: usize) -> anyhow::Result<bool> {
    let server = NatsServer::start()?;
    let url = server.url();
    // A hang is cut at 5 s instead of the default 30, so 100 rounds stay bounded; a worker
    // that needs the cut-off is counted as a hang either way.
    let env = [("FLOTILLA_SHUTDOWN_TIMEOUT_SECS", "5")];
    let client = Client::new(connect(&url).await?);
    let (mut unanswered, mut hangs, mut bad_exits) = (0u64, 0usize, 0usize);
    let mut exit_times = Vec::new();
    let mut totals = [0u64; 4];
    for round in 1..=rounds {
        let mut worker = fleet.worker(&url, Some("iris"), &env);
        if answer(&client, Duration::from_secs(20)).await.is_none() {
            bail!("round {round}: the worker never answered");
        }
        let stop = CancellationToken::new();
        // The client waits longer than the worker's cut-off, so a request is unanswered only
        // if the worker never answers it.
        let (counts, tasks) = load(client.clone(), Duration::from_secs(8), 0, stop.clone());
        tokio::time::sleep(Duration::from_millis(150 + (round as u64 * 37) % 300)).await;
        worker.signal(nix::sys::signal::Signal::SIGTERM);
        let exited = worker.exit_within(Duration::from_secs(15)).await;
        // Requests still in flight get their full timeout to come back.
        finish(stop, tasks).await;
        let lost = Counts::get(&counts.timeouts) + Counts::get(&counts.other);
        unanswered += lost;
        totals[0] += Counts::get(&counts.ok);
        totals[1] += Counts::get(&counts.no_responders);
        totals[2] += Counts::get(&counts.error_replies);
        totals[3] += lost;
        let line = match exited {
            Some((status, took)) => {
                exit_times.push(took);
                let slow = took > Duration::from_secs(2);
                hangs += usize::from(slow);
                bad_exits += usize::from(!status.success());
                if slow || !status.success() || lost > 0 {
                    format!(
                        "exit {status} after {}{}",
                        ms(took),
                        if slow { " (HANG)" } else { "" }
                    )
                } else {
                    String::new()
                }
            }
            None => {
                hangs += 1;
                bad_exits += 1;
                "no exit within 15 s (HANG)".into()
            }
        };
        if !line.is_empty() || lost > 0 {
            println!("round {round}: {line}; {}", counts.line());
        }
    }
    exit_times.sort();
    let pct = |p: f64| {
        exit_times
            .get(((exit_times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .map(ms)
            .unwrap_or_default()
    };
    println!(
        "under load: {rounds} SIGTERMs: exit time median {}, p90 {}, max {}; {hangs} hangs (> 2 s), {bad_exits} non-zero exits",
        pct(0.5),
        pct(0.9),
        pct(1.0)
    );
    println!(
        "requests: {} answered, {} never accepted (no responders), {} error replies, {} unanswered",
        totals[0], totals[1], totals[2], totals[3]
    );
    let under_load = verdict(
        "sigterm-under-load",
        unanswered == 0 && hangs == 0 && bad_exits == 0,
        &format!(
            "{unanswered} unanswered, {hangs} hangs, {bad_exits} non-zero exits in {rounds} rounds"
        ),
    );

    let mut idle_bad = 0;
    for round in 1..=idle {
        let mut worker = fleet.worker(&url, Some("iris"), &env);
        if answer(&client, Duration::from_secs(20)).await.is_none() {
            bail!("idle round {round}: the worker never answered");
        }
        // Idle for longer than the ~2 s after which issue 8, item 6 was seen.
        tokio::time::sleep(Duration::from_secs(3)).await;
        worker.signal(nix::sys::signal::Signal::SIGTERM);
        let exited = worker.exit_within(Duration::from_secs(15)).await;
        let (ok, text) = match exited {
            Some((status, took)) => (
                status.success() && took <= Duration::from_secs(1),
                format!("exit {status} after {}", ms(took)),
            ),
            None => (false, "no exit within 15 s".into()),
        };
        idle_bad += usize::from(!ok);
        println!(
            "idle round {round}: {text}{}",
            if ok {
                ""
            } else {
                " (BAD: want exit 0 within 1 s)"
            }
        );
    }
    let idle_ok = verdict(
        "sigterm-idle",
        idle_bad == 0,
        &format!("{idle_bad} of {idle} idle workers did not exit 0 within 1 s (issue 8, item 6)"),
    );
    Ok(under_load && idle_ok)
}
