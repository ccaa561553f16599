//! Differential KV tests, part 4: lists. kube-apiserver's paginated lists at a pinned revision
//! while the keyspace moves, and ranges over keys with many versions, where Engram's walk
//! leaves the versions for the index (`backend/src/mvcc/view.rs`).
//!
//! Each scenario runs on a fresh real etcd 3.5 and a fresh engram; every response is
//! compared exactly (see `support::diff`).

#[macro_use]
mod support;

use etcd_client::{
    DeleteOptions, GetOptions, LeaseGrantOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use support::diff::Ctx;

diff_tests!(s:
    paginated_lists_at_a_pinned_revision,
    lists_of_keys_with_many_versions,
    first_pages_count_every_change,
);

/// One page of `limit` keys of `[from, end)` at `revision` (0: the current one). Returns where
/// the next page starts (just after this page's last key), or `None` after the last page.
async fn page(c: &mut Ctx, from: &[u8], end: &str, revision: i64, limit: i64) -> Option<Vec<u8>> {
    let opts = GetOptions::new()
        .with_range(end)
        .with_revision(revision)
        .with_limit(limit);
    let out = c.get_with(from, opts).await;
    let r = out.ok()?;
    let (Some(last), true) = (r.kvs().last(), r.more()) else {
        return None;
    };
    let mut next = last.key().to_vec();
    next.push(0);
    Some(next)
}

/// Every page of `limit` through `[start, end)` at `revision`.
async fn paginate(c: &mut Ctx, start: &str, end: &str, revision: i64, limit: i64) {
    let mut from = Some(start.as_bytes().to_vec());
    while let Some(start) = from {
        from = page(c, &start, end, revision, limit).await;
    }
}

/// The revision of the store now.
async fn revision(c: &mut Ctx) -> i64 {
    let out = c.get("no such key").await;
    out.ok()
        .and_then(|r| r.header())
        .map_or(0, |h| h.revision())
}

mod s {
    use super::*;

    /// kube-apiserver's paginated list: pages continue at `last key ++ "\0"` at the first
    /// page's revision, while writes land before and after the cursor. Every page's `count`
    /// (what remains of the range at that revision) must be etcd's. The same list runs twice
    /// at that revision (the second reuses what the first left), then pages start at keys no
    /// page ended on, and a descending list pages from the other end.
    pub async fn paginated_lists_at_a_pinned_revision(c: &mut Ctx) {
        c.fill("p/", 20).await;
        let pinned = revision(c).await;
        for pass in 0..2 {
            let mut start = b"p/".to_vec();
            while let Some(next) = page(c, &start, "p0", pinned, 3).await {
                start = next;
                // The keyspace moves on: a key after the cursor deleted, one created before
                // it and one after it.
                let n = c.steps.len();
                c.del(format!("p/{}", 19 - (n + pass) % 10)).await;
                c.put(format!("p/0{n}"), "early").await;
                c.put(format!("p/9{n}"), "late").await;
            }
        }
        for start in ["p/1", "p/15", "p/15\0", "p/3", "p/7x"] {
            page(c, start.as_bytes(), "p0", pinned, 3).await;
        }
        let mut end = b"p0".to_vec();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_revision(pinned)
                .with_limit(4)
                .with_sort(SortTarget::Key, SortOrder::Descend);
            let out = c.get_with("p/", opts).await;
            let Some(r) = out.ok() else { break };
            let (Some(last), true) = (r.kvs().last(), r.more()) else {
                break;
            };
            end = last.key().to_vec();
        }
    }

    /// Keys with many versions (a busy cluster between compactions), among keys written once:
    /// whole ranges, pages (forward and descending), counts and sorted reads, at the current
    /// revision and at past ones, with keys deleted and created again between the rounds. The
    /// ranges hold far more versions than keys, so Engram's walk goes on through `INDEX`
    /// after its first page; the page boundaries and the first key after it are where an
    /// off-by-one would show.
    pub async fn lists_of_keys_with_many_versions(c: &mut Ctx) {
        let key = |i: usize| format!("m/{i:02}");
        let mut past = Vec::new();
        for round in 0..5 {
            for i in 0..40 {
                if (i + round) % 9 == 0 {
                    c.del(key(i)).await;
                } else if i % 10 != 3 || round == 0 {
                    c.put(key(i), format!("r{round}")).await;
                }
            }
            past.push(revision(c).await);
        }
        // Keys written once between the busy ones, and a busy key at either end.
        for i in [5, 17, 18, 31] {
            c.put(format!("{}x", key(i)), "once").await;
        }
        for round in 0..6 {
            c.put("m/", format!("r{round}")).await;
            c.put("m/99", format!("r{round}")).await;
        }
        let now = revision(c).await;
        let mid = past[2];
        let ranges = [("m/", "m0"), ("m/05", "m/32"), ("m/17x", "m/18x")];
        for rev in [0, mid, past[0], past[4]] {
            for (start, end) in ranges {
                let at = || GetOptions::new().with_range(end).with_revision(rev);
                c.get_with(start, at()).await;
                c.get_with(start, at().with_keys_only().with_limit(9)).await;
                c.get_with(start, at().with_count_only()).await;
                c.get_with(start, at().with_sort(SortTarget::Key, SortOrder::Descend))
                    .await;
                c.get_with(
                    start,
                    at().with_limit(6)
                        .with_sort(SortTarget::Key, SortOrder::Descend),
                )
                .await;
                c.get_with(
                    start,
                    at().with_limit(5)
                        .with_sort(SortTarget::Mod, SortOrder::Descend),
                )
                .await;
            }
            paginate(c, "m/", "m0", rev, 7).await;
        }
        // Pages at a pinned revision while the keys after the cursor change again.
        let mut from = b"m/".to_vec();
        for n in 0.. {
            let Some(next) = page(c, &from, "m0", now, 8).await else {
                break;
            };
            from = next;
            c.put(key(39 - n % 20), "later").await;
            c.del(key(38 - n % 20)).await;
        }
        c.get_with("m/", GetOptions::new().with_prefix()).await;
        c.get_with("m/", GetOptions::new().with_prefix().with_revision(now))
            .await;
    }
    /// The first page of each list counts its whole range; Engram derives that count from the
    /// list before and what changed since. Between lists: a create, an update, a delete, a
    /// delete of a missing key, a re-create, changes outside the range, a txn of several, a
    /// range delete, a lease revoked with its keys, a key created and deleted again, a
    /// compaction, more changes than a derivation takes. Every count must be etcd's.
    pub async fn first_pages_count_every_change(c: &mut Ctx) {
        c.fill("c/", 30).await;
        // A first page from "c/"; one from "c/2" is another range with counts of its own.
        let first = || GetOptions::new().with_range("c0").with_limit(3);
        c.get_with("c/", first()).await;
        c.get_with("c/2", first()).await;
        c.put("c/new", "x").await;
        c.get_with("c/", first()).await;
        c.put("c/1", "updated").await;
        c.get_with("c/", first()).await;
        c.del("c/2").await;
        c.del("c/2").await;
        c.get_with("c/", first()).await;
        c.get_with("c/2", first()).await;
        c.put("c/2", "again").await;
        c.put("b/1", "outside").await;
        c.put("c0", "just past the end").await;
        c.get_with("c/", first()).await;
        let txn = Txn::new().and_then(vec![
            TxnOp::put("c/t1", "new", None),
            TxnOp::put("c/3", "updated", None),
            TxnOp::delete("c/4", None),
            TxnOp::delete("c/nothing", None),
        ]);
        c.txn(txn).await;
        c.get_with("c/", first()).await;
        c.del_with("c/1", DeleteOptions::new().with_prefix()).await;
        c.get_with("c/", first()).await;
        let lease = 7_001;
        let grant = LeaseGrantOptions::new().with_id(lease);
        c.client.lease_grant(60, Some(grant)).await.expect("grant");
        let leased = || PutOptions::new().with_lease(lease);
        c.put_with("c/l1", "leased", leased()).await;
        c.put_with("c/5", "now leased", leased()).await;
        c.put_with("c/l2", "leased", leased()).await;
        c.del("c/l2").await;
        c.get_with("c/", first()).await;
        c.client.lease_revoke(lease).await.expect("revoke");
        c.get_with("c/", first()).await;
        c.put("c/brief", "x").await;
        c.del("c/brief").await;
        c.get_with("c/", first()).await;
        let now = revision(c).await;
        c.compact(now - 3).await;
        c.put("c/after", "x").await;
        c.get_with("c/", first()).await;
        let latest = revision(c).await;
        c.compact(latest).await;
        c.del("c/5").await;
        c.get_with("c/", first()).await;
        for i in 0..80 {
            c.put(format!("c/m{i:02}"), "many").await;
        }
        c.del("c/m00").await;
        c.get_with("c/", first()).await;
        c.get_with("c/", first().with_count_only()).await;
        c.get_with("c/2", first()).await;
        c.get_with("c/", first().with_revision(now)).await;
    }
}
