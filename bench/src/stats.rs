//! Latency histograms and error counts, kept per client task and merged at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest recordable latency: 10 minutes, in microseconds.
const MAX_MICROS: u64 = 600_000_000;

/// Results of one client task (or, merged, of a whole run).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of successful operations, in microseconds.
    pub hist: Histogram<u64>,
    /// Failed operations by cause (gRPC code name, or a workload-specific label).
    pub errors: BTreeMap<String, u64>,
    /// Workload-specific counters (retries, pages, events, ...).
    pub counters: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            // 3 significant digits, 1us .. 10min: a few tens of KiB per histogram.
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            errors: BTreeMap::new(),
            counters: BTreeMap::new(),
        }
    }

    /// Records one successful operation.
    pub fn ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.hist.saturating_record(us.clamp(1, MAX_MICROS));
    }

    /// Records one failed operation.
    pub fn err(&mut self, cause: impl Into<String>) {
        *self.errors.entry(cause.into()).or_insert(0) += 1;
    }

    /// Records `n` failures of one cause.
    pub fn err_n(&mut self, cause: &str, n: u64) {
        *self.errors.entry(cause.to_string()).or_insert(0) += n;
    }

    /// Records a failed gRPC call by its status code.
    pub fn status(&mut self, s: &tonic::Status) {
        self.err(code_name(s.code()));
    }

    pub fn count(&mut self, what: &str, n: u64) {
        *self.counters.entry(what.to_string()).or_insert(0) += n;
    }

    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds, so adding cannot fail; saturate anyway.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.counters {
            *self.counters.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn ok_count(&self) -> u64 {
        self.hist.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Stable name of a gRPC status code (`Unavailable`, `Unimplemented`, ...).
pub fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_quantiles() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for i in 1..=100u64 {
            a.ok(Duration::from_millis(i));
        }
        b.ok(Duration::from_secs(2));
        b.err("Unavailable");
        b.err("Unavailable");
        b.count("retries", 3);
        a.merge(&b);
        assert_eq!(a.ok_count(), 101);
        assert_eq!(a.error_count(), 2);
        assert_eq!(a.counters["retries"], 3);
        let p50 = a.quantile_ms(0.5);
        assert!((50.0..=52.0).contains(&p50), "{p50}");
        assert!(a.quantile_ms(1.0) >= 1999.0);
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(tonic::Code::Unimplemented), "Unimplemented");
    }
}
