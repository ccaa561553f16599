//! Single-key reads at the current revision from an LSM store much larger than its memtable:
//! what a `get` costs once the data lives in tables (two point lookups: the key's index entry,
//! then its newest version). Run with `cargo bench -p backend --bench point_reads`;
//! `ENGRAM_BENCH_KEYS` sets the store size (default 200,000 values of 1 KiB),
//! `ENGRAM_BENCH_READS` the reads per round (default 50,000; five rounds).
//!
//! Prints the CPU time per read of one task reading random keys, after the load's flushes and
//! compactions have settled. Measured here (2 shared cores, thread CPU time, which still drifts
//! by tens of percent between runs): ~1.7 us per read over 2,000 keys (all in the memtable),
//! 11-15 us over 200,000 keys (in tables: two point lookups, each probing every overlapping
//! table's bloom filter, a binary search of its block index and, past the 64 MiB block cache,
//! a read of the block from the page cache).

use backend::engine::{LsmEngine, LsmOptions};
use backend::{Store, StoreOptions};
use bytes::Bytes;
use etcdpb::etcdserverpb::{PutRequest, RangeRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 1024;
const LOADERS: usize = 64;
const ROUNDS: usize = 5;

fn key(n: usize) -> Bytes {
    Bytes::from(format!("/registry/pods/bench/pod-{n:08}"))
}

/// xorshift64*: enough randomness to defeat the block cache's locality, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// `reads` reads of random keys.
///
/// This machine has no hardware counters and its timings drift; instruction counts do not:
/// `ENGRAM_BENCH_READS=2000 valgrind --tool=callgrind --toggle-collect='*View*scan*' <bench>`
/// counts the instructions of the MVCC read below request handling (divide by 5 x reads).
/// Measured: ~7,700 per read over 2,000 keys (all in the memtable), ~30,500 over 200,000
/// keys, of which block checksums (xxh3 of each block read past the cache) ~7% and the binary
/// search of table block indexes ~16%. Pinning every level's filter blocks left the count
/// unchanged (305.2M vs 305.3M for 10,000 reads).
async fn read_round(store: &Store<LsmEngine>, rng: &mut Rng, keys: usize, reads: usize) {
    for _ in 0..reads {
        let req = RangeRequest {
            key: key(rng.below(keys)),
            ..Default::default()
        };
        let resp = store.range(&req).await.expect("range");
        assert_eq!(resp.kvs.len(), 1);
    }
}

/// CPU time of the calling thread (Linux), which a busy neighbour on a shared machine
/// disturbs far less than wall time.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: usize = std::env::var("ENGRAM_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let reads: usize = std::env::var("ENGRAM_BENCH_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = LsmEngine::open_with(dir.path(), &LsmOptions::with_cache(64 << 20)).expect("open");
    let store = Arc::new(
        Store::open(engine, StoreOptions::default())
            .await
            .expect("store"),
    );

    let started = Instant::now();
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let mut loaders = Vec::new();
    for loader in 0..LOADERS {
        let store = store.clone();
        let value = value.clone();
        loaders.push(tokio::spawn(async move {
            for n in (loader..keys).step_by(LOADERS) {
                let req = PutRequest {
                    key: key(n),
                    value: value.clone(),
                    ..Default::default()
                };
                store.put(req).await.expect("put");
            }
        }));
    }
    for loader in loaders {
        loader.await.expect("loader");
    }
    eprintln!("loaded {keys} keys in {:.1?}", started.elapsed());
    // Let the load's flushes and compactions finish so they do not share the CPU with reads.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut per_read = Vec::new();
    for _ in 0..ROUNDS {
        let started = thread_cpu();
        read_round(&store, &mut rng, keys, reads).await;
        per_read.push((thread_cpu() - started).as_secs_f64() * 1e6 / reads as f64);
    }
    per_read.sort_by(f64::total_cmp);
    println!(
        "point reads over {keys} keys: median {:.2} us/read (rounds: {})",
        per_read[ROUNDS / 2],
        per_read
            .iter()
            .map(|us| format!("{us:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
