//! The `flotilla` binary: parse flags, load settings, set up logging, run one subcommand.
//! Everything it calls lives in the workspace's library crates (`crates/`); `cli/` only wires
//! them together, and `settings` layers every subcommand's settings.

// Flag and subcommand help is written as doc comments (clap reads them), so their brackets and
// angle brackets are help text, not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cli;
mod settings;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_tracing(&args);
    let runtime = match runtime_for(&args.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        // `flotilla ... | head`: the reader has what it wanted.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The async runtime a subcommand runs on.
///
/// A worker's runtime only moves messages: every forward pass runs on its model's batch
/// thread or the compute pool, and large bodies are decoded there too. One thread does that
/// best: on a 2-core machine shared with the broker, the worker spent 10.6 µs of CPU per 1-row
/// request on tokio's multi-thread runtime (its two threads waking each other for every
/// batch) and 8.6 µs on one thread, at higher throughput (BENCHMARKS.md, issue 9). A worker
/// uses more cores through its compute pool, and a fleet through more workers. The other
/// subcommands (the HTTP gateway, the demo fleet, the load generator) keep the multi-thread
/// runtime.
fn runtime_for(command: &cli::Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        cli::Command::Worker(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
}

/// The error and its causes on one line, like `{:#}`, but skipping a cause whose text the
/// message before it already includes (many library errors name their source).
fn report(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
