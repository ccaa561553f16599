//! Command-line flags of `engram-bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What each measured operation does (see README.md for the exact requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadKind {
    /// Put of random keys in a keyspace of --keys.
    Put,
    /// A Txn of one Put and no compare on random keys in a keyspace of --keys (etcd's
    /// `benchmark txn-put`): what a Txn costs beyond the Put it carries.
    TxnPut,
    /// kube-apiserver's create: `If(mod_revision(key)==0) Then(Put)` on fresh keys.
    Create,
    /// kube-apiserver's update: CAS on mod_revision, retried with the rv of the Else(Get).
    Update,
    /// Linearizable Range of one key.
    Get,
    /// Serializable Range of one key.
    GetSerializable,
    /// Paginated prefix list (limit 500) over --keys objects, at the first page's revision.
    List,
    /// --watchers watchers over --streams streams on a prefix while --writers put.
    Watch,
    /// A kube-apiserver-like mix: pod gets, paginated pod lists, lease updates, event creates.
    Kube,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Put => "put",
            WorkloadKind::TxnPut => "txn-put",
            WorkloadKind::Create => "create",
            WorkloadKind::Update => "update",
            WorkloadKind::Get => "get",
            WorkloadKind::GetSerializable => "get-serializable",
            WorkloadKind::List => "list",
            WorkloadKind::Watch => "watch",
            WorkloadKind::Kube => "kube",
        }
    }
}

/// Load generator for etcd v3 servers (Engram, etcd).
///
/// Either runs a workload against --endpoints, or with --compare starts a fresh real
/// etcd 3.5 and a fresh engram, runs the workload on each in turn and prints a table.
#[derive(Debug, Clone, Parser)]
#[command(name = "engram-bench", version, about)]
pub struct Args {
    /// Comma-separated client URLs of the server to load (ignored with --compare).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,

    #[arg(long, value_enum, default_value = "put")]
    pub workload: WorkloadKind,

    /// Concurrent in-flight requests (client tasks).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,

    /// gRPC channels (HTTP/2 connections); requests are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,

    /// Size of each written value, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,

    /// Size of the keyspace (put/get/update) or number of pre-populated objects (list, kube pods).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,

    /// Versions each pre-populated key has before the measured phase: the preload writes every
    /// key this many times (list, get, update, kube pods). Stores keep the versions until a
    /// compaction; a busy cluster's objects have many of them between kube-apiserver's
    /// compactions (every 5 minutes).
    #[arg(long, default_value_t = 1)]
    pub versions: u64,

    /// Measured operations to run (default 10000 unless --duration is given).
    #[arg(long)]
    pub ops: Option<u64>,

    /// Run for this many seconds (with --ops too: whichever ends first).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Target rate in operations per second over all clients (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Hard limit on one run's measured phase, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub max_duration: f64,

    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,

    /// watch: number of watchers.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,

    /// watch: number of gRPC watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,

    /// watch: number of concurrent writers (the default is --clients).
    #[arg(long)]
    pub writers: Option<usize>,

    /// watch: seconds to wait, after the last write, for the events still on their way
    /// (events not delivered by then count as missing and are not in the latencies).
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// Write a JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Start a fresh etcd 3.5 and a fresh engram, run the workload on each, compare.
    #[arg(long)]
    pub compare: bool,

    /// --compare: turn auth on in each fresh server (root and a `bench` user whose role may
    /// read and write every key from "/" on) and make every request as that user, with a
    /// simple token: the cost of authentication and permission checks.
    #[arg(long)]
    pub auth: bool,

    /// engram binary for --compare.
    #[arg(long, default_value = "target/release/engram")]
    pub engram_bin: PathBuf,

    /// etcd 3.5 binary for --compare (default: <workspace>/.venv-etcd/..., then PATH).
    #[arg(long, env = "ENGRAM_ETCD_BIN")]
    pub etcd_bin: Option<PathBuf>,

    /// Extra argument passed to the etcd started by --compare (repeatable),
    /// e.g. --etcd-arg=--unsafe-no-fsync.
    #[arg(long, allow_hyphen_values = true)]
    pub etcd_arg: Vec<String>,

    /// Extra argument passed to the engram started by --compare (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub engram_arg: Vec<String>,

    /// Only run on these systems with --compare or --scale (etcd, engram).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("etcd"), String::from("engram")])]
    pub systems: Vec<String>,

    /// Draw the results as an SVG chart into this file: bars of ops/s and p99 per
    /// system (single run, --compare), or lines against stored keys (--scale).
    #[arg(long)]
    pub chart: Option<PathBuf>,

    /// Measure write throughput and p99 as the store grows: on a fresh server of each
    /// system, preload --value-size values up to each --scale-steps count, then run a
    /// `create` workload of --ops operations (--workload is ignored).
    #[arg(long)]
    pub scale: bool,

    /// --scale: store sizes (keys) to measure at, ascending. etcd steps that would pass
    /// its backend quota (2 GiB by default) are skipped.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 200_000, 400_000])]
    pub scale_steps: Vec<u64>,

    /// Measure a migration from etcd onto Engram: on a fresh etcd preloaded with --keys
    /// values, the time and peak RSS of `engram restore` from its snapshot, the follow lag of
    /// `engram migrate` while --workload runs on the etcd for --duration, and the cut-over's
    /// pause (--systems is ignored).
    #[arg(long)]
    pub migration: bool,

    /// Measure the single writer's ceiling: Engram's store in this process (no server, no
    /// gRPC), put and create from --clients in-process clients on one runtime thread for
    /// --duration/--ops, once per --ceiling-dirs entry (--workload and --systems are ignored).
    #[arg(long)]
    pub writer_ceiling: bool,

    /// --writer-ceiling: directories to put the data in (default: the temp directory, and
    /// /dev/shm where it exists: a tmpfs, where fsync costs nothing).
    #[arg(long, value_delimiter = ',')]
    pub ceiling_dirs: Vec<PathBuf>,

    /// --scale, --migration: concurrent preload requests (each a Txn of up to 128 puts).
    #[arg(long, default_value_t = 32)]
    pub preload_clients: usize,

    /// --scale: after each preload, wait up to this many seconds for the server to go idle
    /// (under a tenth of a core over 2 s) before measuring, so a step measures the store at
    /// that size rather than the background work a bulk load left behind (an LSM's
    /// compactions). The wait is reported per step; 0 measures right after the preload.
    #[arg(long, default_value_t = 300.0)]
    pub settle: f64,
}

impl Args {
    /// Validates flag combinations; returns a message for the user on error.
    pub fn check(&mut self) -> Result<(), String> {
        if self.clients == 0 || self.conns == 0 {
            return Err("--clients and --conns must be at least 1".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.versions == 0 {
            return Err("--versions must be at least 1".into());
        }
        if self.workload == WorkloadKind::Watch {
            if self.watchers == 0 || self.streams == 0 {
                return Err("--watchers and --streams must be at least 1".into());
            }
            if !(self.drain_timeout.is_finite() && self.drain_timeout >= 0.0) {
                return Err("--drain-timeout must be a number of seconds".into());
            }
            if self.value_size < 8 {
                return Err("watch needs --value-size >= 8 (the send timestamp)".into());
            }
        }
        if !(self.settle.is_finite() && self.settle >= 0.0) {
            return Err("--settle must be a number of seconds".into());
        }
        if let Some(r) = self.rate
            && (!r.is_finite() || r <= 0.0)
        {
            return Err("--rate must be positive".into());
        }
        if let Some(d) = self.duration
            && (!d.is_finite() || d <= 0.0)
        {
            return Err("--duration must be positive".into());
        }
        if !(self.max_duration.is_finite() && self.max_duration > 0.0) {
            return Err("--max-duration must be positive".into());
        }
        if self.scale {
            if self.compare {
                return Err("--scale and --compare are separate modes".into());
            }
            self.scale_steps.sort_unstable();
            self.scale_steps.dedup();
            if self.scale_steps.is_empty() || self.scale_steps[0] == 0 {
                return Err("--scale-steps must be positive key counts".into());
            }
            if self.preload_clients == 0 {
                return Err("--preload-clients must be at least 1".into());
            }
            self.workload = WorkloadKind::Create;
        }
        let modes = [
            self.compare,
            self.scale,
            self.migration,
            self.writer_ceiling,
        ];
        if modes.iter().filter(|m| **m).count() > 1 {
            return Err(
                "--compare, --scale, --migration and --writer-ceiling are separate modes".into(),
            );
        }
        if self.auth && (!self.compare || self.scale || self.migration) {
            return Err("--auth enables auth on the fresh servers of --compare only".into());
        }
        for s in &self.systems {
            if s != "etcd" && s != "engram" {
                return Err(format!("--systems: unknown system {s:?} (etcd, engram)"));
            }
        }
        Ok(())
    }

    /// Number of measured operations (bounded even in --duration mode).
    pub fn op_limit(&self) -> u64 {
        match (self.ops, self.duration) {
            (Some(n), _) => n,
            (None, Some(_)) => u64::MAX,
            (None, None) => 10_000,
        }
    }

    /// Wall-clock limit of the measured phase.
    pub fn time_limit(&self) -> Duration {
        let d = self
            .duration
            .unwrap_or(f64::INFINITY)
            .min(self.max_duration);
        Duration::from_secs_f64(d)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout.max(0.001))
    }
}
