//! Encodes short sentences with a text-embedding model, closed loop, and prints one JSON line
//! per scenario in the shape `scripts/bench_embeddings.py` prints for PyTorch, so the two can be
//! run side by side (`scripts/bench_text_vs_torch.sh` alternates them).
//!
//! ```text
//! cargo run --release -p flotilla-model --example text_bench -- \
//!     [--model models/minilm] [--threads 2] [--seconds 10] [--warmup 2] \
//!     [--scenarios single,batch32,gemm]
//! ```
//!
//! - `singleN`/`single`: `encode([text])` back to back; `batchB`: `encode(B texts)`, latency per
//!   batch. Texts are the benchmark script's 16 sentences, round robin.
//! - `gemm`: the encoder's GFLOP/s at batch 32 next to the GEMM engine alone on the same shapes
//!   (the 6 layers' 24 projections over the batch's tokens): once through the encoder's threaded
//!   GEMM, once as a plain single-threaded `general_mat_mul`.
//!
//! Every line carries `rss_mb` (resident memory with the model loaded), `peak_rss_mb` (the
//! high-water mark, reached while loading: the file's bytes and the arrays coexist) and the
//! load average. `cpu_ms_per_call` (the process's CPU time per call) and `min_ms` move less than
//! wall-clock figures when other tenants take the cores.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_model::text::{ops, TextEncoder};
use ndarray::linalg::general_mat_mul;
use ndarray::Array2;
use serde_json::json;

const SENTENCES: [&str; 16] = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome.",
    "I love pasta with tomato sauce.",
    "Do you like pizza?",
    "The weather is lovely today.",
    "He drove his car to the station.",
    "She is reading a book in the garden.",
    "Stock markets fell sharply this morning.",
    "A woman is slicing an onion.",
    "Two dogs are running through a field.",
    "The server answered every request in time.",
    "Please send me the report by Friday.",
    "Rust makes systems programming safer.",
    "The train was delayed by ten minutes.",
    "Children are playing in the park.",
];

struct Args {
    model: PathBuf,
    threads: usize,
    seconds: f64,
    warmup: f64,
    scenarios: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        model: PathBuf::from("models/minilm"),
        threads: 2,
        seconds: 10.0,
        warmup: 2.0,
        scenarios: vec!["single".into(), "batch32".into(), "gemm".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value.into(),
            "--threads" => args.threads = value.parse().expect("--threads N"),
            "--seconds" => args.seconds = value.parse().expect("--seconds S"),
            "--warmup" => args.warmup = value.parse().expect("--warmup S"),
            "--scenarios" => args.scenarios = value.split(',').map(str::to_owned).collect(),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .expect("rayon pool");
    let t0 = Instant::now();
    let encoder = TextEncoder::load(&args.model).unwrap_or_else(|e| panic!("{e}"));
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    pool.install(|| encoder.encode(&SENTENCES).expect("warm-up encode"));
    eprintln!(
        "loaded {} ({} parameters) in {load_ms:.0} ms; rss {:.0} MB",
        args.model.display(),
        encoder.parameters(),
        rss_mb("VmRSS")
    );
    for scenario in &args.scenarios {
        let line = if scenario == "gemm" {
            pool.install(|| gemm(&encoder, args.seconds))
        } else {
            let batch = match scenario.strip_prefix("batch") {
                Some(b) => b.parse().expect("batchN"),
                None if scenario == "single" => 1,
                None => panic!("unknown scenario {scenario}"),
            };
            pool.install(|| closed_loop(&encoder, batch, args.seconds, args.warmup))
        };
        let mut line = line;
        line["scenario"] = json!(scenario);
        line["threads"] = json!(args.threads);
        line["rss_mb"] = json!(round1(rss_mb("VmRSS")));
        line["peak_rss_mb"] = json!(round1(rss_mb("VmHWM")));
        line["load1"] = json!(load_average());
        println!("{line}");
    }
}

fn texts(start: usize, n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|k| SENTENCES[(start + k) % SENTENCES.len()])
        .collect()
}

fn closed_loop(
    encoder: &TextEncoder,
    batch: usize,
    seconds: f64,
    warmup: f64,
) -> serde_json::Value {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let stop_at = measure_from + Duration::from_secs_f64(seconds);
    let mut latencies = Vec::new();
    let mut j = 0;
    let mut tokens = 0usize;
    let mut cpu_from = None;
    loop {
        let t = Instant::now();
        if t >= stop_at {
            break;
        }
        let batch_texts = texts(j, batch);
        j += batch;
        if t >= measure_from && cpu_from.is_none() {
            cpu_from = Some(cpu_seconds());
        }
        let out = encoder.encode(&batch_texts).expect("encode");
        if t >= measure_from {
            latencies.push(t.elapsed().as_secs_f64());
            tokens += out.tokens.iter().sum::<usize>();
        }
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_from.unwrap_or(f64::NAN);
    latencies.sort_by(f64::total_cmp);
    let calls = latencies.len();
    json!({
        "batch": batch,
        "calls": calls,
        "texts": calls * batch,
        "seconds": round3(elapsed),
        "texts_per_s": round1((calls * batch) as f64 / elapsed),
        "min_ms": round3(percentile(&latencies, 0.0) * 1e3),
        "p10_ms": round3(percentile(&latencies, 0.1) * 1e3),
        "p50_ms": round3(percentile(&latencies, 0.5) * 1e3),
        "p99_ms": round3(percentile(&latencies, 0.99) * 1e3),
        "mean_ms": round3(latencies.iter().sum::<f64>() / calls.max(1) as f64 * 1e3),
        "tokens_per_text": round3(tokens as f64 / (calls * batch).max(1) as f64),
        // CPU time of the whole process per call: the work done, whatever the other tenants
        // of the machine take (rayon threads spinning while idle count too).
        "cpu_ms_per_call": round3(cpu / calls.max(1) as f64 * 1e3),
    })
}

/// The encoder at batch 32 against the same 24 projections on their own.
fn gemm(encoder: &TextEncoder, seconds: f64) -> serde_json::Value {
    let batch = texts(0, 32);
    let lengths: Vec<usize> = batch
        .iter()
        .map(|t| encoder.tokenize_len(t).unwrap())
        .collect();
    let tokens: usize = lengths.iter().sum();
    let c = encoder.config();
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let shapes = [(h, 3 * h), (h, h), (h, i), (i, h)];
    let inputs: Vec<Array2<f32>> = shapes
        .iter()
        .map(|&(k, _)| {
            Array2::from_shape_fn((tokens, k), |(r, j)| ((r * 7 + j) % 13) as f32 * 0.01)
        })
        .collect();
    let weights: Vec<Array2<f32>> = shapes
        .iter()
        .map(|&(k, n)| Array2::from_shape_fn((k, n), |(r, j)| ((r + 3 * j) % 11) as f32 * 0.01))
        .collect();
    let mut outputs: Vec<Array2<f32>> = shapes
        .iter()
        .map(|&(_, n)| Array2::zeros((tokens, n)))
        .collect();
    let gemm_flops: f64 = shapes
        .iter()
        .map(|&(k, n)| 2.0 * (tokens * k * n) as f64)
        .sum::<f64>()
        * c.num_layers as f64;
    let budget = seconds / 3.0;
    let mut threaded = || {
        for _ in 0..c.num_layers {
            for ((a, w), o) in inputs.iter().zip(&weights).zip(outputs.iter_mut()) {
                ops::gemm_acc(a.view(), w.view(), o.view_mut());
            }
        }
    };
    let threaded_s = median_time(&mut threaded, budget);
    let mut plain = || {
        for _ in 0..c.num_layers {
            for ((a, w), o) in inputs.iter().zip(&weights).zip(outputs.iter_mut()) {
                general_mat_mul(1.0, a, w, 0.0, o);
            }
        }
    };
    let plain_s = median_time(&mut plain, budget);
    let mut encode = || {
        encoder.encode(&batch).expect("encode");
    };
    let encode_s = median_time(&mut encode, budget);
    let encoder_flops = encoder.flops(&lengths) as f64;
    json!({
        "batch": 32,
        "tokens": tokens,
        "encoder_ms": round3(encode_s * 1e3),
        "encoder_gflops": round1(encoder_flops / encode_s / 1e9),
        "gemm_threaded_ms": round3(threaded_s * 1e3),
        "gemm_threaded_gflops": round1(gemm_flops / threaded_s / 1e9),
        "gemm_plain_1thread_ms": round3(plain_s * 1e3),
        "gemm_plain_1thread_gflops": round1(gemm_flops / plain_s / 1e9),
        "encoder_over_gemm_time": round3(encode_s / threaded_s),
    })
}

/// The median wall time of `f` over repeated calls for about `budget` seconds.
fn median_time(f: &mut dyn FnMut(), budget: f64) -> f64 {
    f();
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed().as_secs_f64() < budget || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    sorted[k]
}

fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")
        })
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime are fields 14 and 15 of the line: the 12th and 13th after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
