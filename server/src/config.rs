//! Command-line flags, named like etcd's so that operators can carry their habits over.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

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
