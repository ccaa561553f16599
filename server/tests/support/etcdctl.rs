//! etcdctl run against one server, its answer taken as the tests compare it.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use super::etcdctl_bin;

/// etcdctl's answer: stdout when it succeeded, else its last error line (the earlier lines
/// are the client's retry logs; the last is etcdctl's own "Error: ...").
pub fn answer(out: &Output) -> String {
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines().last().unwrap_or_default().to_string()
    }
}

/// etcdctl `args` against `endpoint` with `stdin`: its answer, JSON without the member's
/// identity (cluster and member id, raft term), the endpoint's address as `<endpoint>`.
pub fn etcdctl_in(endpoint: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(etcdctl_bin())
        .args(["--endpoints", endpoint])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    child
        .stdin
        .take()
        .expect("etcdctl's stdin")
        .write_all(stdin.as_bytes())
        .expect("write etcdctl's stdin");
    let out = child.wait_with_output().expect("wait for etcdctl");
    let text = answer(&out);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut json) => {
            if let Some(header) = json.get_mut("header").and_then(|h| h.as_object_mut()) {
                header.remove("cluster_id");
                header.remove("member_id");
                header.remove("raft_term");
            }
            json.to_string()
        }
        Err(_) => text.trim().replace(endpoint, "<endpoint>"),
    }
}

/// [`etcdctl_in`] with nothing on stdin.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    etcdctl_in(endpoint, args, "")
}

/// The etcdctl commands that create root (password `rootpw`, root role) and alice (`apw`,
/// role `r` with readwrite on `/k`). Auth tests add their own grants and keys after these,
/// then `auth enable`.
pub const ROOT_AND_ALICE: [&[&str]; 7] = [
    &["user", "add", "root:rootpw"],
    &["role", "add", "root"],
    &["user", "grant-role", "root", "root"],
    &["user", "add", "alice:apw"],
    &["role", "add", "r"],
    &["role", "grant-permission", "r", "readwrite", "/k"],
    &["user", "grant-role", "alice", "r"],
];
