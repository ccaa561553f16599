//! Runs `engram-conformance` against a fresh real etcd 3.5 (must pass: this proves the
//! suite's expectations), a fresh engram (must pass), and engram with etcd as
//! `--reference` (answers must be identical); records etcd's transcripts and compares them
//! with the recordings kept in `conformance/expectations/`; runs the faults group against
//! an engram that a `--restart-cmd` script kills with SIGKILL and restarts.
//!
//! etcd comes from `ENGRAM_ETCD_BIN`, else `<workspace>/.venv-etcd` (scripts/install-etcd);
//! engram is `<workspace>/target/debug/engram`, built with `cargo build --bin engram` if
//! missing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use testkit::{EtcdTool, ServerProcess};

fn workspace_root() -> PathBuf {
    testkit::workspace_root()
}

fn engram_bin() -> PathBuf {
    let p = workspace_root().join("target/debug/engram");
    if !p.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--bin", "engram"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build --bin engram");
        assert!(st.success(), "cargo build --bin engram failed");
    }
    p
}

/// A server process (killed on drop) with its data and log in a temp dir.
struct Server {
    _process: ServerProcess,
    endpoint: String,
    _dir: TempDir,
}

impl Server {
    fn start(what: &str, bin: &Path, args: impl FnOnce(&Path, &[u16]) -> Vec<String>) -> Server {
        let dir = tempdir(&format!("conformance-{what}-"));
        let ports = testkit::free_ports(2).expect("free ports");
        let endpoint = format!("http://127.0.0.1:{}", ports[0]);
        let args = args(&dir.path().join("data"), &ports);
        let log = dir.path().join("server.log");
        let mut process = ServerProcess::spawn(what, bin, &args, endpoint.clone(), &log)
            .unwrap_or_else(|e| panic!("{e}"));
        process
            .wait_ready_blocking(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        Server {
            _process: process,
            endpoint,
            _dir: dir,
        }
    }
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

fn start_etcd() -> Server {
    let bin = testkit::etcd_tool(EtcdTool::Etcd).unwrap_or_else(|e| panic!("{e}"));
    Server::start("etcd", &bin, |data, ports| {
        let mut args = testkit::etcd_args("conformance", data, ports[0], ports[1]);
        args.push("--unsafe-no-fsync".into());
        args
    })
}

fn start_engram() -> Server {
    Server::start("engram", &engram_bin(), |data, ports| {
        testkit::engram_args("conformance", data, ports[0])
    })
}

fn conformance(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engram-conformance"))
        .args(args)
        .output()
        .expect("run engram-conformance")
}

fn assert_passes_record(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("==== record\n{stdout}{stderr}");
    assert!(out.status.success(), "record failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("transcripts recorded from etcd 3.5."),
        "{stdout}"
    );
}

/// `<group>/<case>` -> lines without comments, for every recording under `dir`.
fn transcripts(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for g in fs::read_dir(dir).expect("read expectations dir").flatten() {
        for f in fs::read_dir(g.path()).expect("read group dir").flatten() {
            let text = fs::read_to_string(f.path()).expect("read recording");
            let lines = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            let name = format!(
                "{}/{}",
                g.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            out.insert(name, lines);
        }
    }
    out
}

fn assert_passes(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("==== {what}\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{what}: engram-conformance failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("PASS "), "{what}: no case ran:\n{stdout}");
}

/// Every group that needs no command ran, and passed.
fn assert_every_group_passed(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    for group in [
        "etcd-api",
        "kubernetes",
        "concurrency",
        "concurrency-api",
        "auth",
    ] {
        assert!(
            stdout.contains(&format!("PASS {group}/")),
            "{what}: no {group} case passed:\n{stdout}"
        );
    }
}

#[test]
fn suite_passes_on_etcd_and_engram_and_matches_reference() {
    let etcd = start_etcd();
    let engram = start_engram();
    let reports = tempdir("conformance-report-");
    let md = reports.path().join("report.md");
    let json = reports.path().join("report.json");

    let out = conformance(&["--endpoint", &etcd.endpoint]);
    assert_passes("against etcd", &out);
    assert_every_group_passed("against etcd", &out);
    // Without --restart-cmd the faults group is skipped, and the summary says so.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SKIP faults/") && stdout.contains("NOT RUN"),
        "{stdout}"
    );

    // The kept recordings are what this etcd answers now.
    let recorded = reports.path().join("expectations");
    let out = conformance(&[
        "record",
        "--endpoint",
        &etcd.endpoint,
        "--out",
        &recorded.to_string_lossy(),
    ]);
    assert_passes_record(&out);
    let kept = workspace_root().join("conformance/expectations");
    let (fresh, kept) = (transcripts(&recorded), transcripts(&kept));
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        kept.keys().collect::<Vec<_>>(),
        "recorded cases differ from conformance/expectations/"
    );
    for (case, lines) in &fresh {
        assert_eq!(
            lines, &kept[case],
            "{case}: etcd's transcript differs from conformance/expectations/ \
             (re-record with engram-conformance record)"
        );
    }

    let out = conformance(&[
        "--endpoint",
        &engram.endpoint,
        "--report",
        &md.to_string_lossy(),
        "--json",
        &json.to_string_lossy(),
    ]);
    assert_passes("against engram", &out);
    assert_every_group_passed("against engram", &out);
    let md_text = fs::read_to_string(&md).expect("markdown report");
    assert!(
        md_text.contains("| etcd-api |"),
        "markdown report:\n{md_text}"
    );
    let json_text = fs::read_to_string(&json).expect("json report");
    assert!(
        json_text.contains("\"passed\": true"),
        "json report:\n{json_text}"
    );

    // Fresh servers so that both start from the same state.
    drop((etcd, engram));
    let etcd = start_etcd();
    let engram = start_engram();
    let out = conformance(&[
        "--endpoint",
        &engram.endpoint,
        "--reference",
        &etcd.endpoint,
    ]);
    assert_passes("engram with etcd as --reference", &out);
    assert_every_group_passed("engram with etcd as --reference", &out);

    // A failing run exits non-zero: an unknown group is a usage error (exit code 2).
    let out = conformance(&["--endpoint", &engram.endpoint, "--only", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}

/// An engram (lsm engine, data in a temp dir) started by a shell script that records its
/// pid, so that a `--restart-cmd` script can kill it with SIGKILL and start it again.
struct Restartable {
    dir: TempDir,
    endpoint: String,
}

impl Restartable {
    fn start() -> Restartable {
        let dir = tempdir("conformance-faults-");
        let data = dir.path().join("data");
        Restartable::start_with(dir, &data, "")
    }

    /// Keeps its scripts and log in `dir`, its data in `data`, and adds `flags`.
    fn start_with(dir: TempDir, data: &Path, flags: &str) -> Restartable {
        let port = testkit::free_ports(1).expect("free port")[0];
        let endpoint = format!("http://127.0.0.1:{port}");
        let d = dir.path().display().to_string();
        let start = format!(
            "#!/bin/sh\n\
             '{bin}' --name conformance --engine lsm --data-dir '{data}' {flags} \
             --listen-client-urls {endpoint} --advertise-client-urls {endpoint} \
             </dev/null >>'{d}/server.log' 2>&1 &\n\
             echo $! >'{d}/pid'\n",
            bin = engram_bin().display(),
            data = data.display(),
        );
        let restart = format!(
            "#!/bin/sh\n\
             pid=$(cat '{d}/pid')\n\
             kill -9 \"$pid\"\n\
             while kill -0 \"$pid\" 2>/dev/null; do sleep 0.05; done\n\
             exec sh '{d}/start.sh'\n"
        );
        fs::write(dir.path().join("start.sh"), start).expect("write start.sh");
        fs::write(dir.path().join("restart.sh"), restart).expect("write restart.sh");
        let st = Command::new("sh")
            .arg(dir.path().join("start.sh"))
            .status()
            .expect("run start.sh");
        assert!(st.success());
        let s = Restartable { dir, endpoint };
        s.wait_ready();
        s
    }

    fn restart_cmd(&self) -> String {
        format!("sh '{}'", self.dir.path().join("restart.sh").display())
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        if let Err(err) = testkit::wait_answers_blocking(&self.endpoint, Duration::from_secs(30)) {
            panic!("engram: {err}:\n{}", self.log());
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.dir.path().join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

#[test]
fn faults_group_passes_on_engram_killed_and_restarted() {
    let engram = Restartable::start();
    let reports = tempdir("conformance-faults-report-");
    let json = reports.path().join("report.json");
    let started = Instant::now();
    let out = conformance(&[
        "--endpoint",
        &engram.endpoint,
        "--only",
        "faults",
        "--restart-cmd",
        &engram.restart_cmd(),
        "--json",
        &json.to_string_lossy(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        println!("server log:\n{}", engram.log());
    }
    assert_passes("faults against engram", &out);
    assert!(stdout.contains("PASS faults/"), "{stdout}");
    assert!(stdout.contains("2 kill/restart cycles"), "{stdout}");
    // Without disk commands, the disk case is skipped; the fsync case never runs.
    assert!(
        stdout.contains("SKIP faults/no_acknowledged_write_lost_across_a_full_disk")
            && stdout.contains("needs --fill-disk-cmd")
            && stdout.contains("SKIP faults/fsync_failure"),
        "{stdout}"
    );
    let json_text = fs::read_to_string(&json).expect("json report");
    assert!(
        json_text.contains("\"verdict\": \"pass\"") && json_text.contains("\"skipped\": 2"),
        "{json_text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "faults group took {:?}",
        started.elapsed()
    );
    // The endpoint really was restarted (its pid changed) and is up.
    engram.wait_ready();
}

#[test]
fn faults_group_is_skipped_without_restart_cmd() {
    let engram = start_engram();
    let reports = tempdir("conformance-skip-report-");
    let json = reports.path().join("report.json");
    let md = reports.path().join("report.md");
    let out = conformance(&[
        "--endpoint",
        &engram.endpoint,
        "--only",
        "faults",
        "--json",
        &json.to_string_lossy(),
        "--report",
        &md.to_string_lossy(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "a skip is not a failure: {stdout}");
    assert!(!stdout.contains("PASS "), "{stdout}");
    assert!(
        stdout.contains("SKIP faults/cas_workload_across_kill_and_restart")
            && stdout.contains("needs --restart-cmd"),
        "{stdout}"
    );
    assert!(
        stdout.contains("note: 3 of 3 `faults` case(s) NOT RUN"),
        "{stdout}"
    );
    let json_text = fs::read_to_string(&json).expect("json report");
    assert!(
        json_text.contains("\"verdict\": \"skip\"")
            && json_text.contains("\"skipped\": 3")
            && !json_text.contains("\"verdict\": \"pass\""),
        "{json_text}"
    );
    let md_text = fs::read_to_string(&md).expect("markdown report");
    assert!(md_text.contains("| skip | faults |"), "{md_text}");
}

/// The faults group's disk case against an engram whose data is on a small tmpfs (mounted
/// here: needs root; skipped with the reason otherwise). Without a free-space margin the disk
/// really fills up; engram exits once room is made and the alarm disarmed, and comes back
/// with every acknowledged write.
#[test]
fn disk_case_passes_on_engram_over_a_filled_tmpfs() {
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    if !uid.is_ok_and(|uid| uid.trim_ascii() == b"0") {
        eprintln!("skipped: mounting a tmpfs for the data directory needs root");
        return;
    }
    let dir = tempdir("conformance-disk-");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=128m", "tmpfs"])
        .arg(&mnt)
        .status();
    if !mounted.as_ref().is_ok_and(|s| s.success()) {
        eprintln!("skipped: a tmpfs cannot be mounted here ({mounted:?})");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let engram = Restartable::start_with(dir, &mnt.join("data"), "--space-alarm-min-free-bytes 0");
    let m = mnt.display();
    // Leaves 8 MiB free; the ballast goes again to make room.
    let fill = format!(
        "avail=$(df -B1 --output=avail '{m}' | tail -1); \
         fallocate -l $((avail - 8388608)) '{m}/ballast'"
    );
    let free = format!("rm -f '{m}/ballast'");
    let out = conformance(&[
        "--endpoint",
        &engram.endpoint,
        "--only",
        "faults",
        "--restart-cmd",
        &engram.restart_cmd(),
        "--fill-disk-cmd",
        &fill,
        "--free-disk-cmd",
        &free,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        println!("server log:\n{}", engram.log());
    }
    assert_passes("faults with a full disk against engram", &out);
    assert!(
        stdout.contains("PASS faults/no_acknowledged_write_lost_across_a_full_disk"),
        "{stdout}"
    );
    assert!(
        stdout.contains("etcdserver: mvcc: database space exceeded")
            && stdout.contains("reads while full: served"),
        "{stdout}"
    );
}
