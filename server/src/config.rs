//! Command-line flags, named like etcd's so that operators can carry their habits over.

use backend::engine::{EngineConfig, LsmOptions};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// An LSM tree (fjall) in --data-dir: the default, fastest for writes.
    Lsm,
    /// A copy-on-write B-tree file (redb) in --data-dir: fastest scans, slower writes.
    Btree,
    /// Everything in memory, lost at exit (tests and experiments only).
    Memory,
    /// A TiKV cluster reached through --pd-endpoints, shared by every member of the Engram
    /// cluster (builds with the `tikv` feature).
    Tikv,
}

/// Engram: a Kubernetes metadata store that speaks the etcd v3 API.
#[derive(Debug, Clone, Parser)]
#[command(name = "engram", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Human-readable name of this member (shown by `etcdctl member list`).
    #[arg(long, global = true, default_value = "default")]
    pub name: String,

    /// Directory holding the embedded engine's data; created if missing.
    #[arg(long, global = true, default_value = "default.engram")]
    pub data_dir: PathBuf,

    /// Comma-separated URLs to serve clients on: http://host:port, or https://host:port with
    /// --cert-file and --key-file. Each port serves gRPC and the HTTP endpoints (/health,
    /// /livez, /readyz, /version, /metrics).
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// Comma-separated client URLs to advertise to clients (defaults to the listen URLs).
    #[arg(long, global = true, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// Largest write request accepted, in bytes (etcd's default: 1.5 MiB). Messages larger than
    /// this plus 512 KiB are refused by gRPC itself, as etcd does.
    #[arg(long, global = true, default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `engram=debug,backend=trace`.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,

    /// Storage engine.
    #[arg(long, global = true, value_enum, default_value = "lsm")]
    pub engine: EngineKind,

    /// With --engine tikv: comma-separated PD addresses (host:port) of the TiKV cluster.
    #[arg(long, global = true, value_delimiter = ',')]
    pub pd_endpoints: Vec<String>,

    /// With --engine tikv: the prefix of every key this Engram cluster writes, so several
    /// clusters can share one TiKV cluster. All members of one cluster use the same prefix.
    #[arg(long, global = true, default_value = "engram/")]
    pub key_prefix: String,

    /// Size at which the LSM engine's in-memory write buffer (memtable) is flushed to disk, in
    /// MiB. Larger buffers flush less often; each one costs about twice its size in memory.
    /// Fixed when the data directory is created (the engine keeps it with the data; a
    /// different value on a later start is ignored).
    #[arg(long, global = true, default_value_t = 64)]
    pub memtable_size_mb: u64,

    /// LSM engine: keep values of at least this many bytes in blob files beside the tree, so
    /// compactions move a small pointer instead of the value (0: off). Writes stay fast as
    /// the store grows (bench/RESULTS.md, "Store growth": 4M keys at 96-98% of the 100k-key create rate,
    /// against ~66-81% without); stale blob files are rewritten by compactions. Fixed when the
    /// data directory is created; off by default until every workload has been measured with
    /// it.
    #[arg(long, global = true, default_value_t = 0)]
    pub value_separation_bytes: u32,

    /// Block/page cache of the embedded engine, in MiB.
    #[arg(long, global = true, default_value_t = 64)]
    pub cache_size_mb: usize,

    /// How often an idle watcher created with progress_notify is told the current revision,
    /// e.g. `5s` or `500ms` (etcd's default of 10 minutes stalls kube-apiserver watch caches).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,

    /// Events kept in memory for watchers; older history is read back from the store.
    #[arg(long, global = true, default_value_t = 16_384)]
    pub watch_window_events: usize,

    /// MiB of keys and values (with previous values) the watch window keeps at most, whatever
    /// its event count: older history is read back from the store.
    #[arg(long, global = true, default_value_t = 16)]
    pub watch_window_mb: usize,

    /// Events the watch window keeps even when no watcher is behind (a watcher that starts a
    /// little in the past starts from memory); past this, only revisions some watcher or
    /// follower has yet to read stay, up to --watch-window-events.
    #[arg(long, global = true, default_value_t = 1_024)]
    pub watch_window_idle_events: usize,

    /// MiB of keys and values the watch window keeps even when no watcher is behind; past
    /// this, only revisions some watcher or follower has yet to read stay, up to
    /// --watch-window-mb.
    #[arg(long, global = true, default_value_t = 1)]
    pub watch_window_idle_mb: usize,

    /// Refuse writes that add data, and raise the NOSPACE alarm, when the store's logical
    /// size (its data, without space the engine allocates ahead) and the write's cost reach
    /// this many bytes; checked before each write, as etcd does (etcd's flag; 0, the default,
    /// sets no quota: Engram's size is bounded by its disk, not by a quota).
    #[arg(long, global = true, default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// Refuse writes that add data, and raise the NOSPACE alarm, when they would leave less
    /// free space than this on the data directory's filesystem (checked before each write).
    /// It must cover what the engine writes on its own: a memtable flush and a journal
    /// (64 MiB each) and its compactions (up to ~0.7 GiB measured at 1M keys). 0: no margin,
    /// the disk fills up, and the engine stops taking writes until the member restarts.
    #[arg(long, global = true, default_value_t = 1 << 30)]
    pub space_alarm_min_free_bytes: u64,

    /// Most write requests committed together in one durable engine batch.
    #[arg(long, global = true, default_value_t = 1024)]
    pub max_batch: usize,

    /// Comma-separated URLs serving only the HTTP endpoints (/metrics, /health, /livez,
    /// /readyz, /version); https:// ones use the client TLS settings.
    #[arg(long, global = true, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Path to the client server TLS certificate file (PEM; the chain, leaf first).
    #[arg(long, global = true)]
    pub cert_file: Option<PathBuf>,

    /// Path to the client server TLS key file (PEM).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,

    /// Path to the client server TLS trusted CA certificate file (PEM), used to verify client
    /// certificates under --client-cert-auth.
    #[arg(long, global = true)]
    pub trusted_ca_file: Option<PathBuf>,

    /// Refuse https clients that do not present a certificate signed by --trusted-ca-file.
    #[arg(long, global = true)]
    pub client_cert_auth: bool,

    /// The kind of tokens `Authenticate` issues (etcd's `--auth-token`): `simple`, signed by the
    /// members so that any of them accepts them, or
    /// `jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>[,ttl=<duration, 5m>]` with alg one
    /// of RS256/384/512, PS256/384/512, ES256/384 (PEM keys) or HS256/384/512 (priv-key's bytes
    /// are the secret). Every member needs the same key; one given only pub-key accepts tokens
    /// but cannot issue them.
    #[arg(long, global = true, default_value = "simple", value_parser = parse_auth_token)]
    pub auth_token: String,

    /// Seconds a simple token stays valid without being used (etcd's `--auth-token-ttl`; a
    /// JWT's lifetime is its `ttl` option).
    #[arg(long, global = true, default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// The bcrypt cost of stored password hashes (etcd's `--bcrypt-cost`, 4 to 31).
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// How long a connection may be idle before the server pings the client to check it is
    /// still there (etcd's default: 2h).
    #[arg(long, global = true, default_value = "2h", value_parser = parse_duration)]
    pub grpc_keepalive_interval: Duration,

    /// How long the server waits for the answer to its keepalive ping before closing the
    /// connection (etcd's default: 20s). Clients may ping as often as they like.
    #[arg(long, global = true, default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: Duration,

    /// How long the leader's record may go unrenewed before another member takes over: the
    /// longest a dead leader's writes stall. The leader renews every third of it.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub election_lease: Duration,
}

/// Tools besides serving. Every flag above may follow the subcommand too.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Turns a backup into a new data directory (--data-dir, which must be new or empty, of
    /// --engine lsm or btree); then start `engram --data-dir DIR` on it. Takes etcd's own
    /// backups (`etcdctl snapshot save` against etcd or Engram, or a member's
    /// `member/snap/db`) and files older Engram releases wrote.
    Restore {
        /// The backup file.
        snapshot: PathBuf,
    },
    /// Moves a running etcd cluster onto Engram, revisions unchanged: copies a snapshot of the
    /// source into a new --data-dir, then serves it (reads and watches; writes are refused)
    /// while following every revision of the source, until `POST /migration/cutover` on a
    /// client URL makes Engram take over. See the README, "Migrating from etcd".
    Migrate(MigrateArgs),
}

/// Where the source etcd is, and how to reach it (etcdctl's names for its TLS flags).
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Client URL of the etcd to migrate from (https:// with the TLS flags below).
    #[arg(long)]
    pub from: String,
    /// CA bundle that verifies the source's certificate.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate to present to the source.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// How often the source's leases are read: leases granted and revoked in between are not
    /// seen (their keys' writes and deletes are); keep it below the shortest TTL that matters.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub lease_poll_interval: Duration,
}

impl Config {
    /// The engine the flags ask for: `kind` with its data in `data_dir`.
    pub fn engine_config(&self, kind: EngineKind, data_dir: &Path) -> EngineConfig {
        match kind {
            EngineKind::Lsm => EngineConfig::Lsm {
                data_dir: data_dir.to_path_buf(),
                options: self.lsm_options(),
            },
            EngineKind::Btree => EngineConfig::Btree {
                data_dir: data_dir.to_path_buf(),
                cache_bytes: self.cache_size_mb << 20,
            },
            EngineKind::Memory => EngineConfig::Memory,
            EngineKind::Tikv => EngineConfig::Tikv {
                pd_endpoints: self.pd_endpoints.clone(),
                key_prefix: bytes::Bytes::from(self.key_prefix.clone().into_bytes()),
            },
        }
    }

    /// The LSM engine's options from the flags.
    fn lsm_options(&self) -> LsmOptions {
        LsmOptions {
            cache_bytes: (self.cache_size_mb as u64) << 20,
            memtable_bytes: Some(self.memtable_size_mb << 20),
            separate_values_from: (self.value_separation_bytes > 0)
                .then_some(self.value_separation_bytes),
        }
    }

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

/// `--auth-token`: etcd's syntax (`simple`, or `jwt,pub-key=...,...`). The key files are
/// read when the server starts.
fn parse_auth_token(value: &str) -> Result<String, String> {
    backend::auth::options::decompose(value)
        .map(|_| value.to_owned())
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsm_options_follow_the_flags() {
        let config = Config::try_parse_from([
            "engram",
            "--cache-size-mb",
            "8",
            "--memtable-size-mb",
            "32",
            "--value-separation-bytes",
            "512",
        ])
        .unwrap();
        assert_eq!(
            config.lsm_options(),
            LsmOptions {
                cache_bytes: 8 << 20,
                memtable_bytes: Some(32 << 20),
                separate_values_from: Some(512),
            }
        );
        let defaults = Config::try_parse_from(["engram"]).unwrap();
        assert_eq!(defaults.lsm_options().separate_values_from, None);
        assert_eq!(defaults.lsm_options().memtable_bytes, Some(64 << 20));
    }

    #[test]
    fn auth_token_takes_etcds_syntax() {
        let parse = |value: &str| Config::try_parse_from(["engram", "--auth-token", value]);
        let jwt = "jwt,pub-key=a.pub,priv-key=a.pem,sign-method=RS256,ttl=10m";
        assert_eq!(parse(jwt).unwrap().auth_token, jwt);
        assert!(parse("simple").is_ok());
        let err = parse("jwt,priv-key").unwrap_err().to_string();
        assert!(err.contains("auth: invalid auth options"), "{err}");
        assert!(parse("opaque").is_err());
    }

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
