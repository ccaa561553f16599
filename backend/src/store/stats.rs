//! Counters and histograms of the store's work, kept as plain atomics so that the server can
//! export them (as Prometheus metrics) without the backend knowing about any metrics library.
//!
//! The writer records one sample per group-commit batch: how many requests it carried, how
//! long evaluating and committing it took, how long the engine write alone took (etcd's
//! `backend_commit_duration`) and how long its sync took (the journal's fsync, what etcd's
//! `wal_fsync_duration` measures); and each batch that failed. Lease grants and revocations (including expiries) are counted
//! once their batch is durable; renewals when they happen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histograms: etcd's buckets for
/// `etcd_disk_backend_commit_duration_seconds`, 1 ms to 8.192 s doubling
/// (`prometheus.ExponentialBuckets(0.001, 2, 14)`).
pub const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Upper bounds of the requests-per-batch histogram: 1 to 4096 doubling.
pub const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A histogram with fixed upper bounds and an implicit `+Inf` bucket; lock-free to record.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Samples per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

/// A histogram's state at one moment, in Prometheus' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, samples at or below it), ascending; `+Inf` is left implicit (`count`).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, n) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += n.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }
}

/// What the store has done since it opened.
#[derive(Debug)]
pub struct StoreStats {
    /// Requests per committed batch.
    pub batch_requests: Histogram,
    /// Seconds from the start of a batch's evaluation to the end of its engine write.
    pub batch_seconds: Histogram,
    /// Seconds of the engine write of a batch (batches that change nothing write nothing).
    pub commit_seconds: Histogram,
    /// Seconds of the sync that made a batch durable.
    pub sync_seconds: Histogram,
    requests_committed: AtomicU64,
    batches_failed: AtomicU64,
    lease_granted: AtomicU64,
    lease_revoked: AtomicU64,
    lease_renewed: AtomicU64,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            batch_requests: Histogram::new(BATCH_SIZE_BOUNDS),
            batch_seconds: Histogram::new(DURATION_BOUNDS),
            commit_seconds: Histogram::new(DURATION_BOUNDS),
            sync_seconds: Histogram::new(DURATION_BOUNDS),
            requests_committed: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            lease_granted: AtomicU64::new(0),
            lease_revoked: AtomicU64::new(0),
            lease_renewed: AtomicU64::new(0),
        }
    }
}

/// What one durable batch did, as the writer reports it.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchSample {
    pub requests: usize,
    /// Evaluation and engine write together.
    pub total: Duration,
    /// The engine write alone; None when the batch had nothing to write.
    pub commit: Option<Duration>,
    /// The sync alone; None when the batch had nothing to sync.
    pub sync: Option<Duration>,
    pub leases_granted: u64,
    pub leases_revoked: u64,
}

impl StoreStats {
    /// Records a batch once it is durable.
    pub fn record_batch(&self, sample: BatchSample) {
        self.batch_requests.observe(sample.requests as f64);
        self.batch_seconds.observe(sample.total.as_secs_f64());
        if let Some(commit) = sample.commit {
            self.commit_seconds.observe(commit.as_secs_f64());
        }
        if let Some(sync) = sample.sync {
            self.sync_seconds.observe(sync.as_secs_f64());
        }
        self.requests_committed
            .fetch_add(sample.requests as u64, Ordering::Relaxed);
        self.lease_granted
            .fetch_add(sample.leases_granted, Ordering::Relaxed);
        self.lease_revoked
            .fetch_add(sample.leases_revoked, Ordering::Relaxed);
    }

    /// Records a batch that failed to be written or to become durable.
    pub fn record_batch_failed(&self) {
        self.batches_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Write requests made durable since the store opened.
    pub fn requests_committed(&self) -> u64 {
        self.requests_committed.load(Ordering::Relaxed)
    }

    /// Batches that failed to be written or to become durable since the store opened.
    pub fn batches_failed(&self) -> u64 {
        self.batches_failed.load(Ordering::Relaxed)
    }

    pub fn record_lease_renewed(&self) {
        self.lease_renewed.fetch_add(1, Ordering::Relaxed);
    }

    /// Leases granted since the store opened.
    pub fn leases_granted(&self) -> u64 {
        self.lease_granted.load(Ordering::Relaxed)
    }

    /// Leases revoked (by a client or by expiry) since the store opened.
    pub fn leases_revoked(&self) -> u64 {
        self.lease_revoked.load(Ordering::Relaxed)
    }

    /// Successful keep-alives since the store opened.
    pub fn leases_renewed(&self) -> u64 {
        self.lease_renewed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_le_bounds() {
        let h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 100.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (2.0, 3), (4.0, 4)]);
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 106.0);
    }

    #[test]
    fn batches_feed_every_histogram_and_lease_counter() {
        let stats = StoreStats::default();
        stats.record_batch(BatchSample {
            requests: 3,
            total: Duration::from_millis(3),
            commit: Some(Duration::from_millis(1)),
            sync: Some(Duration::from_millis(1)),
            leases_granted: 2,
            leases_revoked: 1,
        });
        stats.record_batch(BatchSample {
            requests: 1,
            total: Duration::from_micros(10),
            commit: None,
            ..Default::default()
        });
        stats.record_lease_renewed();
        stats.record_batch_failed();
        assert_eq!(stats.batch_requests.snapshot().count, 2);
        assert_eq!(stats.sync_seconds.snapshot().count, 1);
        assert_eq!((stats.requests_committed(), stats.batches_failed()), (4, 1));
        assert_eq!(stats.batch_requests.snapshot().sum, 4.0);
        assert_eq!(stats.batch_seconds.snapshot().count, 2);
        assert_eq!(stats.commit_seconds.snapshot().count, 1);
        assert_eq!(
            (
                stats.leases_granted(),
                stats.leases_revoked(),
                stats.leases_renewed()
            ),
            (2, 1, 1)
        );
    }
}
