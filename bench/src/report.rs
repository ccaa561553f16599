//! The result table printed at the end and the `--json` report.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::cli::Args;
use crate::workloads::{EVENTS_DELIVERED, RunResult};

/// Results of one system (one server) for one workload.
#[derive(Debug, Clone)]
pub struct SystemReport {
    /// "etcd", "engram", or "target" (a server given by --endpoints).
    pub system: String,
    pub version: String,
    pub run: RunResult,
    /// Server CPU seconds (utime+stime) spent during the measured phase.
    pub cpu_secs: Option<f64>,
    /// Server peak RSS (VmHWM) in bytes, over its whole life.
    pub peak_rss: Option<u64>,
}

impl SystemReport {
    fn cpu_per_kop(&self) -> Option<f64> {
        let cpu = self.cpu_secs?;
        (self.run.ops > 0).then(|| cpu * 1000.0 / self.run.ops as f64)
    }

    /// Server CPU per measured operation, in microseconds: the figure that carries to a
    /// machine where the load generator does not share the server's cores.
    fn cpu_us_per_op(&self) -> Option<f64> {
        self.cpu_per_kop().map(|ms| ms * 1000.0)
    }

    /// watch: server CPU per event delivered to a watcher, in microseconds (the puts that
    /// caused them included: with many watchers, a put's cost is spread over its events).
    fn cpu_us_per_event(&self) -> Option<f64> {
        let cpu = self.cpu_secs?;
        let events = *self.run.stats.counters.get(EVENTS_DELIVERED)?;
        (events > 0).then(|| cpu * 1e6 / events as f64)
    }

    fn rss_mib(&self) -> Option<f64> {
        self.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0))
    }

    fn errors_text(&self) -> String {
        let e = &self.run.stats.errors;
        if e.is_empty() {
            return "none".into();
        }
        e.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One-line description of the run's parameters.
pub fn describe(args: &Args) -> String {
    let mut s = format!(
        "workload={} clients={} conns={} value-size={} keys={}",
        args.workload.name(),
        args.clients,
        args.conns,
        args.value_size,
        args.keys
    );
    if args.auth {
        s.push_str(" auth=on");
    }
    if args.versions > 1 {
        let _ = write!(s, " versions={}", args.versions);
    }
    if let Some(n) = args.ops {
        let _ = write!(s, " ops={n}");
    }
    if let Some(d) = args.duration {
        let _ = write!(s, " duration={d}s");
    }
    if let Some(r) = args.rate {
        let _ = write!(s, " rate={r}/s");
    }
    if args.workload == crate::cli::WorkloadKind::Watch {
        let _ = write!(
            s,
            " watchers={} streams={} writers={}",
            args.watchers,
            args.streams,
            args.writers.unwrap_or(args.clients)
        );
    }
    s
}

/// Aligns rows of cells: the first column left-aligned, the others right-aligned.
pub fn render(lines: &[Vec<String>]) -> String {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        for (c, cell) in l.iter().enumerate() {
            if c == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
    }
    out
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

pub fn num(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

/// The comparison table (a ratio column when both etcd and engram ran).
pub fn table(args: &Args, systems: &[SystemReport]) -> String {
    type Metric = fn(&SystemReport) -> Option<f64>;
    let mut rows: Vec<(&str, Metric, usize)> = vec![
        ("ops/s", |s| Some(s.run.ops_per_sec()), 0),
        ("p50 ms", |s| Some(s.run.stats.quantile_ms(0.50)), 3),
        ("p99 ms", |s| Some(s.run.stats.quantile_ms(0.99)), 3),
        ("p99.9 ms", |s| Some(s.run.stats.quantile_ms(0.999)), 3),
        ("CPU us/op", SystemReport::cpu_us_per_op, 1),
    ];
    if args.workload == crate::cli::WorkloadKind::Watch {
        rows.push(("CPU us/event", SystemReport::cpu_us_per_event, 2));
    }
    rows.extend([
        ("peak RSS MiB", SystemReport::rss_mib as Metric, 1),
        ("ok ops", |s| Some(s.run.ops as f64), 0),
        ("errors", |s| Some(s.run.stats.error_count() as f64), 0),
    ]);
    let etcd = systems.iter().find(|s| s.system == "etcd");
    let engram = systems.iter().find(|s| s.system == "engram");
    let with_ratio = etcd.is_some() && engram.is_some();

    let mut header = vec![String::new()];
    for s in systems {
        if s.version.is_empty() {
            header.push(s.system.clone());
        } else {
            header.push(format!("{} {}", s.system, s.version));
        }
    }
    if with_ratio {
        header.push("engram/etcd".into());
    }
    let mut lines = vec![header];
    for (name, f, prec) in rows {
        let mut line = vec![name.to_string()];
        for s in systems {
            line.push(num(f(s), prec));
        }
        if let (Some(e), Some(g)) = (etcd, engram) {
            line.push(ratio(f(g), f(e)));
        }
        lines.push(line);
    }
    let mut out = format!("{}\n", describe(args));
    if args.workload == crate::cli::WorkloadKind::Watch {
        out.push_str("(ops = puts; latencies = put-sent -> event-received, per watcher)\n");
    }
    out.push_str(&render(&lines));
    for s in systems {
        let _ = writeln!(out, "errors {}: {}", s.system, s.errors_text());
        if !s.run.stats.counters.is_empty() {
            let c: Vec<String> = s
                .run
                .stats
                .counters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "counters {}: {}", s.system, c.join(", "));
        }
    }
    out
}

fn system_json(s: &SystemReport) -> Value {
    json!({
        "system": s.system,
        "version": s.version,
        "ops": s.run.ops,
        "elapsed_secs": s.run.elapsed.as_secs_f64(),
        "ops_per_sec": s.run.ops_per_sec(),
        "latency_ms": {
            "p50": s.run.stats.quantile_ms(0.50),
            "p99": s.run.stats.quantile_ms(0.99),
            "p999": s.run.stats.quantile_ms(0.999),
            "max": s.run.stats.quantile_ms(1.0),
            "mean": s.run.stats.hist.mean() / 1000.0,
            "samples": s.run.stats.ok_count(),
        },
        "errors": s.run.stats.errors,
        "error_count": s.run.stats.error_count(),
        "counters": s.run.stats.counters,
        "cpu_secs": s.cpu_secs,
        "cpu_secs_per_1k_ops": s.cpu_per_kop(),
        "cpu_us_per_op": s.cpu_us_per_op(),
        "cpu_us_per_event": s.cpu_us_per_event(),
        "peak_rss_bytes": s.peak_rss,
    })
}

pub fn to_json(args: &Args, systems: &[SystemReport]) -> Value {
    json!({
        "workload": args.workload.name(),
        "params": {
            "clients": args.clients,
            "conns": args.conns,
            "value_size": args.value_size,
            "keys": args.keys,
            "versions": args.versions,
            "ops": args.ops,
            "duration": args.duration,
            "rate": args.rate,
            "watchers": args.watchers,
            "streams": args.streams,
            "writers": args.writers.unwrap_or(args.clients),
        },
        "description": describe(args),
        "systems": systems.iter().map(system_json).collect::<Vec<_>>(),
    })
}

pub fn write_json(path: &Path, args: &Args, systems: &[SystemReport]) -> Result<()> {
    write_text(path, &to_json(args, systems))
}

/// Writes `v` as pretty-printed JSON.
pub fn write_text(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}
