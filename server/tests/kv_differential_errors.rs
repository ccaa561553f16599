//! Differential KV tests, part 3: compaction, error cases and size limits
//! (see `kv_differential.rs`). Errors are compared by gRPC code and message.

#[macro_use]
mod support;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use support::diff::Ctx;

diff_tests!(s:
    empty_key,
    txn_duplicate_keys,
    txn_too_many_ops,
    txn_failing_op_is_atomic,
    ignore_value_missing_key,
    unknown_lease,
    future_revision_reads,
    compact_basics,
    compact_fresh_store,
    compact_keeps_latest_state,
    compact_then_txn,
    value_sizes,
    request_too_large,
    message_exceeds_grpc_limit,
);

const MIB: usize = 1024 * 1024;

fn put(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}

fn all() -> GetOptions {
    GetOptions::new().with_all_keys()
}

mod s {
    use super::*;

    pub async fn empty_key(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("", "v").await;
        c.put_with("", "v", PutOptions::new().with_prev_key()).await;
        c.get("").await;
        c.get_with("", GetOptions::new().with_range("a")).await;
        c.del("").await;
        c.del_with("", DeleteOptions::new().with_range("b")).await;
        c.txn(Txn::new().and_then(vec![put("", "v")])).await;
        c.txn(Txn::new().and_then(vec![TxnOp::get("", None)])).await;
        c.txn(Txn::new().and_then(vec![TxnOp::delete("", None)]))
            .await;
        c.txn(Txn::new().or_else(vec![put("", "v")])).await;
        c.txn(
            Txn::new()
                .when(vec![Compare::version("", CompareOp::Equal, 0)])
                .and_then(vec![put("b", "1")]),
        )
        .await;
        c.get_with("", all()).await;
    }

    pub async fn txn_duplicate_keys(c: &mut Ctx) {
        c.put("a", "1").await;
        let then = |ops: Vec<TxnOp>| Txn::new().and_then(ops);
        c.txn(then(vec![put("a", "1"), put("a", "2")])).await;
        c.txn(then(vec![put("a", "1"), TxnOp::delete("a", None)]))
            .await;
        c.txn(then(vec![TxnOp::delete("a", None), put("a", "1")]))
            .await;
        let range = DeleteOptions::new().with_range("c");
        c.txn(then(vec![TxnOp::delete("a", Some(range)), put("b", "1")]))
            .await;
        let prefix = DeleteOptions::new().with_prefix();
        c.txn(then(vec![put("ab", "1"), TxnOp::delete("a", Some(prefix))]))
            .await;
        // two deletes of the same key; a read and a write of the same key
        c.txn(then(vec![
            TxnOp::delete("a", None),
            TxnOp::delete("a", None),
        ]))
        .await;
        c.txn(then(vec![TxnOp::get("a", None), put("a", "3")]))
            .await;
        // the same key in the success and failure branches is fine
        c.txn(
            Txn::new()
                .when(vec![Compare::value("a", CompareOp::Equal, "3")])
                .and_then(vec![put("a", "4")])
                .or_else(vec![put("a", "5")]),
        )
        .await;
        // duplicates across nesting levels
        let inner = Txn::new().and_then(vec![put("a", "6")]);
        c.txn(then(vec![put("a", "7"), TxnOp::txn(inner)])).await;
        let inner = Txn::new().or_else(vec![put("n", "1")]);
        c.txn(then(vec![put("n", "2"), TxnOp::txn(inner)])).await;
        let inner1 = Txn::new().and_then(vec![put("x", "1")]);
        let inner2 = Txn::new().and_then(vec![put("x", "2")]);
        c.txn(then(vec![TxnOp::txn(inner1), TxnOp::txn(inner2)]))
            .await;
        let inner = Txn::new().and_then(vec![TxnOp::delete("a", None)]);
        c.txn(then(vec![TxnOp::delete("a", None), TxnOp::txn(inner)]))
            .await;
        c.get_with("", all()).await;
    }

    pub async fn txn_too_many_ops(c: &mut Ctx) {
        let puts = |n: usize| {
            (0..n)
                .map(|i| put(&format!("k{i:03}"), "v"))
                .collect::<Vec<_>>()
        };
        let cmps = |n: usize| {
            (0..n)
                .map(|i| Compare::version(format!("k{i:03}"), CompareOp::Equal, 0))
                .collect::<Vec<_>>()
        };
        c.txn(Txn::new().and_then(puts(129))).await;
        c.txn(Txn::new().or_else(puts(129))).await;
        c.txn(Txn::new().when(cmps(129))).await;
        let gets: Vec<TxnOp> = (0..129).map(|_| TxnOp::get("a", None)).collect();
        c.txn(Txn::new().and_then(gets)).await;
        let inner = Txn::new().and_then(puts(129));
        c.txn(Txn::new().and_then(vec![TxnOp::txn(inner)])).await;
        c.get_with("", all().with_count_only()).await;
        c.txn(Txn::new().when(cmps(128)).and_then(puts(128))).await;
        let inner = Txn::new().and_then(vec![put("z1", "v"), put("z2", "v")]);
        let mut ops = vec![TxnOp::txn(inner)];
        ops.extend((0..127).map(|i| put(&format!("y{i:03}"), "v")));
        c.txn(Txn::new().and_then(ops)).await;
        c.get_with("", all().with_count_only()).await;
    }

    pub async fn txn_failing_op_is_atomic(c: &mut Ctx) {
        c.put("a", "1").await;
        let bad = PutOptions::new().with_ignore_value();
        c.txn(Txn::new().and_then(vec![
            put("b", "1"),
            TxnOp::put("missing", "", Some(bad)),
            put("c", "1"),
        ]))
        .await;
        let bad_lease = PutOptions::new().with_lease(777);
        c.txn(Txn::new().and_then(vec![put("b", "1"), TxnOp::put("d", "1", Some(bad_lease))]))
            .await;
        // a failing op in the branch that is not taken does not matter
        let bad = PutOptions::new().with_ignore_value();
        c.txn(
            Txn::new()
                .when(vec![Compare::value("a", CompareOp::Equal, "1")])
                .and_then(vec![put("e", "1")])
                .or_else(vec![TxnOp::put("missing", "", Some(bad))]),
        )
        .await;
        c.get_with("", all()).await;
    }

    pub async fn ignore_value_missing_key(c: &mut Ctx) {
        let iv = || PutOptions::new().with_ignore_value();
        c.put_with("a", "", iv()).await;
        c.put("a", "1").await;
        c.del("a").await;
        c.put_with("a", "", iv()).await;
        c.put_with("a", "", iv().with_prev_key()).await;
        c.put_with("a", "", PutOptions::new().with_ignore_lease())
            .await;
        c.get_with("", all()).await;
    }

    pub async fn unknown_lease(c: &mut Ctx) {
        c.put_with("a", "1", PutOptions::new().with_lease(12345))
            .await;
        c.put_with("a", "1", PutOptions::new().with_lease(-1)).await;
        c.put("a", "1").await;
        c.put_with(
            "a",
            "2",
            PutOptions::new().with_lease(12345).with_prev_key(),
        )
        .await;
        c.get("a").await;
    }

    pub async fn future_revision_reads(c: &mut Ctx) {
        c.put("a", "1").await; // 2
        c.get_with("a", GetOptions::new().with_revision(3)).await;
        c.get_with("a", GetOptions::new().with_revision(100)).await;
        c.get_with("", all().with_revision(3).with_count_only())
            .await;
        c.get_with("a", GetOptions::new().with_revision(2)).await;
        c.txn(Txn::new().and_then(vec![TxnOp::get(
            "a",
            Some(GetOptions::new().with_revision(3)),
        )]))
        .await;
        c.txn(Txn::new().and_then(vec![
            put("b", "1"),
            TxnOp::get("a", Some(GetOptions::new().with_revision(3))),
        ]))
        .await;
        c.compact(3).await;
        c.compact(100).await;
        c.get_with("", all()).await;
    }

    pub async fn compact_basics(c: &mut Ctx) {
        for i in 0..5 {
            c.put("k", format!("v{i}")).await; // revs 2..6
        }
        c.compact(3).await;
        for rev in [1, 2, 3, 4, 6, 7] {
            c.get_with("k", GetOptions::new().with_revision(rev)).await;
        }
        c.get_with("k", GetOptions::new().with_revision(2).with_count_only())
            .await;
        c.compact(3).await; // already compacted
        c.compact(2).await;
        c.compact(7).await; // future
        c.compact(-1).await;
        c.compact(6).await; // current revision
        c.get_with("k", GetOptions::new().with_revision(5)).await;
        c.get_with("k", GetOptions::new().with_revision(6)).await;
        c.get("k").await;
        c.put("k", "v5").await; // 7
        c.compact_physical(7).await;
        c.get_with("k", GetOptions::new().with_revision(6)).await;
        c.get_with("k", GetOptions::new().with_revision(7)).await;
        c.get_with("k", GetOptions::new().with_revision(0)).await;
    }

    pub async fn compact_fresh_store(c: &mut Ctx) {
        c.compact(0).await;
        c.compact(2).await;
        c.compact(1).await;
        c.compact(1).await;
        c.get_with("a", GetOptions::new().with_revision(1)).await;
        c.put("a", "1").await;
        c.compact(1).await;
        c.compact(2).await;
        c.get("a").await;
    }

    pub async fn compact_keeps_latest_state(c: &mut Ctx) {
        c.put("a", "1").await; // 2
        c.put("b", "1").await; // 3
        c.put("a", "2").await; // 4
        c.del("b").await; // 5
        c.put("c", "1").await; // 6
        c.put("gone", "1").await; // 7
        c.del("gone").await; // 8
        c.compact(6).await;
        c.get_with("", all()).await;
        c.get_with("", all().with_revision(6)).await;
        c.get_with("", all().with_revision(7)).await;
        c.get_with("", all().with_revision(8)).await;
        c.put("a", "3").await; // version continues across compaction
        c.put("b", "2").await; // recreated: version 1
        c.put("gone", "2").await;
        c.get_with("", all()).await;
        c.get_with(
            "",
            all().with_min_mod_revision(1).with_max_create_revision(6),
        )
        .await;
        c.del_with("", DeleteOptions::new().with_all_keys().with_prev_key())
            .await;
    }

    pub async fn compact_then_txn(c: &mut Ctx) {
        for i in 0..4 {
            c.put(format!("k{i}"), "v").await; // 2..5
        }
        c.compact(4).await;
        let at = |rev| {
            TxnOp::get(
                "k",
                Some(GetOptions::new().with_prefix().with_revision(rev)),
            )
        };
        c.txn(Txn::new().and_then(vec![at(3)])).await;
        c.txn(Txn::new().and_then(vec![at(4)])).await;
        c.txn(Txn::new().and_then(vec![put("w", "1"), at(3)])).await;
        c.txn(
            Txn::new()
                .when(vec![Compare::mod_revision("k0", CompareOp::Equal, 2)])
                .and_then(vec![put("k0", "new")]),
        )
        .await;
        c.get_with("", all()).await;
    }

    pub async fn value_sizes(c: &mut Ctx) {
        let big = vec![b'x'; MIB];
        c.put("one-mib", &big).await;
        c.get("one-mib").await;
        c.put_with(
            "one-mib",
            "",
            PutOptions::new().with_ignore_value().with_prev_key(),
        )
        .await;
        c.put("big-key", "v").await;
        let long_key = "k".repeat(64 * 1024);
        c.put(&long_key, "long key").await;
        c.get(&long_key).await;
        c.get_with("", all().with_keys_only()).await;
    }

    pub async fn request_too_large(c: &mut Ctx) {
        c.put("a", "1").await;
        let v = vec![b'y'; MIB * 16 / 10]; // 1.6 MiB > --max-request-bytes (1.5 MiB)
        c.put("big", &v).await;
        let half = vec![b'z'; MIB * 8 / 10];
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("t1", half.clone(), None),
            TxnOp::put("t2", half, None),
        ]))
        .await;
        c.get_with("", all().with_keys_only()).await;
    }

    pub async fn message_exceeds_grpc_limit(c: &mut Ctx) {
        c.put("a", "1").await;
        let v = vec![b'y'; MIB * 5 / 2]; // 2.5 MiB > gRPC max receive size
        c.put("huge", &v).await;
        c.get_with("", all().with_keys_only()).await;
    }
}
