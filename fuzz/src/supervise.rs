//! Running a target for many inputs in child processes, so that what cannot be caught (an
//! allocation failure abort, a stack overflow, a hang) is still found and pinned to one input.
//!
//! A child runs a range of inputs and reports progress every few thousand. When it dies or
//! stops answering, the range since its last progress is run again in a child that announces
//! every input before running it: the last one announced is the culprit. Inputs are rebuilt
//! from (seed, index), so the parent writes the culprit to the crash directory itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::engine::{Finding, Kind};
use crate::mutate;
use crate::targets::Target;

/// How to run children and where to put what they find.
#[derive(Debug, Clone)]
pub struct Options {
    /// This binary, which has the `child` subcommand.
    pub exe: PathBuf,
    pub corpus_dir: PathBuf,
    pub crash_dir: PathBuf,
    pub seed: u64,
    pub inputs: u64,
    /// Heap ceiling of a child in MiB: past it an allocation fails and the child aborts.
    pub ceiling_mib: usize,
    /// An input that takes longer than this is a hang.
    pub hang: Duration,
}

/// What one target's run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: Target,
    pub inputs: u64,
    pub accepted: u64,
    pub elapsed: Duration,
    /// Every finding, by input index.
    pub findings: Vec<Finding>,
    /// The first finding of each distinct bug, with the file its input was written to.
    pub unique: Vec<(Finding, PathBuf)>,
    /// Children started, including the replays that pinned crashes down.
    pub children: usize,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum End {
    Finished,
    Died(String),
    Hung,
}

struct Outcome {
    /// Every input before this one ran to completion.
    next: u64,
    accepted: u64,
    last_started: Option<u64>,
    findings: Vec<Finding>,
    end: End,
}

enum Line {
    Out(String),
    Eof,
}

pub fn fuzz(target: Target, opts: &Options) -> anyhow::Result<Report> {
    let corpus = crate::corpus::load(&opts.corpus_dir, target)?;
    let start = Instant::now();
    let mut findings: BTreeMap<u64, Finding> = BTreeMap::new();
    let (mut next, mut accepted, mut children) = (0u64, 0u64, 0usize);
    while next < opts.inputs {
        let run = run_child(target, opts, next..opts.inputs, false)?;
        children += 1;
        accepted += run.accepted;
        for f in run.findings {
            findings.entry(f.index).or_insert(f);
        }
        next = run.next.max(next);
        let reason = match run.end {
            End::Finished => {
                anyhow::ensure!(
                    run.next == opts.inputs,
                    "a child stopped early at input {}",
                    run.next
                );
                break;
            }
            End::Died(why) => (Kind::Abort, why),
            End::Hung => (Kind::Hang, format!("no answer within {:?}", opts.hang)),
        };
        // The culprit is past the last progress report: run that stretch again, announced.
        let window = next..(next + 8192).min(opts.inputs);
        let replay = run_child(target, opts, window.clone(), true)?;
        children += 1;
        for f in replay.findings {
            findings.entry(f.index).or_insert(f);
        }
        match (replay.end, replay.last_started) {
            (End::Died(why), Some(i)) => {
                findings.insert(
                    i,
                    Finding {
                        index: i,
                        kind: Kind::Abort,
                        message: why,
                    },
                );
                next = i + 1;
            }
            (End::Hung, Some(i)) => {
                findings.insert(
                    i,
                    Finding {
                        index: i,
                        kind: Kind::Hang,
                        message: format!("no answer within {:?}", opts.hang),
                    },
                );
                next = i + 1;
            }
            _ => {
                findings.insert(
                    next,
                    Finding {
                        index: next,
                        kind: reason.0,
                        message: format!(
                            "{} in inputs {}..{}, not reproduced when replayed alone",
                            reason.1, window.start, window.end
                        ),
                    },
                );
                next = window.end;
            }
        }
    }
    let elapsed = start.elapsed();
    let findings: Vec<Finding> = findings.into_values().collect();
    let mut unique: Vec<(Finding, PathBuf)> = Vec::new();
    for f in &findings {
        if unique.iter().any(|(u, _)| u.signature() == f.signature()) {
            continue;
        }
        std::fs::create_dir_all(&opts.crash_dir)?;
        let path = opts
            .crash_dir
            .join(format!("{}-{}.bin", target.name(), f.index));
        std::fs::write(&path, mutate::input(&corpus, opts.seed, f.index))?;
        std::fs::write(
            path.with_extension("txt"),
            format!(
                "target {}\nseed {}\nindex {}\nkind {}\n{}\n",
                target.name(),
                opts.seed,
                f.index,
                f.kind.as_str(),
                f.message
            ),
        )?;
        unique.push((f.clone(), path));
    }
    Ok(Report {
        target,
        inputs: opts.inputs,
        accepted,
        elapsed,
        findings,
        unique,
        children,
    })
}

fn run_child(
    target: Target,
    opts: &Options,
    range: Range<u64>,
    trace: bool,
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(&opts.exe);
    cmd.arg("child")
        .args(["--target", target.name()])
        .arg("--corpus")
        .arg(&opts.corpus_dir)
        .args(["--seed", &opts.seed.to_string()])
        .args(["--from", &range.start.to_string()])
        .args(["--to", &range.end.to_string()])
        .args(["--ceiling-mib", &opts.ceiling_mib.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if trace {
        cmd.arg("--trace");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", opts.exe.display()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Line::Out(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Line::Eof);
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut out = Outcome {
        next: range.start,
        accepted: 0,
        last_started: None,
        findings: Vec::new(),
        end: End::Finished,
    };
    loop {
        match rx.recv_timeout(opts.hang) {
            Ok(Line::Out(line)) => parse_line(&line, &mut out),
            Ok(Line::Eof) => break,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                out.end = End::Hung;
                return Ok(out);
            }
        }
    }
    let status = child.wait()?;
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        out.end = End::Died(describe(status, &stderr));
    }
    Ok(out)
}

fn parse_line(line: &str, out: &mut Outcome) {
    let mut words = line.splitn(4, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("start"), Some(i), _) => out.last_started = i.parse().ok(),
        (Some("progress"), Some(next), Some(accepted)) => {
            out.next = next.parse().unwrap_or(out.next);
            out.accepted = accepted.parse().unwrap_or(out.accepted);
        }
        (Some("finding"), Some(i), Some(kind)) => {
            if let (Ok(index), Some(kind)) = (i.parse(), Kind::parse(kind)) {
                out.findings.push(Finding {
                    index,
                    kind,
                    message: words.next().unwrap_or("").to_owned(),
                });
            }
        }
        _ => {}
    }
}

/// How a child died, with the last lines of what it printed (the allocator's or the stack
/// guard's message).
pub fn describe(status: ExitStatus, stderr: &str) -> String {
    let how = match status.signal() {
        Some(6) => "aborted (SIGABRT)".to_string(),
        Some(11) => "crashed (SIGSEGV)".to_string(),
        Some(9) => "killed (SIGKILL)".to_string(),
        Some(s) => format!("killed by signal {s}"),
        None => format!("exited with {status}"),
    };
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(2)
        .collect();
    if said.is_empty() {
        how
    } else {
        let said: Vec<&str> = said.into_iter().rev().collect();
        format!("{how}: {}", said.join(" / "))
    }
}
