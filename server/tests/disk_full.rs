//! A data directory on a small filesystem (a tmpfs of a few dozen MiB, mounted by the test; it
//! needs root, and says so and passes without it), filled up:
//! - with the free-space margin, writes are refused with etcd's NOSPACE before the disk is
//!   full, and once there is room and the alarm is disarmed they go on, without a restart;
//! - without it, the disk fills up: writes fail at once with NOSPACE, the alarm is raised,
//!   reads go on (linearizable ones too), a restart on the still-full disk comes up read-only,
//!   and once there is room and the alarm is disarmed the member exits by itself, to come back
//!   with every acknowledged write.

mod support;

use etcd_client::{AlarmAction, AlarmType, Client, GetOptions};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::Engram;
use support::http::get;

const VALUE_BYTES: usize = 256 << 10;

/// A tmpfs of its own, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason printed) where no filesystem can be mounted.
    fn mount(mib: u64) -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a small filesystem for the data directory needs root");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("engram-small-disk-")
            .tempdir()
            .expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status();
        if !mounted.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("skipped: a tmpfs cannot be mounted here ({mounted:?})");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Makes room: the filesystem grows to `mib`.
    fn grow(&self, mib: u64) {
        let grown = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .status()
            .expect("mount");
        assert!(grown.success());
    }

    fn free(&self) -> u64 {
        backend::engine::disk::free_bytes(self.dir.path()).expect("statvfs")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn assert_no_space(err: etcd_client::Error) {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert_eq!(
                status.message(),
                "etcdserver: mvcc: database space exceeded"
            );
        }
        other => panic!("expected NOSPACE, got {other:?}"),
    }
}

/// Puts values until one is refused; returns how many were acknowledged, and the refusal.
async fn fill(client: &mut Client) -> (usize, etcd_client::Error) {
    fill_from(client, 0).await
}

/// [`fill`], with keys numbered from `first`.
async fn fill_from(client: &mut Client, first: usize) -> (usize, etcd_client::Error) {
    let value = vec![b'v'; VALUE_BYTES];
    for i in 0..10_000 {
        let key = format!("k{:05}", first + i);
        if let Err(err) = client.put(key, value.clone(), None).await {
            return (i, err);
        }
    }
    panic!("the disk never filled up");
}

/// Live keys under `k`, read linearizably.
async fn count(client: &mut Client) -> i64 {
    let all = GetOptions::new().with_prefix().with_count_only();
    client.get("k", Some(all)).await.expect("read").count()
}

async fn alarms(client: &mut Client) -> usize {
    let list = client.alarm(AlarmAction::Get, AlarmType::None, None).await;
    list.expect("alarm list").alarms().len()
}

/// Clears every alarm, each for its member, as `etcdctl alarm disarm` does.
async fn disarm(client: &mut Client) {
    let list = client.alarm(AlarmAction::Get, AlarmType::None, None).await;
    for alarm in list.expect("alarm list").alarms() {
        let mut on_member = etcd_client::AlarmOptions::new();
        on_member.with_member(alarm.member_id());
        client
            .alarm(AlarmAction::Deactivate, alarm.alarm(), Some(on_member))
            .await
            .expect("disarm");
    }
}

fn args(min_free: u64) -> Vec<String> {
    vec![
        "--space-alarm-min-free-bytes".into(),
        min_free.to_string(),
        // Each restart listens on new ports, so it is a new member that waits out the lease
        // of the one before.
        "--election-lease".into(),
        "1s".into(),
    ]
}

#[tokio::test]
async fn the_margin_stops_writes_before_the_disk_fills_and_they_resume_without_a_restart() {
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    const MARGIN: u64 = 16 << 20;
    let mut engram = Engram::start_in_with_args(&disk.data_dir(), &args(MARGIN)).await;
    let mut client = engram.client().await;
    let (acknowledged, refused) = fill(&mut client).await;
    assert_no_space(refused);
    assert!(acknowledged > 0);
    assert!(
        disk.free() >= MARGIN / 2,
        "writes were refused only with {} bytes free",
        disk.free()
    );
    assert_eq!(alarms(&mut client).await, 1);
    assert_eq!(count(&mut client).await, acknowledged as i64);

    disk.grow(160);
    disarm(&mut client).await;
    client
        .put("after", "room", None)
        .await
        .expect("writes resume");
    assert!(engram.exit_status().is_none(), "no restart was needed");
    let metrics = get(&engram.endpoint().replace("http://", ""), "/metrics").await;
    assert!(metrics.body.contains("\nengram_storage_fault 0\n"));
}

#[tokio::test]
async fn a_full_disk_leaves_the_member_serving_reads_until_room_is_made_and_it_restarts() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let mut engram = Engram::start_in_with_args(&disk.data_dir(), &args(0)).await;
    let mut client = engram.client().await;
    let (acknowledged, refused) = fill(&mut client).await;
    assert!(acknowledged > 0);
    assert_no_space(refused);
    assert_eq!(alarms(&mut client).await, 1);
    // Writes fail at once, deletes included: the engine takes none.
    assert_no_space(client.put("k-more", "v", None).await.unwrap_err());
    assert_no_space(client.delete("k00000", None).await.unwrap_err());
    // Reads go on, linearizable ones included: the member keeps its lead.
    assert_eq!(count(&mut client).await, acknowledged as i64);
    let hostport = engram.endpoint().replace("http://", "");
    let health = get(&hostport, "/health").await;
    assert_eq!(health.status, 503);
    assert!(health.body.contains("ALARM NOSPACE"), "{}", health.body);
    engram.kill9();

    // A restart on the still-full disk comes up serving reads, with the alarm raised.
    let mut engram = Engram::start_in_with_args(&disk.data_dir(), &args(8 << 20)).await;
    let mut client = engram.client().await;
    assert_eq!(count(&mut client).await, acknowledged as i64);
    assert_no_space(client.put("k-more", "v", None).await.unwrap_err());
    assert_eq!(alarms(&mut client).await, 1);
    engram.kill9();

    // Without the margin, the next large write meets the full disk again.
    let mut engram = Engram::start_in_with_args(&disk.data_dir(), &args(0)).await;
    let mut client = engram.client().await;
    let (more, refused) = fill_from(&mut client, acknowledged).await;
    assert_no_space(refused);
    let acknowledged = acknowledged + more;

    // Room made and the alarm disarmed, the member exits for its supervisor to restart it.
    disk.grow(160);
    disarm(&mut client).await;
    let mut exited = None;
    for _ in 0..100 {
        exited = engram.exit_status();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = exited.expect("the member exits once there is room and the alarm is disarmed");
    assert!(!exited.success());
    let log = std::fs::read_to_string(engram.log_path()).unwrap_or_default();
    assert!(
        log.contains("the disk has room again"),
        "{}",
        tail(engram.log_path())
    );

    engram.restart().await;
    let mut client = engram.client().await;
    assert_eq!(count(&mut client).await, acknowledged as i64);
    client
        .put("after", "room", None)
        .await
        .expect("writes resume");
    assert_eq!(alarms(&mut client).await, 0);
}

fn tail(log: &Path) -> String {
    support::log_tail(log, 20)
}
