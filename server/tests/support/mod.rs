//! Shared test harness: start real etcd 3.5 and engram processes on free loopback
//! ports and fresh temp dirs, normalise responses for exact comparison, and run
//! differential scenarios (see `diff`).
//!
//! Binaries: etcd/etcdctl come from `ENGRAM_ETCD_BIN` / `ENGRAM_ETCDCTL_BIN`, else from
//! `<workspace>/.venv-etcd` (created by `scripts/install-etcd`, which `scripts/test` runs).
#![allow(dead_code)] // every test file uses a different subset of the harness

pub mod canon;
pub mod diff;
pub mod etcdctl;
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;
use testkit::{EtcdTool, ServerProcess};

/// Workspace root (the parent of the `server` crate).
pub fn workspace_root() -> PathBuf {
    testkit::workspace_root()
}

/// Path of the real etcd server binary.
pub fn etcd_bin() -> PathBuf {
    testkit::etcd_tool(EtcdTool::Etcd).unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the real etcdctl binary.
pub fn etcdctl_bin() -> PathBuf {
    testkit::etcd_tool(EtcdTool::Etcdctl).unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the real etcdutl binary.
pub fn etcdutl_bin() -> PathBuf {
    testkit::etcd_tool(EtcdTool::Etcdutl).unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the engram binary built by cargo for this test run.
pub fn engram_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_engram"))
}

/// Reserves a free loopback port (bind port 0, read it, drop the listener).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

fn free_ports(n: usize) -> Vec<u16> {
    testkit::free_ports(n).expect("free loopback ports")
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
    testkit::log_tail(path, n)
}

/// Connects an etcd-client to `endpoint`.
pub async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect([endpoint], Some(opts))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

/// Attempts at starting a server on fresh ports before giving up (another test may take a
/// port between its choice and the server binding it).
const PORT_ATTEMPTS: usize = 5;

/// Starts the server `spawn` makes for a pair of fresh ports, until one starts ready.
async fn start_ready(what: &str, mut spawn: impl FnMut(&[u16]) -> ServerProcess) -> ServerProcess {
    for _ in 0..PORT_ATTEMPTS {
        let mut server = spawn(&free_ports(2));
        match server.wait_ready(startup_timeout()).await {
            Ok(_) => return server,
            Err(testkit::Error::PortTaken { .. }) => continue,
            Err(err) => panic!("{err}"),
        }
    }
    panic!("{what}: no free ports after {PORT_ATTEMPTS} attempts")
}

/// A real etcd 3.5 single-member cluster on a fresh temp dir.
pub struct Etcd {
    server: ServerProcess,
    dir: TempDir,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("engram-test-etcd-")
            .tempdir()
            .expect("create temp dir");
        let server = start_ready("etcd", |ports| {
            let mut args =
                testkit::etcd_args("harness", &dir.path().join("data"), ports[0], ports[1]);
            args.push("--unsafe-no-fsync".into());
            let endpoint = format!("http://127.0.0.1:{}", ports[0]);
            ServerProcess::spawn(
                "etcd",
                &etcd_bin(),
                &args,
                endpoint,
                &dir.path().join("etcd.log"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .await;
        Etcd { server, dir }
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint().to_string()
    }

    pub async fn client(&self) -> Client {
        connect(&self.endpoint()).await
    }

    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// An engram server. `start()` uses a fresh temp dir; `start_in(dir)` uses `dir` as
/// the data dir (the caller owns it). Logs always go to a temp dir owned by this value.
pub struct Engram {
    server: ServerProcess,
    data_dir: PathBuf,
    logs: TempDir,
    // Flags added to the harness's own (kept across `restart`).
    extra_args: Vec<String>,
    // Keeps the data dir of `start()` alive; declared last so the process dies first.
    _owned: Option<TempDir>,
}

impl Engram {
    pub async fn start() -> Engram {
        Engram::start_with_args(&[]).await
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

    /// `start_in` with `extra_args` after the harness's flags (kept across `restart`).
    pub async fn start_in_with_args(dir: &Path, extra_args: &[String]) -> Engram {
        Engram::launch(dir.to_path_buf(), None, extra_args.to_vec()).await
    }

    async fn launch(data_dir: PathBuf, owned: Option<TempDir>, extra_args: Vec<String>) -> Engram {
        let logs = tempfile::Builder::new()
            .prefix("engram-test-log-")
            .tempdir()
            .expect("create temp dir");
        let server = Engram::spawn_ready(&data_dir, logs.path(), &extra_args).await;
        Engram {
            server,
            data_dir,
            logs,
            extra_args,
            _owned: owned,
        }
    }

    async fn spawn_ready(data_dir: &Path, logs: &Path, extra_args: &[String]) -> ServerProcess {
        start_ready("engram", |ports| {
            let mut args = testkit::engram_args("harness", data_dir, ports[0]);
            args.extend_from_slice(extra_args);
            let endpoint = format!("http://127.0.0.1:{}", ports[0]);
            ServerProcess::spawn(
                "engram",
                &engram_bin(),
                &args,
                endpoint,
                &logs.join("engram.log"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .await
    }

    /// Sends SIGKILL and reaps the process (no graceful shutdown).
    pub fn kill9(&mut self) {
        self.server.kill();
    }

    /// Restarts on the same data dir (SIGKILLs first if still running). The new
    /// process listens on a new port: take `endpoint()`/`client()` again afterwards.
    pub async fn restart(&mut self) {
        self.server.kill();
        self.server = Engram::spawn_ready(&self.data_dir, self.logs.path(), &self.extra_args).await;
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint().to_string()
    }

    pub async fn client(&self) -> Client {
        connect(&self.endpoint()).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// How the process ended, once it has; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.server.exit_status()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }
}

/// Writes `text` to a fresh file inside `dir` (helper for tests that need input files).
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    testkit::write_file(dir, name, text).unwrap_or_else(|e| panic!("write {name}: {e}"))
}

/// `message` as a request made with `token` (etcd's `token` metadata).
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("token", token.parse().expect("a token is ASCII"));
    req
}

/// A call's answer as tests compare it across servers: the response without its headers'
/// identity and revisions (kept as present or not), or the error's code and message.
pub fn shown<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    match result {
        Ok(resp) => strip_headers(&format!("{:?}", resp.into_inner())),
        Err(status) => format!("error {:?}: {}", status.code(), status.message()),
    }
}

/// Replaces every `header: Some(ResponseHeader { ... })` with `header: Some(..)`.
pub fn strip_headers(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("header: Some(ResponseHeader {") {
        out.push_str(&rest[..at]);
        out.push_str("header: Some(..)");
        let after = &rest[at..];
        let end = after.find("})").map_or(after.len(), |e| e + 2);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A real etcd on what `etcdutl snapshot restore` made of the backup `file` (its data and log
/// in `work`), started and ready: a backup etcd must accept as its own.
pub async fn etcd_restored_from(file: &Path, work: &Path) -> ServerProcess {
    let ports = testkit::free_ports(2).unwrap();
    let data = work.join("etcd-data");
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let out = std::process::Command::new(etcdutl_bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "restored", "--initial-cluster"])
        .arg(format!("restored={peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .output()
        .expect("run etcdutl");
    assert!(
        out.status.success(),
        "etcdutl snapshot restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let args = testkit::etcd_args("restored", &data, ports[0], ports[1]);
    let endpoint = format!("http://127.0.0.1:{}", ports[0]);
    let log = work.join("etcd.log");
    let mut etcd = ServerProcess::spawn("etcd", &etcd_bin(), &args, endpoint, &log)
        .unwrap_or_else(|e| panic!("{e}"));
    etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
    etcd
}
