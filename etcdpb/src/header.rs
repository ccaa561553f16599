//! Every etcd response that carries a `ResponseHeader`, as one trait, so that a server fills
//! headers in one place. The implementations are generated from the protos at build time: a
//! response added to them gets one without anyone writing it.

use crate::etcdserverpb::ResponseHeader;

/// A response message with a `header` field.
pub trait WithHeader {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

include!(concat!(env!("OUT_DIR"), "/headers.rs"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::{HashKvResponse, LeaseTimeToLiveResponse, RangeResponse};

    fn fill(resp: &mut impl WithHeader, revision: i64) {
        resp.header_mut()
            .get_or_insert_with(Default::default)
            .revision = revision;
    }

    #[test]
    fn responses_with_a_header_have_the_trait() {
        let mut range = RangeResponse::default();
        fill(&mut range, 7);
        assert_eq!(range.header.map(|h| h.revision), Some(7));
        let mut hash = HashKvResponse::default();
        fill(&mut hash, 3);
        assert_eq!(hash.header.map(|h| h.revision), Some(3));
        let mut ttl = LeaseTimeToLiveResponse::default();
        fill(&mut ttl, 1);
        assert!(ttl.header.is_some());
    }
}
