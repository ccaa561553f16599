//! Starting, probing and stopping the servers that `--compare` measures.
//!
//! Each server gets a fresh temp data dir and free loopback ports; it is SIGKILLed
//! and reaped when its [`Server`] is dropped (normal exit, error, panic unwinding,
//! Ctrl-C handled by `main`), and on Linux also when this process dies (PDEATHSIG).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use testkit::{EtcdTool, ServerProcess};

use crate::cli::Args;

/// Which server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Etcd,
    Engram,
}

impl System {
    /// "etcd" or "engram" (anything else is taken as engram; `Args::check` rejects it).
    pub fn from_name(name: &str) -> System {
        if name == "etcd" {
            System::Etcd
        } else {
            System::Engram
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Engram => "engram",
        }
    }
}

/// A running server process owned by the benchmark.
pub struct Server {
    pub system: System,
    pub endpoint: String,
    /// Version string reported by Maintenance.Status (filled by `wait_ready`).
    pub version: String,
    process: ServerProcess,
    dir: TempDir,
}

/// CPU time and peak memory of a process, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    /// VmHWM (peak resident set size), in bytes.
    pub peak_rss: u64,
}

impl Server {
    /// Starts a fresh server of `system` as the flags say, and waits until it answers.
    pub async fn start(system: System, args: &Args, timeout: Duration) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("engram-bench-{}-", system.name()))
            .tempdir()
            .context("create temp dir")?;
        let ports = testkit::free_ports(2)?;
        let data = dir.path().join("data");
        let (bin, mut flags, extra) = match system {
            System::Etcd => (
                find_etcd(args.etcd_bin.as_deref())?,
                testkit::etcd_args("bench", &data, ports[0], ports[1]),
                &args.etcd_arg,
            ),
            System::Engram => (
                find_engram(&args.engram_bin)?,
                testkit::engram_args("bench", &data, ports[0]),
                &args.engram_arg,
            ),
        };
        // etcd runs with its defaults (fsync on, default quota); both log warnings only.
        flags.extend(["--log-level".to_string(), "warn".to_string()]);
        flags.extend(extra.iter().cloned());
        let endpoint = format!("http://127.0.0.1:{}", ports[0]);
        let log = dir.path().join(format!("{}.log", system.name()));
        let mut process =
            ServerProcess::spawn(system.name(), &bin, &flags, endpoint.clone(), &log)?;
        let version = process.wait_ready(timeout).await?;
        Ok(Server {
            system,
            endpoint,
            version,
            process,
            dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// CPU seconds and peak RSS so far (zero if the process is gone or /proc is missing).
    pub fn usage(&self) -> ProcUsage {
        self.pid().map(proc_usage).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.process.log_tail(n)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Reads utime+stime from /proc/PID/stat and VmHWM from /proc/PID/status.
pub fn proc_usage(pid: u32) -> ProcUsage {
    let mut u = ProcUsage {
        cpu_secs: stat_cpu_secs(Path::new(&format!("/proc/{pid}/stat"))),
        peak_rss: 0,
    };
    if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("VmHWM:") {
                let kb = v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
                u.peak_rss = kb * 1024;
            }
        }
    }
    u
}

/// utime + stime, in seconds, from a `/proc/.../stat` file of a process or a thread (0 if it
/// cannot be read).
pub fn stat_cpu_secs(path: &Path) -> f64 {
    let Ok(stat) = fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: split after its closing paren.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14 - 3) + ticks(15 - 3)) as f64 / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Finds the etcd binary: the flag/env value, else the one `scripts/install-etcd` installed
/// (see `testkit::etcd_tool`), else `etcd` on PATH.
pub fn find_etcd(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("etcd binary {} does not exist", p.display());
    }
    if let Ok(p) = testkit::etcd_tool(EtcdTool::Etcd) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("etcd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "etcd 3.5 not found: pass --etcd-bin or set ENGRAM_ETCD_BIN (scripts/install-etcd installs one)"
    )
}

/// Resolves the engram binary: as given if it exists, else relative to the workspace
/// this tool was built from.
pub fn find_engram(p: &Path) -> Result<PathBuf> {
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if p.is_relative() {
        let q = testkit::workspace_root().join(p);
        if q.is_file() {
            return Ok(q);
        }
    }
    bail!(
        "engram binary {} not found (build it: cargo build --release --bin engram)",
        p.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let u = proc_usage(std::process::id());
        assert!(u.peak_rss > 0);
        assert!(u.cpu_secs >= 0.0);
    }
}
