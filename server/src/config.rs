//! Command-line flags, named like etcd's so that operators can carry their habits over.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// A redb database file in --data-dir (the default; durable).
    Embedded,
    /// Everything in memory, lost at exit (tests and experiments only).
    Memory,
}

/// Engram: a Kubernetes metadata store that speaks the etcd v3 API.
#[derive(Debug, Clone, Parser)]
#[command(name = "engram", version, about, long_about = None)]
pub struct Config {
    /// Human-readable name of this member (shown by `etcdctl member list`).
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Directory holding the embedded engine's data; created if missing.
    #[arg(long, default_value = "default.engram")]
    pub data_dir: PathBuf,

    /// Comma-separated URLs to serve clients on (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,

    /// Comma-separated client URLs to advertise to clients (defaults to the listen URLs).
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// Largest write request accepted, in bytes (etcd's default: 1.5 MiB). Messages larger than
    /// this plus 512 KiB are refused by gRPC itself, as etcd does.
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `engram=debug,backend=trace`.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Storage engine.
    #[arg(long, value_enum, default_value = "embedded")]
    pub engine: EngineKind,

    /// Page cache of the embedded engine, in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_size_mb: usize,

    /// How often an idle watcher created with progress_notify is told the current revision,
    /// e.g. `5s` or `500ms` (etcd's default of 10 minutes stalls kube-apiserver watch caches).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,

    /// Events kept in memory for watchers; older history is read back from the store.
    #[arg(long, default_value_t = 100_000)]
    pub watch_window_events: usize,

    /// Most write requests committed together in one durable engine batch.
    #[arg(long, default_value_t = 1024)]
    pub max_batch: usize,
}

impl Config {
    pub fn advertised_urls(&self) -> Vec<String> {
        if self.advertise_client_urls.is_empty() {
            self.listen_client_urls.clone()
        } else {
            self.advertise_client_urls.clone()
        }
    }
}

/// Durations as etcd's flags take them: `500ms`, `5s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?}: missing unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_etcd_flags() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
