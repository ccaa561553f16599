//! Differential Watch tests: each scenario runs on a fresh real etcd 3.5 and a fresh
//! engram; what every watcher receives is compared (see `support::watch`).
//! `ENGRAM_DIFF_SELF_CHECK=1` runs both sides on etcd; `ENGRAM_DIFF_PRINT=1` prints the
//! etcd transcripts (with `-- --nocapture`).

#[macro_use]
mod support;

use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp, WatchFilterType, WatchOptions};
use support::watch::W;

macro_rules! watch_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            support::watch::run(stringify!($name), |mut w| async move {
                s::$name(&mut w).await;
                w
            })
            .await;
        }
    )*};
}

watch_tests!(
    single_key,
    prefix,
    from_key_and_all_keys,
    explicit_ranges,
    empty_range,
    history_replay,
    txn_events_together,
    prev_kv,
    prev_kv_history,
    filters,
    watch_ids_and_duplicates,
    cancel,
    start_revisions,
    negative_start_revision,
    compacted_start,
    compacted_at_delete,
    progress_request,
    progress_request_no_watchers,
    progress_request_after_cancel,
    never_written_key,
    range_deletes,
    fragment,
);

fn o() -> WatchOptions {
    WatchOptions::new()
}

fn put(k: &str, v: &str) -> TxnOp {
    TxnOp::put(k, v, None)
}

/// Puts `k{i}` = `v{i}` for i in 0..n.
async fn fill(w: &mut W, prefix: &str, n: usize) {
    w.c.fill(prefix, n).await;
}

mod s {
    use super::*;

    pub async fn single_key(w: &mut W) {
        let s = w.open("a", o()).await;
        w.c.put("a", "1").await;
        w.c.put("b", "2").await;
        w.c.put("a", "3").await;
        w.c.put("a\0", "x").await;
        w.c.del("a").await;
        w.c.del("a").await; // deleting a missing key is no event
        w.c.put("a", "4").await;
        w.drain(s).await;
    }

    pub async fn prefix(w: &mut W) {
        let s = w.open("p/", o().with_prefix()).await;
        w.add(s, "\u{ff}", o().with_prefix()).await;
        w.c.put("p/1", "a").await;
        w.c.put("p0", "no").await;
        w.c.put("p", "no").await;
        w.c.put("p/", "yes").await;
        w.c.put("p/2/deep", "b").await;
        w.c.put("\u{ff}x", "ff").await;
        w.c.del("p/1").await;
        w.drain(s).await;
    }

    pub async fn from_key_and_all_keys(w: &mut W) {
        let s = w.open("m", o().with_from_key()).await;
        w.add(s, "", o().with_all_keys()).await;
        w.add(s, "", o().with_from_key()).await;
        w.c.put("a", "1").await;
        w.c.put("m", "2").await;
        w.c.put("l\u{ff}", "3").await;
        w.c.put("z", "4").await;
        w.c.put(b"\xff\xff", "5").await;
        w.c.put(b"\0", "nul").await;
        w.c.del_with("", DeleteOptions::new().with_all_keys()).await;
        w.drain(s).await;
    }

    pub async fn explicit_ranges(w: &mut W) {
        let s = w.open("b", o().with_range("d")).await;
        w.add(s, "k", o().with_range("k\0")).await; // a one-key range
        w.add(s, "", o().with_range("c")).await; // empty key means "\0"
        for k in ["a", "b", "b\0", "c", "c\u{ff}", "d", "k", "k\0", "\0"] {
            w.c.put(k, "v").await;
        }
        w.drain(s).await;
    }

    pub async fn empty_range(w: &mut W) {
        let s = w.open("b", o().with_range("b")).await; // key == end
        w.add(s, "c", o().with_range("a")).await; // key > end
        w.add(s, "c", o().with_range("a").with_watch_id(9)).await;
        w.add(s, "a", o()).await; // the stream still works
        w.c.put("a", "1").await;
        w.c.put("b", "2").await;
        w.drain(s).await;
    }

    pub async fn history_replay(w: &mut W) {
        w.c.put("h/a", "1").await; // rev 2
        w.c.put("h/b", "1").await;
        w.c.put("h/a", "2").await;
        w.c.del("h/b").await; // rev 5
        w.c.txn(Txn::new().and_then(vec![
            put("h/c", "1"),
            put("h/a", "3"),
            TxnOp::delete("h/b", None), // already deleted: no event
            put("h/d", "1"),
            put("other", "x"),
            TxnOp::delete("h/0", Some(DeleteOptions::new().with_range("h/1"))),
        ]))
        .await; // rev 6
        w.c.txn(
            Txn::new()
                .when(vec![Compare::value("h/c", CompareOp::Equal, "nope")])
                .and_then(vec![put("h/x", "no")])
                .or_else(vec![put("h/e", "else"), TxnOp::get("h/a", None)]),
        )
        .await; // rev 7
        w.c.txn(Txn::new().and_then(vec![TxnOp::get("h/c", None)]))
            .await; // read-only: no rev
        w.c.put("h/a", "4").await; // rev 8
        let s = w.open("h/", o().with_prefix().with_start_revision(1)).await;
        w.add(s, "h/", o().with_prefix().with_start_revision(5))
            .await;
        w.add(s, "h/", o().with_prefix().with_start_revision(6))
            .await;
        w.add(s, "h/a", o().with_start_revision(2)).await;
        w.add(s, "", o().with_all_keys().with_start_revision(7))
            .await;
        w.drain(s).await;
        w.c.put("h/z", "live").await;
        w.drain(s).await;
    }

    pub async fn txn_events_together(w: &mut W) {
        w.c.put("t/1", "old").await;
        w.c.put("t/0", "old").await;
        w.c.put("t/0x", "old").await;
        let s = w.open("t/", o().with_prefix()).await;
        w.add(s, "t/", o().with_prefix().with_prev_key()).await;
        w.c.txn(Txn::new().and_then(vec![
            put("t/3", "c"),
            put("t/1", "a"),
            put("t/2", "b"),
            TxnOp::delete("t/0", Some(DeleteOptions::new().with_range("t/1"))),
        ]))
        .await;
        w.c.txn(Txn::new().and_then(vec![TxnOp::delete(
            "t/",
            Some(DeleteOptions::new().with_prefix()),
        )]))
        .await;
        w.drain(s).await;
    }

    pub async fn prev_kv(w: &mut W) {
        let s = w.open("k", o().with_prev_key()).await;
        w.add(s, "", o().with_all_keys().with_prev_key()).await;
        w.c.put("k", "1").await; // create: no prev_kv
        w.c.put("k", "2").await;
        w.c.put("k", "2").await; // same value
        w.c.del("k").await; // prev_kv = last value
        w.c.put("k", "3").await; // re-create: no prev_kv
        w.c.put("j", "x").await;
        w.c.del_with("", DeleteOptions::new().with_from_key()).await;
        w.drain(s).await;
    }

    pub async fn prev_kv_history(w: &mut W) {
        w.c.put("k", "1").await;
        w.c.put("k", "2").await;
        w.c.del("k").await;
        w.c.put("k", "3").await;
        w.c.put("k", "4").await;
        w.c.compact_physical(4).await;
        let s = w
            .open("k", o().with_prev_key().with_start_revision(4))
            .await;
        w.add(s, "k", o().with_prev_key().with_start_revision(5))
            .await;
        w.drain(s).await;
    }

    pub async fn filters(w: &mut W) {
        let s = w
            .open("f", o().with_filters([WatchFilterType::NoPut]))
            .await;
        w.add(s, "f", o().with_filters([WatchFilterType::NoDelete]))
            .await;
        w.add(
            s,
            "f",
            o().with_filters([WatchFilterType::NoDelete, WatchFilterType::NoPut]),
        )
        .await;
        w.add(
            s,
            "f",
            o().with_filters([WatchFilterType::NoPut]).with_prev_key(),
        )
        .await;
        w.c.put("f", "1").await;
        w.c.put("f", "2").await;
        w.c.del("f").await;
        w.c.put("f", "3").await;
        w.drain(s).await;
    }

    pub async fn watch_ids_and_duplicates(w: &mut W) {
        let s = w.open("a", o().with_watch_id(5)).await;
        w.add(s, "a", o().with_watch_id(7)).await;
        w.add(s, "a", o()).await; // auto: 0
        w.add(s, "a", o().with_watch_id(1)).await;
        w.add(s, "a", o()).await; // auto: skips 1
        w.add(s, "b", o().with_watch_id(5)).await; // duplicate
        w.add(s, "a", o().with_watch_id(-3)).await; // negative client id
        w.c.put("a", "1").await;
        w.c.put("b", "1").await;
        w.drain(s).await;
        // A second stream has its own id space.
        let t = w.open("a", o().with_watch_id(5)).await;
        w.add(t, "a", o()).await;
        w.c.put("a", "2").await;
        w.drain(s).await;
        w.drain(t).await;
    }

    pub async fn cancel(w: &mut W) {
        let s = w.open("a", o()).await;
        w.add(s, "a", o().with_watch_id(3)).await;
        w.c.put("a", "1").await;
        w.drain(s).await;
        w.cancel(s, 0).await;
        w.c.put("a", "2").await;
        w.cancel(s, 0).await; // again: unknown now
        w.cancel(s, 99).await; // never existed
        w.add(s, "a", o()).await; // auto id after cancel
        w.add(s, "a", o().with_watch_id(0)).await;
        w.c.put("a", "3").await;
        w.drain(s).await;
    }

    pub async fn start_revisions(w: &mut W) {
        fill(w, "k", 3).await; // revs 2..4
        let s = w.open("k", o().with_prefix()).await; // from now
        w.add(s, "k", o().with_prefix().with_start_revision(5))
            .await; // current + 1
        w.add(s, "k", o().with_prefix().with_start_revision(4))
            .await; // current
        w.add(s, "k", o().with_prefix().with_start_revision(7))
            .await; // future
        w.add(s, "k", o().with_prefix().with_start_revision(1000))
            .await; // far future
        w.drain(s).await;
        fill(w, "k", 4).await; // revs 5..8
        w.drain(s).await;
    }

    pub async fn negative_start_revision(w: &mut W) {
        fill(w, "k", 3).await;
        let s = w.open("k", o().with_prefix().with_start_revision(-1)).await;
        w.add(s, "k", o().with_prefix().with_start_revision(-5))
            .await;
        w.drain(s).await;
        w.c.put("k0", "x").await;
        w.drain(s).await;
        w.c.compact_physical(3).await;
        let t = w.open("k", o().with_prefix().with_start_revision(-1)).await;
        w.drain(t).await;
    }

    pub async fn compacted_start(w: &mut W) {
        fill(w, "k", 8).await; // revs 2..9
        w.c.compact_physical(6).await;
        let s = w.open("k", o().with_prefix().with_start_revision(6)).await;
        w.add(s, "k", o().with_prefix().with_start_revision(5))
            .await;
        w.add(s, "k", o().with_prefix().with_start_revision(1))
            .await;
        w.add(s, "k7", o().with_start_revision(7)).await;
        w.drain(s).await;
        // A compacted-away client id: can it be reused?
        let t = w
            .open("k", o().with_start_revision(2).with_watch_id(4))
            .await;
        w.drain(t).await;
        w.add(t, "k", o().with_watch_id(4)).await;
        w.c.put("k", "x").await;
        w.drain(t).await;
    }

    pub async fn compacted_at_delete(w: &mut W) {
        w.c.put("a", "1").await; // 2
        w.c.put("b", "1").await; // 3
        w.c.del("a").await; // 4
        w.c.put("b", "2").await; // 5
        w.c.compact_physical(4).await;
        let s = w.open("", o().with_all_keys().with_start_revision(4)).await;
        w.add(
            s,
            "",
            o().with_all_keys().with_start_revision(4).with_prev_key(),
        )
        .await;
        w.add(s, "", o().with_all_keys().with_start_revision(3))
            .await;
        w.drain(s).await;
    }

    pub async fn progress_request(w: &mut W) {
        w.c.put("a", "0").await;
        let s = w.open("a", o()).await;
        w.add(s, "b", o().with_prefix()).await;
        w.progress(s).await;
        w.c.put("a", "1").await;
        w.c.put("b1", "1").await;
        w.drain(s).await;
        w.progress(s).await;
        w.drain(s).await;
        // Right after writes, with a catching-up watcher.
        w.add(s, "", o().with_all_keys().with_start_revision(1))
            .await;
        w.c.put("a", "2").await;
        w.progress(s).await;
        w.drain(s).await;
    }

    pub async fn progress_request_no_watchers(w: &mut W) {
        w.c.put("a", "0").await;
        let s = w.open("a", o().with_range("a")).await; // empty range: no watcher
        w.progress(s).await;
        w.drain(s).await;
    }

    pub async fn progress_request_after_cancel(w: &mut W) {
        w.c.put("a", "0").await;
        let s = w.open("a", o()).await;
        w.cancel(s, 0).await;
        w.c.put("a", "1").await;
        w.progress(s).await;
        w.drain(s).await;
    }

    pub async fn never_written_key(w: &mut W) {
        w.c.put("x", "1").await;
        let s = w.open("ghost", o().with_start_revision(1)).await;
        w.add(s, "ghost", o()).await;
        w.add(s, "ghost/", o().with_prefix().with_prev_key()).await;
        fill(w, "g", 3).await;
        w.c.del("ghost").await;
        w.drain(s).await;
        w.progress(s).await;
        w.drain(s).await;
    }

    pub async fn range_deletes(w: &mut W) {
        fill(w, "d/", 4).await;
        fill(w, "e", 2).await;
        w.c.put("z", "z").await;
        let s = w.open("", o().with_all_keys().with_prev_key()).await;
        w.add(s, "d/2", o()).await;
        w.add(
            s,
            "d/",
            o().with_prefix().with_filters([WatchFilterType::NoPut]),
        )
        .await;
        w.c.del_with("d/1", DeleteOptions::new().with_range("d/3"))
            .await;
        w.c.del_with("d/", DeleteOptions::new().with_prefix()).await;
        w.c.del_with("e", DeleteOptions::new().with_from_key())
            .await;
        w.c.del_with("", DeleteOptions::new().with_all_keys()).await; // nothing left: no rev
        w.drain(s).await;
        let t = w.open("", o().with_all_keys().with_start_revision(9)).await;
        w.drain(t).await;
    }

    pub async fn fragment(w: &mut W) {
        let big = "x".repeat(100 * 1024);
        let ops = |tag: &str| {
            (0..12)
                .map(|i| put(&format!("f/{i:02}"), &format!("{tag}{big}")))
                .collect::<Vec<_>>()
        };
        let s = w
            .open("f/", o().with_prefix().with_fragment().with_prev_key())
            .await;
        w.add(s, "f/", o().with_prefix().with_prev_key()).await;
        w.add(s, "f/", o().with_prefix().with_fragment()).await;
        w.c.txn(Txn::new().and_then(ops("a"))).await;
        w.c.txn(Txn::new().and_then(ops("b"))).await;
        w.drain(s).await;
    }
}
