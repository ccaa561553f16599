//! The real etcdctl 3.5 for the operational commands: `watch` (a background process),
//! `lease grant|keep-alive --once|timetolive --keys|list|revoke`, `endpoint status|health|hashkv`,
//! `member list`, `compaction`, `defrag`, `alarm list` and `snapshot save`.
//!
//! Each scenario runs on a fresh engram and a fresh real etcd and asserts on what etcdctl
//! printed (lease ids round-trip, hashes are set and follow the data, ...); where the two
//! servers' answers are comparable, the normalised transcripts (header ids, lease ids,
//! remaining TTLs, endpoints and timings replaced) must be identical. Some run over TLS too.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pki::{Pki, path};
use support::{Engram, Etcd, etcdctl_bin, free_port};
use tempfile::TempDir;

/// The version engram reports (etcd 3.5.13's API, for kube-apiserver's feature checks).
const ENGRAM_VERSION: &str = "3.5.13";

/// A server as etcdctl sees it: where it is, how to reach it, and where its plain
/// HTTP port is (for /metrics).
struct Target {
    name: &'static str,
    endpoint: String,
    tls: Vec<String>,
    http: String,
}

impl Target {
    fn plain(name: &'static str, endpoint: String) -> Target {
        Target {
            name,
            http: endpoint.clone(),
            endpoint,
            tls: Vec::new(),
        }
    }

    fn is_engram(&self) -> bool {
        self.name.starts_with("engram")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(etcdctl_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                command.env_remove(k);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(["--dial-timeout=5s", "--command-timeout=20s"])
            .args(&self.tls)
            .args(args);
        command
    }

    /// Runs etcdctl with `args` to completion.
    fn run(&self, args: &[&str]) -> Run {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl");
        let stderr = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.trim_start().starts_with("{\"level\""))
            .collect::<Vec<_>>()
            .join("\n");
        Run {
            what: format!("[{}] etcdctl {}", self.name, args.join(" ")),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        }
    }

    /// Runs etcdctl with `args`, which must succeed.
    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, Some(0), "{run}");
        run
    }
}

struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exit={:?}\nstdout:\n{}\nstderr:\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }
}

/// What is replaced before two servers' outputs are compared.
#[derive(Default)]
struct Norm {
    /// Literal replacements: (what, by).
    subst: Vec<(String, String)>,
}

impl Norm {
    fn endpoint(&mut self, endpoint: &str) {
        self.subst.push((endpoint.to_string(), "<endpoint>".into()));
    }

    /// A lease id, in etcdctl's hex (%016x) and decimal (JSON) forms.
    fn lease(&mut self, id: i64, name: &str) {
        self.subst.push((format!("{id:016x}"), format!("<{name}>")));
        self.subst.push((id.to_string(), format!("<{name}>")));
    }

    fn apply(&self, run: &Run) -> String {
        let mut stdout = String::new();
        for line in run.stdout.lines() {
            let line = match serde_json::from_str::<Value>(line.trim()) {
                Ok(mut v) if line.trim_start().starts_with(['{', '[']) => {
                    normalise_json(&mut v);
                    v.to_string()
                }
                _ => normalise_text(line),
            };
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let mut text = format!(
            "{}\nexit={:?}\nstdout:\n{stdout}stderr:\n{}\n",
            run.what.split_once("] ").map_or("", |(_, c)| c),
            run.code,
            run.stderr
        );
        for (what, by) in &self.subst {
            text = text.replace(what, by);
        }
        text
    }
}

/// Header ids and raft term keep only "is it set"; a remaining TTL only "is it near the
/// granted one".
fn normalise_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match k.as_str() {
                    "cluster_id" | "member_id" | "raft_term" => {
                        let set = child.as_u64().is_some_and(|n| n != 0);
                        *child = Value::String(if set { "<set>" } else { "<zero>" }.into());
                    }
                    "ttl" if child.as_i64().is_some_and(|t| (90..=100).contains(&t)) => {
                        *child = Value::String("<remaining>".into());
                    }
                    _ => normalise_json(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

/// `remaining(99s)` → `remaining(<near>)`; `took = 1.2ms` → `took = <t>`.
fn normalise_text(line: &str) -> String {
    let mut line = line.to_string();
    if let Some(start) = line.find("remaining(")
        && let Some(len) = line[start..].find("s)")
    {
        let n: i64 = line[start + 10..start + len].parse().unwrap_or(-1);
        if (90..=100).contains(&n) {
            line.replace_range(start..start + len + 2, "remaining(<near>)");
        }
    }
    if let Some(start) = line.find("took = ") {
        line.replace_range(start + 7.., "<t>");
    }
    line
}

/// Panics at the first step where the two transcripts differ.
/// `ENGRAM_DIFF_PRINT=1` prints the reference transcript (with `-- --nocapture`).
fn compare(what: &str, reference: &[String], subject: &[String]) {
    if std::env::var("ENGRAM_DIFF_PRINT").is_ok_and(|v| v == "1") {
        println!("==== {what}\n{}", reference.join("\n"));
    }
    for (i, (a, b)) in reference.iter().zip(subject).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: step #{} differs (left: etcd, right: engram)",
            i + 1
        );
    }
    assert_eq!(reference.len(), subject.len(), "{what}: step counts");
}

/// The lease id etcdctl printed for `lease grant` ("lease <hex> granted with TTL(<n>s)").
fn granted_id(run: &Run, ttl: i64) -> i64 {
    let out = run.stdout.trim();
    let hex = out
        .strip_prefix("lease ")
        .and_then(|s| s.strip_suffix(&format!(" granted with TTL({ttl}s)")))
        .unwrap_or_else(|| panic!("unexpected grant output: {run}"));
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("lease id {hex}: {e}"))
}

use support::http::scrape;

/// The open watchers of the server at `http`, from its `/metrics` (etcd and engram both
/// expose `etcd_debugging_mvcc_watcher_total`).
async fn watchers(http: &str) -> f64 {
    scrape(http)
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("etcd_debugging_mvcc_watcher_total ")
                .and_then(|v| v.parse().ok())
        })
        .expect("etcd_debugging_mvcc_watcher_total exposed")
}

async fn wait_watchers(t: &Target, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = watchers(&t.http).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "[{}] {n} watchers, want {want}",
            t.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A background `etcdctl watch`, killed when dropped.
struct WatchProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl WatchProc {
    fn spawn(t: &Target, args: &[&str]) -> WatchProc {
        let mut child = t
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        WatchProc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Every line printed until (and including) `last`.
    fn until(&mut self, last: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.seen.iter().any(|l| l == last) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("watch printed no {last:?}; so far: {:?}", self.seen),
            }
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for WatchProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcdctl watch` in the background sees the puts and deletes made after it started, and
/// its watcher goes away with it. Returns what it printed.
async fn watch_scenario(t: &Target) -> Vec<String> {
    wait_watchers(t, 0.0).await;
    let mut watch = WatchProc::spawn(t, &["watch", "w/", "--prefix"]);
    let mut history = WatchProc::spawn(t, &["watch", "w/", "--prefix", "--rev=1", "--prev-kv"]);
    // Both watchers exist on the server: what follows is "after it started".
    wait_watchers(t, 2.0).await;
    t.ok(&["put", "w/a", "1"]);
    t.ok(&["put", "w/b", "2"]);
    t.ok(&["put", "w/a", "3"]);
    t.ok(&["del", "w/a"]);
    t.ok(&["put", "other", "x"]);
    t.ok(&["put", "w/end", "end"]);
    let live = watch.until("end");
    let want = [
        "PUT", "w/a", "1", "PUT", "w/b", "2", "PUT", "w/a", "3", "DELETE", "w/a", "", "PUT",
        "w/end", "end",
    ];
    assert_eq!(live, want, "[{}] etcdctl watch", t.name);
    let past = history.until("end");
    // --prev-kv prints the previous key-value before each event's key-value.
    let want_past = [
        "PUT", "w/a", "1", "PUT", "w/b", "2", "PUT", "w/a", "1", "w/a", "3", "DELETE", "w/a", "3",
        "w/a", "", "PUT", "w/end", "end",
    ];
    assert_eq!(past, want_past, "[{}] etcdctl watch --rev=1", t.name);
    drop(watch);
    drop(history);
    // The killed processes' streams close: no watcher left behind.
    wait_watchers(t, 0.0).await;
    let mut out = live;
    out.extend(past);
    out
}

/// The lease commands; returns the normalised transcript.
fn lease_scenario(t: &Target) -> Vec<String> {
    let mut norm = Norm::default();
    norm.endpoint(&t.endpoint);
    let mut runs = Vec::new();
    let grant = t.ok(&["lease", "grant", "100"]);
    let id = granted_id(&grant, 100);
    let other = granted_id(&t.ok(&["lease", "grant", "300"]), 300);
    norm.lease(id, "lease");
    norm.lease(other, "other");
    let hex = format!("{id:016x}");
    runs.push(grant);
    runs.push(t.ok(&["put", "--lease", &hex, "lk1", "v"]));
    runs.push(t.ok(&["put", "--lease", &hex, "lk2", "v"]));

    let keep = t.ok(&["lease", "keep-alive", "--once", &hex]);
    assert_eq!(
        keep.stdout,
        format!("lease {hex} keepalived with TTL(100)\n"),
        "{keep}"
    );
    runs.push(keep);
    let keep = t.ok(&["lease", "keep-alive", "--once", "-w", "json", &hex]);
    assert_eq!(keep.json()["ID"].as_i64(), Some(id), "{keep}");
    assert_eq!(keep.json()["TTL"].as_i64(), Some(100), "{keep}");
    runs.push(keep);

    let ttl = t.ok(&["lease", "timetolive", &hex]);
    assert!(
        ttl.stdout
            .starts_with(&format!("lease {hex} granted with TTL(100s), remaining(")),
        "{ttl}"
    );
    runs.push(ttl);
    // etcd lists a lease's keys in no particular order (they come from a map): both orders
    // are right, and the transcript keeps one.
    let mut ttl = t.ok(&["lease", "timetolive", "--keys", &hex]);
    ttl.stdout = ttl.stdout.replace("[lk2 lk1]", "[lk1 lk2]");
    assert!(
        ttl.stdout.trim_end().ends_with("attached keys([lk1 lk2])"),
        "{ttl}"
    );
    runs.push(ttl);
    let mut ttl = t.ok(&["lease", "timetolive", "--keys", "-w", "json", &hex]);
    ttl.stdout = ttl
        .stdout
        .replace(r#"["bGsy","bGsx"]"#, r#"["bGsx","bGsy"]"#);
    let v = ttl.json();
    assert_eq!(v["id"].as_i64(), Some(id), "{ttl}");
    assert_eq!(v["granted-ttl"].as_i64(), Some(100), "{ttl}");
    assert!(
        v["ttl"].as_i64().is_some_and(|r| (90..=100).contains(&r)),
        "{ttl}"
    );
    // Keys are base64: "lk1", "lk2".
    assert_eq!(v["keys"], serde_json::json!(["bGsx", "bGsy"]), "{ttl}");
    runs.push(ttl);

    let list = t.ok(&["lease", "list"]);
    let mut listed: Vec<String> = list.stdout.lines().skip(1).map(str::to_string).collect();
    listed.sort();
    let mut want = vec![hex.clone(), format!("{other:016x}")];
    want.sort();
    assert!(list.stdout.starts_with("found 2 leases\n"), "{list}");
    assert_eq!(listed, want, "{list}");
    // etcd lists in its own order: the ids were checked above, so only their names stay.
    runs.push(Run {
        stdout: "found 2 leases\n<lease>\n<other>\n".to_string(),
        ..list
    });
    let list = t.ok(&["lease", "list", "-w", "json"]);
    let mut ids: Vec<i64> = list.json()["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .filter_map(|l| l["id"].as_i64())
        .collect();
    ids.sort();
    let mut want = vec![id, other];
    want.sort();
    assert_eq!(ids, want, "{list}");

    let revoke = t.ok(&["lease", "revoke", &hex]);
    assert_eq!(revoke.stdout, format!("lease {hex} revoked\n"), "{revoke}");
    runs.push(revoke);
    // The attached keys went with it.
    let get = t.ok(&["get", "lk", "--prefix", "--keys-only"]);
    assert_eq!(get.stdout, "", "{get}");
    runs.push(get);
    let ttl = t.ok(&["lease", "timetolive", &hex]);
    assert_eq!(
        ttl.stdout,
        format!("lease {hex} already expired\n"),
        "{ttl}"
    );
    runs.push(ttl);
    let again = t.run(&["lease", "revoke", &hex]);
    assert_ne!(again.code, Some(0), "{again}");
    assert!(
        again.stderr.contains("requested lease not found"),
        "{again}"
    );
    runs.push(again);
    let keep = t.run(&["lease", "keep-alive", "--once", &hex]);
    assert_ne!(keep.code, Some(0), "{keep}");
    runs.push(keep);
    runs.push(t.ok(&["lease", "revoke", &format!("{other:016x}")]));
    let list = t.ok(&["lease", "list"]);
    assert_eq!(list.stdout, "found 0 leases\n", "{list}");
    runs.push(list);
    runs.iter().map(|r| norm.apply(r)).collect()
}

/// The maintenance commands; returns the normalised transcript of the comparable ones.
fn maintenance_scenario(t: &Target, snapshot_dir: &Path) -> Vec<String> {
    let mut norm = Norm::default();
    norm.endpoint(&t.endpoint);
    let mut runs = Vec::new();
    for (k, v) in [("a", "1"), ("a", "2"), ("b", "1"), ("a", "3")] {
        runs.push(t.ok(&["put", k, v]));
    }

    let status = t.ok(&["endpoint", "status", "-w", "json"]);
    let v = status.json();
    let s = &v[0]["Status"];
    assert_eq!(
        v[0]["Endpoint"].as_str(),
        Some(t.endpoint.as_str()),
        "{status}"
    );
    if t.is_engram() {
        assert_eq!(s["version"].as_str(), Some(ENGRAM_VERSION), "{status}");
    }
    let member_id = s["header"]["member_id"].as_u64().expect("member_id");
    assert_ne!(member_id, 0, "{status}");
    assert_eq!(s["leader"].as_u64(), Some(member_id), "{status}");
    assert_eq!(s["header"]["revision"].as_i64(), Some(5), "{status}");
    assert!(s["dbSize"].as_i64().is_some_and(|n| n > 0), "{status}");
    assert!(s["raftTerm"].as_u64().is_some_and(|n| n > 0), "{status}");
    // The same fields as etcd's (values differ: versions, sizes, raft indexes).
    let fields = |v: &Value| -> Vec<String> {
        let mut keys: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    runs.push(Run {
        stdout: format!("status fields {:?}\n", fields(s)),
        ..status
    });
    let table = t.ok(&["endpoint", "status"]);
    let cells: Vec<&str> = table.stdout.trim().split(", ").collect();
    assert_eq!(cells[0], t.endpoint, "{table}");
    assert_eq!(cells[1], format!("{member_id:x}"), "{table}");
    assert_eq!(cells[4], "true", "is leader: {table}");
    if t.is_engram() {
        assert_eq!(cells[2], ENGRAM_VERSION, "{table}");
    }

    let health = t.ok(&["endpoint", "health"]);
    assert!(
        health.stdout.starts_with(&format!(
            "{} is healthy: successfully committed proposal: took = ",
            t.endpoint
        )),
        "{health}"
    );
    runs.push(health);
    let health = t.ok(&["endpoint", "health", "-w", "json"]);
    assert_eq!(health.json()[0]["health"], Value::Bool(true), "{health}");

    let hash = |t: &Target| -> (u64, Run) {
        let run = t.ok(&["endpoint", "hashkv", "-w", "json"]);
        let v = run.json();
        let h = &v[0]["HashKV"];
        assert_eq!(
            h["header"]["revision"].as_i64().map(|_| ()),
            Some(()),
            "{run}"
        );
        let hash = h["hash"]
            .as_u64()
            .unwrap_or_else(|| panic!("no hash: {run}"));
        (hash, run)
    };
    let (h1, run) = hash(t);
    assert_ne!(h1, 0, "{run}");
    assert_eq!(
        run.json()[0]["HashKV"]["compact_revision"].as_i64(),
        Some(-1),
        "{run}"
    );
    let (h2, _) = hash(t);
    assert_eq!(h1, h2, "hashkv is stable without writes");
    let text = t.ok(&["endpoint", "hashkv"]);
    assert_eq!(text.stdout, format!("{}, {h1}\n", t.endpoint), "{text}");
    t.ok(&["put", "c", "1"]);
    let (h3, run) = hash(t);
    assert_ne!(h3, h1, "hashkv follows the data: {run}");

    let members = t.ok(&["member", "list", "-w", "json"]);
    let v = members.json();
    let list = v["members"].as_array().expect("members");
    assert_eq!(list.len(), 1, "{members}");
    assert_eq!(list[0]["ID"].as_u64(), Some(member_id), "{members}");
    assert_eq!(list[0]["name"].as_str(), Some("harness"), "{members}");
    let urls = list[0]["clientURLs"].as_array().expect("clientURLs");
    assert!(
        urls.contains(&Value::from(t.endpoint.as_str())),
        "{members}"
    );
    let members = t.ok(&["member", "list"]);
    let cells: Vec<&str> = members.stdout.trim().split(", ").collect();
    assert_eq!(cells.len(), 6, "{members}");
    assert_eq!(
        (cells[0], cells[1], cells[2], cells[5]),
        (
            format!("{member_id:x}").as_str(),
            "started",
            "harness",
            "false"
        ),
        "{members}"
    );
    assert!(cells[4].split(',').any(|u| u == t.endpoint), "{members}");

    let alarms = t.ok(&["alarm", "list"]);
    assert_eq!(alarms.stdout, "", "{alarms}");
    runs.push(alarms);
    let alarms = t.ok(&["alarm", "list", "-w", "json"]);
    assert!(
        alarms.json()["header"]["revision"].as_i64() == Some(6),
        "{alarms}"
    );
    runs.push(alarms);

    for c in [
        &["compaction", "3"][..],
        &["compaction", "3"],
        &["compaction", "99"],
        &["compaction", "--physical", "5"],
        &["get", "a", "--rev=4"],
        &["get", "a", "--rev=5"],
    ] {
        runs.push(t.run(c));
    }
    let (_, run) = hash(t);
    assert_eq!(
        run.json()[0]["HashKV"]["compact_revision"].as_i64(),
        Some(5),
        "{run}"
    );

    let defrag = t.ok(&["defrag"]);
    assert_eq!(
        defrag.stdout,
        format!("Finished defragmenting etcd member[{}]\n", t.endpoint),
        "{defrag}"
    );
    runs.push(defrag);
    runs.push(t.ok(&["get", "", "--prefix"]));

    let file = snapshot_dir.join(format!("{}.db", t.name));
    let path = file.to_string_lossy().into_owned();
    norm.subst.push((path.clone(), "<snapshot>".into()));
    let save = t.ok(&["snapshot", "save", &path]);
    assert_eq!(save.stdout, format!("Snapshot saved at {path}\n"), "{save}");
    let bytes = std::fs::read(&file).expect("snapshot file");
    assert!(!bytes.is_empty(), "empty snapshot");
    // etcd's format on both: a bbolt file (its magic number in the first meta page) and the
    // SHA-256 trailer etcdctl checks the size for.
    assert_eq!(
        bytes[16..20],
        0xED0C_DAEDu32.to_le_bytes(),
        "not a bbolt file"
    );
    assert_eq!(bytes.len() % 512, 32, "no SHA-256 trailer");
    runs.push(save);
    runs.iter().map(|r| norm.apply(r)).collect()
}

#[tokio::test]
async fn etcdctl_watch_in_the_background() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let e = Target::plain("etcd", etcd.endpoint());
    let g = Target::plain("engram", engram.endpoint());
    let reference = watch_scenario(&e).await;
    let subject = watch_scenario(&g).await;
    assert_eq!(reference, subject);
}

#[tokio::test]
async fn etcdctl_lease_commands() {
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let reference = lease_scenario(&Target::plain("etcd", etcd.endpoint()));
    let subject = lease_scenario(&Target::plain("engram", engram.endpoint()));
    compare("lease", &reference, &subject);
}

#[tokio::test]
async fn etcdctl_endpoint_member_and_maintenance_commands() {
    let dir = TempDir::new().expect("temp dir");
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start());
    let reference = maintenance_scenario(&Target::plain("etcd", etcd.endpoint()), dir.path());
    let subject = maintenance_scenario(&Target::plain("engram", engram.endpoint()), dir.path());
    compare("maintenance", &reference, &subject);
}

/// An engram serving https with client certificate authentication (and the harness's plain
/// http port, used for /metrics), and etcdctl's view of it.
async fn tls_engram(pki: &Pki) -> (Engram, Target) {
    let port = free_port();
    let engram = Engram::start_with_args(&[
        "--listen-client-urls".to_string(),
        format!("https://127.0.0.1:{port}"),
        "--advertise-client-urls".to_string(),
        format!("https://127.0.0.1:{port}"),
        "--cert-file".to_string(),
        path(&pki.server_cert),
        "--key-file".to_string(),
        path(&pki.server_key),
        "--trusted-ca-file".to_string(),
        path(&pki.ca),
        "--client-cert-auth".to_string(),
    ])
    .await;
    let target = Target {
        name: "engram-tls",
        endpoint: format!("https://127.0.0.1:{port}"),
        tls: vec![
            format!("--cacert={}", path(&pki.ca)),
            format!("--cert={}", path(&pki.client_cert)),
            format!("--key={}", path(&pki.client_key)),
        ],
        http: engram.endpoint(),
    };
    (engram, target)
}

/// The same commands over TLS with client certificate authentication, each scenario on a
/// fresh server: engram's answers over https are its answers over http.
#[tokio::test]
async fn etcdctl_operations_over_tls() {
    let pki = Pki::new();
    let (_engram, t) = tls_engram(&pki).await;
    // Without a client certificate the server refuses.
    let bare = Target {
        tls: vec![format!("--cacert={}", path(&pki.ca))],
        name: "engram-tls-no-cert",
        endpoint: t.endpoint.clone(),
        http: t.http.clone(),
    };
    let refused = bare.run(&["--dial-timeout=2s", "endpoint", "health"]);
    assert_ne!(refused.code, Some(0), "{refused}");
    watch_scenario(&t).await;

    let (_engram, t) = tls_engram(&pki).await;
    let plain = Engram::start().await;
    let p = Target::plain("engram", plain.endpoint());
    compare("lease over TLS", &lease_scenario(&p), &lease_scenario(&t));

    let (_engram, t) = tls_engram(&pki).await;
    let plain = Engram::start().await;
    let p = Target::plain("engram", plain.endpoint());
    let dir = TempDir::new().expect("temp dir");
    compare(
        "maintenance over TLS",
        &maintenance_scenario(&p, dir.path()),
        &maintenance_scenario(&t, dir.path()),
    );
}
