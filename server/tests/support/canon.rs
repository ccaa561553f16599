//! Canonical text of etcd-client responses and errors, for exact comparison.
//!
//! Every protobuf field is printed (the structs are destructured exhaustively, so a
//! new field fails to compile instead of being silently ignored), except the values of
//! the header's `cluster_id`, `member_id` and `raft_term`, which legitimately differ
//! between servers (only whether each is zero is kept).
//! Errors print the gRPC code and message.

use std::fmt::Write;

use etcd_client::proto::{
    PbCompactionResponse, PbDeleteResponse, PbKeyValue, PbPutResponse, PbRangeResponse,
    PbResponseHeader, PbResponseOp, PbTxnOpResponse, PbTxnResponse,
};
use etcd_client::{CompactionResponse, DeleteResponse, GetResponse, PutResponse, TxnResponse};

/// A value with a canonical, normalised, multi-line text form.
pub trait Canon {
    fn canon_into(&self, out: &mut String, indent: usize);

    fn canon(&self) -> String {
        let mut s = String::new();
        self.canon_into(&mut s, 0);
        s
    }
}

/// Printable form of a byte string: quoted with escapes; long values are summarised
/// by length, FNV-1a hash and head.
pub fn bytes(b: &[u8]) -> String {
    if b.len() > 64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        return format!("<{} bytes fnv={h:016x} head={}>", b.len(), bytes(&b[..16]));
    }
    let mut s = String::from("\"");
    for &c in b {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s.push('"');
    s
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

fn header(h: &Option<PbResponseHeader>) -> String {
    match h {
        None => "header=none".into(),
        Some(PbResponseHeader {
            cluster_id,
            member_id,
            revision,
            raft_term,
        }) => {
            // The ids and term are normalised away, but whether they are set at all is
            // kept (etcd leaves them zero in the headers of nested txn responses).
            let zero: Vec<&str> = [
                ("cluster_id", *cluster_id),
                ("member_id", *member_id),
                ("raft_term", *raft_term),
            ]
            .iter()
            .filter(|(_, v)| *v == 0)
            .map(|(n, _)| *n)
            .collect();
            if zero.is_empty() {
                format!("rev={revision}")
            } else {
                format!("rev={revision} zero=[{}]", zero.join(","))
            }
        }
    }
}

impl Canon for PbKeyValue {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbKeyValue {
            key,
            create_revision,
            mod_revision,
            version,
            value,
            lease,
        } = self;
        pad(out, indent);
        let _ = writeln!(
            out,
            "{} = {} create={create_revision} mod={mod_revision} ver={version} lease={lease}",
            bytes(key),
            bytes(value)
        );
    }
}

impl Canon for PbRangeResponse {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbRangeResponse {
            header: h,
            kvs,
            more,
            count,
        } = self;
        pad(out, indent);
        let _ = writeln!(
            out,
            "Range {} count={count} more={more} kvs={}",
            header(h),
            kvs.len()
        );
        for kv in kvs {
            kv.canon_into(out, indent + 1);
        }
    }
}

impl Canon for PbPutResponse {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbPutResponse { header: h, prev_kv } = self;
        pad(out, indent);
        match prev_kv {
            None => {
                let _ = writeln!(out, "Put {} prev_kv=none", header(h));
            }
            Some(kv) => {
                let _ = writeln!(out, "Put {} prev_kv:", header(h));
                kv.canon_into(out, indent + 1);
            }
        }
    }
}

impl Canon for PbDeleteResponse {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbDeleteResponse {
            header: h,
            deleted,
            prev_kvs,
        } = self;
        pad(out, indent);
        let _ = writeln!(
            out,
            "DeleteRange {} deleted={deleted} prev_kvs={}",
            header(h),
            prev_kvs.len()
        );
        for kv in prev_kvs {
            kv.canon_into(out, indent + 1);
        }
    }
}

impl Canon for PbTxnResponse {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbTxnResponse {
            header: h,
            succeeded,
            responses,
        } = self;
        pad(out, indent);
        let _ = writeln!(
            out,
            "Txn {} succeeded={succeeded} responses={}",
            header(h),
            responses.len()
        );
        for r in responses {
            r.canon_into(out, indent + 1);
        }
    }
}

impl Canon for PbResponseOp {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbResponseOp { response } = self;
        match response {
            None => {
                pad(out, indent);
                out.push_str("<empty ResponseOp>\n");
            }
            Some(PbTxnOpResponse::ResponseRange(r)) => r.canon_into(out, indent),
            Some(PbTxnOpResponse::ResponsePut(r)) => r.canon_into(out, indent),
            Some(PbTxnOpResponse::ResponseDeleteRange(r)) => r.canon_into(out, indent),
            Some(PbTxnOpResponse::ResponseTxn(r)) => r.canon_into(out, indent),
        }
    }
}

impl Canon for PbCompactionResponse {
    fn canon_into(&self, out: &mut String, indent: usize) {
        let PbCompactionResponse { header: h } = self;
        pad(out, indent);
        let _ = writeln!(out, "Compaction {}", header(h));
    }
}

macro_rules! canon_wrapper {
    ($($t:ty),*) => {$(
        impl Canon for $t {
            fn canon_into(&self, out: &mut String, indent: usize) {
                self.0.canon_into(out, indent)
            }
        }
    )*};
}
canon_wrapper!(
    GetResponse,
    PutResponse,
    DeleteResponse,
    TxnResponse,
    CompactionResponse
);

impl Canon for etcd_client::Error {
    fn canon_into(&self, out: &mut String, indent: usize) {
        pad(out, indent);
        match self {
            etcd_client::Error::GRpcStatus(st) => {
                let _ = writeln!(out, "Error code={:?} message={:?}", st.code(), st.message());
            }
            other => {
                let _ = writeln!(out, "ClientError {other}");
            }
        }
    }
}

impl<T: Canon> Canon for Result<T, etcd_client::Error> {
    fn canon_into(&self, out: &mut String, indent: usize) {
        match self {
            Ok(v) => v.canon_into(out, indent),
            Err(e) => e.canon_into(out, indent),
        }
    }
}
