//! `engram-conformance`: does an endpoint behave like etcd 3.5 in what etcd clients and
//! Kubernetes rely on? Prints one line per case, a summary by group, and exits non-zero
//! on any failure (2 on a usage or connection error).
//!
//! `engram-conformance record --endpoint URL --out DIR` records the transcripts of a real
//! etcd 3.5 that later runs without `--reference` are compared with.

mod case;
mod cases;
mod client;
mod expectations;
mod linearizability;
mod normalize;
mod report;
mod runner;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "engram-conformance",
    about = "Checks that an etcd v3 endpoint behaves like etcd 3.5 (KV API, Kubernetes storage patterns, concurrency, Lock and Election services, authentication, faults)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Endpoint under test, e.g. http://127.0.0.1:2379.
    #[arg(long, required = true)]
    endpoint: Option<String>,
    /// A real etcd 3.5 endpoint: run every case on both and compare the answers.
    /// Without it, transcripts are compared with the recorded etcd 3.5 ones.
    #[arg(long)]
    reference: Option<String>,
    /// Run only this group (etcd-api, kubernetes, concurrency, concurrency-api, auth,
    /// faults); repeatable or comma-separated. Default: every group (faults is skipped
    /// without --restart-cmd). auth enables authentication on the endpoint for a moment.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Shell command (run with `sh -c`) that kills the endpoint with SIGKILL and starts it
    /// again, returning once the new process is started; the faults group needs it.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// Shell command that fills the filesystem under the endpoint's data directory (leaving
    /// a few MiB free); with --free-disk-cmd, the faults group's disk case needs it.
    #[arg(long, requires = "free_disk_cmd")]
    fill_disk_cmd: Option<String>,
    /// Shell command that makes room again on the filesystem --fill-disk-cmd filled.
    #[arg(long, requires = "fill_disk_cmd")]
    free_disk_cmd: Option<String>,
    /// Compare with the recordings in this directory (`<group>/<case>.txt`) instead of
    /// the ones built into the binary.
    #[arg(long)]
    expectations: Option<PathBuf>,
    /// Do not compare with recorded etcd 3.5 transcripts (only the cases' own checks).
    #[arg(long, conflicts_with = "expectations")]
    no_expectations: bool,
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

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the recorded groups (etcd-api, kubernetes, concurrency-api, auth) against a real
    /// etcd 3.5 and write their transcripts to `<out>/<group>/<case>.txt`.
    Record {
        /// A real etcd 3.5 endpoint.
        #[arg(long)]
        endpoint: String,
        /// Output directory, e.g. conformance/expectations.
        #[arg(long)]
        out: PathBuf,
        /// Record only these groups.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Record even if the endpoint does not report etcd 3.5.x.
        #[arg(long)]
        any_version: bool,
    },
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

fn run_id(id: Option<String>) -> Result<String> {
    Ok(match id {
        Some(id) => id,
        None => {
            let t = SystemTime::now().duration_since(UNIX_EPOCH)?;
            format!("{}-{}", t.as_secs(), t.subsec_nanos())
        }
    })
}

async fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    if let Some(Cmd::Record {
        endpoint,
        out,
        only,
        any_version,
    }) = cli.cmd
    {
        return record(&endpoint, &out, &only, any_version).await;
    }
    let endpoint = cli.endpoint.context("--endpoint is required")?;
    let expectations = if cli.no_expectations {
        None
    } else if let Some(dir) = &cli.expectations {
        Some(expectations::Expectations::load(dir)?)
    } else {
        Some(expectations::Expectations::embedded())
    };
    let opts = runner::Options {
        endpoint: endpoint.clone(),
        reference: cli.reference.clone(),
        only: cli.only,
        run_id: run_id(cli.run_id)?,
        restart_cmd: cli.restart_cmd,
        fill_disk_cmd: cli.fill_disk_cmd,
        free_disk_cmd: cli.free_disk_cmd,
        expectations,
    };
    let results = runner::run(&opts, |r| println!("{}", report::line(r))).await?;
    println!();
    print!("{}", report::summary_table(&results));
    let reference = cli.reference.as_deref();
    if let Some(p) = &cli.report {
        std::fs::write(p, report::markdown(&endpoint, reference, &results))
            .with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &cli.json {
        std::fs::write(p, report::json(&endpoint, reference, &results)?)
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(!results.iter().any(|r| r.verdict == runner::Verdict::Fail))
}

/// `record`: every case of the recorded groups must pass its own checks on the endpoint;
/// their transcripts are then written out.
async fn record(endpoint: &str, out: &std::path::Path, only: &[String], any: bool) -> Result<bool> {
    runner::check_groups(only)?;
    let conn = client::connect(endpoint).await?;
    let version = client::server_version(&conn).await?;
    if !version.starts_with("3.5.") && !any {
        bail!(
            "{endpoint} reports version {version}, not etcd 3.5.x: expectations must come from \
             etcd 3.5 (--any-version to record anyway)"
        );
    }
    let source = format!("etcd {version}");
    let env = Arc::new(case::RunEnv {
        fill_disk_cmd: None,
        free_disk_cmd: None,
        endpoint: endpoint.to_string(),
        restart_cmd: None,
    });
    let id = run_id(None)?;
    let mut ok = true;
    let mut written = 0;
    for case in runner::selected(only) {
        if !runner::RECORDED_GROUPS.contains(&case.group) {
            continue;
        }
        let prefix = format!("/conformance/record-{id}/{}/{}/", case.group, case.name);
        let r = runner::run_on(&conn, &env, &prefix, &case).await;
        if let Some(e) = r.error {
            println!("FAIL {}/{}: {e} (not recorded)", case.group, case.name);
            ok = false;
            continue;
        }
        let dir = out.join(case.group);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let p = dir.join(format!("{}.txt", case.name));
        let text = expectations::render(case.group, case.name, &source, &r.transcript);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        println!("recorded {} ({} steps)", p.display(), r.transcript.len());
        written += 1;
    }
    println!("{written} transcripts recorded from {source} at {endpoint}");
    Ok(ok)
}
