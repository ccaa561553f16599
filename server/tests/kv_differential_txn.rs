//! Differential KV tests, part 2: transactions (see `kv_differential.rs`).

#[macro_use]
mod support;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use support::diff::Ctx;

diff_tests!(s:
    txn_empty,
    txn_value_compares,
    txn_int_compares,
    txn_missing_key_compares,
    txn_range_compares,
    txn_multiple_compares,
    txn_branches_with_many_ops,
    txn_reads_see_own_writes,
    txn_read_only,
    txn_noop_writes,
    txn_op_options,
    txn_nested,
    txn_nested_deep,
    txn_create_if_absent,
    txn_cas_loop,
);

const OPS: [CompareOp; 4] = [
    CompareOp::Equal,
    CompareOp::NotEqual,
    CompareOp::Greater,
    CompareOp::Less,
];

fn put(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}

fn get(k: &str) -> TxnOp {
    TxnOp::get(k, None)
}

fn probe(cmp: Compare) -> Txn {
    Txn::new()
        .when(vec![cmp])
        .and_then(vec![get("yes")])
        .or_else(vec![get("no")])
}

mod s {
    use super::*;

    pub async fn txn_empty(c: &mut Ctx) {
        c.txn(Txn::new()).await;
        c.put("a", "1").await;
        c.txn(Txn::new()).await;
        c.txn(Txn::new().when(vec![Compare::value("a", CompareOp::Equal, "1")]))
            .await;
        c.txn(Txn::new().when(vec![Compare::value("a", CompareOp::Equal, "2")]))
            .await;
    }

    pub async fn txn_value_compares(c: &mut Ctx) {
        c.put("a", "m").await;
        c.put("e", "").await;
        for op in OPS {
            for v in ["l", "m", "mm", "n", ""] {
                c.txn(probe(Compare::value("a", op, v))).await;
            }
            c.txn(probe(Compare::value("e", op, ""))).await;
        }
        c.txn(probe(Compare::value("a", CompareOp::Less, b"\xff")))
            .await;
    }

    pub async fn txn_int_compares(c: &mut Ctx) {
        c.put("a", "1").await; // 2
        c.put("b", "1").await; // 3
        c.put("a", "2").await; // 4: a create=2 mod=4 ver=2
        for op in OPS {
            for n in [0, 1, 2, 3, 4, 5] {
                c.txn(probe(Compare::version("a", op, n))).await;
                c.txn(probe(Compare::create_revision("a", op, n))).await;
                c.txn(probe(Compare::mod_revision("a", op, n))).await;
            }
            for n in [-1, 0, 1] {
                c.txn(probe(Compare::lease("a", op, n))).await;
            }
        }
    }

    pub async fn txn_missing_key_compares(c: &mut Ctx) {
        c.put("other", "1").await;
        for op in OPS {
            c.txn(probe(Compare::value("nokey", op, ""))).await;
            c.txn(probe(Compare::value("nokey", op, "x"))).await;
            c.txn(probe(Compare::version("nokey", op, 0))).await;
            c.txn(probe(Compare::create_revision("nokey", op, 0))).await;
            c.txn(probe(Compare::mod_revision("nokey", op, 0))).await;
            c.txn(probe(Compare::lease("nokey", op, 0))).await;
        }
    }

    pub async fn txn_range_compares(c: &mut Ctx) {
        c.put("k1", "a").await; // 2
        c.put("k2", "b").await; // 3
        c.put("k3", "c").await; // 4
        c.put("k2", "b").await; // 5
        let p = |cmp: Compare| probe(cmp.with_prefix());
        c.txn(p(Compare::version("k", CompareOp::Greater, 0))).await;
        c.txn(p(Compare::version("k", CompareOp::Equal, 1))).await;
        c.txn(p(Compare::mod_revision("k", CompareOp::Less, 6)))
            .await;
        c.txn(p(Compare::mod_revision("k", CompareOp::Less, 5)))
            .await;
        c.txn(p(Compare::create_revision("k", CompareOp::Greater, 1)))
            .await;
        c.txn(p(Compare::value("k", CompareOp::Less, "d"))).await;
        c.txn(p(Compare::value("k", CompareOp::NotEqual, "b")))
            .await;
        c.txn(p(Compare::lease("k", CompareOp::Equal, 0))).await;
        // empty ranges
        c.txn(p(Compare::version("x", CompareOp::Equal, 0))).await;
        c.txn(p(Compare::value("x", CompareOp::Equal, ""))).await;
        c.txn(p(Compare::create_revision("x", CompareOp::Less, 1)))
            .await;
        // explicit ranges, including from-key
        let r = |cmp: Compare, end: &str| probe(cmp.with_range(end));
        c.txn(r(Compare::version("k1", CompareOp::Equal, 1), "k2"))
            .await;
        c.txn(r(Compare::version("k1", CompareOp::Equal, 1), "k3"))
            .await;
        c.txn(r(Compare::version("k2", CompareOp::Greater, 0), "\0"))
            .await;
        c.txn(r(Compare::version("k3", CompareOp::Equal, 0), "k1"))
            .await;
    }

    pub async fn txn_multiple_compares(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("b", "2").await;
        for (x, y) in [("1", "2"), ("1", "3"), ("0", "2"), ("0", "0")] {
            let t = Txn::new()
                .when(vec![
                    Compare::value("a", CompareOp::Equal, x),
                    Compare::value("b", CompareOp::Equal, y),
                    Compare::version("c", CompareOp::Equal, 0),
                ])
                .and_then(vec![put("r", &format!("{x}{y}"))])
                .or_else(vec![get("r")]);
            c.txn(t).await;
        }
        c.get("r").await;
    }

    pub async fn txn_branches_with_many_ops(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("d", "x").await;
        for expect in ["1", "2"] {
            let t = Txn::new()
                .when(vec![Compare::value("a", CompareOp::Equal, expect)])
                .and_then(vec![
                    put("a", "2"),
                    put("b", "b1"),
                    TxnOp::delete("d", None),
                    get("a"),
                    get("zz"),
                ])
                .or_else(vec![
                    put("c", "c1"),
                    TxnOp::delete("a", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("", Some(GetOptions::new().with_all_keys())),
                ]);
            c.txn(t).await;
        }
        c.get_with("", GetOptions::new().with_all_keys()).await;
    }

    pub async fn txn_reads_see_own_writes(c: &mut Ctx) {
        c.put("a", "old").await;
        c.put("gone", "x").await;
        let t = Txn::new().and_then(vec![
            get("a"),
            put("a", "new"),
            get("a"),
            TxnOp::delete("gone", None),
            get("gone"),
            put("fresh", "1"),
            TxnOp::get("", Some(GetOptions::new().with_all_keys())),
            TxnOp::get("a", Some(GetOptions::new().with_revision(2))),
        ]);
        c.txn(t).await;
        c.get_with("", GetOptions::new().with_all_keys()).await;
    }

    pub async fn txn_read_only(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("b", "2").await;
        let t = Txn::new()
            .when(vec![Compare::version("a", CompareOp::Greater, 0)])
            .and_then(vec![
                get("a"),
                TxnOp::get(
                    "",
                    Some(GetOptions::new().with_all_keys().with_count_only()),
                ),
                TxnOp::get("a", Some(GetOptions::new().with_serializable())),
            ])
            .or_else(vec![put("never", "1")]);
        c.txn(t).await;
        c.txn(Txn::new().or_else(vec![put("never", "1")])).await;
        c.txn(
            Txn::new()
                .when(vec![Compare::version("a", CompareOp::Equal, 0)])
                .and_then(vec![put("never", "1")])
                .or_else(vec![get("b")]),
        )
        .await;
        c.get("never").await;
    }

    pub async fn txn_noop_writes(c: &mut Ctx) {
        c.put("a", "1").await;
        // deletes of missing keys only: revision must not move
        let t = Txn::new().and_then(vec![
            TxnOp::delete("nokey", None),
            TxnOp::delete("x", Some(DeleteOptions::new().with_prefix())),
        ]);
        c.txn(t).await;
        c.get("a").await;
        // a put plus a no-op delete: one revision for the whole txn
        let t = Txn::new().and_then(vec![put("b", "1"), TxnOp::delete("nokey", None)]);
        c.txn(t).await;
        let t = Txn::new().and_then(vec![put("c", "1"), put("d", "1"), put("e", "1")]);
        c.txn(t).await;
        c.get_with("", GetOptions::new().with_all_keys()).await;
    }

    pub async fn txn_op_options(c: &mut Ctx) {
        for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("k4", "d")] {
            c.put(k, v).await;
        }
        let t = Txn::new().and_then(vec![
            TxnOp::put("k1", "z", Some(PutOptions::new().with_prev_key())),
            TxnOp::put("k2", "", Some(PutOptions::new().with_ignore_value())),
            TxnOp::put("k3", "y", Some(PutOptions::new().with_ignore_lease())),
            TxnOp::get(
                "k",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Value, SortOrder::Descend)
                        .with_limit(2),
                ),
            ),
            TxnOp::get("k", Some(GetOptions::new().with_prefix().with_keys_only())),
            TxnOp::get(
                "k",
                Some(GetOptions::new().with_prefix().with_min_mod_revision(4)),
            ),
            TxnOp::delete("k4", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::get(
                "k",
                Some(GetOptions::new().with_from_key().with_revision(3)),
            ),
        ]);
        c.txn(t).await;
        c.get_with("", GetOptions::new().with_all_keys()).await;
    }

    pub async fn txn_nested(c: &mut Ctx) {
        c.put("a", "1").await;
        for expect in ["1", "2"] {
            let inner = Txn::new()
                .when(vec![Compare::value("a", CompareOp::Equal, expect)])
                .and_then(vec![put("inner-yes", "1"), get("a")])
                .or_else(vec![put("inner-no", "1")]);
            let t = Txn::new()
                .when(vec![Compare::version("a", CompareOp::Greater, 0)])
                .and_then(vec![
                    put("outer", expect),
                    TxnOp::txn(inner),
                    get("inner-yes"),
                ])
                .or_else(vec![get("a")]);
            c.txn(t).await;
        }
        // same key in the inner success and inner failure branches is fine
        let inner = Txn::new()
            .when(vec![Compare::value("a", CompareOp::Equal, "1")])
            .and_then(vec![put("same", "then")])
            .or_else(vec![put("same", "else")]);
        c.txn(Txn::new().and_then(vec![TxnOp::txn(inner), get("same")]))
            .await;
        // an empty nested txn
        c.txn(Txn::new().and_then(vec![TxnOp::txn(Txn::new())]))
            .await;
        c.get_with("", GetOptions::new().with_all_keys()).await;
    }

    pub async fn txn_nested_deep(c: &mut Ctx) {
        let mut t = Txn::new().and_then(vec![put("level0", "0")]);
        for level in 1..=5 {
            t = Txn::new()
                .when(vec![Compare::version("level0", CompareOp::Equal, 0)])
                .and_then(vec![put(&format!("level{level}"), "x"), TxnOp::txn(t)])
                .or_else(vec![get("level0")]);
        }
        c.txn(t.clone()).await;
        c.txn(t).await;
        c.get_with("level", GetOptions::new().with_prefix()).await;
    }

    pub async fn txn_create_if_absent(c: &mut Ctx) {
        for round in 0..3 {
            let t = Txn::new()
                .when(vec![Compare::create_revision("lock", CompareOp::Equal, 0)])
                .and_then(vec![put("lock", &format!("owner{round}"))])
                .or_else(vec![get("lock")]);
            c.txn(t).await;
            if round == 1 {
                c.del("lock").await;
            }
        }
    }

    pub async fn txn_cas_loop(c: &mut Ctx) {
        c.put("counter", "0").await;
        for i in 0..5 {
            let mod_rev = c
                .get("counter")
                .await
                .ok()
                .and_then(|r| r.kvs().first().map(|kv| kv.mod_revision()))
                .unwrap_or(0);
            // one stale compare every other round
            let rev = if i % 2 == 0 { mod_rev } else { mod_rev - 1 };
            let t = Txn::new()
                .when(vec![Compare::mod_revision(
                    "counter",
                    CompareOp::Equal,
                    rev,
                )])
                .and_then(vec![TxnOp::put(
                    "counter",
                    (i + 1).to_string(),
                    Some(PutOptions::new().with_prev_key()),
                )])
                .or_else(vec![get("counter")]);
            c.txn(t).await;
        }
    }
}
