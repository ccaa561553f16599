//! Renders responses as text that is comparable across endpoints: cluster_id, member_id
//! and raft_term are dropped, keys lose the case prefix, revisions are written relative to
//! the revision the case started at (`B+n`), and lease IDs (random in etcd) become `L`.

use etcdpb::etcdserverpb::response_op::Response;
use etcdpb::etcdserverpb::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, ResponseOp, TxnResponse,
    WatchResponse,
};
use etcdpb::mvccpb::{Event, KeyValue};

/// gRPC status as `Code: message`.
pub fn status(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Normalisation context: the case's key prefix and base revision.
#[derive(Clone)]
pub struct Norm {
    pub prefix: String,
    pub base: i64,
}

impl Norm {
    pub fn rev(&self, r: i64) -> String {
        if r == 0 {
            "0".into()
        } else {
            format!("B{:+}", r - self.base)
        }
    }

    pub fn key(&self, k: &[u8]) -> String {
        let k = String::from_utf8_lossy(k);
        let k = k.strip_prefix(self.prefix.as_str()).unwrap_or(&k);
        k.escape_debug().to_string()
    }

    fn header(&self, h: &Option<ResponseHeader>) -> String {
        match h {
            Some(h) => format!("rev={}", self.rev(h.revision)),
            None => "no-header".into(),
        }
    }

    pub fn kv(&self, kv: &KeyValue) -> String {
        format!(
            "{}={} c={} m={} v={}{}",
            self.key(&kv.key),
            String::from_utf8_lossy(&kv.value).escape_debug(),
            self.rev(kv.create_revision),
            self.rev(kv.mod_revision),
            kv.version,
            if kv.lease != 0 { " lease=L" } else { "" }
        )
    }

    fn kvs(&self, kvs: &[KeyValue]) -> String {
        let v: Vec<String> = kvs.iter().map(|k| self.kv(k)).collect();
        format!("[{}]", v.join(", "))
    }

    pub fn range(&self, r: &RangeResponse) -> String {
        format!(
            "{} count={} more={} kvs={}",
            self.header(&r.header),
            r.count,
            r.more,
            self.kvs(&r.kvs)
        )
    }

    pub fn put(&self, r: &PutResponse) -> String {
        let prev = r.prev_kv.as_ref().map(|k| self.kv(k)).unwrap_or_default();
        format!("{} prev=[{prev}]", self.header(&r.header))
    }

    pub fn delete(&self, r: &DeleteRangeResponse) -> String {
        format!(
            "{} deleted={} prev={}",
            self.header(&r.header),
            r.deleted,
            self.kvs(&r.prev_kvs)
        )
    }

    pub fn txn(&self, r: &TxnResponse) -> String {
        let ops: Vec<String> = r.responses.iter().map(|o| self.op(o)).collect();
        format!(
            "{} succeeded={} ops=[{}]",
            self.header(&r.header),
            r.succeeded,
            ops.join("; ")
        )
    }

    fn op(&self, o: &ResponseOp) -> String {
        match &o.response {
            Some(Response::ResponseRange(r)) => format!("range({})", self.range(r)),
            Some(Response::ResponsePut(r)) => format!("put({})", self.put(r)),
            Some(Response::ResponseDeleteRange(r)) => format!("delete({})", self.delete(r)),
            Some(Response::ResponseTxn(r)) => format!("txn({})", self.txn(r)),
            None => "empty".into(),
        }
    }

    pub fn event(&self, e: &Event) -> String {
        let t = if e.r#type == 1 { "DELETE" } else { "PUT" };
        let kv = e.kv.as_ref().map(|k| self.kv(k)).unwrap_or_default();
        match &e.prev_kv {
            Some(p) => format!("{t} {kv} prev={}", self.kv(p)),
            None => format!("{t} {kv}"),
        }
    }

    pub fn watch(&self, r: &WatchResponse) -> String {
        let ev: Vec<String> = r.events.iter().map(|e| self.event(e)).collect();
        format!(
            "{} watch_id={} created={} canceled={} compact_revision={} cancel_reason={:?} events=[{}]",
            self.header(&r.header),
            r.watch_id,
            r.created,
            r.canceled,
            self.rev(r.compact_revision),
            r.cancel_reason,
            ev.join(", ")
        )
    }
}
