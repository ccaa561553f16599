//! `engram-conformance`: does an endpoint behave like etcd 3.5 in what etcd clients and
//! Kubernetes rely on? Prints one line per case, a summary by group, and exits non-zero
//! on any failure (2 on a usage or connection error).

mod cases;
mod client;
mod normalize;
mod report;
mod runner;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "engram-conformance",
    about = "Checks that an etcd v3 endpoint behaves like etcd 3.5 (KV API, Kubernetes storage patterns, concurrency)"
)]
struct Cli {
    /// Endpoint under test, e.g. http://127.0.0.1:2379.
    #[arg(long)]
    endpoint: String,
    /// A real etcd 3.5 endpoint: run every case on both and compare the answers.
    #[arg(long)]
    reference: Option<String>,
    /// Run only this group (etcd-api, kubernetes, concurrency); repeatable or comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write a markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write a JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Key namespace of this run (`/conformance/<run-id>/...`); default: time-based.
    #[arg(long)]
    run_id: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("engram-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    let run_id = match cli.run_id {
        Some(id) => id,
        None => {
            let t = SystemTime::now().duration_since(UNIX_EPOCH)?;
            format!("{}-{}", t.as_secs(), t.subsec_nanos())
        }
    };
    let opts = runner::Options {
        endpoint: cli.endpoint.clone(),
        reference: cli.reference.clone(),
        only: cli.only,
        run_id,
    };
    let results = runner::run(&opts, |r| println!("{}", report::line(r))).await?;
    println!();
    print!("{}", report::summary_table(&results));
    let reference = cli.reference.as_deref();
    if let Some(p) = &cli.report {
        std::fs::write(p, report::markdown(&cli.endpoint, reference, &results))
            .with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &cli.json {
        std::fs::write(p, report::json(&cli.endpoint, reference, &results)?)
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(results.iter().all(|r| r.passed))
}
