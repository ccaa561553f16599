//! Differential KV tests, part 1: Put, Range and DeleteRange.
//!
//! Each scenario runs on a fresh real etcd 3.5 and a fresh engram; every response is
//! compared exactly (see `support::diff`). Set `ENGRAM_DIFF_SELF_CHECK=1` to run both
//! sides on etcd. Parts 2 to 4: `kv_differential_txn.rs`, `kv_differential_errors.rs`,
//! `kv_differential_lists.rs`.

#[macro_use]
mod support;

use etcd_client::{DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
use support::diff::Ctx;

diff_tests!(s:
    empty_store,
    put_basic,
    put_prev_kv,
    put_ignore_value,
    put_ignore_lease,
    put_lease_zero,
    binary_keys,
    get_prefix,
    get_from_key_and_all,
    get_explicit_ranges,
    get_range_end_not_after_key,
    get_limit_and_more,
    get_count_only,
    get_keys_only,
    sort_each_target,
    sort_ties_keep_key_order,
    sort_target_without_order,
    sort_with_limit,
    revision_reads,
    serializable_reads,
    mod_and_create_filters,
    filters_with_limit_and_sort,
    delete_single,
    delete_prev_kv,
    delete_ranges,
    delete_all_and_from_key,
    recreate_after_delete,
);

fn all() -> GetOptions {
    GetOptions::new().with_all_keys()
}

mod s {
    use super::*;

    pub async fn empty_store(c: &mut Ctx) {
        c.get("a").await;
        c.get_with("", all()).await;
        c.get_with("a", GetOptions::new().with_prefix().with_count_only())
            .await;
        c.del("a").await;
        c.del_with("", DeleteOptions::new().with_all_keys()).await;
        c.get_with("a", GetOptions::new().with_revision(1)).await;
    }

    pub async fn put_basic(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("a", "2").await;
        c.put("b", "3").await;
        c.put("a", "2").await; // same value still bumps revision and version
        c.put("empty", "").await;
        c.get("a").await;
        c.get("b").await;
        c.get("empty").await;
        c.get("missing").await;
        c.get_with("", all()).await;
    }

    pub async fn put_prev_kv(c: &mut Ctx) {
        let prev = || PutOptions::new().with_prev_key();
        c.put_with("a", "1", prev()).await;
        c.put_with("a", "2", prev()).await;
        c.put_with("a", "3", PutOptions::new()).await;
        c.put_with("a", "4", prev()).await;
        c.del("a").await;
        c.put_with("a", "5", prev()).await;
        c.get("a").await;
    }

    pub async fn put_ignore_value(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put_with("a", "", PutOptions::new().with_ignore_value())
            .await;
        c.put_with(
            "a",
            "",
            PutOptions::new().with_ignore_value().with_prev_key(),
        )
        .await;
        c.get("a").await;
        // ignore_value with a non-empty value is an error
        c.put_with("a", "x", PutOptions::new().with_ignore_value())
            .await;
        // ignore_value on a missing key is an error
        c.put_with("nokey", "", PutOptions::new().with_ignore_value())
            .await;
        c.get_with("", all()).await;
    }

    pub async fn put_ignore_lease(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put_with("a", "2", PutOptions::new().with_ignore_lease())
            .await;
        c.put_with(
            "a",
            "3",
            PutOptions::new().with_ignore_lease().with_prev_key(),
        )
        .await;
        c.put_with("nokey", "1", PutOptions::new().with_ignore_lease())
            .await;
        // ignore_lease together with a lease is an error
        c.put_with(
            "a",
            "4",
            PutOptions::new().with_ignore_lease().with_lease(42),
        )
        .await;
        c.put_with(
            "a",
            "",
            PutOptions::new().with_ignore_lease().with_ignore_value(),
        )
        .await;
        c.get("a").await;
    }

    pub async fn put_lease_zero(c: &mut Ctx) {
        c.put_with("a", "1", PutOptions::new().with_lease(0)).await;
        c.put_with("a", "2", PutOptions::new().with_lease(0).with_prev_key())
            .await;
        c.get("a").await;
    }

    pub async fn binary_keys(c: &mut Ctx) {
        let keys: [&[u8]; 7] = [
            b"\x00",
            b"\x00\x00",
            b"a\x00b",
            b"\xfe\xff",
            b"\xff",
            b"\xff\xff",
            "\u{e9}t\u{e9}".as_bytes(),
        ];
        for (i, k) in keys.iter().enumerate() {
            c.put(k, [i as u8, 0, 255]).await;
        }
        c.get_with("", all()).await;
        c.get(b"a\x00b").await;
        c.get_with(b"\xff", GetOptions::new().with_prefix()).await; // range_end "\0"
        c.get_with(b"\xfe\xff", GetOptions::new().with_prefix())
            .await;
        c.get_with(b"\x00", GetOptions::new().with_prefix()).await;
        c.get_with(b"\x00", GetOptions::new().with_range(b"\x00\x01"))
            .await;
    }

    pub async fn get_prefix(c: &mut Ctx) {
        for k in ["fo", "foo", "foo/a", "foo/b", "foo/b/c", "foo0", "fop", "g"] {
            c.put(k, k).await;
        }
        c.get_with("foo", GetOptions::new().with_prefix()).await;
        c.get_with("foo/", GetOptions::new().with_prefix()).await;
        c.get_with("foo/b", GetOptions::new().with_prefix()).await;
        c.get_with("x", GetOptions::new().with_prefix()).await;
        c.get_with("", GetOptions::new().with_prefix()).await; // whole keyspace
    }

    pub async fn get_from_key_and_all(c: &mut Ctx) {
        c.fill("k", 5).await;
        c.put("a", "a").await;
        c.put("z", "z").await;
        c.get_with("k2", GetOptions::new().with_from_key()).await;
        c.get_with("k", GetOptions::new().with_from_key()).await;
        c.get_with("zz", GetOptions::new().with_from_key()).await;
        c.get_with("", GetOptions::new().with_from_key()).await; // key "\0"
        c.get_with("", all()).await;
        c.get_with("b", GetOptions::new().with_range("\0")).await;
    }

    pub async fn get_explicit_ranges(c: &mut Ctx) {
        for k in ["a", "b", "ba", "bb", "c", "d"] {
            c.put(k, "v").await;
        }
        c.get_with("a", GetOptions::new().with_range("c")).await;
        c.get_with("b", GetOptions::new().with_range("bb")).await;
        c.get_with("b", GetOptions::new().with_range("b\0")).await;
        c.get_with("aa", GetOptions::new().with_range("ab")).await;
        c.get_with("0", GetOptions::new().with_range("zz")).await;
    }

    pub async fn get_range_end_not_after_key(c: &mut Ctx) {
        for k in ["a", "b", "c"] {
            c.put(k, "v").await;
        }
        c.get_with("b", GetOptions::new().with_range("b")).await; // end == key
        c.get_with("c", GetOptions::new().with_range("a")).await; // end < key
        c.get_with("c", GetOptions::new().with_range("a").with_count_only())
            .await;
        c.del_with("c", DeleteOptions::new().with_range("a")).await;
        c.get_with("", all()).await;
    }

    pub async fn get_limit_and_more(c: &mut Ctx) {
        c.fill("k", 5).await;
        for limit in [1, 2, 4, 5, 6, 0, -1] {
            c.get_with("k", GetOptions::new().with_prefix().with_limit(limit))
                .await;
        }
        c.get_with("k3", GetOptions::new().with_limit(1)).await;
        c.get_with("k", GetOptions::new().with_from_key().with_limit(2))
            .await;
        c.get_with(
            "k",
            GetOptions::new()
                .with_prefix()
                .with_limit(2)
                .with_revision(4),
        )
        .await;
    }

    pub async fn get_count_only(c: &mut Ctx) {
        c.fill("k", 4).await;
        c.get_with("k", GetOptions::new().with_prefix().with_count_only())
            .await;
        c.get_with(
            "k",
            GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_limit(2),
        )
        .await;
        c.get_with("k1", GetOptions::new().with_count_only()).await;
        c.get_with("zz", GetOptions::new().with_count_only()).await;
        c.get_with(
            "k",
            GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_keys_only(),
        )
        .await;
    }

    pub async fn get_keys_only(c: &mut Ctx) {
        c.fill("k", 3).await;
        c.put("k1", "again").await;
        c.get_with("k", GetOptions::new().with_prefix().with_keys_only())
            .await;
        c.get_with("k1", GetOptions::new().with_keys_only()).await;
        c.get_with(
            "k",
            GetOptions::new()
                .with_prefix()
                .with_keys_only()
                .with_limit(1),
        )
        .await;
    }

    /// Keys with distinct version, create, mod and value orders (five keys, no ties).
    async fn sort_fixture(c: &mut Ctx) {
        c.put("k3", "c").await; // create 2
        c.put("k1", "e").await; // create 3
        c.put("k4", "a").await; // create 4
        c.put("k0", "d").await; // create 5
        c.put("k2", "b").await; // create 6
        c.put("k1", "e").await;
        c.put("k1", "e").await; // k1 version 3
        c.put("k4", "a").await; // k4 version 2
        c.put("k3", "c").await; // k3 version 2 (tie with k4)
    }

    const TARGETS: [SortTarget; 5] = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ];

    pub async fn sort_each_target(c: &mut Ctx) {
        sort_fixture(c).await;
        for target in TARGETS {
            for order in [SortOrder::Ascend, SortOrder::Descend] {
                let o = GetOptions::new().with_prefix().with_sort(target, order);
                c.get_with("k", o).await;
            }
        }
        let o = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Value, SortOrder::Descend);
        c.get_with("k", o).await;
    }

    pub async fn sort_ties_keep_key_order(c: &mut Ctx) {
        // All versions equal 1 except k2: ties must keep ascending key order, also
        // when sorting descending (etcd 3.5 sorts stably here: at most 6 keys).
        c.fill("k", 5).await;
        c.put("k2", "v2").await;
        for order in [SortOrder::Ascend, SortOrder::Descend] {
            for target in [SortTarget::Version, SortTarget::Value] {
                let o = GetOptions::new().with_prefix().with_sort(target, order);
                c.get_with("k", o).await;
            }
        }
    }

    pub async fn sort_target_without_order(c: &mut Ctx) {
        // A non-key target with order NONE sorts ascending.
        sort_fixture(c).await;
        for target in TARGETS {
            let o = GetOptions::new()
                .with_prefix()
                .with_sort(target, SortOrder::None);
            c.get_with("k", o).await;
        }
    }

    pub async fn sort_with_limit(c: &mut Ctx) {
        sort_fixture(c).await;
        for target in TARGETS {
            for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
                for limit in [1, 3] {
                    let o = GetOptions::new()
                        .with_prefix()
                        .with_sort(target, order)
                        .with_limit(limit);
                    c.get_with("k", o).await;
                }
            }
        }
    }

    pub async fn revision_reads(c: &mut Ctx) {
        c.put("a", "1").await; // 2
        c.put("a", "2").await; // 3
        c.put("b", "1").await; // 4
        c.del("a").await; // 5
        c.put("a", "3").await; // 6
        for rev in [0, 1, 2, 3, 4, 5, 6] {
            c.get_with("a", GetOptions::new().with_revision(rev)).await;
            c.get_with("", all().with_revision(rev)).await;
            // Descending by key is a reverse walk over every version: the newest at or below
            // the revision of each key, a deleted key left out.
            for limit in [0, 1] {
                let descending = all()
                    .with_revision(rev)
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit);
                c.get_with("", descending).await;
            }
        }
        c.get_with("a", GetOptions::new().with_revision(-5)).await;
        c.get_with("", all().with_revision(3).with_count_only())
            .await;
        c.get_with("", all().with_revision(4).with_keys_only())
            .await;
        c.get_with(
            "",
            all()
                .with_revision(5)
                .with_sort(SortTarget::Create, SortOrder::Descend),
        )
        .await;
    }

    pub async fn serializable_reads(c: &mut Ctx) {
        c.fill("k", 3).await;
        c.get_with("k1", GetOptions::new().with_serializable())
            .await;
        c.get_with(
            "k",
            GetOptions::new()
                .with_prefix()
                .with_serializable()
                .with_revision(3),
        )
        .await;
    }

    pub async fn mod_and_create_filters(c: &mut Ctx) {
        c.fill("k", 5).await; // k0..k4 created at 2..6
        c.put("k1", "x").await; // 7
        c.put("k3", "y").await; // 8
        let p = || GetOptions::new().with_prefix();
        c.get_with("k", p().with_min_mod_revision(5)).await;
        c.get_with("k", p().with_max_mod_revision(5)).await;
        c.get_with("k", p().with_min_create_revision(4)).await;
        c.get_with("k", p().with_max_create_revision(4)).await;
        c.get_with(
            "k",
            p().with_min_mod_revision(3)
                .with_max_mod_revision(7)
                .with_min_create_revision(3)
                .with_max_create_revision(5),
        )
        .await;
        c.get_with("k", p().with_min_mod_revision(100)).await;
        c.get_with("k", p().with_min_mod_revision(5).with_count_only())
            .await;
        c.get_with("k", p().with_min_mod_revision(5).with_keys_only())
            .await;
        c.get_with("k", p().with_max_mod_revision(7).with_revision(6))
            .await;
    }

    pub async fn filters_with_limit_and_sort(c: &mut Ctx) {
        c.fill("k", 5).await;
        c.put("k0", "x").await;
        c.put("k2", "y").await;
        let p = || GetOptions::new().with_prefix();
        c.get_with("k", p().with_min_mod_revision(4).with_limit(1))
            .await;
        c.get_with("k", p().with_min_mod_revision(4).with_limit(2))
            .await;
        c.get_with("k", p().with_max_create_revision(3).with_limit(1))
            .await;
        c.get_with(
            "k",
            p().with_min_mod_revision(4)
                .with_limit(2)
                .with_sort(SortTarget::Mod, SortOrder::Descend),
        )
        .await;
    }

    pub async fn delete_single(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("b", "2").await;
        c.del("a").await;
        c.del("a").await; // missing: deleted=0, revision unchanged
        c.del("zzz").await;
        c.get("a").await;
        c.get_with("", all()).await;
    }

    pub async fn delete_prev_kv(c: &mut Ctx) {
        c.fill("k", 4).await;
        c.put("k1", "new").await;
        let pk = || DeleteOptions::new().with_prev_key();
        c.del_with("k1", pk()).await;
        c.del_with("k1", pk()).await;
        c.del_with("k", pk().with_prefix()).await;
        c.del_with("k", pk().with_prefix()).await;
    }

    pub async fn delete_ranges(c: &mut Ctx) {
        for k in ["a", "b", "ba", "bb", "c", "d", "e"] {
            c.put(k, k).await;
        }
        c.del_with("b", DeleteOptions::new().with_range("c")).await;
        c.del_with("b", DeleteOptions::new().with_prefix().with_prev_key())
            .await;
        c.del_with("d", DeleteOptions::new().with_range("d")).await;
        c.del_with("c", DeleteOptions::new().with_range("e").with_prev_key())
            .await;
        c.get_with("", all()).await;
        c.get_with("", all().with_revision(8)).await;
    }

    pub async fn delete_all_and_from_key(c: &mut Ctx) {
        c.fill("k", 4).await;
        c.put("a", "1").await;
        c.del_with("k2", DeleteOptions::new().with_from_key()).await;
        c.get_with("", all()).await;
        c.del_with("", DeleteOptions::new().with_all_keys().with_prev_key())
            .await;
        c.get_with("", all()).await;
        c.del_with("", DeleteOptions::new().with_all_keys()).await;
    }

    pub async fn recreate_after_delete(c: &mut Ctx) {
        c.put("a", "1").await;
        c.put("a", "2").await;
        c.del("a").await;
        c.put("a", "3").await; // version restarts at 1, new create revision
        c.get("a").await;
        c.get_with("a", GetOptions::new().with_revision(3)).await;
        c.get_with("a", GetOptions::new().with_revision(4)).await;
    }
}
