//! The store, watch and lease metrics of `/metrics` (etcd's names where etcd has the metric):
//! after puts, deletes, watches and leases, each series exists with the value the operations
//! imply; and the etcd-named ones have the type (and histogram buckets) the real etcd exposes.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchResponse, WatchStream};
use support::{Engram, Etcd};

use support::http::scrape;

/// The value of the sample `series` (name and labels exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

/// The `le` bounds and cumulative counts of histogram `name`, in exposition order.
fn buckets(text: &str, name: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Checks that histogram `name` is well formed (cumulative, `+Inf` equals the count) and
/// returns its count.
fn histogram_count(text: &str, name: &str) -> f64 {
    let b = buckets(text, name);
    assert!(!b.is_empty(), "{name} has no buckets:\n{text}");
    assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: {b:?}");
    let count = must(text, &format!("{name}_count"));
    assert_eq!(
        b.last().map(|(le, n)| (le.as_str(), *n)),
        Some(("+Inf", count))
    );
    assert!(must(text, &format!("{name}_sum")) >= 0.0);
    count
}

/// Scrapes until `pred` holds (the watch gauges follow stream tasks that end asynchronously).
async fn scrape_until(endpoint: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(endpoint).await;
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never held:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the next response of `stream`, which must announce a created watcher; returns its id.
async fn created(stream: &mut WatchStream) -> i64 {
    let resp: WatchResponse = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("watch response in time")
        .expect("watch response")
        .expect("stream open");
    assert!(resp.created() && !resp.canceled(), "{resp:?}");
    resp.watch_id()
}

const WATCH_STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";
const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";

#[tokio::test]
async fn store_watch_and_lease_metrics_follow_the_operations() {
    let engram = Engram::start().await;
    let endpoint = engram.endpoint();
    let mut client = engram.client().await;

    let before = scrape(&endpoint).await;
    assert_eq!(sample(&before, "etcd_debugging_mvcc_keys_total"), Some(0.0));
    assert_eq!(sample(&before, WATCH_STREAMS), Some(0.0));
    assert_eq!(sample(&before, WATCHERS), Some(0.0));
    // No --quota-backend-bytes, no quota: nothing for a quota alert to divide by.
    assert_eq!(sample(&before, "etcd_server_quota_backend_bytes"), None);
    assert_eq!(
        sample(&before, "etcd_debugging_lease_granted_total"),
        Some(0.0)
    );

    // Keys: 5 created, one overwritten, one deleted, one more attached to a lease: 5 live.
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let doomed = client.lease_grant(60, None).await.expect("grant").id();
    for i in 0..5 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    client.put("k0", "again", None).await.expect("overwrite");
    client.delete("k4", None).await.expect("delete");
    client
        .put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    client
        .put("doomed", "v", Some(PutOptions::new().with_lease(doomed)))
        .await
        .expect("put with lease");
    // Revoking deletes its key: back to 5 live keys.
    client.lease_revoke(doomed).await.expect("revoke");
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let ack = acks.message().await.expect("keep-alive ack").expect("ack");
    assert_eq!(ack.id(), lease);
    let live = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(live, 5);

    // Watches: stream A with two watchers, stream B with one that it then cancels.
    let mut a = client.watch("k0", None).await.expect("watch A");
    created(&mut a).await;
    a.watch("k1", None).await.expect("second watcher on A");
    created(&mut a).await;
    let mut b = client.watch("k2", None).await.expect("watch B");
    let id = created(&mut b).await;
    b.cancel(id).await.expect("cancel on B");
    let resp = b.message().await.expect("cancel response").expect("open");
    assert!(resp.canceled(), "{resp:?}");

    let m = scrape_until(&endpoint, "2 streams, 2 watchers", |m| {
        sample(m, WATCH_STREAMS) == Some(2.0) && sample(m, WATCHERS) == Some(2.0)
    })
    .await;
    assert_eq!(
        must(&m, "etcd_debugging_mvcc_keys_total"),
        live as f64,
        "keys_total must equal the live keys"
    );
    assert_eq!(must(&m, "etcd_debugging_lease_granted_total"), 2.0);
    assert_eq!(must(&m, "etcd_debugging_lease_revoked_total"), 1.0);
    assert!(must(&m, "etcd_debugging_lease_renewed_total") >= 1.0);
    assert_eq!(must(&m, "engram_lease_active"), 1.0);

    // Group commit: every write went through some batch, each batch is timed, and every batch
    // that wrote was timed at the engine.
    let batches = histogram_count(&m, "engram_write_batch_requests");
    assert!(batches > 0.0, "{m}");
    // 2 grants + 8 puts + 1 delete + 1 revoke, at least (the compactor may add its own).
    assert!(must(&m, "engram_write_batch_requests_sum") >= 12.0, "{m}");
    assert!(must(&m, "engram_write_batch_requests_sum") >= batches);
    assert_eq!(histogram_count(&m, "engram_write_batch_seconds"), batches);
    let commits = histogram_count(&m, "etcd_disk_backend_commit_duration_seconds");
    assert!(
        commits > 0.0 && commits <= batches,
        "{commits} of {batches}"
    );

    // Closing stream B, then A, takes their watchers off the gauges.
    drop(b);
    scrape_until(&endpoint, "1 stream, 2 watchers", |m| {
        sample(m, WATCH_STREAMS) == Some(1.0) && sample(m, WATCHERS) == Some(2.0)
    })
    .await;
    drop(a);
    scrape_until(&endpoint, "no streams, no watchers", |m| {
        sample(m, WATCH_STREAMS) == Some(0.0) && sample(m, WATCHERS) == Some(0.0)
    })
    .await;

    // More writes move the histograms on.
    client.put("k9", "v", None).await.expect("put");
    let after = scrape(&endpoint).await;
    assert!(histogram_count(&after, "engram_write_batch_requests") > batches);
    assert_eq!(must(&after, "etcd_debugging_mvcc_keys_total"), 6.0);
}

const WINDOW_EVENTS: &str = "engram_watch_window_events";

/// Past its idle bound, the watch window holds what a watcher that is behind has yet to read,
/// and lets it go once the watcher has read it; the watcher receives every event, in order.
#[tokio::test]
async fn the_watch_window_holds_what_a_lagging_watcher_still_needs() {
    let args = [
        "--watch-window-events",
        "1000000",
        "--watch-window-mb",
        "1024",
        "--watch-window-idle-events",
        "16",
        "--watch-window-idle-mb",
        "1",
    ]
    .map(String::from);
    let engram = Engram::start_with_args(&args).await;
    let endpoint = engram.endpoint();
    let mut writer = engram.client().await;
    // Its own connection: a stream that is not read must not hold up the writer's (HTTP/2
    // flow control is per connection too).
    let mut reader = support::connect(&endpoint).await;
    // Fragmented: a response carries the events of up to 1,024 revisions, far more than the
    // client's 4 MiB message limit.
    let mut stream = reader
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_fragment()),
        )
        .await
        .expect("watch");
    created(&mut stream).await;

    // 20 MiB of events while the watcher reads nothing: far more than the transport buffers,
    // so the server's stream waits with most of them unsent.
    const TXNS: usize = 200;
    const PUTS: usize = 100;
    let value = vec![b'x'; 1024];
    for t in 0..TXNS {
        let puts: Vec<TxnOp> = (0..PUTS)
            .map(|p| TxnOp::put(format!("w/{t:03}/{p:03}"), value.clone(), None))
            .collect();
        writer
            .txn(Txn::new().and_then(puts))
            .await
            .expect("txn of puts");
    }
    let held = must(&scrape(&endpoint).await, WINDOW_EVENTS);
    assert!(
        held > 1_000.0,
        "the window let go of events the watcher has not read: it holds {held}"
    );

    // The watcher reads all of them, in order.
    let mut got = Vec::with_capacity(TXNS * PUTS);
    let mut last_revision = 0;
    while got.len() < TXNS * PUTS {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events in time")
            .expect("watch response")
            .expect("stream open");
        for event in resp.events() {
            let kv = event.kv().expect("event kv");
            assert!(kv.mod_revision() >= last_revision);
            last_revision = kv.mod_revision();
            got.push(kv.key_str().expect("utf-8 key").to_string());
        }
    }
    let want: Vec<String> = (0..TXNS)
        .flat_map(|t| (0..PUTS).map(move |p| format!("w/{t:03}/{p:03}")))
        .collect();
    assert!(got == want, "events lost, duplicated or reordered");

    // Caught up, it holds nothing: the next commits trim the window to its idle bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        writer.put("w/more", "v", None).await.expect("put");
        let held = must(&scrape(&endpoint).await, WINDOW_EVENTS);
        if held <= 16.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the window kept {held} events nobody needs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The etcd-named metrics have etcd's types, and the commit histogram etcd's buckets.
#[tokio::test]
async fn etcd_named_metrics_match_etcds() {
    // etcd's quota when none is given (2 GiB); Engram has none unless told.
    let quota = [
        "--quota-backend-bytes".to_string(),
        (2u64 << 30).to_string(),
    ];
    let (etcd, engram) = tokio::join!(Etcd::start(), Engram::start_with_args(&quota));
    // Some traffic, so that etcd has committed and both have a commit histogram with samples.
    for endpoint in [etcd.endpoint(), engram.endpoint()] {
        let mut c = support::connect(&endpoint).await;
        c.put("k", "v", None).await.expect("put");
    }
    let (e, g) = (
        scrape(&etcd.endpoint()).await,
        scrape(&engram.endpoint()).await,
    );
    for name in [
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_watch_stream_total",
        "etcd_debugging_mvcc_watcher_total",
        "etcd_debugging_lease_granted_total",
        "etcd_debugging_lease_revoked_total",
        "etcd_debugging_lease_renewed_total",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_failed_total",
        "etcd_server_quota_backend_bytes",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let type_line = |text: &str| {
            let prefix = format!("# TYPE {name} ");
            text.lines()
                .find(|l| l.starts_with(&prefix))
                .map(str::to_string)
        };
        assert!(type_line(&e).is_some(), "etcd lacks {name}");
        assert_eq!(type_line(&e), type_line(&g), "{name}");
    }
    for histogram in [
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_disk_wal_fsync_duration_seconds",
    ] {
        let les = |text: &str| -> BTreeSet<String> {
            buckets(text, histogram)
                .into_iter()
                .map(|(le, _)| le)
                .collect()
        };
        assert_eq!(les(&e), les(&g), "{histogram}");
        // The put was synced on both.
        assert!(histogram_count(&g, histogram) >= 1.0, "{histogram}");
    }
    assert_eq!(
        sample(&e, "etcd_server_quota_backend_bytes"),
        sample(&g, "etcd_server_quota_backend_bytes")
    );
    // The put's request (key and value in a gRPC frame) and its response.
    assert!(must(&g, "etcd_network_client_grpc_received_bytes_total") >= 5.0 + 2.0);
    assert!(must(&g, "etcd_network_client_grpc_sent_bytes_total") >= 5.0);
    // A proposal per write request: the put.
    assert!(must(&g, "etcd_server_proposals_committed_total") >= 1.0);
    assert_eq!(must(&g, "etcd_server_proposals_failed_total"), 0.0);
    // Every method of etcd's services is counted from the start, at zero until called, and
    // with every status code (gRPC-go's interceptors register them so for etcd).
    let series = |text: &str, name: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
            .filter(|l| !l.contains("brainpb."))
            .filter_map(|l| Some(l.split_once('}')?.0.to_string()))
            .collect()
    };
    for name in ["grpc_server_started_total", "grpc_server_handled_total"] {
        let (etcd_series, engram_series) = (series(&e, name), series(&g, name));
        assert!(etcd_series.len() > 40, "{name}: {etcd_series:?}");
        assert_eq!(etcd_series, engram_series, "{name}");
    }
    // One key on each.
    assert_eq!(sample(&e, "etcd_debugging_mvcc_keys_total"), Some(1.0));
    assert_eq!(sample(&g, "etcd_debugging_mvcc_keys_total"), Some(1.0));
}
