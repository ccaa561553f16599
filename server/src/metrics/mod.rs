//! Prometheus metrics, named as etcd names them where etcd has the metric, so that existing
//! dashboards and alerts keep working.
//!
//! Gauges that mirror the store's state are refreshed when `/metrics` is scraped, and the
//! store's own counters and histograms (`Store::stats`, plain atomics in the backend) and the
//! watch gauges (`watch::stats`) are read then too (`families.rs`); per-RPC counters and
//! latencies come from [`GrpcMetricsLayer`] (`grpc.rs`), a tower layer on the gRPC server that
//! records what go-grpc-prometheus records for etcd (`grpc_server_*`).

mod families;
mod grpc;

pub use grpc::{GrpcCounters, GrpcMetricsLayer};

use crate::brain::Store;
use crate::service::maintenance::ETCD_API_VERSION;
use backend::engine::Engine;
use bytes::Bytes;
use etcdpb::etcdserverpb::RangeRequest;
use families::store_families;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// The cluster version etcd 3.5 reports (`etcd_cluster_version`, `/version`'s etcdcluster).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

pub struct Metrics {
    registry: Registry,
    db_total_size: IntGauge,
    db_total_size_in_use: IntGauge,
    current_revision: IntGauge,
    compact_revision: IntGauge,
    leases: IntGauge,
    keys: IntGauge,
    watch_streams: IntGauge,
    watchers: IntGauge,
    watch_window_events: IntGauge,
    watch_window_bytes: IntGauge,
    replication_lag: IntGauge,
    no_space_alarm: IntGauge,
    storage_fault: IntGauge,
    has_leader: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    grpc: Arc<GrpcCounters>,
}

impl Metrics {
    /// `quota_backend_bytes`: `--quota-backend-bytes`, exported when set (0: no quota, and no
    /// gauge, so that etcd's alert on the database nearing its quota has nothing to divide by).
    pub fn new(quota_backend_bytes: u64) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        // CPU, memory, file descriptors and start time, under the names Go's client (and so
        // etcd) gives them: the first panels of every etcd dashboard.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        // Set from the brain at every scrape (see `observe_leadership`).
        let has_leader = gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
        )?;
        let is_leader = gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        )?;
        let leader_changes = counter(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
        )?;
        let version = IntGaugeVec::new(
            Opts::new(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
            ),
            &["server_version"],
        )?;
        registry.register(Box::new(version.clone()))?;
        version.with_label_values(&[ETCD_API_VERSION]).set(1);
        let cluster = IntGaugeVec::new(
            Opts::new(
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster version",
            ),
            &["cluster_version"],
        )?;
        registry.register(Box::new(cluster.clone()))?;
        let major_minor = ETCD_CLUSTER_VERSION
            .rsplit_once('.')
            .map_or(ETCD_CLUSTER_VERSION, |(mm, _)| mm);
        cluster.with_label_values(&[major_minor]).set(1);

        let grpc = Arc::new(GrpcCounters::register(&registry)?);
        if quota_backend_bytes > 0 {
            gauge(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            )?
            .set(i64::try_from(quota_backend_bytes).unwrap_or(i64::MAX));
        }

        Ok(Metrics {
            db_total_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            )?,
            db_total_size_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            )?,
            current_revision: gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            )?,
            compact_revision: gauge(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            )?,
            // etcd has no gauge of live leases (only granted/revoked counters).
            leases: gauge("engram_lease_active", "Number of leases currently granted.")?,
            keys: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.")?,
            watch_streams: gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            )?,
            watch_window_events: gauge(
                "engram_watch_window_events",
                "Events of recent revisions the watch window holds in memory.",
            )?,
            watch_window_bytes: gauge(
                "engram_watch_window_bytes",
                "Bytes of keys and values (with previous values) the watch window holds.",
            )?,
            replication_lag: gauge(
                "engram_replication_lag_revisions",
                "While migrating from etcd: revisions of the source not yet applied here \
                 (0 otherwise).",
            )?,
            no_space_alarm: gauge(
                "engram_nospace_alarm",
                "Whether the NOSPACE alarm is raised: writes that add data are refused.",
            )?,
            storage_fault: gauge(
                "engram_storage_fault",
                "Whether the storage engine failed a write and takes no more until the member \
                 restarts (reads are served).",
            )?,
            watchers: gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            )?,
            health_success: counter(
                "etcd_server_health_success",
                "The total number of successful health checks",
            )?,
            health_failures: counter(
                "etcd_server_health_failures",
                "The total number of failed health checks",
            )?,
            grpc,
            has_leader,
            is_leader,
            leader_changes,
            registry,
        })
    }

    /// The per-call gRPC counters, for the layer that counts calls.
    pub fn grpc(&self) -> Arc<GrpcCounters> {
        self.grpc.clone()
    }

    /// Whether a leader is known, whether it is this member, and how many times the leader
    /// changed since this member started.
    pub fn observe_leadership(&self, has_leader: bool, is_leader: bool, changes: u64) {
        self.has_leader.set(i64::from(has_leader));
        self.is_leader.set(i64::from(is_leader));
        let seen = self.leader_changes.get();
        if changes > seen {
            self.leader_changes.inc_by(changes - seen);
        }
    }

    /// How far the store is behind the etcd it migrates from (`None`: it does not migrate).
    pub fn observe_replication(&self, lag: Option<i64>) {
        self.replication_lag.set(lag.unwrap_or(0));
    }

    /// Copies what the member's watch window holds into its gauges.
    pub fn observe_watch_window(&self, window: watch::WindowSize) {
        self.watch_window_events
            .set(i64::try_from(window.events).unwrap_or(i64::MAX));
        self.watch_window_bytes
            .set(i64::try_from(window.bytes).unwrap_or(i64::MAX));
    }

    /// Copies the store's state into the gauges that mirror it.
    fn observe_store(&self, store: &Store) {
        let engine = store.engine();
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.db_total_size.set(gauge(engine.size_on_disk()));
        // What the quota is measured against.
        self.db_total_size_in_use.set(gauge(engine.logical_size()));
        self.no_space_alarm.set(i64::from(store.no_space()));
        self.storage_fault.set(i64::from(engine.fault().is_some()));
        self.current_revision.set(store.revision());
        self.compact_revision.set(store.compacted().max(0));
        self.leases
            .set(i64::try_from(store.lease_ids().len()).unwrap_or(i64::MAX));
    }

    /// What `/metrics` answers: the store's state read now, and every metric.
    pub async fn scrape(&self, store: &Store) -> (String, String) {
        self.observe_store(store);
        // Live keys: a count-only Range over the whole keyspace. Fine at today's sizes; a
        // counter kept by the writer would make it O(1).
        let all = RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            serializable: true,
            ..Default::default()
        };
        match store.range(&all).await {
            Ok(resp) => self.keys.set(resp.count),
            Err(err) => tracing::warn!(%err, "counting keys for /metrics"),
        }
        self.watch_streams.set(watch::stats::streams());
        self.watchers.set(watch::stats::watchers());
        let (text, format) = self.encode_with(store_families(store.stats()));
        // tikv-client keeps its own metrics in its own (older) prometheus registry.
        #[cfg(feature = "tikv")]
        let text = text + &backend::engine::tikv_metrics_text();
        (text, format)
    }

    /// Every metric, with `extra` families, in Prometheus' text exposition format, and its
    /// content type.
    pub(crate) fn encode_with(&self, extra: Vec<MetricFamily>) -> (String, String) {
        let encoder = TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(extra);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = String::new();
        if let Err(err) = encoder.encode_utf8(&families, &mut text) {
            tracing::warn!(%err, "encoding metrics");
        }
        (text, encoder.format_type().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_etcd_names() {
        let metrics = Metrics::new(0).expect("metrics");
        metrics.observe_leadership(true, true, 1);
        let (text, content_type) = metrics.encode_with(Vec::new());
        assert!(content_type.starts_with("text/plain"));
        for name in [
            "etcd_server_has_leader 1",
            "etcd_server_is_leader 1",
            "etcd_server_leader_changes_seen_total 1",
            "etcd_server_version{server_version=\"3.5.13\"} 1",
            "etcd_cluster_version{cluster_version=\"3.5\"} 1",
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_debugging_mvcc_current_revision",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn store_stats_encode_as_counters_and_histograms() {
        let stats = backend::store::stats::StoreStats::default();
        stats.record_batch(backend::store::stats::BatchSample {
            requests: 3,
            total: std::time::Duration::from_micros(1500),
            commit: Some(std::time::Duration::from_micros(500)),
            sync: Some(std::time::Duration::from_micros(300)),
            leases_granted: 1,
            leases_revoked: 0,
        });
        let metrics = Metrics::new(0).expect("metrics");
        let (text, _) = metrics.encode_with(store_families(&stats));
        for line in [
            "# TYPE etcd_debugging_lease_granted_total counter",
            "etcd_debugging_lease_granted_total 1",
            "etcd_debugging_lease_revoked_total 0",
            "# TYPE etcd_disk_backend_commit_duration_seconds histogram",
            "etcd_disk_backend_commit_duration_seconds_bucket{le=\"0.001\"} 1",
            "etcd_disk_backend_commit_duration_seconds_bucket{le=\"+Inf\"} 1",
            "etcd_disk_backend_commit_duration_seconds_count 1",
            "engram_write_batch_requests_bucket{le=\"2\"} 0",
            "engram_write_batch_requests_bucket{le=\"4\"} 1",
            "engram_write_batch_requests_sum 3",
            "engram_write_batch_seconds_bucket{le=\"0.002\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
