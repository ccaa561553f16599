//! Auth, disabled: etcdctl's answers from engram equal those from a real etcd 3.5.

mod support;

use std::process::Command;
use support::{Engram, Etcd, etcdctl_bin};

/// stdout (JSON where asked) or the error line, with the header's identity removed.
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(etcdctl_bin())
        .args(["--endpoints", endpoint])
        .args(args)
        .output()
        .unwrap();
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        // The last line is etcdctl's own "Error: ..." (earlier lines are client retry logs).
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines().last().unwrap_or_default().to_string()
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut json) => {
            if let Some(header) = json.get_mut("header").and_then(|h| h.as_object_mut()) {
                header.remove("cluster_id");
                header.remove("member_id");
                header.remove("raft_term");
            }
            json.to_string()
        }
        Err(_) => text.trim().to_string(),
    }
}

#[tokio::test]
async fn auth_answers_match_etcd_with_auth_disabled() {
    let etcd = Etcd::start().await;
    let engram = Engram::start().await;
    let cases: &[&[&str]] = &[
        &["auth", "status", "-w", "json"],
        &["user", "list", "-w", "json"],
        &["role", "list", "-w", "json"],
        &["user", "get", "alice"],
        &["role", "get", "readers"],
        &["user", "delete", "alice"],
        &["auth", "enable"],
        &["auth", "disable"],
        &["--user", "alice:secret", "get", "k"],
    ];
    for args in cases {
        let expected = etcdctl(&etcd.endpoint(), args);
        let got = etcdctl(&engram.endpoint(), args);
        assert_eq!(got, expected, "etcdctl {args:?}");
    }
}
