//! Per-call gRPC metrics, as go-grpc-prometheus records them for etcd: calls started and
//! handled (by code), handling time, and the bytes of clients' messages each way.

use crate::grpc_call::{Called, called};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// The gRPC series of the registry.
pub struct GrpcCounters {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling_seconds: HistogramVec,
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
}

impl GrpcCounters {
    /// Registers the series in `registry`, every method that exists at zero.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let started = IntCounterVec::new(
            Opts::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(started.clone()))?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        registry.register(Box::new(handled.clone()))?;
        // Every method with every code from the start, at zero, as gRPC-go's interceptors
        // register them for etcd: a series that first appears at 1 has no rate until its
        // second sample, so alerts on failed calls would miss the first failures.
        // etcd registers its Lock and Election services after the interceptors have listed the
        // methods: theirs appear when first called.
        let listed_late = |service: &str| {
            service.starts_with("v3lockpb.") || service.starts_with("v3electionpb.")
        };
        for known in etcdpb::methods::METHODS {
            if listed_late(known.service) {
                continue;
            }
            let labels = [known.kind.name(), known.service, known.method];
            started.with_label_values(&labels);
            for code in 0..=16 {
                let [kind, service, method] = labels;
                handled.with_label_values(&[kind, service, method, code_name(code)]);
            }
        }
        let handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level \
                 handled by the server.",
            ),
            &["grpc_type", "grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(handling_seconds.clone()))?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(GrpcCounters {
            started,
            handled,
            handling_seconds,
            received_bytes: counter(
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            )?,
            sent_bytes: counter(
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            )?,
        })
    }
}

/// Counts and times every gRPC call the server handles, as go-grpc-prometheus does for etcd.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcCounters>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<GrpcCounters>) -> Self {
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
    metrics: Arc<GrpcCounters>,
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
        let received = bytes(&self.metrics.received_bytes);
        let sent = bytes(&self.metrics.sent_bytes);
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
    metrics: Arc<GrpcCounters>,
    labels: [String; 3],
    start: Instant,
    done: bool,
}

impl Call {
    fn start<B>(req: &http::Request<B>, metrics: &Arc<GrpcCounters>) -> Option<Call> {
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
        metrics.started.with_label_values(&labels).inc();
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
            .handled
            .with_label_values(&[kind.as_str(), service, method, code])
            .inc();
        self.metrics
            .handling_seconds
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
