//! The broker's ceiling for flotilla's reply, as opposed to natsprobe's bare echo: sends one
//! request to a running worker, then answers every request on its own subject with that
//! reply: its body, and the headers a worker's reply carries (`Content-Type`,
//! `Flotilla-Version`, `Flotilla-Worker`), serialized once as the worker does. It
//! decodes nothing and computes nothing, so what it costs the broker and the caller is what
//! the contract's reply costs them, apart from any work of the worker's.
//!
//! `scripts/bench_echo.sh` runs it beside natsprobe's echo and the workers when `CEILING` is
//! set (BENCHMARKS.md, issue 9):
//!
//!     cargo build --release --example reply_ceiling
//!     reply_ceiling --nats URL --learn flotilla.predict.lin --request one.json --subject bench.ceiling
//!
//! It runs on a one-thread runtime, as `flotilla worker` does.

use std::path::PathBuf;

use anyhow::Context;
use async_nats::HeaderBlock;
use bytes::Bytes;
use clap::Parser;
use flotilla_proto::headers::VERSION_HEADER;
use flotilla_proto::{header, reply_headers, Encoding};
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    nats: String,
    /// Where to answer.
    #[arg(long)]
    subject: String,
    /// A worker's subject to ask once for the reply to send.
    #[arg(long)]
    learn: String,
    /// The JSON request to ask it.
    #[arg(long)]
    request: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let request = std::fs::read(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let worker = nuid::next().to_string();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let client = async_nats::connect(&args.nats).await?;
            let learned = client.request(args.learn, request.into()).await?;
            let version = learned
                .headers
                .as_ref()
                .and_then(|h| header(h, VERSION_HEADER))
                .context("the worker's reply has no Flotilla-Version")?
                .parse::<u64>()?;
            let body: Bytes = learned.payload;
            let mut requests = client
                .queue_subscribe(args.subject, "flotilla".into())
                .await?;
            let headers = HeaderBlock::new(&reply_headers(Encoding::Json, version, &worker));
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    client
                        .publish_with_header_block(reply, headers.clone(), body.clone())
                        .await?;
                }
            }
            Ok(())
        })
}
