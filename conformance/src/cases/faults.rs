//! Group `faults`:
//! - (needs `--restart-cmd`) the concurrency workload while the endpoint is killed with
//!   SIGKILL and restarted. Operations in flight during a kill have an unknown outcome; no
//!   acknowledged write may be lost, the history must stay linearizable, and watchers that
//!   resume from their last revision + 1 must see the store's history with no gap and no
//!   duplicate;
//! - (needs `--fill-disk-cmd`, `--free-disk-cmd` and `--restart-cmd`) the filesystem under
//!   the endpoint fills up while a client writes: the endpoint may refuse writes (etcd's
//!   NOSPACE) or stop, but once there is room again (the alarm disarmed, the endpoint
//!   restarted if it stopped answering) every acknowledged write is there;
//! - a failing fsync cannot be brought about from outside the endpoint: listed as not run,
//!   with why.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use etcdpb::etcdserverpb::{AlarmRequest, PutRequest, alarm_request::AlarmAction};

use super::workload::{self, Config};
use crate::case;
use crate::case::{Case, Ctx};
use crate::client::{self, range};

const G: &str = "faults";

pub fn cases() -> Vec<Case> {
    vec![
        case!(G, cas_workload_across_kill_and_restart, restarts),
        case!(G, no_acknowledged_write_lost_across_a_full_disk, disk),
    ]
}

/// Faults this tool cannot bring about in an endpoint it only reaches over the network.
pub const NOT_DRIVABLE: [(&str, &str); 1] = [(
    "fsync_failure",
    "not run: a failing fsync cannot be brought about from outside the endpoint (it needs a \
     device-mapper error target under its data directory); Engram's own tests inject it \
     (server/tests/storage_faults.rs, backend/tests/faults.rs)",
)];

async fn cas_workload_across_kill_and_restart(c: Ctx) -> Result<()> {
    let cfg = Config {
        keys: 4,
        clients: 6,
        max_iterations: 400,
        pace: Duration::from_millis(5),
        watchers: 3,
        restarts: 2,
    };
    let out = workload::run(&c, &cfg).await?;
    ensure!(
        out.resumes >= cfg.watchers,
        "no watcher stream broke during {} kill/restart cycles: does --restart-cmd kill the \
         endpoint? ({out})",
        out.restarts
    );
    ensure!(out.acked > cfg.keys, "no write was acknowledged: {out}");
    c.note(format!(
        "{} keys, {} clients, {} watchers, {} restarts: no acknowledged write lost, \
         linearizable, watchers resumed exactly",
        cfg.keys, cfg.clients, cfg.watchers, cfg.restarts
    ));
    c.detail(out.to_string());
    Ok(())
}

/// Bytes of each value written until the disk is full.
const FILL_VALUE_BYTES: usize = 64 << 10;

async fn no_acknowledged_write_lost_across_a_full_disk(c: Ctx) -> Result<()> {
    case::shell(c.env.fill_disk_cmd.as_deref(), "--fill-disk-cmd").await?;
    let value = bytes::Bytes::from(vec![b'x'; FILL_VALUE_BYTES]);
    let mut acknowledged = 0usize;
    let refusal = loop {
        ensure!(
            acknowledged < 100_000,
            "{acknowledged} writes of {FILL_VALUE_BYTES} bytes and the disk is not full: does \
             --fill-disk-cmd fill the filesystem under the endpoint's data?"
        );
        let req = PutRequest {
            key: c.key(&format!("full/{acknowledged:06}")),
            value: value.clone(),
            ..Default::default()
        };
        let mut kv = c.conn.kv.clone();
        match tokio::time::timeout(Duration::from_secs(10), kv.put(req)).await {
            Ok(Ok(_)) => acknowledged += 1,
            Ok(Err(status)) => break format!("{:?} {:?}", status.code(), status.message()),
            Err(_) => break "no answer within 10s".to_string(),
        }
    };
    // While full: are reads still served?
    let (start, end) = c.all();
    let mut count_req = range(&start, &end);
    count_req.count_only = true;
    let mut kv = c.conn.kv.clone();
    let read = tokio::time::timeout(Duration::from_secs(5), kv.range(count_req)).await;
    let reads_while_full = matches!(read, Ok(Ok(_)));

    case::shell(c.env.free_disk_cmd.as_deref(), "--free-disk-cmd").await?;
    disarm(&c).await;
    // Writes resume at once, or once the endpoint came back (an endpoint that stopped
    // answering is restarted with --restart-cmd).
    let resumed = match writes_resume(&c, Duration::from_secs(15)).await {
        Resumed::Yes => "at once",
        Resumed::No | Resumed::Gone => {
            workload::restart(&c).await?;
            disarm(&c).await;
            ensure!(
                matches!(
                    writes_resume(&c, Duration::from_secs(15)).await,
                    Resumed::Yes
                ),
                "writes did not resume after room was made, the alarm disarmed and the \
                 endpoint restarted"
            );
            "after --restart-cmd"
        }
    };
    let mut kv = c.conn.kv.clone();
    let (full_start, full_end) = (c.key("full/"), client::prefix_end(&c.key("full/")));
    let mut keys_only = range(&full_start, &full_end);
    keys_only.keys_only = true;
    let found = kv
        .range(keys_only)
        .await
        .context("final read")?
        .into_inner();
    let lost: Vec<usize> = (0..acknowledged)
        .filter(|i| {
            let key = c.key(&format!("full/{i:06}"));
            !found.kvs.iter().any(|kv| kv.key == key)
        })
        .collect();
    ensure!(
        lost.is_empty(),
        "{} of {acknowledged} acknowledged writes lost across the full disk (first: {:?})",
        lost.len(),
        lost.first()
    );
    c.note("every write acknowledged before the disk filled up was kept");
    c.detail(format!(
        "{acknowledged} writes of {FILL_VALUE_BYTES} bytes acknowledged, then refused with \
         {refusal}; reads while full: {}; writes resumed {resumed}",
        if reads_while_full {
            "served"
        } else {
            "not served"
        }
    ));
    Ok(())
}

/// Clears every alarm the endpoint lists (what `etcdctl alarm disarm` does); errors are
/// ignored (an endpoint that stopped answering has none to clear).
async fn disarm(c: &Ctx) {
    let mut maintenance = c.conn.maintenance.clone();
    let list = AlarmRequest {
        action: AlarmAction::Get as i32,
        ..Default::default()
    };
    let Ok(Ok(listed)) =
        tokio::time::timeout(Duration::from_secs(5), maintenance.alarm(list)).await
    else {
        return;
    };
    for alarm in listed.into_inner().alarms {
        let clear = AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: alarm.member_id,
            alarm: alarm.alarm,
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), maintenance.alarm(clear)).await;
    }
}

enum Resumed {
    Yes,
    /// Answers, but refuses writes.
    No,
    /// Stopped answering.
    Gone,
}

/// Whether a write succeeds within `within`: polls, and gives up early once the endpoint
/// has stopped answering for 3 s.
async fn writes_resume(c: &Ctx, within: Duration) -> Resumed {
    let deadline = Instant::now() + within;
    let mut silent_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let mut kv = c.conn.kv.clone();
        let put = kv.put(client::put(&c.key("after-room"), "v"));
        match tokio::time::timeout(Duration::from_secs(2), put).await {
            Ok(Ok(_)) => return Resumed::Yes,
            Ok(Err(status))
                if status.code() != tonic::Code::Unavailable
                    && status.code() != tonic::Code::Unknown =>
            {
                silent_since = None;
            }
            _ => {
                let since = *silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(3) {
                    return Resumed::Gone;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Resumed::No
}
