//! `flotilla-fuzz`: run the fuzz targets (`run`), check or minimise one input (`check`,
//! `minimize`), rewrite the seed corpus (`write-corpus`). `child` is what `run` starts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_fuzz::alloc::{self, Counting};
use flotilla_fuzz::engine::{self, Budget, Event};
use flotilla_fuzz::supervise::{self, Options};
use flotilla_fuzz::{corpus, Target};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The stack of a tokio worker thread and of rayon's: a parser must not need more.
const STACK: usize = 2 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-fuzz",
    about = "Fuzz flotilla's parsers of untrusted bytes"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run targets for N inputs each; exit 1 if anything was found.
    Run {
        /// Targets to run [default: all].
        #[arg(long = "target", value_enum)]
        targets: Vec<Target>,
        #[arg(long, default_value_t = 1_000_000)]
        inputs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_name = "DIR")]
        corpus: Option<PathBuf>,
        /// Where crashing inputs are written [default: fuzz/crashes].
        #[arg(long, value_name = "DIR")]
        crashes: Option<PathBuf>,
        /// Heap ceiling per child, MiB.
        #[arg(long, default_value_t = 1024)]
        ceiling_mib: usize,
        /// Seconds after which one input counts as a hang.
        #[arg(long, default_value_t = 20)]
        hang_secs: u64,
    },
    /// Run inputs FROM..TO and report on stdout (started by `run`).
    #[command(hide = true)]
    Child {
        #[arg(long, value_enum)]
        target: Target,
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[arg(long)]
        ceiling_mib: usize,
        #[arg(long)]
        trace: bool,
    },
    /// Run input files through a target; exit 1 on a finding (or die as the target does).
    Check {
        #[arg(long, value_enum)]
        target: Target,
        files: Vec<PathBuf>,
        #[arg(long, default_value_t = 1024)]
        ceiling_mib: usize,
    },
    /// Shrink an input while it still fails the same way; writes FILE.min.
    Minimize {
        #[arg(long, value_enum)]
        target: Target,
        file: PathBuf,
        /// The heap ceiling the input was found with, MiB.
        #[arg(long, default_value_t = 1024)]
        ceiling_mib: usize,
    },
    /// Write input INDEX of a run (seed, corpus) to OUT: any finding, rebuilt.
    Input {
        #[arg(long, value_enum)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        index: u64,
        #[arg(long, value_name = "DIR")]
        corpus: Option<PathBuf>,
        out: PathBuf,
    },
    /// Write the seed corpus (models/*.json, every request form, registry manifests).
    WriteCorpus {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Cmd::Run {
            targets,
            inputs,
            seed,
            corpus,
            crashes,
            ceiling_mib,
            hang_secs,
        } => {
            let here = Path::new(env!("CARGO_MANIFEST_DIR"));
            let opts = Options {
                exe: std::env::current_exe()?,
                corpus_dir: corpus.unwrap_or_else(corpus::default_dir),
                crash_dir: crashes.unwrap_or_else(|| here.join("crashes")),
                seed,
                inputs,
                ceiling_mib,
                hang: Duration::from_secs(hang_secs.max(1)),
            };
            let targets = if targets.is_empty() {
                Target::ALL.to_vec()
            } else {
                targets
            };
            fuzz_all(&targets, &opts)
        }
        Cmd::Child {
            target,
            corpus,
            seed,
            from,
            to,
            ceiling_mib,
            trace,
        } => {
            let corpus = corpus::load(&corpus, target)?;
            engine::quiet_panics();
            alloc::set_ceiling(ceiling_mib << 20);
            on_small_stack(move || child(target, &corpus, seed, from..to, trace))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check {
            target,
            files,
            ceiling_mib,
        } => {
            engine::quiet_panics();
            alloc::set_ceiling(ceiling_mib << 20);
            let mut failed = false;
            for file in files {
                let input =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let result =
                    on_small_stack(move || engine::check(target, &input, Budget::default()))?;
                match result {
                    Ok(accepted) => println!(
                        "ok {} {}",
                        if accepted { "accepted" } else { "refused" },
                        file.display()
                    ),
                    Err((kind, message)) => {
                        failed = true;
                        println!("finding {} {message}", kind.as_str());
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Minimize {
            target,
            file,
            ceiling_mib,
        } => {
            let input = std::fs::read(&file)?;
            let exe = std::env::current_exe()?;
            let small = minimize(&exe, target, ceiling_mib, input)?;
            let out = file.with_extension("min");
            std::fs::write(&out, &small)?;
            println!("{} bytes written to {}", small.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Input {
            target,
            seed,
            index,
            corpus,
            out,
        } => {
            let corpus = corpus::load(&corpus.unwrap_or_else(corpus::default_dir), target)?;
            std::fs::write(&out, flotilla_fuzz::mutate::input(&corpus, seed, index))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::WriteCorpus { dir } => {
            let dir = dir.unwrap_or_else(corpus::default_dir);
            let n = corpus::write(&dir)?;
            println!("{n} seeds written under {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `f` on a thread with a worker thread's stack, so a parser that recurses too deep
/// for a worker overflows here too.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)?
        .join()
        .map_err(|_| anyhow::anyhow!("the fuzz thread panicked outside a target"))
}

fn child(target: Target, corpus: &[Vec<u8>], seed: u64, range: std::ops::Range<u64>, trace: bool) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    engine::run_range(
        target,
        corpus,
        seed,
        range,
        Budget::default(),
        trace,
        |event| {
            // A write error means the parent is gone: nothing left to report to.
            let _ = match event {
                Event::Start(i) => writeln!(out, "start {i}").and_then(|_| out.flush()),
                Event::Progress { next, accepted } => {
                    writeln!(out, "progress {next} {accepted}").and_then(|_| out.flush())
                }
                Event::Finding(f) => {
                    let message = f.message.replace(['\n', '\r'], " ");
                    writeln!(out, "finding {} {} {message}", f.index, f.kind.as_str())
                        .and_then(|_| out.flush())
                }
            };
        },
    );
}

fn fuzz_all(targets: &[Target], opts: &Options) -> anyhow::Result<ExitCode> {
    println!(
        "flotilla-fuzz: {} inputs per target, seed {}, heap ceiling {} MiB, corpus {}",
        opts.inputs,
        opts.seed,
        opts.ceiling_mib,
        opts.corpus_dir.display()
    );
    let mut reports = Vec::new();
    for &target in targets {
        let report = supervise::fuzz(target, opts)?;
        println!(
            "{:<16} {:>10} inputs {:>8.1} s {:>10.0} inputs/s  {:>5.1}% accepted  {} findings ({} distinct)",
            target.name(),
            report.inputs,
            report.elapsed.as_secs_f64(),
            report.rate(),
            100.0 * report.accepted as f64 / report.inputs.max(1) as f64,
            report.findings.len(),
            report.unique.len(),
        );
        for (f, path) in &report.unique {
            println!(
                "  {} at input {}: {}\n    input: {}",
                f.kind.as_str(),
                f.index,
                f.message,
                path.display()
            );
        }
        reports.push(report);
    }
    let total: usize = reports.iter().map(|r| r.findings.len()).sum();
    println!(
        "total: {} inputs, {:.1} s, {total} findings",
        reports.iter().map(|r| r.inputs).sum::<u64>(),
        reports.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>()
    );
    Ok(if total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How an input fails, for minimising: the kind, and for a panic where it happened.
fn failure(
    exe: &Path,
    target: Target,
    ceiling_mib: usize,
    input: &[u8],
    scratch: &Path,
) -> anyhow::Result<Option<String>> {
    std::fs::write(scratch, input)?;
    let out = std::process::Command::new(exe)
        .args(["check", "--target", target.name()])
        .args(["--ceiling-mib", &ceiling_mib.to_string()])
        .arg(scratch)
        .stderr(std::process::Stdio::piped())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = stdout.lines().find(|l| l.starts_with("finding ")) {
        let mut words = line.splitn(3, ' ').skip(1);
        let kind = words.next().unwrap_or("");
        let message = words.next().unwrap_or("");
        let f = flotilla_fuzz::Finding {
            index: 0,
            kind: flotilla_fuzz::Kind::parse(kind).unwrap_or(flotilla_fuzz::Kind::Panic),
            message: message.to_owned(),
        };
        return Ok(Some(match f.kind {
            flotilla_fuzz::Kind::Panic => f.signature(),
            k => k.as_str().to_owned(),
        }));
    }
    if out.status.success() {
        return Ok(None);
    }
    Ok(Some("abort".into()))
}

/// Delta debugging by deletion: drop ever smaller chunks while the failure stays the same.
fn minimize(
    exe: &Path,
    target: Target,
    ceiling_mib: usize,
    mut input: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let scratch = std::env::temp_dir().join(format!("flotilla-fuzz-min-{}", std::process::id()));
    let want = failure(exe, target, ceiling_mib, &input, &scratch)?
        .context("the input does not fail; nothing to minimise")?;
    eprintln!("minimising {} bytes that fail with: {want}", input.len());
    let mut chunk = input.len().div_ceil(2).max(1);
    loop {
        let mut at = 0;
        let mut shrunk = false;
        while at < input.len() {
            let end = (at + chunk).min(input.len());
            let mut candidate = input.clone();
            candidate.drain(at..end);
            if failure(exe, target, ceiling_mib, &candidate, &scratch)?.as_deref()
                == Some(want.as_str())
            {
                input = candidate;
                shrunk = true;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 && !shrunk {
            break;
        }
        if !shrunk {
            chunk = chunk.div_ceil(2);
        }
    }
    let _ = std::fs::remove_file(&scratch);
    Ok(input)
}
