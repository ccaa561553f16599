//! Prometheus metrics, named as etcd names them where etcd has the metric, so that existing
//! dashboards and alerts keep working.
//!
//! Gauges that mirror the store's state are refreshed when `/metrics` is scraped, and the
//! store's own counters and histograms (`Store::stats`, plain atomics in the backend) and the
//! watch gauges (`watch::stats`) are read then too; per-RPC counters and latencies come from
//! [`GrpcMetricsLayer`], a tower layer on the gRPC server that records what go-grpc-prometheus
//! records for etcd (`grpc_server_*`).

use crate::grpc_call::{Called, called};
use crate::service::maintenance::ETCD_API_VERSION;
use backend::Store;
use backend::engine::Engine;
use backend::store::stats::HistogramSnapshot;
use bytes::Bytes;
use etcdpb::etcdserverpb::RangeRequest;
use http_body::{Body, Frame, SizeHint};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

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
    has_leader: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    grpc_started: IntCounterVec,
    grpc_handled: IntCounterVec,
    grpc_handling_seconds: HistogramVec,
    grpc_received_bytes: IntCounter,
    grpc_sent_bytes: IntCounter,
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

        let grpc_started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(grpc_started.clone()))?;
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        registry.register(Box::new(grpc_handled.clone()))?;
        // Every method with every code from the start, at zero, as gRPC-go's interceptors
        // register them for etcd: a series that first appears at 1 has no rate until its
        // second sample, so alerts on failed calls would miss the first failures.
        for known in etcdpb::methods::METHODS {
            let labels = [known.kind.name(), known.service, known.method];
            grpc_started.with_label_values(&labels);
            for code in 0..=16 {
                let [kind, service, method] = labels;
                grpc_handled.with_label_values(&[kind, service, method, code_name(code)]);
            }
        }
        let grpc_handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level \
                 handled by the server.",
            ),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(grpc_handling_seconds.clone()))?;
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
            grpc_started,
            grpc_handled,
            grpc_handling_seconds,
            grpc_received_bytes: counter(
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            )?,
            grpc_sent_bytes: counter(
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            )?,
            has_leader,
            is_leader,
            leader_changes,
            registry,
        })
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

    /// Copies what the member's watch window holds into its gauges.
    pub fn observe_watch_window(&self, window: watch::WindowSize) {
        self.watch_window_events
            .set(i64::try_from(window.events).unwrap_or(i64::MAX));
        self.watch_window_bytes
            .set(i64::try_from(window.bytes).unwrap_or(i64::MAX));
    }

    /// Copies the store's state into the gauges that mirror it.
    fn observe_store<E: Engine>(&self, store: &Store<E>) {
        let size = i64::try_from(store.engine().size_on_disk()).unwrap_or(i64::MAX);
        self.db_total_size.set(size);
        self.db_total_size_in_use.set(size);
        self.current_revision.set(store.revision());
        self.compact_revision.set(store.compacted().max(0));
        self.leases
            .set(i64::try_from(store.lease_ids().len()).unwrap_or(i64::MAX));
    }

    /// What `/metrics` answers: the store's state read now, and every metric.
    pub async fn scrape<E: Engine>(&self, store: &Store<E>) -> (String, String) {
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
    fn encode_with(&self, extra: Vec<MetricFamily>) -> (String, String) {
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

/// The store's counters and histograms, as metric families (they are kept by the backend, so
/// they are not prometheus metrics until they are read here).
fn store_families(stats: &backend::store::stats::StoreStats) -> Vec<MetricFamily> {
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

/// Counts and times every gRPC call the server handles, as go-grpc-prometheus does for etcd.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<MeteredBody<ReqBody>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = Call::start(&req, &self.metrics);
        // The bytes of gRPC messages (with their 5-byte frame headers) each way, as etcd
        // counts its clients' traffic; other requests (HTTP endpoints) are not counted.
        let metered = call.is_some();
        let bytes = |counter: &IntCounter| metered.then(|| counter.clone());
        let received = bytes(&self.metrics.grpc_received_bytes);
        let sent = bytes(&self.metrics.grpc_sent_bytes);
        let response = self.inner.call(req.map(|inner| MeteredBody {
            inner,
            call: None,
            bytes: received,
        }));
        Box::pin(async move {
            let response = response.await?;
            let call = match call {
                // A call that fails before its first message answers with its status in the
                // headers ("trailers-only"); the others carry it in the trailers.
                Some(mut call) => match response.headers().get("grpc-status") {
                    Some(code) => {
                        call.finish(code.as_bytes());
                        None
                    }
                    None => Some(call),
                },
                None => None,
            };
            Ok(response.map(|inner| MeteredBody {
                inner,
                call,
                bytes: sent,
            }))
        })
    }
}

/// One gRPC call in flight; records itself as handled when its status is known, or as
/// `Canceled` if the response is dropped first (the client went away).
struct Call {
    metrics: Arc<Metrics>,
    labels: [String; 3],
    start: Instant,
    done: bool,
}

impl Call {
    fn start<B>(req: &http::Request<B>, metrics: &Arc<Metrics>) -> Option<Call> {
        // Only methods that exist: gRPC-go answers others before its interceptors, and labels
        // made of whatever a client sends would grow without bound.
        let Called::Method(known) = called(req) else {
            return None;
        };
        let labels = [
            known.kind.name().to_string(),
            known.service.to_string(),
            known.method.to_string(),
        ];
        metrics.grpc_started.with_label_values(&labels).inc();
        Some(Call {
            metrics: metrics.clone(),
            labels,
            start: Instant::now(),
            done: false,
        })
    }

    fn finish(&mut self, status: &[u8]) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = std::str::from_utf8(status)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .map_or("Unknown", code_name);
        let [kind, service, method] = &self.labels;
        self.metrics
            .grpc_handled
            .with_label_values(&[kind.as_str(), service, method, code])
            .inc();
        self.metrics
            .grpc_handling_seconds
            .with_label_values(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(b"1");
    }
}

/// gRPC-go's names of the status codes (`codes.Code.String()`), as etcd's metrics label them.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// A request or response body that counts its bytes and, for a response, records its call
/// once the trailers bring the gRPC status.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
    /// Counts the bytes of the body's data frames.
    bytes: Option<IntCounter>,
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(bytes)) = (&frame, &this.bytes)
            && let Some(data) = frame.data_ref()
        {
            bytes.inc_by(data.len() as u64);
        }
        if let Poll::Ready(Some(Ok(frame))) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(mut call) = this.call.take()
        {
            let status = trailers
                .get("grpc-status")
                .map_or(&b"2"[..], |v| v.as_bytes());
            call.finish(status);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
