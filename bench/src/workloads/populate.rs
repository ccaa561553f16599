//! Pre-population: the keys a workload reads and updates, written before it is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use etcdpb::etcdserverpb::PutRequest;

use super::ctx::Ctx;

/// In-flight Puts while pre-populating. Not --clients: the preload is not measured, and with
/// the few clients of a list run (2-4) a million keys took ~9 minutes to write one by one.
const POPULATE_PUTS: usize = 64;

/// Writes `keys` with `value` (each `--versions` times, one round of all keys after another)
/// using up to [`POPULATE_PUTS`] in-flight Puts; returns the mod_revision of each key, in order.
pub async fn populate(ctx: &Arc<Ctx>, keys: Vec<Bytes>) -> Result<Vec<i64>> {
    let keys = Arc::new(keys);
    let puts = keys
        .len()
        .saturating_mul(usize::try_from(ctx.versions).unwrap_or(usize::MAX));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..POPULATE_PUTS {
        let (ctx, keys, next) = (ctx.clone(), keys.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= puts {
                    break;
                }
                let i = n % keys.len();
                let key = &keys[i];
                let mut attempt = 0;
                let rev = loop {
                    let req = PutRequest {
                        key: key.clone(),
                        value: ctx.value.clone(),
                        ..Default::default()
                    };
                    match ctx.kv().put(req).await {
                        Ok(r) => break r.into_inner().header.map_or(0, |h| h.revision),
                        Err(e) if attempt < 3 => {
                            attempt += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(anyhow!("pre-populate put failed: {e}")),
                    }
                };
                revs.push((i, rev));
            }
            Ok::<_, anyhow::Error>(revs)
        }));
    }
    let mut out = vec![0i64; keys.len()];
    for t in tasks {
        for (i, rev) in t.await.context("populate task")?? {
            out[i] = out[i].max(rev);
        }
    }
    Ok(out)
}
