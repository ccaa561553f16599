//! The real etcdctl 3.5 against a fresh etcd and a fresh engram: every command's exit
//! status, stdout and stderr must be identical after normalising the header ids and
//! raft term (in `-w json` and `-w fields` output) and dropping client log lines.
//! `ENGRAM_DIFF_SELF_CHECK=1` runs both sides on etcd.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::diff::Subject;
use support::{Etcd, etcdctl_bin};

/// One etcdctl invocation: arguments (after `--endpoints`) and optional stdin.
struct Cmd {
    args: Vec<String>,
    stdin: Option<String>,
}

fn cmd(args: &[&str]) -> Cmd {
    Cmd {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
    }
}

fn txn(args: &[&str], stdin: &str) -> Cmd {
    Cmd {
        stdin: Some(stdin.to_string()),
        ..cmd(args)
    }
}

/// Zeroes (keeping only "is it set") the header ids and raft term in JSON output.
fn normalise_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if matches!(k.as_str(), "cluster_id" | "member_id" | "raft_term") {
                    let set = child.as_u64().is_some_and(|n| n != 0);
                    *child = Value::String(if set { "<set>" } else { "<zero>" }.into());
                } else {
                    normalise_json(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_json),
        _ => {}
    }
}

fn normalise_stdout(out: &str) -> String {
    let mut lines = Vec::new();
    for line in out.lines() {
        let t = line.trim_start();
        if t.starts_with('{')
            && let Ok(mut v) = serde_json::from_str::<Value>(t)
        {
            normalise_json(&mut v);
            lines.push(v.to_string());
            continue;
        }
        // `-w fields` output
        if ["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""]
            .iter()
            .any(|f| t.starts_with(f))
        {
            let name = t.split(':').next().unwrap_or(t).trim();
            lines.push(format!("{name} : <normalised>"));
            continue;
        }
        lines.push(line.to_string());
    }
    lines.join("\n")
}

fn normalise_stderr(err: &str) -> String {
    err.lines()
        .filter(|l| !l.trim_start().starts_with("{\"level\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn run_etcdctl(endpoint: &str, c: &Cmd) -> String {
    let mut command = Command::new(etcdctl_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL") {
            command.env_remove(k);
        }
    }
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=20s")
        .args(&c.args)
        .stdin(if c.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn etcdctl");
    if let Some(input) = &c.stdin {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    let out = child.wait_with_output().expect("wait etcdctl");
    format!(
        "exit={:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        normalise_stdout(&String::from_utf8_lossy(&out.stdout)),
        normalise_stderr(&String::from_utf8_lossy(&out.stderr)),
    )
}

/// Runs `cmds` in order against a fresh etcd and a fresh subject; panics on the first
/// command whose normalised output differs.
async fn ctl_diff(name: &str, cmds: Vec<Cmd>) {
    let (reference, subject) = tokio::join!(Etcd::start(), Subject::start());
    let (ea, eb) = (reference.endpoint(), subject.endpoint());
    let print = std::env::var("ENGRAM_DIFF_PRINT").is_ok_and(|v| v == "1");
    for (i, c) in cmds.iter().enumerate() {
        let a = run_etcdctl(&ea, c);
        let b = run_etcdctl(&eb, c);
        if print {
            println!("==== {name} #{} etcdctl {}\n{a}", i + 1, c.args.join(" "));
        }
        assert_eq!(
            a,
            b,
            "etcdctl mismatch in `{name}` at command #{}: etcdctl {}{}\n\
             (left: etcd 3.5 reference, right: {}; log {})",
            i + 1,
            c.args.join(" "),
            c.stdin
                .as_deref()
                .map(|s| format!("\nstdin:\n{s}"))
                .unwrap_or_default(),
            subject.name(),
            subject.log_path().display()
        );
    }
}

#[tokio::test]
async fn etcdctl_put_get() {
    ctl_diff(
        "put_get",
        vec![
            cmd(&["put", "a", "1"]),
            cmd(&["put", "b", "2"]),
            cmd(&["put", "a", "3", "--prev-kv"]),
            cmd(&["put", "c", "x", "-w", "json"]),
            cmd(&["put", "c", "y", "--prev-kv", "-w", "json"]),
            cmd(&["get", "a"]),
            cmd(&["get", "a", "-w", "json"]),
            cmd(&["get", "a", "-w", "fields"]),
            cmd(&["get", "a", "--print-value-only"]),
            cmd(&["get", "missing"]),
            cmd(&["get", "missing", "-w", "json"]),
            cmd(&["get", "", "--prefix"]),
            cmd(&["get", "", "--prefix", "-w", "json"]),
            cmd(&["get", "a", "--prefix", "--keys-only"]),
            cmd(&["get", "b", "--from-key", "-w", "json"]),
            cmd(&["get", "a", "c", "-w", "json"]),
            cmd(&["get", "a", "--rev=2"]),
            cmd(&["get", "a", "--rev=2", "-w", "json"]),
            cmd(&["get", "", "--prefix", "--limit=1", "-w", "json"]),
            cmd(&["get", "", "--prefix", "--limit=2"]),
            cmd(&["get", "", "--prefix", "--count-only", "-w", "json"]),
            cmd(&["get", "", "--prefix", "--keys-only", "-w", "json"]),
            cmd(&["get", "a", "--consistency=s", "-w", "json"]),
            cmd(&["get", "a", "--rev=100"]),
            cmd(&["put", "", "v"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn etcdctl_sort() {
    let mut cmds = vec![
        cmd(&["put", "k3", "c"]),
        cmd(&["put", "k1", "e"]),
        cmd(&["put", "k4", "a"]),
        cmd(&["put", "k0", "d"]),
        cmd(&["put", "k2", "b"]),
        cmd(&["put", "k1", "e"]),
        cmd(&["put", "k4", "a"]),
    ];
    for target in ["KEY", "VERSION", "CREATE", "MODIFY", "VALUE"] {
        for order in ["ASCEND", "DESCEND"] {
            let sort = format!("--sort-by={target}");
            let order = format!("--order={order}");
            cmds.push(cmd(&["get", "k", "--prefix", &sort, &order]));
            cmds.push(cmd(&[
                "get",
                "k",
                "--prefix",
                &sort,
                &order,
                "--limit=2",
                "-w",
                "json",
            ]));
        }
    }
    ctl_diff("sort", cmds).await;
}

#[tokio::test]
async fn etcdctl_del() {
    ctl_diff(
        "del",
        vec![
            cmd(&["put", "a", "1"]),
            cmd(&["put", "k1", "1"]),
            cmd(&["put", "k2", "2"]),
            cmd(&["put", "k3", "3"]),
            cmd(&["put", "z", "z"]),
            cmd(&["del", "a"]),
            cmd(&["del", "a"]),
            cmd(&["del", "a", "-w", "json"]),
            cmd(&["del", "k1", "--prev-kv"]),
            cmd(&["del", "k", "--prefix", "--prev-kv", "-w", "json"]),
            cmd(&["put", "k5", "5"]),
            cmd(&["del", "k", "--from-key"]),
            cmd(&["get", "", "--prefix", "-w", "json"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn etcdctl_txn() {
    let cas = "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n";
    ctl_diff(
        "txn",
        vec![
            txn(&["txn"], cas),
            txn(&["txn"], cas),
            txn(&["txn", "-w", "json"], cas),
            txn(
                &["txn"],
                "value(\"key1\") = \"overwrote-key1\"\nversion(\"key2\") = \"1\"\n\nget key1\ndel key2\nget key --prefix\n\nput never x\n\n",
            ),
            txn(
                &["txn", "-w", "json"],
                "create(\"key2\") = \"0\"\n\nput key2 again\nget key2\n\nget key1\n\n",
            ),
            txn(&["txn", "-w", "json"], "\nget key1 --keys-only\n\n\n"),
            txn(&["txn"], "\nput dup 1\nput dup 2\n\n\n"),
            txn(&["txn"], "value(\"nokey\") = \"x\"\n\n\nput fallback 1\n\n"),
            cmd(&["get", "", "--prefix", "-w", "json"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn etcdctl_compaction() {
    ctl_diff(
        "compaction",
        vec![
            cmd(&["put", "a", "1"]),
            cmd(&["put", "a", "2"]),
            cmd(&["put", "a", "3"]),
            cmd(&["put", "b", "1"]),
            cmd(&["compaction", "3"]),
            cmd(&["get", "a", "--rev=2"]),
            cmd(&["get", "a", "--rev=3", "-w", "json"]),
            cmd(&["compaction", "3"]),
            cmd(&["compaction", "2"]),
            cmd(&["compaction", "99"]),
            cmd(&["compaction", "--physical", "4"]),
            cmd(&["get", "", "--prefix", "--rev=4"]),
            cmd(&["get", "a", "--rev=3"]),
        ],
    )
    .await;
}
