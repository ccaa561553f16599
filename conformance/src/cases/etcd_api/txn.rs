//! Txn and compaction cases.

use anyhow::Result;
use bytes::Bytes;
use etcdpb::etcdserverpb::compare::{CompareResult, TargetUnion};
use etcdpb::etcdserverpb::request_op::Request;
use etcdpb::etcdserverpb::{Compare, RangeRequest, TxnRequest};

use super::errors::{COMPACTED, FUTURE_REV};
use crate::case::{Ctx, expect_eq, expect_err};
use crate::cases::{f, fields, hrev};
use crate::client::{b, compare, del, get, op, op_del, op_get, op_put, put, txn};

pub(super) async fn txn_compare_targets(c: Ctx) -> Result<()> {
    let a = c.key("a");
    let m = c.key("missing");
    let ra = hrev(&c.put("put a=1", put(&a, "1")).await?.header);
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use TargetUnion::{CreateRevision, Lease, ModRevision, Value, Version};
    let checks: Vec<(&str, Compare, bool)> = vec![
        ("value(a) == 1", compare(&a, Equal, Value(b("1"))), true),
        ("value(a) > 0", compare(&a, Greater, Value(b("0"))), true),
        ("value(a) < 0", compare(&a, Less, Value(b("0"))), false),
        ("value(a) != 1", compare(&a, NotEqual, Value(b("1"))), false),
        ("version(a) == 1", compare(&a, Equal, Version(1)), true),
        (
            "create(a) == ra",
            compare(&a, Equal, CreateRevision(ra)),
            true,
        ),
        ("mod(a) < ra", compare(&a, Less, ModRevision(ra)), false),
        (
            "mod(a) > ra-1",
            compare(&a, Greater, ModRevision(ra - 1)),
            true,
        ),
        ("lease(a) == 0", compare(&a, Equal, Lease(0)), true),
        (
            "version(missing) == 0",
            compare(&m, Equal, Version(0)),
            true,
        ),
        (
            "create(missing) == 0",
            compare(&m, Equal, CreateRevision(0)),
            true,
        ),
        (
            "mod(missing) == 0",
            compare(&m, Equal, ModRevision(0)),
            true,
        ),
        ("lease(missing) == 0", compare(&m, Equal, Lease(0)), true),
        // A value compare on a missing key always fails (even against "").
        (
            "value(missing) == ''",
            compare(&m, Equal, Value(Bytes::new())),
            false,
        ),
        (
            "value(missing) != x",
            compare(&m, NotEqual, Value(b("x"))),
            false,
        ),
    ];
    for (what, cmp, want) in checks {
        let t = c
            .txn(what, txn(vec![cmp], vec![op_get(&a)], vec![op_get(&m)]))
            .await?;
        expect_eq(what, t.succeeded, want)?;
        expect_eq(&format!("{what}: one response"), t.responses.len(), 1)?;
    }
    // All compares must hold.
    let both = vec![
        compare(&a, Equal, Version(1)),
        compare(&m, Equal, Version(1)),
    ];
    let t = c
        .txn("two compares, one false", txn(both, vec![], vec![]))
        .await?;
    expect_eq("two compares, one false", t.succeeded, false)?;
    // Range compare: every key in [a, b) must satisfy it.
    c.put("put a0", put(&c.key("a0"), "2")).await?;
    let mut rc = compare(&a, Equal, Version(1));
    rc.range_end = c.key("b");
    let t = c
        .txn(
            "version([a, b)) == 1",
            txn(vec![rc.clone()], vec![], vec![]),
        )
        .await?;
    expect_eq("version([a, b)) == 1", t.succeeded, true)?;
    c.put("put a0 again", put(&c.key("a0"), "3")).await?;
    let t = c
        .txn(
            "version([a, b)) == 1 after update",
            txn(vec![rc], vec![], vec![]),
        )
        .await?;
    expect_eq("version([a, b)) == 1 after update", t.succeeded, false)?;
    Ok(())
}

pub(super) async fn txn_errors(c: Ctx) -> Result<()> {
    const DUP: &str = "etcdserver: duplicate key given in txn request";
    let k = c.key("k");
    let r = c
        .txn(
            "two puts of k",
            txn(vec![], vec![op_put(&k, "1"), op_put(&k, "2")], vec![]),
        )
        .await;
    expect_err("two puts of one key", &r, "InvalidArgument", DUP)?;
    let r = c
        .txn(
            "put and delete of k",
            txn(vec![], vec![op_put(&k, "1"), op_del(&k)], vec![]),
        )
        .await;
    expect_err("put and delete of one key", &r, "InvalidArgument", DUP)?;
    let mut d = del(&c.key("a"));
    d.range_end = c.key("z");
    let r = c
        .txn(
            "put k and delete [a, z)",
            txn(
                vec![],
                vec![op_put(&k, "1"), op(Request::RequestDeleteRange(d))],
                vec![],
            ),
        )
        .await;
    expect_err("put inside a deleted range", &r, "InvalidArgument", DUP)?;
    let nested = txn(vec![], vec![op_put(&k, "2")], vec![]);
    let r = c
        .txn(
            "put k and nested put k",
            txn(
                vec![],
                vec![op_put(&k, "1"), op(Request::RequestTxn(nested))],
                vec![],
            ),
        )
        .await;
    expect_err("put and nested put of one key", &r, "InvalidArgument", DUP)?;
    // The same key in the success and the failure branch is fine.
    let t = c
        .txn(
            "put k in then and else",
            txn(vec![], vec![op_put(&k, "1")], vec![op_put(&k, "2")]),
        )
        .await?;
    expect_eq("then/else on one key", t.succeeded, true)?;
    let gets: Vec<_> = (0..128).map(|_| op_get(&k)).collect();
    let t = c.txn("128 ops", txn(vec![], gets.clone(), vec![])).await?;
    expect_eq("128 ops", t.responses.len(), 128)?;
    let mut more = gets;
    more.push(op_get(&k));
    let r = c.txn("129 ops", txn(vec![], more, vec![])).await;
    expect_err(
        "129 ops",
        &r,
        "InvalidArgument",
        "etcdserver: too many operations in txn request",
    )?;
    let r = c
        .txn(
            "put empty key in txn",
            txn(vec![], vec![op_put(&Bytes::new(), "v")], vec![]),
        )
        .await;
    expect_err(
        "txn put of an empty key",
        &r,
        "InvalidArgument",
        "etcdserver: key is not provided",
    )?;
    Ok(())
}

pub(super) async fn txn_semantics(c: Ctx) -> Result<()> {
    let (a, bk, ck, dk) = (c.key("a"), c.key("b"), c.key("c"), c.key("d"));
    let r0 = hrev(&c.put("put a=1", put(&a, "1")).await?.header);
    let t = c.txn("empty txn", TxnRequest::default()).await?;
    expect_eq(
        "empty txn (succeeded, ops, rev)",
        (t.succeeded, t.responses.len(), hrev(&t.header)),
        (true, 0, r0),
    )?;
    let t = c
        .txn("read-only txn", txn(vec![], vec![op_get(&a)], vec![]))
        .await?;
    expect_eq("read-only txn revision", hrev(&t.header), r0)?;
    // Two puts share one revision; a later get in the same txn sees them.
    let t = c
        .txn(
            "put a, put b, get a",
            txn(
                vec![],
                vec![op_put(&a, "2"), op_put(&bk, "1"), op_get(&a)],
                vec![],
            ),
        )
        .await?;
    expect_eq("txn revision", hrev(&t.header), r0 + 1)?;
    let g = c.range("get b", get(&bk)).await?;
    expect_eq(
        "b",
        g.kvs.iter().map(fields).collect(),
        vec![f("1", r0 + 1, r0 + 1, 1)],
    )?;
    let nested_ok = txn(
        vec![compare(
            &a,
            CompareResult::Equal,
            TargetUnion::Value(b("2")),
        )],
        vec![op_put(&ck, "then")],
        vec![op_put(&dk, "else")],
    );
    let nested_no = txn(
        vec![compare(
            &a,
            CompareResult::Equal,
            TargetUnion::Value(b("nope")),
        )],
        vec![op_put(&ck, "then")],
        vec![op_put(&dk, "else")],
    );
    let t = c
        .txn(
            "nested txn (then) + get c",
            txn(
                vec![],
                vec![op(Request::RequestTxn(nested_ok)), op_get(&ck)],
                vec![],
            ),
        )
        .await?;
    expect_eq("nested txn revision", hrev(&t.header), r0 + 2)?;
    let t = c
        .txn(
            "outer else with nested txn (else)",
            txn(
                vec![compare(&a, CompareResult::Equal, TargetUnion::Version(99))],
                vec![],
                vec![op(Request::RequestTxn(nested_no)), op_get(&dk)],
            ),
        )
        .await?;
    expect_eq("outer txn failed", t.succeeded, false)?;
    let g = c.range("get d", get(&dk)).await?;
    expect_eq(
        "d from the nested else",
        g.kvs.iter().map(fields).collect(),
        vec![f("else", r0 + 3, r0 + 3, 1)],
    )?;
    // Delete then get in one txn: the get sees the delete.
    let t = c
        .txn(
            "delete b, get b",
            txn(vec![], vec![op_del(&bk), op_get(&c.key("a"))], vec![]),
        )
        .await?;
    expect_eq("delete+get revision", hrev(&t.header), r0 + 4)?;
    let r = c
        .txn(
            "txn range at future revision",
            txn(
                vec![],
                vec![op(Request::RequestRange(RangeRequest {
                    revision: r0 + 1_000_000,
                    ..get(&a)
                }))],
                vec![],
            ),
        )
        .await;
    expect_err(
        "txn range at a future revision",
        &r,
        "OutOfRange",
        FUTURE_REV,
    )?;
    Ok(())
}

pub(super) async fn compaction_boundaries(c: Ctx) -> Result<()> {
    let k = c.key("k");
    let r1 = hrev(&c.put("put k=v1", put(&k, "v1")).await?.header);
    let r2 = hrev(&c.put("put k=v2", put(&k, "v2")).await?.header);
    let r3 = hrev(&c.put("put k=v3", put(&k, "v3")).await?.header);
    c.compact("compact r2", r2).await?;
    let at = |revision| RangeRequest {
        revision,
        ..get(&k)
    };
    let r = c.range("get k @r1", at(r1)).await;
    expect_err("read below the compaction", &r, "OutOfRange", COMPACTED)?;
    let g = c.range("get k @r2", at(r2)).await?;
    expect_eq(
        "read at the compaction revision",
        g.kvs.iter().map(fields).collect(),
        vec![f("v2", r1, r2, 2)],
    )?;
    let g = c.range("get k", get(&k)).await?;
    expect_eq(
        "latest",
        g.kvs.iter().map(fields).collect(),
        vec![f("v3", r1, r3, 3)],
    )?;
    let r = c.compact("compact r2 again", r2).await;
    expect_err(
        "compact at the compacted revision",
        &r,
        "OutOfRange",
        COMPACTED,
    )?;
    let r = c.compact("compact r1", r1).await;
    expect_err(
        "compact below the compacted revision",
        &r,
        "OutOfRange",
        COMPACTED,
    )?;
    let r = c.compact("compact future", r3 + 1_000_000).await;
    expect_err("compact a future revision", &r, "OutOfRange", FUTURE_REV)?;
    let r = c
        .txn(
            "txn range @r1",
            txn(vec![], vec![op(Request::RequestRange(at(r1)))], vec![]),
        )
        .await;
    expect_err("txn read below the compaction", &r, "OutOfRange", COMPACTED)?;
    Ok(())
}
