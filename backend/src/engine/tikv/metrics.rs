//! tikv-client's own metrics (request counts and latencies per RPC, backoffs, transaction
//! sizes), for the server's `/metrics`.
//!
//! tikv-client registers them in the default registry of prometheus 0.13, a different crate
//! from the prometheus 0.14 the server uses for etcd's metrics, so they cannot be gathered
//! there; this renders them on their own, to be appended to the server's text.

/// tikv-client's metrics in Prometheus' text format (empty until the client first uses them,
/// and if they cannot be encoded).
pub fn tikv_metrics_text() -> String {
    let families = prometheus_tikv::gather();
    match prometheus_tikv::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => text,
        Err(err) => {
            tracing::warn!(%err, "tikv: client metrics could not be encoded");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_registry_tikv_client_registers_in() {
        // Registered the way tikv-client registers its own: in prometheus 0.13's default
        // registry.
        let counter = prometheus_tikv::register_int_counter!(
            "engram_tikv_metrics_probe_total",
            "A counter only this test registers."
        )
        .expect("register");
        counter.inc_by(3);
        let text = tikv_metrics_text();
        assert!(
            text.contains("# TYPE engram_tikv_metrics_probe_total counter"),
            "{text}"
        );
        assert!(text.contains("engram_tikv_metrics_probe_total 3"), "{text}");
    }
}
