//! Put, Range and DeleteRange cases.

use anyhow::{Result, ensure};
use bytes::Bytes;
use etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcdpb::etcdserverpb::{PutRequest, RangeRequest};

use super::errors::FUTURE_REV;
use crate::case::{Ctx, expect_eq, expect_err};
use crate::cases::{f, fields, hrev, names, sv};
use crate::client::{b, del, get, prefix_end, put, range};

pub(super) async fn put_get_fields(c: Ctx) -> Result<()> {
    let k = c.key("a");
    let p1 = c.put("put a=1", put(&k, "1")).await?;
    let r1 = hrev(&p1.header);
    expect_eq(
        "put without prev_kv has no prev_kv",
        p1.prev_kv.is_none(),
        true,
    )?;
    let g = c.range("get a", get(&k)).await?;
    expect_eq("count/more", (g.count, g.more, g.kvs.len()), (1, false, 1))?;
    expect_eq("a after create", fields(&g.kvs[0]), f("1", r1, r1, 1))?;
    expect_eq("lease", g.kvs[0].lease, 0)?;
    let p2 = c
        .put(
            "put a=2 prev_kv",
            PutRequest {
                prev_kv: true,
                ..put(&k, "2")
            },
        )
        .await?;
    let r2 = hrev(&p2.header);
    expect_eq("second put revision", r2, r1 + 1)?;
    let prev = p2.prev_kv.as_ref().map(fields);
    expect_eq("prev_kv", prev, Some(f("1", r1, r1, 1)))?;
    let g = c.range("get a", get(&k)).await?;
    expect_eq("a after update", fields(&g.kvs[0]), f("2", r1, r2, 2))?;
    expect_eq("header revision of a read", hrev(&g.header) >= r2, true)?;
    // A put with an empty value is a put, not a delete.
    c.put("put a=''", put(&k, "")).await?;
    let g = c.range("get a", get(&k)).await?;
    expect_eq("empty value", fields(&g.kvs[0]), f("", r1, r2 + 1, 3))?;
    Ok(())
}

pub(super) async fn range_empty(c: Ctx) -> Result<()> {
    let g = c.range("get missing", get(&c.key("missing"))).await?;
    expect_eq("missing key", (g.kvs.len(), g.count, g.more), (0, 0, false))?;
    let (p, end) = c.all();
    let g = c.range("range empty prefix", range(&p, &end)).await?;
    expect_eq(
        "empty prefix",
        (g.kvs.len(), g.count, g.more),
        (0, 0, false),
    )?;
    c.put("put m", put(&c.key("m"), "v")).await?;
    // range_end <= key: an empty range, not an error.
    let g = c
        .range("range [m, a)", range(&c.key("m"), &c.key("a")))
        .await?;
    expect_eq("inverted range", (g.kvs.len(), g.count), (0, 0))?;
    let g = c
        .range("range [m, m)", range(&c.key("m"), &c.key("m")))
        .await?;
    expect_eq("range [m, m)", (g.kvs.len(), g.count), (0, 0))?;
    let g = c
        .range(
            "count_only missing",
            RangeRequest {
                count_only: true,
                ..get(&c.key("zz"))
            },
        )
        .await?;
    expect_eq("count_only missing", (g.kvs.len(), g.count), (0, 0))?;
    Ok(())
}

pub(super) async fn range_ends(c: Ctx) -> Result<()> {
    for k in ["a", "a0", "b", "c"] {
        c.put(&format!("put {k}"), put(&c.key(k), k)).await?;
    }
    let pre = c.n.prefix.clone();
    let g = c.range("[a, c)", range(&c.key("a"), &c.key("c"))).await?;
    expect_eq("[a, c)", names(&pre, &g.kvs), sv(&["a", "a0", "b"]))?;
    // key + "\0" as range end: exactly the key (Kubernetes' continue-key arithmetic).
    let g = c
        .range("[a, a\\0)", range(&c.key("a"), &c.key("a\0")))
        .await?;
    expect_eq("[a, a\\0)", names(&pre, &g.kvs), sv(&["a"]))?;
    // Prefix range.
    let g = c
        .range("prefix a", range(&c.key("a"), &prefix_end(&c.key("a"))))
        .await?;
    expect_eq("prefix a", names(&pre, &g.kvs), sv(&["a", "a0"]))?;
    // range_end "\0": every key >= key. Later keys may exist in a shared store, so only
    // the first two are checked (and recorded).
    let req = RangeRequest {
        limit: 2,
        ..range(&c.key("b"), &b("\0"))
    };
    let g = c.conn.kv.clone().range(req).await?.into_inner();
    c.note(format!("[b, \\0) limit 2: {:?}", names(&pre, &g.kvs)));
    expect_eq("[b, \\0) limit 2", names(&pre, &g.kvs), sv(&["b", "c"]))?;
    ensure!(g.count >= 2, "[b, \\0): count {} < 2", g.count);
    // key "\0", range_end "\0": the whole keyspace.
    let req = RangeRequest {
        count_only: true,
        ..range(&b("\0"), &b("\0"))
    };
    let g = c.conn.kv.clone().range(req).await?.into_inner();
    ensure!(g.count >= 4, "[\\0, \\0) count_only: count {} < 4", g.count);
    c.note("[\\0, \\0) count_only: ok");
    Ok(())
}

pub(super) async fn range_limit_more_count(c: Ctx) -> Result<()> {
    for i in 0..5 {
        c.put(&format!("put k{i}"), put(&c.key(&format!("k{i}")), "v"))
            .await?;
    }
    let pre = c.n.prefix.clone();
    let (p, end) = c.all();
    let lim = |limit| RangeRequest {
        limit,
        ..range(&p, &end)
    };
    let g = c.range("limit 2", lim(2)).await?;
    expect_eq("limit 2 keys", names(&pre, &g.kvs), sv(&["k0", "k1"]))?;
    expect_eq("limit 2 (count, more)", (g.count, g.more), (5, true))?;
    let g = c.range("limit 4", lim(4)).await?;
    expect_eq(
        "limit 4 (n, count, more)",
        (g.kvs.len(), g.count, g.more),
        (4, 5, true),
    )?;
    let g = c.range("limit 5", lim(5)).await?;
    expect_eq(
        "limit 5 (n, count, more)",
        (g.kvs.len(), g.count, g.more),
        (5, 5, false),
    )?;
    let g = c.range("limit 6", lim(6)).await?;
    expect_eq(
        "limit 6 (n, count, more)",
        (g.kvs.len(), g.count, g.more),
        (5, 5, false),
    )?;
    let g = c.range("limit 0", lim(0)).await?;
    expect_eq(
        "limit 0 (n, count, more)",
        (g.kvs.len(), g.count, g.more),
        (5, 5, false),
    )?;
    let g = c
        .range(
            "count_only",
            RangeRequest {
                count_only: true,
                ..range(&p, &end)
            },
        )
        .await?;
    expect_eq(
        "count_only (n, count, more)",
        (g.kvs.len(), g.count, g.more),
        (0, 5, false),
    )?;
    let g = c
        .range(
            "count_only limit 2",
            RangeRequest {
                count_only: true,
                limit: 2,
                ..range(&p, &end)
            },
        )
        .await?;
    expect_eq(
        "count_only limit 2 (n, count)",
        (g.kvs.len(), g.count),
        (0, 5),
    )?;
    let g = c
        .range(
            "keys_only limit 1",
            RangeRequest {
                keys_only: true,
                limit: 1,
                ..range(&p, &end)
            },
        )
        .await?;
    expect_eq(
        "keys_only value",
        g.kvs.first().map(|k| k.value.len()),
        Some(0),
    )?;
    expect_eq(
        "keys_only version",
        g.kvs.first().map(|k| k.version),
        Some(1),
    )?;
    Ok(())
}

pub(super) async fn range_sort(c: Ctx) -> Result<()> {
    // a: value 3, version 3; b: value 1, version 1; c: value 2, version 2.
    // create order c < a < b; mod order b < a < c.
    for (k, v) in [
        ("c", "2"),
        ("a", "3"),
        ("b", "1"),
        ("a", "3"),
        ("a", "3"),
        ("c", "2"),
    ] {
        c.put(&format!("put {k}={v}"), put(&c.key(k), v)).await?;
    }
    let pre = c.n.prefix.clone();
    let (p, end) = c.all();
    let cases: [(SortTarget, SortOrder, i64, &[&str]); 9] = [
        (SortTarget::Key, SortOrder::Descend, 0, &["c", "b", "a"]),
        (SortTarget::Key, SortOrder::Ascend, 0, &["a", "b", "c"]),
        (SortTarget::Value, SortOrder::Ascend, 0, &["b", "c", "a"]),
        (SortTarget::Version, SortOrder::Descend, 0, &["a", "c", "b"]),
        (SortTarget::Create, SortOrder::Ascend, 0, &["c", "a", "b"]),
        (SortTarget::Mod, SortOrder::Descend, 0, &["c", "a", "b"]),
        // Order NONE with a target other than KEY sorts ascending.
        (SortTarget::Version, SortOrder::None, 0, &["b", "c", "a"]),
        // The limit applies after sorting.
        (SortTarget::Key, SortOrder::Descend, 1, &["c"]),
        (SortTarget::Mod, SortOrder::Ascend, 2, &["b", "a"]),
    ];
    for (target, order, limit, want) in cases {
        let what = format!("sort {target:?} {order:?} limit {limit}");
        let req = RangeRequest {
            sort_target: target as i32,
            sort_order: order as i32,
            limit,
            ..range(&p, &end)
        };
        let g = c.range(&what, req).await?;
        expect_eq(&what, names(&pre, &g.kvs), sv(want))?;
        expect_eq(
            &format!("{what} (count, more)"),
            (g.count, g.more),
            (3, limit > 0 && limit < 3),
        )?;
    }
    Ok(())
}

pub(super) async fn range_at_revision(c: Ctx) -> Result<()> {
    let k = c.key("k");
    let r1 = hrev(&c.put("put k=v1", put(&k, "v1")).await?.header);
    let r2 = hrev(&c.put("put k=v2", put(&k, "v2")).await?.header);
    let r3 = hrev(&c.delete("delete k", del(&k)).await?.header);
    let r4 = hrev(&c.put("put k=v4", put(&k, "v4")).await?.header);
    let at = |revision| RangeRequest {
        revision,
        ..get(&k)
    };
    let g = c.range("get k @r1", at(r1)).await?;
    expect_eq(
        "k @r1",
        g.kvs.iter().map(fields).collect(),
        vec![f("v1", r1, r1, 1)],
    )?;
    let g = c.range("get k @r2", at(r2)).await?;
    expect_eq(
        "k @r2",
        g.kvs.iter().map(fields).collect(),
        vec![f("v2", r1, r2, 2)],
    )?;
    let g = c.range("get k @r3", at(r3)).await?;
    expect_eq("k @r3 (deleted)", (g.kvs.len(), g.count), (0, 0))?;
    let g = c.range("get k @r4", at(r4)).await?;
    expect_eq(
        "k @r4 (recreated)",
        g.kvs.iter().map(fields).collect(),
        vec![f("v4", r4, r4, 1)],
    )?;
    // The header of a read at an old revision carries the current revision.
    expect_eq("header of read @r4", hrev(&g.header) >= r4, true)?;
    let g = c.range("get k @r0 (latest)", at(0)).await?;
    expect_eq(
        "k @0",
        g.kvs.iter().map(fields).collect(),
        vec![f("v4", r4, r4, 1)],
    )?;
    let r = c.range("get k @future", at(r4 + 1_000_000)).await;
    expect_err("read at a future revision", &r, "OutOfRange", FUTURE_REV)?;
    Ok(())
}

pub(super) async fn range_revision_filters(c: Ctx) -> Result<()> {
    let r1 = hrev(&c.put("put a", put(&c.key("a"), "1")).await?.header);
    let r2 = hrev(&c.put("put b", put(&c.key("b"), "1")).await?.header);
    let r3 = hrev(&c.put("put a", put(&c.key("a"), "2")).await?.header);
    let pre = c.n.prefix.clone();
    let (p, end) = c.all();
    let base = range(&p, &end);
    let reqs = [
        (
            "min_mod r3",
            RangeRequest {
                min_mod_revision: r3,
                ..base.clone()
            },
            vec!["a"],
        ),
        (
            "max_mod r2",
            RangeRequest {
                max_mod_revision: r2,
                ..base.clone()
            },
            vec!["b"],
        ),
        (
            "min_create r2",
            RangeRequest {
                min_create_revision: r2,
                ..base.clone()
            },
            vec!["b"],
        ),
        (
            "max_create r1",
            RangeRequest {
                max_create_revision: r1,
                ..base.clone()
            },
            vec!["a"],
        ),
        (
            "min_mod r1 limit 1",
            RangeRequest {
                min_mod_revision: r1,
                limit: 1,
                ..base.clone()
            },
            vec!["a"],
        ),
    ];
    for (what, req, want) in reqs {
        let g = c.range(what, req).await?;
        expect_eq(what, names(&pre, &g.kvs), sv(&want))?;
        // etcd counts the keys in the range before the filters are applied.
        expect_eq(&format!("{what} count"), g.count, 2)?;
    }
    Ok(())
}

pub(super) async fn delete_range(c: Ctx) -> Result<()> {
    let mut last = 0;
    for k in ["a", "b", "c", "d"] {
        last = hrev(&c.put(&format!("put {k}"), put(&c.key(k), k)).await?.header);
    }
    let d = c.delete("delete a", del(&c.key("a"))).await?;
    expect_eq(
        "delete a (deleted, prev_kvs, rev)",
        (d.deleted, d.prev_kvs.len(), hrev(&d.header)),
        (1, 0, last + 1),
    )?;
    let d = c.delete("delete missing", del(&c.key("zz"))).await?;
    expect_eq(
        "delete missing (deleted, rev unchanged)",
        (d.deleted, hrev(&d.header)),
        (0, last + 1),
    )?;
    let mut req = del(&c.key("b"));
    req.range_end = c.key("d");
    req.prev_kv = true;
    let d = c.delete("delete [b, d) prev_kv", req).await?;
    let pre = c.n.prefix.clone();
    expect_eq("delete [b, d) deleted", d.deleted, 2)?;
    expect_eq(
        "delete [b, d) prev_kvs",
        names(&pre, &d.prev_kvs),
        sv(&["b", "c"]),
    )?;
    expect_eq(
        "one revision for a multi-key delete",
        hrev(&d.header),
        last + 2,
    )?;
    let (p, end) = c.all();
    let mut req = del(&p);
    req.range_end = end;
    let d = c.delete("delete prefix", req).await?;
    expect_eq("delete prefix deleted", d.deleted, 1)?;
    let g = c.range("get a", get(&c.key("a"))).await?;
    expect_eq("a gone", g.kvs.len(), 0)?;
    let r = hrev(&c.put("put a again", put(&c.key("a"), "x")).await?.header);
    let g = c.range("get a", get(&c.key("a"))).await?;
    expect_eq(
        "recreated a",
        g.kvs.iter().map(fields).collect(),
        vec![f("x", r, r, 1)],
    )?;
    Ok(())
}

pub(super) async fn put_options_and_errors(c: Ctx) -> Result<()> {
    const NO_KEY: &str = "etcdserver: key is not provided";
    let k = c.key("k");
    let r = c.put("put empty key", put(&Bytes::new(), "v")).await;
    expect_err("put with an empty key", &r, "InvalidArgument", NO_KEY)?;
    let r = c.range("range empty key", get(&Bytes::new())).await;
    expect_err("range with an empty key", &r, "InvalidArgument", NO_KEY)?;
    let r = c.delete("delete empty key", del(&Bytes::new())).await;
    expect_err("delete with an empty key", &r, "InvalidArgument", NO_KEY)?;
    let iv = |value: &str| PutRequest {
        ignore_value: true,
        ..put(&k, value)
    };
    let r = c.put("ignore_value on missing key", iv("")).await;
    expect_err(
        "ignore_value on a missing key",
        &r,
        "InvalidArgument",
        "etcdserver: key not found",
    )?;
    let r1 = hrev(&c.put("put k=v1", put(&k, "v1")).await?.header);
    let r2 = hrev(&c.put("put ignore_value", iv("")).await?.header);
    let g = c.range("get k", get(&k)).await?;
    expect_eq(
        "value kept by ignore_value",
        g.kvs.iter().map(fields).collect(),
        vec![f("v1", r1, r2, 2)],
    )?;
    let r = c.put("ignore_value with a value", iv("x")).await;
    expect_err(
        "ignore_value with a value",
        &r,
        "InvalidArgument",
        "etcdserver: value is provided",
    )?;
    let r = c
        .put(
            "put with unknown lease",
            PutRequest {
                lease: 0x7e57_0001,
                ..put(&k, "v")
            },
        )
        .await;
    expect_err(
        "put with an unknown lease",
        &r,
        "NotFound",
        "etcdserver: requested lease not found",
    )?;
    let il = |lease| PutRequest {
        ignore_lease: true,
        lease,
        ..put(&k, "v3")
    };
    let r = c.put("ignore_lease with a lease", il(0x7e57_0001)).await;
    expect_err(
        "ignore_lease with a lease",
        &r,
        "InvalidArgument",
        "etcdserver: lease is provided",
    )?;
    c.put("ignore_lease", il(0)).await?;
    let r = c
        .put(
            "ignore_lease on missing key",
            PutRequest {
                ignore_lease: true,
                ..put(&c.key("nope"), "v")
            },
        )
        .await;
    expect_err(
        "ignore_lease on a missing key",
        &r,
        "InvalidArgument",
        "etcdserver: key not found",
    )?;
    Ok(())
}
