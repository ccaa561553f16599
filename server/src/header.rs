//! The identity every response header carries.

use etcdpb::etcdserverpb::ResponseHeader;
use etcdpb::header::WithHeader;

/// cluster_id, member_id and raft_term as etcd fills them into every response header.
///
/// Engram has no raft: the ids are stable hashes, of the cluster's key prefix for the cluster and
/// of the member's name and advertised URLs for the member (so they survive restarts and differ
/// between members). Headers carry raft_term 1; Status reports the election term.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_term: u64,
}

/// FNV-1a: stable across builds and Rust versions, unlike the std hasher.
fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Never 0: etcd clients treat 0 as "no member".
    h | 1
}

impl Identity {
    /// `cluster` names what the members share (their keyspace in the engine), so every member
    /// of one cluster reports the same cluster_id.
    pub fn new(cluster: &str, name: &str, advertise_urls: &[String]) -> Self {
        let urls: Vec<&str> = advertise_urls.iter().map(String::as_str).collect();
        Identity {
            cluster_id: hash(&["engram-cluster", cluster]),
            member_id: hash(&[&[name][..], &urls].concat()),
            raft_term: 1,
        }
    }

    /// A header with the identity and no revision.
    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            raft_term: self.raft_term,
            revision: 0,
        }
    }

    /// `resp` as this member answers it: its header carries the member's identity, and
    /// `revision` unless it has one (a forwarded answer keeps the leader's revision).
    pub fn respond<R: WithHeader>(&self, mut resp: R, revision: i64) -> tonic::Response<R> {
        self.stamp(&mut resp, revision);
        tonic::Response::new(resp)
    }

    /// Fills the identity into the header of `resp` (a message of a stream); a header without
    /// a revision gets `revision`.
    pub fn stamp<R: WithHeader>(&self, resp: &mut R, revision: i64) {
        let h = resp.header_mut().get_or_insert_with(Default::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.member_id;
        h.raft_term = self.raft_term;
        if h.revision == 0 {
            h.revision = revision;
        }
    }
}
