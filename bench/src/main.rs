//! `engram-bench`: load generator for etcd v3 servers, and `--compare` mode that runs
//! the same workload on a fresh real etcd 3.5 and a fresh engram.

mod ceiling;
mod chart;
mod cli;
mod migration;
mod report;
mod scale;
mod servers;
mod stats;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use cli::Args;
use report::SystemReport;
use servers::{Server, System};

/// The load generator shares the machine's cores with the server it measures: every cycle it
/// spends is taken from that server. glibc's allocator took ~12% of its CPU on a put load (a
/// request and a response buffer per op); mimalloc, as in the server, takes less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a started server may take to answer Maintenance.Status.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(msg) = args.check() {
        eprintln!("engram-bench: {msg}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("engram-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C the main future is dropped, which kills the servers it started.
    let res = rt.block_on(async {
        tokio::select! {
            r = main_async(&args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engram-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(args: &Args) -> Result<()> {
    if args.migration {
        let measured = migration::run(args, STARTUP_TIMEOUT).await?;
        print!("{}", migration::table(args, &measured));
        if let Some(path) = &args.json {
            report::write_text(path, &migration::to_json(args, &measured))?;
        }
        return Ok(());
    }
    if args.writer_ceiling {
        let runs = ceiling::run(args)?;
        print!("{}", ceiling::table(args, &runs));
        if let Some(path) = &args.json {
            report::write_text(path, &ceiling::to_json(args, &runs))?;
        }
        return Ok(());
    }
    if args.scale {
        let systems = scale::run(args, STARTUP_TIMEOUT).await?;
        print!("{}", scale::tables(args, &systems));
        if let Some(path) = &args.json {
            report::write_text(path, &scale::to_json(args, &systems))?;
        }
        if let Some(path) = &args.chart {
            chart::write(path, &scale::chart_svg(args, &systems)?)?;
            eprintln!("engram-bench: chart written to {}", path.display());
        }
        return Ok(());
    }
    let reports = if args.compare {
        compare(args).await?
    } else {
        let prepared = workloads::prepare(args, &args.endpoints).await?;
        let run = workloads::run(prepared, args).await?;
        vec![SystemReport {
            system: "target".into(),
            version: String::new(),
            run,
            cpu_secs: None,
            peak_rss: None,
        }]
    };
    print!("{}", report::table(args, &reports));
    if let Some(path) = &args.json {
        report::write_json(path, args, &reports)?;
    }
    if let Some(path) = &args.chart {
        let bars: Vec<chart::Bar> = reports.iter().map(chart::Bar::from_report).collect();
        chart::write(path, &chart::bars_svg(&report::describe(args), &bars)?)?;
        eprintln!("engram-bench: chart written to {}", path.display());
    }
    Ok(())
}

/// Runs the workload on a fresh server of each system in turn (one at a time, so they
/// do not compete for the CPU), killing each server right after its run.
async fn compare(args: &Args) -> Result<Vec<SystemReport>> {
    let mut out = Vec::new();
    for name in &args.systems {
        let system = System::from_name(name);
        let mut server = Server::start(system, args, STARTUP_TIMEOUT).await?;
        eprintln!(
            "engram-bench: {} {} at {} (data {}): preparing {}",
            system.name(),
            server.version,
            server.endpoint,
            server.data_dir().display(),
            args.workload.name()
        );
        let prepared = workloads::prepare(args, std::slice::from_ref(&server.endpoint)).await?;
        let before = server.usage();
        let run = workloads::run(prepared, args).await?;
        let after = server.usage();
        if !server.alive() {
            bail!(
                "{} died during the run; log tail:\n{}",
                system.name(),
                server.log_tail(30)
            );
        }
        eprintln!(
            "engram-bench: {}: {} ops in {:.2}s, {} errors",
            system.name(),
            run.ops,
            run.elapsed.as_secs_f64(),
            run.stats.error_count()
        );
        out.push(SystemReport {
            system: system.name().into(),
            version: server.version.clone(),
            run,
            cpu_secs: Some((after.cpu_secs - before.cpu_secs).max(0.0)),
            peak_rss: Some(after.peak_rss),
        });
        server.kill();
    }
    Ok(out)
}
