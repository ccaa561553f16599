//! Thin helpers over the generated etcd v3 clients: connecting, request builders and a
//! bidirectional Watch stream.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use etcdpb::etcdserverpb::auth_client::AuthClient;
use etcdpb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcdpb::etcdserverpb::kv_client::KvClient;
use etcdpb::etcdserverpb::lease_client::LeaseClient;
use etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
use etcdpb::etcdserverpb::request_op::Request;
use etcdpb::etcdserverpb::watch_client::WatchClient;
use etcdpb::etcdserverpb::watch_request::RequestUnion;
use etcdpb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use etcdpb::mvccpb::Event;
use etcdpb::v3electionpb::election_client::ElectionClient;
use etcdpb::v3lockpb::lock_client::LockClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

/// gRPC clients of one endpoint (cheap to clone: they share one HTTP/2 channel).
#[derive(Clone)]
pub struct Conn {
    pub kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
    /// etcd's server-side recipes: `v3lockpb.Lock` and `v3electionpb.Election`.
    pub lock: LockClient<Channel>,
    pub election: ElectionClient<Channel>,
    /// Users, roles, `auth enable`/`disable` and Authenticate.
    pub auth: AuthClient<Channel>,
}

/// Connects to `url` (`http://host:port`; a bare `host:port` gets `http://`).
pub async fn connect(url: &str) -> Result<Conn> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let ch = Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {url}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(Conn {
        kv: KvClient::new(ch.clone()),
        watch: WatchClient::new(ch.clone()),
        lease: LeaseClient::new(ch.clone()),
        maintenance: MaintenanceClient::new(ch.clone()),
        lock: LockClient::new(ch.clone()),
        election: ElectionClient::new(ch.clone()),
        auth: AuthClient::new(ch),
    })
}

/// The smallest key greater than every key starting with `p` (etcd's prefix range end).
pub fn prefix_end(p: &[u8]) -> Bytes {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

pub fn get(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

pub fn range(key: &Bytes, end: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        range_end: end.clone(),
        ..Default::default()
    }
}

pub fn put(key: &Bytes, value: &str) -> PutRequest {
    PutRequest {
        key: key.clone(),
        value: b(value),
        ..Default::default()
    }
}

pub fn del(key: &Bytes) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

pub fn compare(key: &Bytes, result: CompareResult, u: TargetUnion) -> Compare {
    let target = match u {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(u),
    }
}

/// `mod_revision(key) == rev`.
pub fn mod_eq(key: &Bytes, rev: i64) -> Compare {
    compare(key, CompareResult::Equal, TargetUnion::ModRevision(rev))
}

/// `version(key) == v`.
pub fn version_eq(key: &Bytes, v: i64) -> Compare {
    compare(key, CompareResult::Equal, TargetUnion::Version(v))
}

pub fn op_get(key: &Bytes) -> RequestOp {
    op(Request::RequestRange(get(key)))
}

pub fn op_put(key: &Bytes, value: &str) -> RequestOp {
    op(Request::RequestPut(put(key, value)))
}

pub fn op_del(key: &Bytes) -> RequestOp {
    op(Request::RequestDeleteRange(del(key)))
}

pub fn op(r: Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

pub fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// A watch request creating a watcher on `[key, end)` from `start_revision`.
pub fn watch_create(key: &Bytes, end: &Bytes, start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.clone(),
        range_end: end.clone(),
        start_revision,
        ..Default::default()
    }
}

/// One bidirectional Watch stream.
pub struct Watch {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl Watch {
    /// Opens a stream whose first request is `first` (sent before awaiting the response
    /// headers: etcd only sends them with the first response).
    pub async fn open(conn: &Conn, first: WatchCreateRequest) -> Result<Watch> {
        Watch::open_as(conn, first, None).await?.map_err(Into::into)
    }

    /// [`Watch::open`] with `token` as the stream's `token` metadata (the user it watches
    /// as, once authentication is on); the stream's own gRPC error, if it is refused.
    pub async fn open_as(
        conn: &Conn,
        first: WatchCreateRequest,
        token: Option<AsciiMetadataValue>,
    ) -> Result<Result<Watch, tonic::Status>> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(first)),
        })
        .await
        .map_err(|_| anyhow!("watch request channel closed"))?;
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            req.metadata_mut().insert("token", token);
        }
        Ok(conn.watch.clone().watch(req).await.map(|resp| Watch {
            tx,
            rx: resp.into_inner(),
        }))
    }

    pub async fn create(&self, req: WatchCreateRequest) -> Result<()> {
        self.send(RequestUnion::CreateRequest(req)).await
    }

    pub async fn cancel(&self, watch_id: i64) -> Result<()> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    pub async fn progress(&self) -> Result<()> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }

    async fn send(&self, r: RequestUnion) -> Result<()> {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .map_err(|_| anyhow!("watch stream closed"))
    }

    /// The next response; an error on timeout, stream end or gRPC error.
    pub async fn next(&mut self, within: Duration) -> Result<WatchResponse> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => bail!("no watch response within {within:?}"),
            Ok(Err(s)) => bail!("watch stream error: {}", crate::normalize::status(&s)),
            Ok(Ok(None)) => bail!("watch stream ended"),
            Ok(Ok(Some(r))) => Ok(r),
        }
    }

    /// The next response, `None` if none arrives within `within`; an error on stream end
    /// or gRPC error.
    pub async fn try_next(&mut self, within: Duration) -> Result<Option<WatchResponse>> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => Ok(None),
            Ok(Err(s)) => bail!("watch stream error: {}", crate::normalize::status(&s)),
            Ok(Ok(None)) => bail!("watch stream ended"),
            Ok(Ok(Some(r))) => Ok(Some(r)),
        }
    }

    /// Collects events until `n` have arrived (fails on timeout or a canceled watch).
    pub async fn events(&mut self, n: usize, within: Duration) -> Result<Vec<Event>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self
                .next(left)
                .await
                .with_context(|| format!("after {} of {n} events", out.len()))?;
            if r.canceled {
                bail!("watch canceled after {} of {n} events: {r:?}", out.len());
            }
            out.extend(r.events);
        }
        Ok(out)
    }

    /// Waits `within` and fails if any response arrives.
    pub async fn expect_silence(&mut self, within: Duration) -> Result<()> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(r) => bail!("expected no watch response, got {r:?}"),
        }
    }
}

/// The version an endpoint reports in Maintenance.Status (etcd: `3.5.x`).
pub async fn server_version(conn: &Conn) -> Result<String> {
    let s = conn
        .maintenance
        .clone()
        .status(etcdpb::etcdserverpb::StatusRequest::default())
        .await
        .context("Maintenance.Status")?
        .into_inner();
    Ok(s.version)
}
