//! `flotilla predict`: one request from the command line, the reply printed as JSON.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use flotilla_proto::client::{Client, RequestSpec};
use flotilla_proto::Encoding;

use super::NatsArgs;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["x", "json", "csv", "text"])))]
pub struct PredictArgs {
    /// Model name.
    model: String,
    #[command(flatten)]
    nats: NatsArgs,
    /// One row, comma-separated: --x 5.1,3.5,1.4,0.2
    #[arg(long, value_name = "NUMBERS", allow_hyphen_values = true)]
    x: Option<String>,
    /// A whole request body, e.g. '{"inputs": [[1, 2], [3, 4]], "id": "a"}'.
    #[arg(long, value_name = "BODY")]
    json: Option<String>,
    /// Rows from a CSV file of numbers (a header line is skipped).
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// A text for a text model; repeat for several. Prints each vector's length, token count
    /// and first values rather than the whole reply.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    text: Vec<String>,
    /// Send MessagePack instead of JSON.
    #[arg(long)]
    msgpack: bool,
    /// Ask for exactly this model version.
    #[arg(long)]
    version: Option<u64>,
    /// Give up after this many milliseconds (also sent as Flotilla-Timeout-Ms).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub async fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let settings = args.nats.settings()?;
    let encoding = if args.msgpack {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    let body: serde_json::Value = if let Some(x) = &args.x {
        let row = parse_row(x).context("--x")?;
        serde_json::json!({ "x": row })
    } else if !args.text.is_empty() {
        serde_json::json!({ "inputs": args.text })
    } else if let Some(json) = &args.json {
        serde_json::from_str(json).context("--json is not valid JSON")?
    } else {
        let path = args.csv.as_ref().expect("clap requires one input");
        serde_json::json!({ "inputs": read_csv(path)? })
    };
    let payload = match encoding {
        Encoding::Json => Bytes::from(serde_json::to_vec(&body)?),
        Encoding::MsgPack => Bytes::from(rmp_serde::to_vec_named(&body)?),
    };
    let nats = settings.nats.connect("flotilla-predict").await?;
    let client = Client::new(nats).with_prefix(settings.subject_prefix.clone());
    let spec = RequestSpec {
        encoding,
        version: args.version,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    match client.request(&args.model, payload, spec).await {
        Ok(reply) => {
            let value: serde_json::Value = match reply.encoding {
                Encoding::Json => serde_json::from_slice(&reply.body)?,
                Encoding::MsgPack => rmp_serde::from_slice(&reply.body)?,
            };
            if args.text.is_empty() {
                super::print_out(format_args!("{}\n", serde_json::to_string_pretty(&value)?))?;
            } else {
                super::print_out(format_args!("{}", summarise_vectors(&args.text, &value)))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Values of each vector shown by `--text`.
const SHOWN: usize = 6;

/// One block per text: its vector's length, its tokens and first values.
fn summarise_vectors(texts: &[String], reply: &serde_json::Value) -> String {
    let mut out = format!(
        "model {} version {}\n",
        reply["model"].as_str().unwrap_or("?"),
        reply["version"]
    );
    let empty = Vec::new();
    let outputs = reply["outputs"].as_array().unwrap_or(&empty);
    for (i, (text, vector)) in texts.iter().zip(outputs).enumerate() {
        let values = vector.as_array().unwrap_or(&empty);
        let first: Vec<String> = values
            .iter()
            .take(SHOWN)
            .map(|v| format!("{:.4}", v.as_f64().unwrap_or(f64::NAN)))
            .collect();
        let more = if values.len() > SHOWN { ", ..." } else { "" };
        out += &format!(
            "{text:?}: {} values, {} tokens\n  [{}{more}]\n",
            values.len(),
            reply["tokens"][i],
            first.join(", ")
        );
    }
    out
}

fn parse_row(text: &str) -> anyhow::Result<Vec<f64>> {
    text.split(',')
        .enumerate()
        .map(|(i, v)| {
            v.trim()
                .parse::<f64>()
                .with_context(|| format!("value {} ({:?}) is not a number", i + 1, v.trim()))
        })
        .collect()
}

/// Reads rows of numbers; a first line that is not all numbers is taken as a header.
fn read_csv(path: &PathBuf) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: line {}", path.display(), line + 1))?;
        let parsed: Result<Vec<f64>, _> = record.iter().map(str::parse::<f64>).collect();
        match parsed {
            Ok(row) => rows.push(row),
            Err(_) if line == 0 => continue,
            Err(_) => bail!(
                "{}: line {} has a value that is not a number: {:?}",
                path.display(),
                line + 1,
                record.iter().collect::<Vec<_>>()
            ),
        }
    }
    if rows.is_empty() {
        bail!("{}: no rows of numbers", path.display());
    }
    Ok(rows)
}
