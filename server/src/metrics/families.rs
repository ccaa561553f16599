//! The store's counters and histograms as Prometheus metric families: the backend keeps them
//! as plain atomics, so they become metrics only when `/metrics` reads them.

use backend::store::stats::HistogramSnapshot;
use prometheus::proto::{self, MetricFamily, MetricType};

/// The store's counters and histograms, as metric families (they are kept by the backend, so
/// they are not prometheus metrics until they are read here).
pub fn store_families(stats: &backend::store::stats::StoreStats) -> Vec<MetricFamily> {
    vec![
        counter_family(
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            stats.leases_granted(),
        ),
        counter_family(
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            stats.leases_revoked(),
        ),
        counter_family(
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
            stats.leases_renewed(),
        ),
        histogram_family(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &stats.commit_seconds.snapshot(),
        ),
        histogram_family(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &stats.sync_seconds.snapshot(),
        ),
        // Engram has no raft: a proposal is a write request, committed and applied once the
        // batch that carries it is durable. etcd exposes these two as gauges.
        gauge_family(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            stats.requests_committed(),
        ),
        gauge_family(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            stats.requests_committed(),
        ),
        counter_family(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            stats.batches_failed(),
        ),
        histogram_family(
            "engram_write_batch_requests",
            "Requests per group-commit batch of the writer.",
            &stats.batch_requests.snapshot(),
        ),
        histogram_family(
            "engram_write_batch_seconds",
            "Time to evaluate and commit one group-commit batch, in seconds.",
            &stats.batch_seconds.snapshot(),
        ),
    ]
}

fn family(name: &str, help: &str, kind: MetricType, metric: proto::Metric) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(vec![metric]);
    family
}

fn counter_family(name: &str, help: &str, value: u64) -> MetricFamily {
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    let mut metric = proto::Metric::default();
    metric.set_counter(counter);
    family(name, help, MetricType::COUNTER, metric)
}

fn gauge_family(name: &str, help: &str, value: u64) -> MetricFamily {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value as f64);
    let mut metric = proto::Metric::default();
    metric.set_gauge(gauge);
    family(name, help, MetricType::GAUGE, metric)
}

fn histogram_family(name: &str, help: &str, snapshot: &HistogramSnapshot) -> MetricFamily {
    let mut histogram = proto::Histogram::default();
    histogram.set_sample_count(snapshot.count);
    histogram.set_sample_sum(snapshot.sum);
    histogram.set_bucket(
        snapshot
            .buckets
            .iter()
            .map(|&(upper, count)| {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(upper);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect(),
    );
    let mut metric = proto::Metric::default();
    metric.set_histogram(histogram);
    family(name, help, MetricType::HISTOGRAM, metric)
}
